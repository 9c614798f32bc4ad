package bootctl

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"hash"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/internal/fwimage"
)

// bigImage is an image of several chunks and a ragged tail, so the
// pipeline's chunk boundaries, checkpoints and last partial chunk all
// happen.
func bigImage(t *testing.T, version string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := fwimage.Write(&b, fwimage.Spec{ECU: "dcm", HardwareID: "HW", Version: version, Size: 3*chunkSize + 12345}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// ragged reads r in pieces of random sizes, like a network connection.
type ragged struct {
	r   io.Reader
	rng *rand.Rand
}

func (r ragged) Read(p []byte) (int, error) {
	return r.r.Read(p[:min(len(p), 1+r.rng.IntN(300_000))])
}

// TestWriterStreams: whatever the pieces the bytes arrive in, through
// Write or ReadFrom, and wherever a pause falls, the slot holds exactly
// the image and Finish verifies it; bytes past the signed length and a
// failing flash are refused, and the slot is never switched to.
func TestWriterStreams(t *testing.T) {
	img := bigImage(t, "3.0.0")
	tests := []struct {
		name string
		feed func(w *Writer, b []byte) error
		// pauseAt, if set, pauses there and resumes with a new Writer.
		pauseAt int
		wantErr error
	}{
		{name: "write in ragged pieces", feed: func(w *Writer, b []byte) error {
			rng := rand.New(rand.NewPCG(1, 2))
			for len(b) > 0 {
				n := min(len(b), 1+rng.IntN(700_000))
				if _, err := w.Write(b[:n]); err != nil {
					return err
				}
				b = b[n:]
			}
			return nil
		}},
		{name: "read from a ragged connection", feed: func(w *Writer, b []byte) error {
			_, err := w.ReadFrom(ragged{bytes.NewReader(b), rand.New(rand.NewPCG(3, 4))})
			return err
		}},
		{name: "paused off a chunk boundary, resumed", pauseAt: chunkSize + 777, feed: func(w *Writer, b []byte) error {
			_, err := w.ReadFrom(bytes.NewReader(b))
			return err
		}},
		{name: "opened into the buffer, with companions", feed: feedWithCompanions},
		{name: "with companions, paused off a chunk boundary", pauseAt: chunkSize + 777, feed: feedWithCompanions},
		{name: "bytes past the signed length", feed: func(w *Writer, b []byte) error {
			_, err := w.ReadFrom(io.MultiReader(bytes.NewReader(b), bytes.NewReader([]byte("extra"))))
			return err
		}, wantErr: client.ErrRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newECU(t)
			j := journalFor(img, "3.0.0")
			w, err := e.Begin(j)
			if err != nil {
				t.Fatal(err)
			}
			rest := img
			if tt.pauseAt > 0 {
				if _, err := w.Write(img[:tt.pauseAt]); err != nil {
					t.Fatal(err)
				}
				if err := w.Pause(); err != nil {
					t.Fatal(err)
				}
				if w, err = e.Begin(j); err != nil {
					t.Fatal(err)
				}
				if w.Offset() != int64(tt.pauseAt) {
					t.Fatalf("resumed at %d, want %d", w.Offset(), tt.pauseAt)
				}
				rest = img[tt.pauseAt:]
			}
			err = tt.feed(w, rest)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("feed: %v, want %v", err, tt.wantErr)
				}
				w.Pause()
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := w.Finish(Hooks{}); err != nil {
				t.Fatal(err)
			}
			if err := e.Switch(Hooks{}); err != nil {
				t.Fatal(err)
			}
			slot, version := active(t, e)
			sum, n, err := e.HashSlot(slot)
			if err != nil || sum != j.SHA256 || n != int64(len(img)) || version != "3.0.0" {
				t.Fatalf("active slot %s runs %s: %d bytes, sha256 %s (%v); want the image", slot, version, n, sum, err)
			}
		})
	}
}

// feedWithCompanions gives b in pieces of a chunk, each opened into the
// writer's buffer with a companion (the piece's bytes reversed, as a
// sealed chunk stands for its plaintext), as a decrypter does. Every
// companion must be hashed, in order, and given back before Finish
// (nothing else comes to push the last one through).
func feedWithCompanions(w *Writer, b []byte) error {
	h, want := sha256.New(), sha256.New()
	done := make(chan struct{}, 64)
	n := 0
	for len(b) > 0 {
		piece := b[:min(len(b), chunkSize)]
		b = b[len(piece):]
		c := &testCompanion{p: slices.Clone(piece), h: h, done: done}
		slices.Reverse(c.p)
		want.Write(c.p)
		fill := func(p []byte) error { copy(p, piece); return nil }
		ok, err := w.WriteWithCompanion(len(piece), fill, c)
		if err != nil {
			return err
		}
		if !ok { // no room: as a decrypter, write it and hash the companion here
			for range n {
				<-done
			}
			n = 0
			h.Write(c.p)
			if _, err := w.Write(piece); err != nil {
				return err
			}
			continue
		}
		n++
	}
	for range n {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			return errors.New("a companion was not given back before Finish")
		}
	}
	if !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
		return errors.New("the companions' digest is not the sha256 of their bytes in order")
	}
	return nil
}

type testCompanion struct {
	p    []byte
	h    hash.Hash
	done chan struct{}
}

func (c *testCompanion) Bytes() ([]byte, hash.Hash) { return c.p, c.h }
func (c *testCompanion) Done()                      { c.done <- struct{}{} }

// TestWriterFlashError: a write the flash refuses ends the install; what
// was written before it is kept for a resume, and nothing is switched.
func TestWriterFlashError(t *testing.T) {
	img := bigImage(t, "3.0.0")
	e := newECU(t)
	j := journalFor(img, "3.0.0")
	w, err := e.Begin(j)
	if err != nil {
		t.Fatal(err)
	}
	flash := errors.New("flash cell failed")
	w.WriteHook = func(off, n int64) error {
		if off+n > 2*chunkSize {
			return flash
		}
		return nil
	}
	if _, err := w.ReadFrom(bytes.NewReader(img)); !errors.Is(err, flash) {
		t.Fatalf("ReadFrom: %v, want the flash error", err)
	}
	if err := w.Pause(); err != nil {
		t.Fatal(err)
	}
	before, _ := active(t, e)
	w, err = e.Begin(j)
	if err != nil {
		t.Fatal(err)
	}
	if w.Offset() == 0 || w.Offset() > 2*chunkSize {
		t.Fatalf("resume at %d, want what was written before the failure", w.Offset())
	}
	w.Pause()
	if after, _ := active(t, e); after != before {
		t.Fatalf("active slot changed from %s to %s", before, after)
	}
}
