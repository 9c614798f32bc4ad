package sealed

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

func key(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func seal(t *testing.T, plain []byte, chunk int) []byte {
	t.Helper()
	var out bytes.Buffer
	n, err := Seal(&out, bytes.NewReader(plain), key(1), chunk)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(out.Len()) || n != SealedSize(int64(len(plain)), chunk) {
		t.Fatalf("sealed %d bytes, wrote %d, SealedSize says %d", n, out.Len(), SealedSize(int64(len(plain)), chunk))
	}
	return out.Bytes()
}

func open(sealedFile, k []byte) ([]byte, error) {
	r, err := NewReader(bytes.NewReader(sealedFile), k)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

func TestRoundTrip(t *testing.T) {
	const chunk = 4096
	data := make([]byte, 3*chunk+100)
	rand.NewChaCha8([32]byte{1}).Read(data)
	for _, n := range []int{0, 1, chunk - 1, chunk, chunk + 1, 2 * chunk, len(data)} {
		s := seal(t, data[:n], chunk)
		got, err := open(s, key(1))
		if err != nil || !bytes.Equal(got, data[:n]) {
			t.Fatalf("%d bytes: got %d bytes, %v", n, len(got), err)
		}
	}
}

// TestNoPlaintextBlocks: no 4 KiB block of the plaintext appears in the
// sealed file.
func TestNoPlaintextBlocks(t *testing.T) {
	data := bytes.Repeat([]byte("firmware block! "), 64<<10) // 1 MiB, very regular
	s := seal(t, data, DefaultChunk)
	for off := 0; off+4096 <= len(data); off += 4096 {
		if bytes.Contains(s, data[off:off+4096]) {
			t.Fatalf("plaintext block at %d is in the sealed file", off)
		}
	}
}

func TestRefused(t *testing.T) {
	const chunk = 1024
	data := make([]byte, 4*chunk+10)
	rand.NewChaCha8([32]byte{2}).Read(data)
	s := seal(t, data, chunk)
	ct := chunk + Overhead
	at := func(i int) int { return HeaderSize + i*ct }
	flip := bytes.Clone(s)
	flip[at(2)+7] ^= 1
	swap := bytes.Clone(s)
	copy(swap[at(1):at(2)], s[at(2):at(3)])
	copy(swap[at(2):at(3)], s[at(1):at(2)])
	header := bytes.Clone(s)
	header[len(Magic)+5] ^= 1 // the nonce prefix
	other := seal(t, data, chunk)
	spliced := append(bytes.Clone(s[:at(2)]), other[at(2):]...)
	for _, tc := range []struct {
		name string
		file []byte
		key  []byte
		// good is how much plaintext may come out before the refusal.
		good int
	}{
		{"flipped bit", flip, key(1), 2 * chunk},
		{"swapped chunks", swap, key(1), chunk},
		{"cut at a chunk boundary", s[:at(3)], key(1), 3 * chunk},
		{"cut mid-chunk", s[:at(3)+100], key(1), 3 * chunk},
		{"last chunk dropped", s[:at(4)], key(1), 4 * chunk},
		{"header changed", header, key(1), 0},
		{"chunks of another sealing", spliced, key(1), 2 * chunk},
		{"another key", s, key(2), 0},
		{"not sealed", data, key(1), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := open(tc.file, tc.key)
			if !errors.Is(err, ErrAuth) {
				t.Fatalf("got %v, want ErrAuth", err)
			}
			if len(got) > tc.good || !bytes.Equal(got, data[:len(got)]) {
				t.Fatalf("%d bytes of plaintext came out before the refusal (at most %d, all authentic)", len(got), tc.good)
			}
		})
	}
}

// TestOpenerResumes: a reader that resumes at a chunk opens it alone.
func TestOpenerResumes(t *testing.T) {
	const chunk = 512
	data := make([]byte, 3*chunk+7)
	rand.NewChaCha8([32]byte{3}).Read(data)
	s := seal(t, data, chunk)
	o, err := NewOpener(key(1), s[:HeaderSize])
	if err != nil {
		t.Fatal(err)
	}
	ct := chunk + Overhead
	got, err := o.Open(nil, s[HeaderSize+2*ct:HeaderSize+3*ct], 2, false)
	if err != nil || !bytes.Equal(got, data[2*chunk:3*chunk]) {
		t.Fatalf("chunk 2: %v", err)
	}
	if _, err := o.Open(nil, s[HeaderSize+2*ct:HeaderSize+3*ct], 1, false); !errors.Is(err, ErrAuth) {
		t.Fatalf("chunk 2 as chunk 1: %v", err)
	}
	if _, err := o.Open(nil, s[HeaderSize+2*ct:HeaderSize+3*ct], 2, true); !errors.Is(err, ErrAuth) {
		t.Fatalf("chunk 2 as the last: %v", err)
	}
}
