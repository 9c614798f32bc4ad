package sealed

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"testing"
)

// BenchmarkDecrypter: the agent's decrypting path alone (sealed sha256,
// authentication and decryption), 32 KiB writes as a download makes them.
func BenchmarkDecrypter(b *testing.B) {
	plain := make([]byte, 64<<20)
	rand.NewChaCha8([32]byte{3}).Read(plain)
	var s bytes.Buffer
	if _, err := Seal(&s, bytes.NewReader(plain), key(1), DefaultChunk); err != nil {
		b.Fatal(err)
	}
	file := s.Bytes()
	sum := sha256.Sum256(file)
	b.SetBytes(int64(len(plain)))
	for b.Loop() {
		d, err := NewDecrypter(key(1), file[:HeaderSize], int64(len(file)), sum[:], int64(len(plain)), io.Discard)
		if err != nil {
			b.Fatal(err)
		}
		for off := 0; off < len(file); off += 32 << 10 {
			if _, err := d.Write(file[off:min(off+32<<10, len(file))]); err != nil {
				b.Fatal(err)
			}
		}
		if err := d.Finish(); err != nil {
			b.Fatal(err)
		}
	}
}
