package bootctl

import (
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/internal/pairhash"
)

// Writer streams an image into the inactive slot while hashing it.
//
// Bytes go into one of a few chunks (ReadFrom reads the network straight
// into them); a full chunk goes to a hashing goroutine and then to a
// writing goroutine, so the next bytes arrive while earlier ones are
// hashed and others written. Checkpoints (the slot's fsync, then the
// journal that records it) run in the background while the download goes
// on, and what they made durable leaves the page cache: a gigabyte
// written once does not push out what the vehicle's programs use, and the
// same few megabytes of cache are recycled. Memory is the chunks,
// whatever the image size.
type Writer struct {
	e *ECU
	j *Journal
	f *os.File
	h hash.Hash
	// pair hashes a chunk and its companion together (hashing stage).
	pair pairhash.Hasher
	// n counts the bytes accepted by Write and ReadFrom.
	n int64
	// cur is the chunk being filled; toHash and toWrite carry full chunks
	// through the stages, free brings them back; done closes when the
	// writing stage is over.
	cur             *chunk
	toHash, toWrite chan *chunk
	free            chan *chunk
	done            chan struct{}
	stopped         bool
	errMu           sync.Mutex
	err             error // the first failure of a stage, sticky

	// The writing stage's, while it runs.
	written, lastChk int64
	wb               *writeback
	// chk reports the checkpoint in flight (nil when none), which makes
	// the first lastChk bytes durable and records them in the journal.
	chk chan error

	// WriteHook, if set, may fail a write of n bytes at off (flash-error
	// simulation).
	WriteHook func(off, n int64) error
}

// Chunks: chunkSize bytes each, queueDepth of them between the network
// and the slot: 512 KiB in flight in all. A vehicle ECU's budget for the
// agent is 16 MiB; eight 1 MiB chunks took the agent to 22.5 MiB, four
// of 128 KiB to 15.2 MiB while the hash and the slot write still keep up
// with the network (make bench measures both).
const (
	chunkSize  = 128 << 10
	queueDepth = 4
)

// chunk is one buffer of the pipeline: mem is all of it, data the bytes
// it carries for the slot at off; with, if set, the companion the
// hashing stage hashes along (WriteWithCompanion).
type chunk struct {
	mem, data []byte
	off       int64
	with      pairhash.Companion
}

func newWriter(e *ECU, j *Journal, f *os.File, h hash.Hash) *Writer {
	w := &Writer{e: e, j: j, f: f, h: h,
		toHash: make(chan *chunk, queueDepth), toWrite: make(chan *chunk, queueDepth),
		free: make(chan *chunk, queueDepth), done: make(chan struct{})}
	w.n, w.written, w.lastChk = j.Written, j.Written, j.Written
	w.wb = newWriteback(f, j.Written)
	for range queueDepth {
		w.free <- &chunk{mem: make([]byte, chunkSize)}
	}
	go w.hashStage()
	go w.writeStage()
	return w
}

// take returns the chunk being filled, starting one when needed. A chunk
// ends on a chunkSize boundary of the slot (the first after a resume may
// be shorter).
func (w *Writer) take() *chunk {
	if w.cur == nil {
		c := <-w.free
		room := chunkSize - int(w.n%chunkSize)
		c.data, c.off = c.mem[:0:room], w.n
		w.cur = c
	}
	return w.cur
}

// accept counts m more bytes of the current chunk and sends it on when
// it is full, or carries a companion.
func (w *Writer) accept(m int) {
	w.cur.data = w.cur.data[:len(w.cur.data)+m]
	w.n += int64(m)
	if len(w.cur.data) == cap(w.cur.data) || w.cur.with != nil {
		w.toHash <- w.cur
		w.cur = nil
	}
}

// check refuses m more bytes beyond the signed length and runs the
// flash-error hook.
func (w *Writer) check(m int) error {
	if err := w.failed(); err != nil {
		return err
	}
	if w.n+int64(m) > w.j.Length {
		return fmt.Errorf("%w: target %s: server sent more than the signed %d bytes; nothing installed", client.ErrRefused, w.j.Target, w.j.Length)
	}
	if w.WriteHook != nil {
		return w.WriteHook(w.n, int64(m))
	}
	return nil
}

// Write takes bytes for the slot. A failure of the slot's writes shows
// on a later call, or on Pause or Finish.
func (w *Writer) Write(p []byte) (int, error) {
	if err := w.check(len(p)); err != nil {
		return 0, err
	}
	total := len(p)
	for len(p) > 0 {
		c := w.take()
		k := copy(c.data[len(c.data):cap(c.data)], p)
		p = p[k:]
		w.accept(k)
	}
	return total, nil
}

// WriteWith takes n bytes for the slot that fill puts straight into the
// pipeline's buffer (a decrypter opens a chunk there: no copy). Nothing is
// taken when fill fails. ok is false, and nothing done, when the n bytes
// do not fit the buffer at hand: the caller uses Write.
func (w *Writer) WriteWith(n int, fill func(p []byte) error) (ok bool, err error) {
	return w.writeWith(n, fill, nil)
}

// WriteWithCompanion is WriteWith for bytes that come with a companion
// (the sealed bytes they were opened from): the hashing stage hashes the
// companion into its own digest in the same pass as the chunk, which with
// two SHA-256 streams costs little more than one (internal/pairhash), and
// then calls its Done. The chunk goes on at once, whole or not, so the
// companion never waits for bytes to come. The writer takes the
// companion only when it returns ok and no error; otherwise it is the
// caller's, untouched.
func (w *Writer) WriteWithCompanion(n int, fill func(p []byte) error, with pairhash.Companion) (ok bool, err error) {
	return w.writeWith(n, fill, with)
}

func (w *Writer) writeWith(n int, fill func(p []byte) error, with pairhash.Companion) (ok bool, err error) {
	c := w.take()
	if cap(c.data)-len(c.data) < n {
		return false, nil
	}
	if err := w.check(n); err != nil {
		return true, err
	}
	if err := fill(c.data[len(c.data) : len(c.data)+n : len(c.data)+n]); err != nil {
		return true, err
	}
	c.with = with
	w.accept(n)
	return true, nil
}

// ReadFrom reads r straight into the chunks until r ends, with the same
// checks as Write.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		c := w.take()
		m, rerr := r.Read(c.data[len(c.data):cap(c.data)])
		if m > 0 {
			if err := w.check(m); err != nil {
				return total, err
			}
			w.accept(m)
			total += int64(m)
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

func (w *Writer) failed() error {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.err
}

func (w *Writer) fail(err error) {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	if w.err == nil {
		w.err = err
	}
}

func (w *Writer) hashStage() {
	for c := range w.toHash {
		switch {
		case c.with != nil:
			// The companion is hashed even after a failure, so its owner's
			// digest stays whole; its Done gives its bytes back.
			p, h := c.with.Bytes()
			if w.failed() == nil {
				w.pair.Write(w.h, h, c.data, p)
			} else {
				h.Write(p)
			}
			c.with.Done()
			c.with = nil
		case w.failed() == nil:
			w.h.Write(c.data)
		}
		w.toWrite <- c
	}
	close(w.toWrite)
}

// writeStage writes each chunk at its offset and starts a checkpoint
// when one is due; after a failure it only hands chunks back, so the
// network side never blocks on it.
func (w *Writer) writeStage() {
	defer close(w.done)
	defer w.wb.stop()
	for c := range w.toWrite {
		if w.failed() == nil {
			if err := w.put(c); err != nil {
				w.fail(err)
			}
		}
		w.free <- c
	}
}

func (w *Writer) put(c *chunk) error {
	n, err := w.f.WriteAt(c.data, c.off)
	w.written += int64(n)
	if err != nil {
		return fmt.Errorf("write slot %s at %d: %w", w.j.Slot, c.off, err)
	}
	w.wb.wrote(w.written)
	if err := w.collect(false); err != nil {
		return err
	}
	if w.chk == nil && w.written-w.lastChk >= checkpointEvery {
		w.startCheckpoint()
	}
	return nil
}

// stop sends the last, partial chunk through and waits for the stages to
// finish; after it, their fields are the caller's.
func (w *Writer) stop() {
	if w.stopped {
		return
	}
	w.stopped = true
	if w.cur != nil && len(w.cur.data) > 0 {
		w.toHash <- w.cur
	}
	w.cur = nil
	close(w.toHash)
	<-w.done
}

// startCheckpoint fsyncs the slot and then records in the journal what
// was written before the fsync began, in the background.
func (w *Writer) startCheckpoint() {
	j := *w.j
	j.Written = w.written
	from := w.lastChk // the previous checkpoint's bytes are durable: drop them from the cache
	w.lastChk = w.written
	done := make(chan error, 1)
	w.chk = done
	go func() {
		if err := w.f.Sync(); err != nil {
			done <- fmt.Errorf("sync slot %s: %w", j.Slot, err)
			return
		}
		dropCache(w.f, from, j.Written-from)
		done <- w.e.SaveJournal(&j)
	}()
}

// collect takes the result of the checkpoint in flight, waiting for it
// when wait is set.
func (w *Writer) collect(wait bool) error {
	if w.chk == nil {
		return nil
	}
	var err error
	if wait {
		err = <-w.chk
	} else {
		select {
		case err = <-w.chk:
		default:
			return nil
		}
	}
	w.chk = nil
	return err
}

// Pause writes and fsyncs everything taken so far (up to a failed
// write) and records it, so a later attempt resumes from there; the slot
// stays unverified and inactive.
func (w *Writer) Pause() error {
	w.stop()
	err := w.collect(true)
	if err == nil {
		err = w.f.Sync()
	}
	if err == nil {
		w.j.Written = w.written
		err = w.e.SaveJournal(w.j)
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Finish writes what is left, fsyncs the slot and checks its length and
// sha256 against the signed values. On a mismatch the slot is wiped, the
// journal cleared and an ErrRefused error returned: nothing unverified is
// ever switched to.
func (w *Writer) Finish(hooks Hooks) error {
	defer w.f.Close()
	w.stop()
	if err := w.collect(true); err != nil {
		return err
	}
	if err := w.failed(); err != nil {
		return err
	}
	hooks.at("write")
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync slot %s: %w", w.j.Slot, err)
	}
	got := hex.EncodeToString(w.h.Sum(nil))
	switch {
	case w.written != w.j.Length:
		w.e.Abort()
		return fmt.Errorf("%w: target %s: length mismatch (expected %d bytes, got %d); nothing installed", client.ErrRefused, w.j.Target, w.j.Length, w.written)
	case got != w.j.SHA256:
		w.e.Abort()
		return fmt.Errorf("%w: target %s: sha256 mismatch (expected %s…, got %s…); nothing installed", client.ErrRefused, w.j.Target, w.j.SHA256[:12], got[:12])
	}
	w.j.Phase, w.j.Written = PhaseVerified, w.written
	return w.e.SaveJournal(w.j)
}
