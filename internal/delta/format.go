// Package delta is Roadsign's binary delta format: a stream of operations
// that rebuilds a target image from a base image, each operation small
// enough to hold in memory and carrying the sha256 of its own output, so a
// vehicle can apply it while it streams, checkpoint after any operation and
// notice a wrong base or a damaged delta at the first operation it touches.
//
// The format is documented in docs/deltas.md. A delta never replaces the
// signed full image: whoever applies it still checks the rebuilt image's
// length and sha256 against the full image's signed values.
package delta

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Magic opens every delta (format version 1).
const Magic = "RSDELTA1"

// Format is the name of this format in metadata ("format" custom field).
const Format = "rsdelta1"

// MaxOp is the most output one operation may produce, and the largest
// base window a patch may name.
const MaxOp = 1 << 20

// BlockSize is the granularity of block matching.
const BlockSize = 4096

// HeaderSize is the encoded size of a Header.
const HeaderSize = len(Magic) + 8 + sha256.Size + 8 + sha256.Size

// Kind is an operation's type.
type Kind byte

// Operations. End closes the stream.
const (
	End     Kind = 0
	Copy    Kind = 1 // Len bytes of the base from BaseOff
	Zero    Kind = 2 // Len zero bytes
	Literal Kind = 3 // Data is the output
	Patch   Kind = 4 // Data is a zstd frame whose dictionary is base[BaseOff:BaseOff+Window]
)

func (k Kind) String() string {
	switch k {
	case End:
		return "end"
	case Copy:
		return "copy"
	case Zero:
		return "zero"
	case Literal:
		return "literal"
	case Patch:
		return "patch"
	}
	return fmt.Sprintf("kind(%d)", byte(k))
}

// Header names the base a delta applies to and the image it rebuilds.
type Header struct {
	BaseLength   int64
	BaseSHA256   [sha256.Size]byte
	TargetLength int64
	TargetSHA256 [sha256.Size]byte
}

// Op is one operation.
type Op struct {
	Kind    Kind
	Len     int   // output bytes
	BaseOff int64 // Copy, Patch
	Window  int   // Patch: dictionary length
	Data    []byte
	// SHA256 is the sha256 of the operation's output.
	SHA256 [sha256.Size]byte
}

// Errors a reader of deltas tells apart.
var (
	// ErrShort means more bytes are needed to parse the next item.
	ErrShort = errors.New("delta: need more bytes")
	// ErrCorrupt means the delta is not well formed.
	ErrCorrupt = errors.New("delta: corrupt")
	// ErrOpHash means an operation's output does not match its sha256:
	// a damaged delta or a base that is not the one it was made from.
	ErrOpHash = errors.New("delta: operation output does not match its sha256")
)

// AppendHeader encodes h.
func AppendHeader(b []byte, h Header) []byte {
	b = append(b, Magic...)
	b = binary.BigEndian.AppendUint64(b, uint64(h.BaseLength))
	b = append(b, h.BaseSHA256[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(h.TargetLength))
	return append(b, h.TargetSHA256[:]...)
}

// ParseHeader decodes a header from the start of b.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, ErrShort
	}
	if string(b[:len(Magic)]) != Magic {
		return h, fmt.Errorf("%w: not a Roadsign delta (magic %q)", ErrCorrupt, b[:len(Magic)])
	}
	b = b[len(Magic):]
	h.BaseLength = int64(binary.BigEndian.Uint64(b))
	copy(h.BaseSHA256[:], b[8:])
	b = b[8+sha256.Size:]
	h.TargetLength = int64(binary.BigEndian.Uint64(b))
	copy(h.TargetSHA256[:], b[8:])
	if h.BaseLength < 0 || h.TargetLength < 0 {
		return h, fmt.Errorf("%w: negative length in header", ErrCorrupt)
	}
	return h, nil
}

// AppendOp encodes op.
func AppendOp(b []byte, op Op) []byte {
	b = append(b, byte(op.Kind))
	if op.Kind == End {
		return b
	}
	b = binary.BigEndian.AppendUint32(b, uint32(op.Len))
	switch op.Kind {
	case Copy:
		b = binary.BigEndian.AppendUint64(b, uint64(op.BaseOff))
	case Literal:
		b = append(b, op.Data...)
	case Patch:
		b = binary.BigEndian.AppendUint64(b, uint64(op.BaseOff))
		b = binary.BigEndian.AppendUint32(b, uint32(op.Window))
		b = binary.BigEndian.AppendUint32(b, uint32(len(op.Data)))
		b = append(b, op.Data...)
	}
	return append(b, op.SHA256[:]...)
}

// MaxEncodedOp bounds one encoded operation: a reader never needs to hold
// more than this many bytes to parse the next operation.
const MaxEncodedOp = 1 + 4 + 8 + 4 + 4 + 2*MaxOp + sha256.Size

// ParseOp decodes the operation at the start of b and returns how many
// bytes it took. Data aliases b. It returns ErrShort when b holds only
// part of the operation.
func ParseOp(b []byte) (Op, int, error) {
	var op Op
	if len(b) < 1 {
		return op, 0, ErrShort
	}
	op.Kind = Kind(b[0])
	if op.Kind == End {
		return op, 1, nil
	}
	if len(b) < 5 {
		return op, 0, ErrShort
	}
	op.Len = int(binary.BigEndian.Uint32(b[1:]))
	if op.Len == 0 || op.Len > MaxOp {
		return op, 0, fmt.Errorf("%w: %s operation of %d bytes (at most %d)", ErrCorrupt, op.Kind, op.Len, MaxOp)
	}
	n := 5
	need := func(k int) bool { return len(b) >= n+k }
	switch op.Kind {
	case Copy:
		if !need(8) {
			return op, 0, ErrShort
		}
		op.BaseOff = int64(binary.BigEndian.Uint64(b[n:]))
		n += 8
	case Zero:
	case Literal:
		if !need(op.Len) {
			return op, 0, ErrShort
		}
		op.Data = b[n : n+op.Len]
		n += op.Len
	case Patch:
		if !need(16) {
			return op, 0, ErrShort
		}
		op.BaseOff = int64(binary.BigEndian.Uint64(b[n:]))
		op.Window = int(binary.BigEndian.Uint32(b[n+8:]))
		dl := int(binary.BigEndian.Uint32(b[n+12:]))
		n += 16
		if op.Window > MaxOp || dl > 2*MaxOp {
			return op, 0, fmt.Errorf("%w: patch with a %d-byte window and %d bytes of data (limits %d and %d)", ErrCorrupt, op.Window, dl, MaxOp, 2*MaxOp)
		}
		if !need(dl) {
			return op, 0, ErrShort
		}
		op.Data = b[n : n+dl]
		n += dl
	default:
		return op, 0, fmt.Errorf("%w: unknown operation %d", ErrCorrupt, byte(op.Kind))
	}
	if op.BaseOff < 0 {
		return op, 0, fmt.Errorf("%w: negative base offset", ErrCorrupt)
	}
	if !need(sha256.Size) {
		return op, 0, ErrShort
	}
	copy(op.SHA256[:], b[n:])
	return op, n + sha256.Size, nil
}
