package meta

import (
	"testing"
	"time"
)

func TestInWindow(t *testing.T) {
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		start, end, tz, at string
		want               bool
	}{
		{"01:00", "05:00", "Europe/Berlin", "2026-11-29T00:30:00Z", true},     // 01:30 in Berlin (CET)
		{"01:00", "05:00", "Europe/Berlin", "2026-11-29T23:30:00Z", false},    // 00:30 the next day
		{"01:00", "05:00", "Europe/Berlin", "2026-11-29T12:00:00Z", false},    // 13:00
		{"22:00", "04:00", "America/New_York", "2026-11-30T04:00:00Z", true},  // 23:00 EST
		{"22:00", "04:00", "America/New_York", "2026-11-30T08:30:00Z", true},  // 03:30 EST
		{"22:00", "04:00", "America/New_York", "2026-11-30T15:00:00Z", false}, // 10:00 EST
	}
	for _, tt := range tests {
		got, err := InWindow(tt.start, tt.end, tt.tz, at(tt.at))
		if err != nil || got != tt.want {
			t.Errorf("%s-%s %s at %s: %v %v, want %v", tt.start, tt.end, tt.tz, tt.at, got, err, tt.want)
		}
	}
	if _, err := InWindow("01:00", "05:00", "Mars/Olympus", time.Now()); err == nil {
		t.Error("an unknown time zone was accepted")
	}
}
