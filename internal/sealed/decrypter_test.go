package sealed

import (
	"bytes"
	"crypto/ecdh"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"testing/iotest"
	"time"

	"github.com/roadsign/roadsign/internal/pairhash"
)

// destination is where a test's plaintext goes: what reached it so far.
type destination interface {
	io.Writer
	Bytes() []byte
}

// destinations are the kinds of dst a Decrypter meets: a plain writer,
// one that lets a chunk be opened into its buffer, and one that also
// hashes each chunk's sealed bytes, later, in a stage of its own (the
// slot writer), and sometimes has no room.
var destinations = map[string]func(t *testing.T) destination{
	"writer":    func(*testing.T) destination { return new(bytes.Buffer) },
	"fill":      func(*testing.T) destination { return new(fillBuffer) },
	"companion": newCompanionBuffer,
}

// decrypt feeds sealed[from:] to a Decrypter in pieces of step bytes
// after resuming at plainOffset, and returns what reached dst.
func decrypt(t *testing.T, dst destination, plain, sealedFile, signed []byte, plainOffset int64, step int) ([]byte, error) {
	t.Helper()
	dst.Write(plain[:plainOffset])
	sum := sha256.Sum256(signed)
	d, err := NewDecrypter(key(1), signed[:HeaderSize], int64(len(signed)), sum[:], int64(len(plain)), dst)
	if err != nil {
		return nil, err
	}
	from, err := d.Resume(bytes.NewReader(plain), plainOffset)
	if err != nil {
		d.Stop()
		return dst.Bytes(), err
	}
	rest := sealedFile[from:]
	if step == 0 { // a download: ReadFrom
		if _, err := d.ReadFrom(iotest.HalfReader(bytes.NewReader(rest))); err != nil {
			d.Stop()
			return dst.Bytes(), err
		}
		rest = nil
	}
	for len(rest) > 0 {
		k := min(step, len(rest))
		if _, err := d.Write(rest[:k]); err != nil {
			d.Stop() // the stages may still write to dst until it returns
			return dst.Bytes(), err
		}
		rest = rest[k:]
	}
	err = d.Finish()
	return dst.Bytes(), err
}

func TestDecrypter(t *testing.T) {
	const chunk = 1024
	plain := make([]byte, 5*chunk+300)
	rand.NewChaCha8([32]byte{2}).Read(plain)
	good := seal(t, plain, chunk)
	swapped := bytes.Clone(good)
	c1 := HeaderSize + chunk + Overhead
	copy(swapped[HeaderSize:c1], good[c1:c1+chunk+Overhead])
	copy(swapped[c1:c1+chunk+Overhead], good[HeaderSize:c1])
	for _, tc := range []struct {
		name   string
		file   []byte
		resume int64
		ok     bool
	}{
		{"whole", good, 0, true},
		{"resumed at chunk 3", good, 3 * chunk, true},
		{"resumed at the end", good, 5 * chunk, true},
		{"bit flipped in chunk 2", flip(good, HeaderSize+2*(chunk+Overhead)+17), 0, false},
		{"bit flipped in the last chunk", flip(good, len(good)-3), 0, false},
		{"bit flipped in the header", flip(good, 9), 0, false},
		{"chunks swapped", swapped, 0, false},
		{"truncated at a chunk boundary", good[:HeaderSize+2*(chunk+Overhead)], 0, false},
		{"truncated mid-chunk", good[:len(good)-10], 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for dname, dst := range destinations {
				for _, step := range []int{0, 1, 333, 1 << 20} {
					got, err := decrypt(t, dst(t), plain, tc.file, good, tc.resume, step)
					if tc.ok != (err == nil) {
						t.Fatalf("%s, step %d: err %v", dname, step, err)
					}
					if !bytes.Equal(got, plain[:len(got)]) {
						t.Fatalf("%s, step %d: unauthenticated bytes reached the slot", dname, step)
					}
					if !tc.ok && !errors.Is(err, ErrAuth) {
						t.Fatalf("%s, step %d: %v is not ErrAuth", dname, step, err)
					}
					if !tc.ok && len(got)%chunk != 0 {
						t.Fatalf("%s, step %d: %d bytes reached the slot: not whole chunks", dname, step, len(got))
					}
				}
			}
		})
	}
	if _, err := decrypt(t, new(bytes.Buffer), plain, good, good, 100, 1); !errors.Is(err, ErrNotAligned) {
		t.Fatalf("resume mid-chunk: %v", err)
	}
	var dst bytes.Buffer
	sum := sha256.Sum256(good)
	if _, err := NewDecrypter(key(1), good[:HeaderSize], int64(len(good))+1, sum[:], int64(len(plain)), &dst); !errors.Is(err, ErrAuth) {
		t.Fatalf("wrong signed length: %v", err)
	}
	d, _ := NewDecrypter(key(2), good[:HeaderSize], int64(len(good)), sum[:], int64(len(plain)), &dst)
	d.Write(good)
	if err := d.Finish(); !errors.Is(err, ErrAuth) || dst.Len() != 0 {
		t.Fatalf("another file key: %v, %d bytes out", err, dst.Len())
	}
}

// fillBuffer is a destination that lets chunks be opened into its own
// buffer (as the slot writer does); only what fill succeeded on counts.
type fillBuffer struct {
	bytes.Buffer
	scratch []byte
}

func (f *fillBuffer) WriteWith(n int, fill func(p []byte) error) (bool, error) {
	if n > 4096 {
		return false, nil // no room: Write
	}
	if cap(f.scratch) < n {
		f.scratch = make([]byte, n)
	}
	p := f.scratch[:n]
	if err := fill(p); err != nil {
		return true, err
	}
	f.Write(p)
	return true, nil
}

// companionBuffer is a destination that, like the slot writer, takes
// each chunk's sealed bytes as a companion and hashes them in a stage of
// its own, a little later; every third chunk it has no room for.
type companionBuffer struct {
	fillBuffer
	calls int
	later chan pairhash.Companion
}

func newCompanionBuffer(t *testing.T) destination {
	c := &companionBuffer{later: make(chan pairhash.Companion, 4)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for with := range c.later {
			time.Sleep(time.Millisecond) // after the next chunk would have been hashed
			p, h := with.Bytes()
			h.Write(p)
			with.Done()
		}
	}()
	t.Cleanup(func() { close(c.later); <-done })
	return c
}

func (c *companionBuffer) WriteWithCompanion(n int, fill func(p []byte) error, with pairhash.Companion) (bool, error) {
	c.calls++
	if c.calls%3 == 0 {
		return false, nil
	}
	ok, err := c.WriteWith(n, fill)
	if ok && err == nil {
		c.later <- with
	}
	return ok, err
}

// TestDecrypterFillsInPlace: opened into the destination's own buffer,
// a chunk that does not authenticate is never taken.
func TestDecrypterFillsInPlace(t *testing.T) {
	const chunk = 1024
	plain := make([]byte, 5*chunk+300)
	rand.NewChaCha8([32]byte{4}).Read(plain)
	good := seal(t, plain, chunk)
	sum := sha256.Sum256(good)
	for name, file := range map[string][]byte{"good": good, "flipped": flip(good, HeaderSize+3*(chunk+Overhead)+5)} {
		var dst fillBuffer
		d, err := NewDecrypter(key(1), good[:HeaderSize], int64(len(good)), sum[:], int64(len(plain)), &dst)
		if err != nil {
			t.Fatal(err)
		}
		d.Write(file)
		err = d.Finish()
		if (err == nil) != (name == "good") || !bytes.Equal(dst.Bytes(), plain[:dst.Len()]) {
			t.Fatalf("%s: %v, %d bytes out", name, err, dst.Len())
		}
		if name == "flipped" && dst.Len() != 3*chunk {
			t.Fatalf("flipped chunk 3: %d bytes out, want the 3 chunks before it", dst.Len())
		}
	}
}

func flip(b []byte, at int) []byte {
	c := bytes.Clone(b)
	c[at] ^= 0x10
	return c
}

func TestWrapKey(t *testing.T) {
	dir := t.TempDir()
	ecu, err := GenerateECUKey(filepath.Join(dir, "a.key"))
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadECUKey(filepath.Join(dir, "a.key"))
	if err != nil || !loaded.Equal(ecu) {
		t.Fatalf("load: %v", err)
	}
	other, _ := GenerateECUKey(filepath.Join(dir, "b.key"))
	fk := NewFileKey()
	b := Binding{VIN: "1HGCM82633A004352", Serial: "DCM-1", Target: "dcm/2.0.bin", SealedSHA256: "ab"}
	w, err := WrapKey(ecu.PublicKey().Bytes(), fk, b)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := UnwrapKey(ecu, w, b); err != nil || !bytes.Equal(got, fk) {
		t.Fatalf("unwrap: %v", err)
	}
	for name, tc := range map[string]struct {
		k *ecdh.PrivateKey
		b Binding
	}{
		"another ECU's key":   {other, b},
		"another VIN":         {ecu, Binding{VIN: "1HGCM82633A004353", Serial: b.Serial, Target: b.Target, SealedSHA256: b.SealedSHA256}},
		"another serial":      {ecu, Binding{VIN: b.VIN, Serial: "DCM-2", Target: b.Target, SealedSHA256: b.SealedSHA256}},
		"another target":      {ecu, Binding{VIN: b.VIN, Serial: b.Serial, Target: "dcm/1.0.bin", SealedSHA256: b.SealedSHA256}},
		"another ciphertext":  {ecu, Binding{VIN: b.VIN, Serial: b.Serial, Target: b.Target, SealedSHA256: "cd"}},
		"fields run together": {ecu, Binding{VIN: b.VIN + "D", Serial: "CM-1", Target: b.Target, SealedSHA256: b.SealedSHA256}},
	} {
		if _, err := UnwrapKey(tc.k, w, tc.b); !errors.Is(err, ErrNotRecipient) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestDecrypterAllocatesNothingPerChunk: the agent runs under a soft Go
// memory limit of 8 MiB, where each allocation burst costs a collection
// (one per chunk halved the install speed once).
func TestDecrypterAllocatesNothingPerChunk(t *testing.T) {
	const chunk = 1024
	allocs := func(chunks int) float64 {
		plain := make([]byte, chunks*chunk)
		s := seal(t, plain, chunk)
		sum := sha256.Sum256(s)
		dst := &fillBuffer{}
		return testing.AllocsPerRun(5, func() {
			dst.Reset()
			d, err := NewDecrypter(key(1), s[:HeaderSize], int64(len(s)), sum[:], int64(len(plain)), dst)
			if err != nil {
				t.Fatal(err)
			}
			d.ReadFrom(bytes.NewReader(s))
			if err := d.Finish(); err != nil {
				t.Fatal(err)
			}
		})
	}
	few, many := allocs(4), allocs(256)
	if many > few+8 { // bytes.Buffer growth in the test's destination
		t.Fatalf("%v allocations for 4 chunks, %v for 256: something allocates per chunk", few, many)
	}
}
