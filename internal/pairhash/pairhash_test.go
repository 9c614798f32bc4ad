package pairhash

import (
	"bytes"
	"crypto/sha256"
	"hash"
	"hash/fnv"
	"math/rand/v2"
	"testing"
)

// TestWriteIsTwoWrites: Write leaves both digests where h.Write would,
// whatever the lengths, the bytes already buffered and the digest kinds.
func TestWriteIsTwoWrites(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	data := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		return b
	}
	lengths := []int{0, 1, 63, 64, 65, 127, 128, 1000, 4096, 131072, 131088}
	for _, pre1 := range []int{0, 5, 64, 100} {
		for _, pre2 := range []int{0, 16, 63, 128} {
			for _, n1 := range lengths {
				for _, n2 := range []int{0, 64, 131088, n1, n1 + 16} {
					a, b := sha256.New(), sha256.New()
					ra, rb := sha256.New(), sha256.New()
					x1, x2 := data(pre1), data(pre2)
					a.Write(x1)
					ra.Write(x1)
					b.Write(x2)
					rb.Write(x2)
					p1, p2 := data(n1), data(n2)
					var x Hasher
					x.Write(a, b, p1, p2)
					ra.Write(p1)
					rb.Write(p2)
					// Writes after Write go on from the same state.
					tail := data(77)
					a.Write(tail)
					ra.Write(tail)
					if !bytes.Equal(a.Sum(nil), ra.Sum(nil)) || !bytes.Equal(b.Sum(nil), rb.Sum(nil)) {
						t.Fatalf("prefix %d/%d, lengths %d/%d: sums differ from crypto/sha256", pre1, pre2, n1, n2)
					}
				}
			}
		}
	}
}

// TestWriteOtherDigests: digests other than SHA-256 are written as
// themselves.
func TestWriteOtherDigests(t *testing.T) {
	p1, p2 := bytes.Repeat([]byte("a"), 1000), bytes.Repeat([]byte("b"), 1000)
	for _, tc := range []struct {
		name   string
		h1, h2 func() hash.Hash
	}{
		{"sha224 and sha256", sha256.New224, sha256.New},
		{"sha256 and fnv", sha256.New, func() hash.Hash { return fnv.New64a() }},
	} {
		a, b, ra, rb := tc.h1(), tc.h2(), tc.h1(), tc.h2()
		var x Hasher
		x.Write(a, b, p1, p2)
		ra.Write(p1)
		rb.Write(p2)
		if !bytes.Equal(a.Sum(nil), ra.Sum(nil)) || !bytes.Equal(b.Sum(nil), rb.Sum(nil)) {
			t.Errorf("%s: sums differ from writing each", tc.name)
		}
	}
}

// TestWriteAllocatesNothing: the agent's pipeline calls Write per chunk
// under a soft memory limit of 8 MiB, where each allocation counts.
func TestWriteAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	a, b := sha256.New(), sha256.New()
	p1, p2 := make([]byte, 128<<10), make([]byte, 128<<10+16)
	var x Hasher
	if n := testing.AllocsPerRun(20, func() { x.Write(a, b, p1, p2) }); n != 0 {
		t.Errorf("Write allocates %.0f times per call, want 0", n)
	}
}

// BenchmarkWrite: two 128 KiB streams hashed together, next to the same
// two one after the other with crypto/sha256.
func BenchmarkWrite(b *testing.B) {
	p1, p2 := make([]byte, 128<<10), make([]byte, 128<<10+16)
	b.Run("pair", func(b *testing.B) {
		h1, h2 := sha256.New(), sha256.New()
		var x Hasher
		b.SetBytes(int64(len(p1) + len(p2)))
		for b.Loop() {
			x.Write(h1, h2, p1, p2)
		}
	})
	b.Run("one-after-the-other", func(b *testing.B) {
		h1, h2 := sha256.New(), sha256.New()
		b.SetBytes(int64(len(p1) + len(p2)))
		for b.Loop() {
			h1.Write(p1)
			h2.Write(p2)
		}
	})
}

// FuzzWrite: for any two streams, cut anywhere, the pair's sums are
// crypto/sha256's.
func FuzzWrite(f *testing.F) {
	f.Add([]byte("abc"), []byte{}, uint8(0), uint8(0))
	f.Add(bytes.Repeat([]byte{1}, 1000), bytes.Repeat([]byte{2}, 700), uint8(13), uint8(64))
	f.Fuzz(func(t *testing.T, p1, p2 []byte, cut1, cut2 uint8) {
		a, b := sha256.New(), sha256.New()
		c1, c2 := min(int(cut1), len(p1)), min(int(cut2), len(p2))
		a.Write(p1[:c1])
		b.Write(p2[:c2])
		var x Hasher
		x.Write(a, b, p1[c1:], p2[c2:])
		x.Write(a, b, p1[c1:], p2[c2:])
		r1, r2 := sha256.New(), sha256.New()
		r1.Write(p1)
		r1.Write(p1[c1:])
		r2.Write(p2)
		r2.Write(p2[c2:])
		if !bytes.Equal(a.Sum(nil), r1.Sum(nil)) || !bytes.Equal(b.Sum(nil), r2.Sum(nil)) {
			t.Fatalf("lengths %d/%d cut at %d/%d: sums differ from crypto/sha256", len(p1), len(p2), c1, c2)
		}
	})
}
