package sealed

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"
	"io"
)

// ErrNotAligned: a download can only resume on a chunk boundary.
var ErrNotAligned = errors.New("sealed: resume offset is not on a chunk boundary")

// Decrypter opens a sealed file as its bytes arrive (an io.Writer for the
// download): it hands each chunk's plaintext to dst only once the chunk
// authenticated, so no unauthenticated byte ever reaches dst. The sealed
// file's header, length and sha256 come from signed metadata: the header
// must match, nothing past the length is taken, and Finish checks that the
// file ended there, with its last chunk, at that sha256.
type Decrypter struct {
	o           *Opener
	header      []byte
	dst         io.Writer
	length      int64 // sealed length
	plainLength int64
	want        []byte
	h           hash.Hash
	// pos is the sealed offset of the next byte; buf the chunk (or header)
	// being collected; index the chunk it is.
	pos   int64
	buf   []byte
	index uint32
	plain []byte
}

// NewDecrypter checks the signed description of a sealed file (its
// header, sealed length and sha256, and the plaintext's length) and
// returns a decrypter that writes the plaintext to dst.
func NewDecrypter(key, header []byte, sealedLength int64, sealedSHA256 []byte, plainLength int64, dst io.Writer) (*Decrypter, error) {
	o, err := NewOpener(key, header)
	if err != nil {
		return nil, err
	}
	if len(header) != HeaderSize || len(sealedSHA256) != sha256.Size || plainLength < 0 {
		return nil, fmt.Errorf("%w: header of %d bytes, sha256 of %d", ErrAuth, len(header), len(sealedSHA256))
	}
	if want := SealedSize(plainLength, o.h.Chunk); want != sealedLength {
		return nil, fmt.Errorf("%w: %d plaintext bytes seal to %d bytes in chunks of %d, not %d", ErrAuth, plainLength, want, o.h.Chunk, sealedLength)
	}
	return &Decrypter{o: o, header: bytes.Clone(header), dst: dst, length: sealedLength, plainLength: plainLength,
		want: bytes.Clone(sealedSHA256), h: sha256.New(), buf: make([]byte, 0, o.h.Chunk+Overhead),
		plain: make([]byte, 0, o.h.Chunk)}, nil
}

// Chunk is the plaintext chunk size.
func (d *Decrypter) Chunk() int { return d.o.h.Chunk }

// chunks is how many chunks the file has.
func (d *Decrypter) chunks() int64 {
	c := int64(d.o.h.Chunk)
	n := d.plainLength / c
	if d.plainLength%c != 0 || d.plainLength == 0 {
		n++
	}
	return n
}

// chunkLen is the sealed size of chunk i.
func (d *Decrypter) chunkLen(i int64) int {
	if i < d.chunks()-1 {
		return d.o.h.Chunk + Overhead
	}
	return int(d.plainLength-i*int64(d.o.h.Chunk)) + Overhead
}

// Resume continues after plainOffset plaintext bytes that an earlier
// attempt wrote (prefix reads them back): it seals them again, which
// with the same key and header gives the same bytes, to carry the sealed
// file's sha256 on, and returns the sealed offset the download continues
// from. plainOffset must be a multiple of the chunk size.
func (d *Decrypter) Resume(prefix io.Reader, plainOffset int64) (int64, error) {
	if d.pos != 0 {
		return 0, errors.New("sealed: Resume after Write")
	}
	if plainOffset == 0 {
		return 0, nil
	}
	c := int64(d.o.h.Chunk)
	if plainOffset%c != 0 || plainOffset > d.plainLength {
		return 0, fmt.Errorf("%w: %d (chunks of %d)", ErrNotAligned, plainOffset, c)
	}
	d.h.Write(d.header)
	buf := make([]byte, d.o.h.Chunk, d.o.h.Chunk+Overhead)
	for i := int64(0); i < plainOffset/c; i++ {
		if _, err := io.ReadFull(prefix, buf[:c]); err != nil {
			return 0, fmt.Errorf("sealed: read back chunk %d: %w", i, err)
		}
		last := i == d.chunks()-1
		d.h.Write(d.o.aead.Seal(buf[:0], nonce(d.o.h.Prefix, uint32(i), last), buf[:c], d.o.ad))
	}
	d.index = uint32(plainOffset / c)
	d.pos = int64(HeaderSize) + plainOffset + int64(d.index)*Overhead
	return d.pos, nil
}

// Write takes sealed bytes in order, from the offset Resume returned
// (0 for a fresh download).
func (d *Decrypter) Write(p []byte) (int, error) {
	if d.pos+int64(len(p)) > d.length {
		return 0, fmt.Errorf("%w: more than the signed %d sealed bytes", ErrAuth, d.length)
	}
	total := len(p)
	for len(p) > 0 {
		if d.pos < int64(HeaderSize) {
			k := min(len(p), HeaderSize-len(d.buf))
			d.buf = append(d.buf, p[:k]...)
			p, d.pos = p[k:], d.pos+int64(k)
			if len(d.buf) == HeaderSize {
				if subtle.ConstantTimeCompare(d.buf, d.header) != 1 {
					return 0, fmt.Errorf("%w: the file's header is not the signed one", ErrAuth)
				}
				d.h.Write(d.buf)
				d.buf = d.buf[:0]
			}
			continue
		}
		need := d.chunkLen(int64(d.index))
		k := min(len(p), need-len(d.buf))
		d.buf = append(d.buf, p[:k]...)
		p, d.pos = p[k:], d.pos+int64(k)
		if len(d.buf) < need {
			continue
		}
		d.h.Write(d.buf)
		last := int64(d.index) == d.chunks()-1
		plain, err := d.o.Open(d.plain[:0], d.buf, d.index, last)
		if err != nil {
			return 0, err
		}
		if _, err := d.dst.Write(plain); err != nil {
			return 0, err
		}
		d.buf = d.buf[:0]
		d.index++
	}
	return total, nil
}

// Finish checks that the whole sealed file arrived, with the signed
// sha256.
func (d *Decrypter) Finish() error {
	if d.pos != d.length || int64(d.index) != d.chunks() {
		return fmt.Errorf("%w: the file ends after %d of its %d sealed bytes", ErrAuth, d.pos, d.length)
	}
	if got := d.h.Sum(nil); subtle.ConstantTimeCompare(got, d.want) != 1 {
		return fmt.Errorf("%w: sealed sha256 %x… is not the signed %x…", ErrAuth, got[:6], d.want[:6])
	}
	return nil
}
