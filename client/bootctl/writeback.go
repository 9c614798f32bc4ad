package bootctl

import "os"

// writeback starts the device's writes of what a slot writer wrote, from
// a goroutine of its own, so the storage works while the network (or the
// delta) does and a checkpoint's fsync waits only for what is still in
// flight. sync_file_range blocks while the device's queue is full; made
// by the writer itself, that held up the whole pipeline. While the
// goroutine is busy, the range handed to it next grows.
type writeback struct {
	// start asks the device to write [off, off+n) (startWriteback on the
	// slot; a test's own).
	start func(off, n int64)
	// from is where the written bytes not yet handed over start, end
	// where the written bytes end.
	from, end int64
	next      chan [2]int64
	done      chan struct{}
}

// newWriteback starts the goroutine for f, whose bytes before from are
// already on their way (or durable).
func newWriteback(f *os.File, from int64) *writeback {
	return writebackWith(func(off, n int64) { startWriteback(f, off, n) }, from)
}

// writebackWith is newWriteback with start doing the asking.
func writebackWith(start func(off, n int64), from int64) *writeback {
	b := &writeback{start: start, from: from, end: from, next: make(chan [2]int64, 1), done: make(chan struct{})}
	go func() {
		defer close(b.done)
		for r := range b.next {
			b.start(r[0], r[1]-r[0])
		}
	}()
	return b
}

// wrote says the slot is written up to end (writes are in order); it
// never blocks.
func (b *writeback) wrote(end int64) {
	b.end = end
	select {
	case b.next <- [2]int64{b.from, end}:
		b.from = end
	default:
	}
}

// stop hands over what is left and waits for the goroutine to finish;
// after it, the file is the caller's.
func (b *writeback) stop() {
	if b.from < b.end {
		b.next <- [2]int64{b.from, b.end}
		b.from = b.end
	}
	close(b.next)
	<-b.done
}
