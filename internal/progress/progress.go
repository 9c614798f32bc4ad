// Package progress draws a one-line progress bar for long transfers when
// its output is a terminal, and stays silent otherwise (logs, CI, pipes).
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Bar counts bytes written through it and redraws at most ten times a second.
type Bar struct {
	mu      sync.Mutex
	w       io.Writer
	label   string
	total   int64
	done    int64
	start   time.Time
	last    time.Time
	enabled bool
	format  func(int64) string
}

// IsTerminal reports whether w is a character device (a terminal).
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// New returns a bar for total bytes (0 if unknown), starting at done.
// It draws only when w is a terminal.
func New(w io.Writer, label string, total, done int64) *Bar {
	return &Bar{w: w, label: label, total: total, done: done, start: time.Now(), enabled: IsTerminal(w), format: human}
}

// NewCount is a bar that counts things (vehicles, say), not bytes.
func NewCount(w io.Writer, label string, total int64) *Bar {
	b := New(w, label, total, 0)
	b.format = func(n int64) string { return fmt.Sprint(n) }
	return b
}

// Write counts len(p) bytes; use the bar as the second half of an io.TeeReader.
func (b *Bar) Write(p []byte) (int, error) {
	b.Add(int64(len(p)))
	return len(p), nil
}

// Add counts n more bytes.
func (b *Bar) Add(n int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done += n
	if now := time.Now(); b.enabled && now.Sub(b.last) >= 100*time.Millisecond {
		b.last = now
		b.draw(now)
	}
}

// Finish draws the final state and ends the line.
func (b *Bar) Finish() {
	if b == nil || !b.enabled {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.draw(time.Now())
	fmt.Fprintln(b.w)
}

func (b *Bar) draw(now time.Time) {
	rate := float64(b.done) / max(now.Sub(b.start).Seconds(), 0.001)
	if b.total > 0 {
		pct := 100 * float64(b.done) / float64(b.total)
		fmt.Fprintf(b.w, "\r%s %5.1f%%  %s / %s  %s/s   ", b.label, pct, b.format(b.done), b.format(b.total), b.format(int64(rate)))
		return
	}
	fmt.Fprintf(b.w, "\r%s %s  %s/s   ", b.label, b.format(b.done), b.format(int64(rate)))
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
