package delta

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// dictID is the zstd dictionary ID a patch's frame names.
const dictID = 1

// Applier computes operations' output from a base. Its memory is two
// MaxOp buffers and one zstd decoder, whatever the image size.
type Applier struct {
	base    io.ReaderAt
	baseLen int64
	out     []byte
	win     []byte
	dec     *zstd.Decoder
}

// NewApplier returns an Applier reading the base (baseLen bytes) from base.
func NewApplier(base io.ReaderAt, baseLen int64) (*Applier, error) {
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(2*MaxOp), zstd.WithDecoderMaxMemory(MaxOp), zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		return nil, fmt.Errorf("delta: zstd decoder: %w", err)
	}
	return &Applier{base: base, baseLen: baseLen, win: make([]byte, MaxOp), dec: dec}, nil
}

// Close releases the decoder.
func (a *Applier) Close() { a.dec.Close() }

// Apply returns op's output, valid until the next call, after checking
// it against the operation's sha256 (ErrOpHash otherwise).
func (a *Applier) Apply(op Op) ([]byte, error) {
	if a.out == nil {
		a.out = make([]byte, MaxOp)
	}
	return a.ApplyTo(op, a.out)
}

// ApplyTo is Apply with the output in buf (at least MaxOp bytes), so a
// caller can hand it on while the next operation is applied.
func (a *Applier) ApplyTo(op Op, buf []byte) ([]byte, error) {
	if cap(buf) < op.Len {
		return nil, fmt.Errorf("delta: output buffer of %d bytes for a %d-byte operation", cap(buf), op.Len)
	}
	out := buf[:op.Len]
	switch op.Kind {
	case Copy:
		if err := a.readBase(out, op.BaseOff); err != nil {
			return nil, err
		}
	case Zero:
		clear(out)
	case Literal:
		copy(out, op.Data)
	case Patch:
		win := a.win[:op.Window]
		if err := a.readBase(win, op.BaseOff); err != nil {
			return nil, err
		}
		var err error
		if op.Window == 0 {
			err = a.dec.ResetWithOptions(nil, zstd.WithDecoderDictDelete())
		} else {
			err = a.dec.ResetWithOptions(nil, zstd.WithDecoderDictRaw(dictID, win))
		}
		if err != nil {
			return nil, fmt.Errorf("delta: zstd decoder: %w", err)
		}
		got, err := a.dec.DecodeAll(op.Data, buf[:0:op.Len])
		if err != nil {
			return nil, fmt.Errorf("%w: patch does not decode: %v", ErrCorrupt, err)
		}
		if len(got) != op.Len {
			return nil, fmt.Errorf("%w: patch decodes to %d bytes, not %d", ErrCorrupt, len(got), op.Len)
		}
		out = got
	default:
		return nil, fmt.Errorf("%w: cannot apply %s", ErrCorrupt, op.Kind)
	}
	if sum := sha256.Sum256(out); !bytes.Equal(sum[:], op.SHA256[:]) {
		return nil, fmt.Errorf("%w (%s of %d bytes)", ErrOpHash, op.Kind, op.Len)
	}
	return out, nil
}

func (a *Applier) readBase(p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > a.baseLen {
		return fmt.Errorf("%w: base range %d+%d outside the %d-byte base", ErrCorrupt, off, len(p), a.baseLen)
	}
	if _, err := a.base.ReadAt(p, off); err != nil {
		return fmt.Errorf("delta: read base at %d: %w", off, err)
	}
	return nil
}

// ApplyAll rebuilds the target from a whole delta held in r, writing it
// to w, and checks the result's length and sha256 against the header.
// Tools and tests use it; a vehicle applies operation by operation.
func ApplyAll(r io.Reader, base io.ReaderAt, baseLen int64, w io.Writer) (Header, error) {
	var h Header
	buf := make([]byte, 0, MaxEncodedOp)
	pos := 0 // buf[pos:] is not parsed yet
	fill := func() error {
		buf = buf[:copy(buf, buf[pos:])]
		pos = 0
		if len(buf) == cap(buf) {
			return fmt.Errorf("%w: operation larger than %d bytes", ErrCorrupt, MaxEncodedOp)
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if n > 0 {
			return nil
		}
		if err == io.EOF {
			return fmt.Errorf("%w: delta ends early", ErrCorrupt)
		}
		return err
	}
	for {
		var err error
		if h, err = ParseHeader(buf); err == nil {
			break
		} else if err != ErrShort {
			return h, err
		}
		if err := fill(); err != nil {
			return h, err
		}
	}
	if h.BaseLength != baseLen {
		return h, fmt.Errorf("%w: delta is for a %d-byte base, this one has %d", ErrOpHash, h.BaseLength, baseLen)
	}
	pos = HeaderSize
	a, err := NewApplier(base, baseLen)
	if err != nil {
		return h, err
	}
	defer a.Close()
	sum := sha256.New()
	var n int64
	for {
		op, k, err := ParseOp(buf[pos:])
		if err == ErrShort {
			if err := fill(); err != nil {
				return h, err
			}
			continue
		}
		if err != nil {
			return h, err
		}
		if op.Kind == End {
			pos += k
			break
		}
		out, err := a.Apply(op)
		if err != nil {
			return h, err
		}
		if n+int64(len(out)) > h.TargetLength {
			return h, fmt.Errorf("%w: operations produce more than the %d-byte target", ErrCorrupt, h.TargetLength)
		}
		sum.Write(out)
		if _, err := w.Write(out); err != nil {
			return h, err
		}
		n += int64(len(out))
		pos += k
	}
	if n != h.TargetLength || !bytes.Equal(sum.Sum(nil), h.TargetSHA256[:]) {
		return h, fmt.Errorf("%w: rebuilt image (%d bytes) does not match the target in the header", ErrOpHash, n)
	}
	return h, nil
}
