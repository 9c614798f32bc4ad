// Package pairhash hashes two SHA-256 streams at once. An agent that
// installs a sealed image hashes the sealed bytes (against the director's
// signed hash) and the plaintext (against the image repository's): two
// streams over the same chunks. On amd64 with the SHA extensions, one
// stream runs at the latency of SHA256RNDS2, and two interleaved cost
// little more than one (go test -bench . ./internal/pairhash); elsewhere
// Write hashes one stream after the other.
//
// The hashes are crypto/sha256's own: Write carries their state through
// the digests' binary form (encoding.BinaryAppender, UnmarshalBinary),
// so a digest stays usable as any other, and nothing is allocated.
package pairhash

import (
	"encoding"
	"encoding/binary"
	"hash"
)

// Hasher hashes pairs of streams. Its zero value is ready; it is not
// safe for concurrent use (it holds the two states' scratch space).
type Hasher struct {
	s1, s2 [stateSize]byte
}

// The binary form of a crypto/sha256 digest: "sha\x03", h0..h7, the
// block buffer, the length (big endian).
const (
	magic     = "sha\x03"
	blockSize = 64
	stateSize = len(magic) + 8*4 + blockSize + 8
)

// Write hashes p1 into h1 and p2 into h2, as h1.Write(p1) and
// h2.Write(p2) would. h1 and h2 must be different digests; the two-lane
// path takes crypto/sha256 SHA-256 digests, anything else is written
// one after the other.
func (x *Hasher) Write(h1, h2 hash.Hash, p1, p2 []byte) {
	if !available {
		h1.Write(p1)
		h2.Write(p2)
		return
	}
	// Each digest's buffered bytes are made a whole block first, so the
	// rest starts at block boundaries.
	p1 = x.topUp(h1, p1)
	p2 = x.topUp(h2, p2)
	n := min(len(p1), len(p2)) / blockSize * blockSize
	if n > 0 && x.pair(h1, h2, p1[:n], p2[:n]) {
		p1, p2 = p1[n:], p2[n:]
	}
	h1.Write(p1)
	h2.Write(p2)
}

// topUp writes to h the first bytes of p that complete the block h has
// buffered, and returns the rest.
func (x *Hasher) topUp(h hash.Hash, p []byte) []byte {
	b, ok := state(h, x.s1[:0])
	if !ok {
		return p
	}
	if nx := int(length(b) % blockSize); nx != 0 {
		k := min(len(p), blockSize-nx)
		h.Write(p[:k])
		p = p[k:]
	}
	return p
}

// pair hashes the whole blocks p1 and p2 (of one length) into h1 and h2
// with both lanes, if both are SHA-256 digests at a block boundary; it
// reports whether it did.
func (x *Hasher) pair(h1, h2 hash.Hash, p1, p2 []byte) bool {
	b1, ok1 := state(h1, x.s1[:0])
	b2, ok2 := state(h2, x.s2[:0])
	if !ok1 || !ok2 || length(b1)%blockSize != 0 || length(b2)%blockSize != 0 {
		return false
	}
	var v1, v2 [8]uint32
	for i := range 8 {
		v1[i] = binary.BigEndian.Uint32(b1[len(magic)+4*i:])
		v2[i] = binary.BigEndian.Uint32(b2[len(magic)+4*i:])
	}
	block2(&v1, &v2, p1, p2)
	for i := range 8 {
		binary.BigEndian.PutUint32(b1[len(magic)+4*i:], v1[i])
		binary.BigEndian.PutUint32(b2[len(magic)+4*i:], v2[i])
	}
	n := uint64(len(p1))
	binary.BigEndian.PutUint64(b1[stateSize-8:], length(b1)+n)
	binary.BigEndian.PutUint64(b2[stateSize-8:], length(b2)+n)
	// The states came from these digests, whole blocks later: taking them
	// back cannot fail.
	if err := h1.(encoding.BinaryUnmarshaler).UnmarshalBinary(b1); err != nil {
		panic("pairhash: " + err.Error())
	}
	if err := h2.(encoding.BinaryUnmarshaler).UnmarshalBinary(b2); err != nil {
		panic("pairhash: " + err.Error())
	}
	return true
}

// state is h's binary form appended to buf, if h is a SHA-256 digest
// that can take its state back.
func state(h hash.Hash, buf []byte) ([]byte, bool) {
	a, ok := h.(encoding.BinaryAppender)
	if !ok {
		return nil, false
	}
	if _, ok := h.(encoding.BinaryUnmarshaler); !ok {
		return nil, false
	}
	b, err := a.AppendBinary(buf)
	if err != nil || len(b) != stateSize || string(b[:len(magic)]) != magic {
		return nil, false
	}
	return b, true
}

// length is how many bytes the digest in binary form b has taken.
func length(b []byte) uint64 { return binary.BigEndian.Uint64(b[stateSize-8:]) }

// Companion is bytes of a second stream that travel with a chunk of a
// first: whoever hashes the chunk hashes Bytes into their digest in the
// same pass (Hasher.Write), then calls Done, after which the bytes are
// the owner's again. The sealed file's bytes travel so with the
// plaintext they open to (internal/sealed, client/bootctl).
type Companion interface {
	Bytes() (p []byte, h hash.Hash)
	Done()
}
