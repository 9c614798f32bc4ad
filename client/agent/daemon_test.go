package agent

import (
	"testing"
	"time"
)

func TestNextWait(t *testing.T) {
	c := DaemonConfig{Interval: time.Hour, RetryMin: 10 * time.Second}
	tests := []struct {
		failures int
		want     time.Duration
	}{
		{0, time.Hour},
		{1, 10 * time.Second},
		{2, 20 * time.Second},
		{5, 160 * time.Second},
		{12, time.Hour}, // capped at the interval
		{100, time.Hour},
	}
	for _, tt := range tests {
		if got := c.NextWait(tt.failures, func() float64 { return 0.5 }); got != tt.want {
			t.Errorf("failures %d: wait %s, want %s", tt.failures, got, tt.want)
		}
	}
	c.Jitter = 0.2
	if lo, hi := c.NextWait(0, func() float64 { return 0 }), c.NextWait(0, func() float64 { return 1 }); lo != 48*time.Minute || hi != 72*time.Minute {
		t.Errorf("jitter bounds: %s..%s, want 48m..72m", lo, hi)
	}
}
