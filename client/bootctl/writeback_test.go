package bootctl

import (
	"sync"
	"testing"
	"time"
)

// TestWritebackNeverHoldsTheWriter: while the device's queue is full
// (start blocks), the writer's calls return at once; the ranges handed
// over are in order, without gaps or overlaps, and cover every byte
// written, the last ones handed over by stop.
func TestWritebackNeverHoldsTheWriter(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var got [][2]int64
	b := writebackWith(func(off, n int64) {
		mu.Lock()
		first := len(got) == 0
		got = append(got, [2]int64{off, n})
		mu.Unlock()
		if first {
			<-release // the device's queue is full
		}
	}, 1000)

	done := make(chan struct{})
	go func() {
		defer close(done)
		for end := int64(1000 + 4096); end <= 1000+100*4096; end += 4096 {
			b.wrote(end)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the writer's calls waited for a blocked writeback")
	}
	close(release)
	b.stop()

	next := int64(1000)
	for _, r := range got {
		if r[0] != next || r[1] <= 0 {
			t.Fatalf("ranges %v: one starts at %d, want %d with a positive length", got, r[0], next)
		}
		next = r[0] + r[1]
	}
	if want := int64(1000 + 100*4096); next != want {
		t.Fatalf("ranges %v end at %d, want %d", got, next, want)
	}
}

// TestWritebackStopWithNothingWritten: stop returns with nothing asked.
func TestWritebackStopWithNothingWritten(t *testing.T) {
	calls := 0
	b := writebackWith(func(off, n int64) { calls++ }, 0)
	b.stop()
	if calls != 0 {
		t.Fatalf("%d writebacks asked for nothing written", calls)
	}
}
