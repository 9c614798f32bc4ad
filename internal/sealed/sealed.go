// Package sealed encrypts a stream in fixed-size chunks with AES-256-GCM
// in the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár): each
// chunk's nonce is a random per-file prefix, the chunk's index and a flag
// set only on the last chunk, and the file's header is every chunk's
// associated data. A reader therefore authenticates each chunk before it
// hands out its plaintext, and refuses a flipped bit, a chunk moved or
// swapped, a header changed, and a file cut at any point, including at a
// chunk boundary.
package sealed

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Magic opens every sealed file (format version 1).
const Magic = "RSSEAL01"

// HeaderSize is the size of a sealed file's header: magic, chunk size
// and the nonce prefix.
const HeaderSize = len(Magic) + 4 + prefixSize

const (
	prefixSize = 7
	// Overhead is the GCM tag each chunk carries.
	Overhead = 16
	// MaxChunk bounds the chunk size a reader accepts.
	MaxChunk = 4 << 20
	// DefaultChunk is the chunk size the server seals with: the slot
	// writer's buffer size (client/bootctl), so a chunk opens straight
	// into it, and few enough chunks that their handling costs little.
	DefaultChunk = 128 << 10
)

// ErrAuth means a chunk, or the file's structure, did not authenticate:
// the file is damaged, cut, reordered or sealed with another key.
var ErrAuth = errors.New("sealed: does not authenticate")

// KeySize is the file key's size (AES-256).
const KeySize = 32

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("sealed: key of %d bytes, want %d", len(key), KeySize)
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// Header is a sealed file's header.
type Header struct {
	Chunk  int
	Prefix [prefixSize]byte
}

func (h Header) bytes() []byte {
	b := append([]byte(Magic), 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[len(Magic):], uint32(h.Chunk))
	return append(b, h.Prefix[:]...)
}

// ParseHeader reads a header from the start of b.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize || string(b[:len(Magic)]) != Magic {
		return h, fmt.Errorf("%w: not a sealed file", ErrAuth)
	}
	h.Chunk = int(binary.BigEndian.Uint32(b[len(Magic):]))
	if h.Chunk < 1 || h.Chunk > MaxChunk {
		return h, fmt.Errorf("%w: chunk size %d", ErrAuth, h.Chunk)
	}
	copy(h.Prefix[:], b[len(Magic)+4:])
	return h, nil
}

// SealedSize is the size of the sealed form of n plaintext bytes.
func SealedSize(n int64, chunk int) int64 {
	chunks := n/int64(chunk) + 1 // the last chunk may be empty
	if n > 0 && n%int64(chunk) == 0 {
		chunks--
	}
	return int64(HeaderSize) + n + chunks*Overhead
}

func nonce(prefix [prefixSize]byte, index uint32, last bool) []byte {
	return putNonce(make([]byte, 12), prefix, index, last)
}

// putNonce writes chunk index's nonce into n (12 bytes) and returns it.
func putNonce(n []byte, prefix [prefixSize]byte, index uint32, last bool) []byte {
	copy(n, prefix[:])
	binary.BigEndian.PutUint32(n[prefixSize:], index)
	if last {
		n[11] = 1
	}
	return n
}

// Seal writes src, sealed with key in chunks of chunk bytes, to dst.
func Seal(dst io.Writer, src io.Reader, key []byte, chunk int) (int64, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return 0, err
	}
	if chunk < 1 || chunk > MaxChunk {
		return 0, fmt.Errorf("sealed: chunk size %d: want 1 to %d", chunk, MaxChunk)
	}
	h := Header{Chunk: chunk}
	if _, err := rand.Read(h.Prefix[:]); err != nil {
		return 0, err
	}
	ad := h.bytes()
	n, err := dst.Write(ad)
	total := int64(n)
	if err != nil {
		return total, err
	}
	br := bufio.NewReaderSize(src, chunk+1)
	buf := make([]byte, chunk, chunk+Overhead)
	for index := uint32(0); ; index++ {
		k, err := io.ReadFull(br, buf)
		if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
			return total, err
		}
		_, perr := br.Peek(1)
		last := k < chunk || perr == io.EOF
		if perr != nil && perr != io.EOF {
			return total, perr
		}
		out := aead.Seal(buf[:0], nonce(h.Prefix, index, last), buf[:k], ad)
		n, werr := dst.Write(out)
		total += int64(n)
		if werr != nil {
			return total, werr
		}
		if last {
			return total, nil
		}
		if index == ^uint32(0) {
			return total, errors.New("sealed: too many chunks")
		}
		buf = buf[:chunk]
	}
}

// Opener authenticates and decrypts the chunks of one sealed file, in
// any order: a reader that resumes at chunk i opens from there. It is not
// safe for concurrent use (its nonce buffer spares an allocation per
// chunk, which under the agent's small memory limit would each cost a
// garbage collection).
type Opener struct {
	aead  cipher.AEAD
	h     Header
	ad    []byte
	nonce [12]byte
}

// NewOpener reads the file's header from hdr (HeaderSize bytes).
func NewOpener(key, hdr []byte) (*Opener, error) {
	h, err := ParseHeader(hdr)
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	return &Opener{aead: aead, h: h, ad: h.bytes()}, nil
}

// Chunk is the plaintext chunk size; a sealed chunk is Chunk+Overhead
// bytes, the last one possibly fewer.
func (o *Opener) Chunk() int { return o.h.Chunk }

// Open authenticates sealed chunk index (last says whether the file ends
// with it) and appends its plaintext to dst. Nothing is appended when it
// does not authenticate.
func (o *Opener) Open(dst, chunk []byte, index uint32, last bool) ([]byte, error) {
	if len(chunk) < Overhead || len(chunk) > o.h.Chunk+Overhead || (!last && len(chunk) != o.h.Chunk+Overhead) {
		return dst, fmt.Errorf("%w: chunk %d has %d bytes", ErrAuth, index, len(chunk))
	}
	out, err := o.aead.Open(dst, putNonce(o.nonce[:], o.h.Prefix, index, last), chunk, o.ad)
	if err != nil {
		return dst, fmt.Errorf("%w: chunk %d", ErrAuth, index)
	}
	return out, nil
}

// Reader returns the plaintext of a sealed stream, each chunk only once
// it authenticated; a stream that ends without its last chunk is an
// error, never a clean EOF.
type Reader struct {
	o     *Opener
	r     *bufio.Reader
	index uint32
	buf   []byte
	plain []byte
	done  bool
	err   error
}

// NewReader reads the header from r and returns the plaintext reader.
func NewReader(r io.Reader, key []byte) (*Reader, error) {
	hdr := make([]byte, HeaderSize)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrAuth, err)
	}
	o, err := NewOpener(key, hdr)
	if err != nil {
		return nil, err
	}
	return &Reader{o: o, r: bufio.NewReaderSize(r, o.h.Chunk+Overhead+1), buf: make([]byte, o.h.Chunk+Overhead)}, nil
}

func (r *Reader) Read(p []byte) (int, error) {
	for len(r.plain) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.done {
			return 0, io.EOF
		}
		r.next()
	}
	n := copy(p, r.plain)
	r.plain = r.plain[n:]
	return n, nil
}

// next reads, authenticates and decrypts the next chunk.
func (r *Reader) next() {
	k, err := io.ReadFull(r.r, r.buf)
	switch {
	case err == io.EOF:
		r.err = fmt.Errorf("%w: the file ends before its last chunk", ErrAuth)
		return
	case err != nil && err != io.ErrUnexpectedEOF:
		r.err = err
		return
	}
	_, perr := r.r.Peek(1)
	if perr != nil && perr != io.EOF {
		r.err = perr
		return
	}
	last := k < len(r.buf) || perr == io.EOF
	plain, err := r.o.Open(r.buf[:0], r.buf[:k], r.index, last)
	if err != nil {
		r.err = err
		return
	}
	r.plain, r.done = plain, last
	r.index++
}
