package bootctl

import (
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"os"
	"sync"

	"github.com/roadsign/roadsign/internal/delta"
)

// DeltaProgress is a delta install's place, kept in the journal at each
// checkpoint: how much of the delta was applied (always whole
// operations) and the running sha256 of the delta and of the rebuilt
// image, so a power loss resumes mid-delta without reading either again.
type DeltaProgress struct {
	Target     string `json:"target"`
	Length     int64  `json:"length"`
	SHA256     string `json:"sha256"`
	BaseSHA256 string `json:"baseSha256"`
	// Consumed is how many delta bytes were applied; Ops how many
	// operations.
	Consumed int64 `json:"consumed"`
	Ops      int   `json:"ops"`
	// DeltaHash and OutHash are the marshaled sha256 states.
	DeltaHash []byte `json:"deltaHash,omitempty"`
	OutHash   []byte `json:"outHash,omitempty"`
}

// ErrDelta marks a delta that cannot rebuild the image: damaged, for
// another base, or a base that is not what it was. The caller falls back
// to the full image; the slot was wiped and the journal cleared.
var ErrDelta = errors.New("delta refused")

// outChunk is one operation's output on its way to the slot.
type outChunk struct {
	mem, data []byte // the whole buffer, and the output in it
	off       int64
}

// deltaBuffers is how many operation outputs may be in flight.
const deltaBuffers = 3

// deltaCheckpoint is how much output a delta install rebuilds between
// checkpoints: an eighth of the image, from 1 to 32 MiB.
func deltaCheckpoint(length int64) int64 { return min(32<<20, max(1<<20, length/8)) }

// DeltaWriter rebuilds the inactive slot from a delta streamed into it
// (Write), reading the active slot as the base. Each operation's output
// is checked against its sha256 before it is written. Two stages overlap:
// the caller's goroutine parses and applies operations (base reads and
// the operations' hashes) while a second one hashes the rebuilt image and
// writes it, through a few operation-sized buffers.
type DeltaWriter struct {
	e       *ECU
	j       *Journal
	slot    *os.File
	base    *os.File
	app     *delta.Applier
	dh, oh  hash.Hash
	buf     []byte
	pos     int
	header  bool
	ended   bool
	lastChk int64
	err     error
	// next is where the next operation's output goes (j.Written once the
	// writing stage has drained).
	next     int64
	free     chan []byte
	toWrite  chan outChunk
	inFlight sync.WaitGroup
	done     chan struct{}
	closed   bool
	// chk reports the checkpoint in flight (nil when none).
	chk chan error
	// wb is the writing stage's.
	wb     *writeback
	werrMu sync.Mutex
	werr   error

	// WriteHook, if set, may fail (or end) a write of n bytes at off.
	WriteHook func(off, n int64) error
}

// BeginDelta starts rebuilding j's image from the delta d, or resumes
// the one the journal records for the same image and delta. The active
// slot must hold the delta's base, as the boot record says (its sha256
// recorded when it was verified); whether its bytes still are is checked
// operation by operation.
func (e *ECU) BeginDelta(j Journal, d DeltaProgress) (*DeltaWriter, error) {
	rec, old, err := e.beginInstall(&j)
	if err != nil {
		return nil, err
	}
	active := rec.Slots[rec.Active]
	if active == nil || active.SHA256 != d.BaseSHA256 {
		have := "nothing recorded"
		if active != nil {
			have = active.SHA256[:min(12, len(active.SHA256))] + "…"
		}
		return nil, fmt.Errorf("%w: it applies to the image %.12s…, slot %s holds %s", ErrDelta, d.BaseSHA256, rec.Active, have)
	}
	resume := sameDownload(old, &j) && old.Delta != nil && old.Delta.SHA256 == d.SHA256 && old.Delta.Consumed > 0
	dh, oh := sha256.New(), sha256.New()
	if resume {
		if dh.(encoding.BinaryUnmarshaler).UnmarshalBinary(old.Delta.DeltaHash) != nil || oh.(encoding.BinaryUnmarshaler).UnmarshalBinary(old.Delta.OutHash) != nil {
			resume = false
			dh, oh = sha256.New(), sha256.New()
		}
	}
	if resume {
		j.Written, j.StartedAt, d = old.Written, old.StartedAt, *old.Delta
	} else {
		d.Consumed, d.Ops, d.DeltaHash, d.OutHash = 0, 0, nil, nil
	}
	j.Delta = &d
	slot, err := e.openInactive(rec, &j, resume)
	if err != nil {
		return nil, err
	}
	base, err := os.Open(e.SlotPath(rec.Active))
	if err != nil {
		slot.Close()
		return nil, fmt.Errorf("open base slot %s: %w", rec.Active, err)
	}
	app, err := delta.NewApplier(base, active.Length)
	if err != nil {
		slot.Close()
		base.Close()
		return nil, err
	}
	w := &DeltaWriter{e: e, j: &j, slot: slot, base: base, app: app, dh: dh, oh: oh,
		buf: make([]byte, 0, delta.MaxEncodedOp), header: resume, lastChk: j.Written, next: j.Written,
		free: make(chan []byte, deltaBuffers), toWrite: make(chan outChunk, deltaBuffers), done: make(chan struct{})}
	for range deltaBuffers {
		w.free <- make([]byte, delta.MaxOp)
	}
	w.wb = newWriteback(slot, w.next)
	go w.writeStage()
	return w, nil
}

// writeStage hashes each rebuilt operation's output into the image's
// sha256 and writes it to the slot; after a failure it only hands the
// buffers back.
func (w *DeltaWriter) writeStage() {
	defer close(w.done)
	defer w.wb.stop()
	for c := range w.toWrite {
		if w.writeErr() == nil {
			w.oh.Write(c.data)
			if _, err := w.slot.WriteAt(c.data, c.off); err != nil {
				w.werrMu.Lock()
				w.werr = fmt.Errorf("write slot %s at %d: %w", w.j.Slot, c.off, err)
				w.werrMu.Unlock()
			} else {
				// The storage writes while the next operations are
				// applied.
				w.wb.wrote(c.off + int64(len(c.data)))
			}
		}
		w.free <- c.mem
		w.inFlight.Done()
	}
}

func (w *DeltaWriter) writeErr() error {
	w.werrMu.Lock()
	defer w.werrMu.Unlock()
	return w.werr
}

// drain waits until every operation handed to the writing stage is
// written; then j.Written and the image's hash cover all of them.
func (w *DeltaWriter) drain() error {
	w.inFlight.Wait()
	if err := w.writeErr(); err != nil {
		return err
	}
	w.j.Written = w.next
	return nil
}

// Offset is where the delta download continues.
func (w *DeltaWriter) Offset() int64 { return w.j.Delta.Consumed + int64(len(w.buf)-w.pos) }

// Journal returns the install's journal.
func (w *DeltaWriter) Journal() Journal { return *w.j }

// Write takes delta bytes and applies every whole operation they
// complete. A refusal wraps ErrDelta.
func (w *DeltaWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.Offset()+int64(len(p)) > w.j.Delta.Length {
		w.err = fmt.Errorf("%w: the server sent more than the signed %d bytes of delta %s", ErrDelta, w.j.Delta.Length, w.j.Delta.Target)
		return 0, w.err
	}
	total := len(p)
	for len(p) > 0 {
		if w.pos > 0 && len(w.buf) == cap(w.buf) || w.pos > cap(w.buf)/2 {
			w.buf = w.buf[:copy(w.buf, w.buf[w.pos:])]
			w.pos = 0
		}
		k := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.buf = w.buf[:len(w.buf)+k]
		p = p[k:]
		if err := w.apply(); err != nil {
			w.err = err
			return 0, err
		}
		if k == 0 && len(p) > 0 {
			w.err = fmt.Errorf("%w: an operation larger than %d bytes", ErrDelta, delta.MaxEncodedOp)
			return 0, w.err
		}
	}
	return total, nil
}

// apply applies every whole operation in the buffer.
func (w *DeltaWriter) apply() error {
	d := w.j.Delta
	for !w.ended {
		b := w.buf[w.pos:]
		if !w.header {
			h, err := delta.ParseHeader(b)
			if err == delta.ErrShort {
				return nil
			}
			if err != nil {
				return fmt.Errorf("%w: %v", ErrDelta, err)
			}
			if hex.EncodeToString(h.BaseSHA256[:]) != d.BaseSHA256 || hex.EncodeToString(h.TargetSHA256[:]) != w.j.SHA256 || h.TargetLength != w.j.Length {
				return fmt.Errorf("%w: its header names another base or image than its signed metadata", ErrDelta)
			}
			w.consume(delta.HeaderSize)
			w.header = true
			continue
		}
		op, n, err := delta.ParseOp(b)
		if err == delta.ErrShort {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: operation %d: %v", ErrDelta, d.Ops, err)
		}
		if op.Kind == delta.End {
			w.consume(n)
			w.ended = true
			return nil
		}
		if err := w.writeErr(); err != nil {
			return err
		}
		if w.next+int64(op.Len) > w.j.Length {
			return fmt.Errorf("%w: operations rebuild more than the signed %d bytes", ErrDelta, w.j.Length)
		}
		buf := <-w.free
		out, err := w.app.ApplyTo(op, buf)
		if err != nil {
			w.free <- buf
			return fmt.Errorf("%w: operation %d: %v", ErrDelta, d.Ops, err)
		}
		if w.WriteHook != nil {
			if err := w.WriteHook(w.next, int64(len(out))); err != nil {
				w.free <- buf
				return err
			}
		}
		w.inFlight.Add(1)
		w.toWrite <- outChunk{mem: buf, data: out, off: w.next}
		w.next += int64(len(out))
		w.consume(n)
		d.Ops++
		if w.next-w.lastChk >= deltaCheckpoint(w.j.Length) {
			if err := w.checkpoint(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (w *DeltaWriter) consume(n int) {
	w.dh.Write(w.buf[w.pos : w.pos+n])
	w.pos += n
	w.j.Delta.Consumed += int64(n)
}

// checkpoint makes what was rebuilt durable and records where the delta
// stands, with both hashes' states. The fsync and the journal write run
// in the background while the next operations are applied (the next
// checkpoint waits for them); the journal records only what was written
// before its fsync began.
func (w *DeltaWriter) checkpoint() error {
	if err := w.collect(); err != nil {
		return err
	}
	if err := w.drain(); err != nil {
		return err
	}
	j := *w.j
	d := *w.j.Delta
	var err error
	if d.DeltaHash, err = w.dh.(encoding.BinaryMarshaler).MarshalBinary(); err != nil {
		return err
	}
	if d.OutHash, err = w.oh.(encoding.BinaryMarshaler).MarshalBinary(); err != nil {
		return err
	}
	j.Delta = &d
	from := w.lastChk
	w.lastChk = j.Written
	done := make(chan error, 1)
	w.chk = done
	go func() {
		if err := w.slot.Sync(); err != nil {
			done <- fmt.Errorf("sync slot %s: %w", j.Slot, err)
			return
		}
		dropCache(w.slot, from, j.Written-from)
		done <- w.e.SaveJournal(&j)
	}()
	return nil
}

// collect waits for the checkpoint in flight, if any.
func (w *DeltaWriter) collect() error {
	if w.chk == nil {
		return nil
	}
	err := <-w.chk
	w.chk = nil
	return err
}

func (w *DeltaWriter) close() {
	w.collect()
	if !w.closed {
		w.closed = true
		close(w.toWrite)
		<-w.done
	}
	w.slot.Close()
	w.base.Close()
	w.app.Close()
}

// Pause records the whole operations applied so far, so a later attempt
// resumes the delta there.
func (w *DeltaWriter) Pause() error {
	defer w.close()
	if w.err != nil {
		return w.err
	}
	if err := w.checkpoint(); err != nil {
		return err
	}
	return w.collect()
}

// Discard wipes what the delta rebuilt and clears the journal: the
// caller installs the full image instead.
func (w *DeltaWriter) Discard() error {
	w.close()
	return w.e.Abort()
}

// Finish checks the whole delta against its signed length and sha256 and
// the rebuilt image against the full image's, and records the slot as
// verified. A mismatch wraps ErrDelta; the slot is then left for Discard.
func (w *DeltaWriter) Finish(hooks Hooks) error {
	defer w.close()
	if w.err != nil {
		return w.err
	}
	hooks.at("write")
	if err := w.collect(); err != nil {
		return err
	}
	if err := w.drain(); err != nil {
		return err
	}
	d := w.j.Delta
	switch {
	case !w.ended || w.pos != len(w.buf) || d.Consumed != d.Length:
		return fmt.Errorf("%w: delta %s ends after %d of its signed %d bytes", ErrDelta, d.Target, w.Offset(), d.Length)
	case hex.EncodeToString(w.dh.Sum(nil)) != d.SHA256:
		return fmt.Errorf("%w: delta %s does not match its signed sha256", ErrDelta, d.Target)
	case w.j.Written != w.j.Length || hex.EncodeToString(w.oh.Sum(nil)) != w.j.SHA256:
		return fmt.Errorf("%w: the rebuilt image (%d bytes) does not match the signed %s (%d bytes)", ErrDelta, w.j.Written, w.j.Target, w.j.Length)
	}
	if err := w.slot.Sync(); err != nil {
		return fmt.Errorf("sync slot %s: %w", w.j.Slot, err)
	}
	w.j.Phase, w.j.Delta = PhaseVerified, nil
	return w.e.SaveJournal(w.j)
}
