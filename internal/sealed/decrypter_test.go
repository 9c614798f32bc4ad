package sealed

import (
	"bytes"
	"crypto/ecdh"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"testing"
)

// decrypt feeds sealed[from:] to a Decrypter in pieces of step bytes
// after resuming at plainOffset, and returns what reached dst.
func decrypt(t *testing.T, plain, sealedFile, signed []byte, plainOffset int64, step int) ([]byte, error) {
	t.Helper()
	var dst bytes.Buffer
	dst.Write(plain[:plainOffset])
	sum := sha256.Sum256(signed)
	d, err := NewDecrypter(key(1), signed[:HeaderSize], int64(len(signed)), sum[:], int64(len(plain)), &dst)
	if err != nil {
		return nil, err
	}
	from, err := d.Resume(bytes.NewReader(plain), plainOffset)
	if err != nil {
		return dst.Bytes(), err
	}
	rest := sealedFile[from:]
	for len(rest) > 0 {
		k := min(step, len(rest))
		if _, err := d.Write(rest[:k]); err != nil {
			return dst.Bytes(), err
		}
		rest = rest[k:]
	}
	return dst.Bytes(), d.Finish()
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
			for _, step := range []int{1, 333, 1 << 20} {
				got, err := decrypt(t, plain, tc.file, good, tc.resume, step)
				if tc.ok != (err == nil) {
					t.Fatalf("step %d: err %v", step, err)
				}
				if !bytes.Equal(got, plain[:len(got)]) {
					t.Fatalf("step %d: unauthenticated bytes reached the slot", step)
				}
				if !tc.ok && !errors.Is(err, ErrAuth) {
					t.Fatalf("step %d: %v is not ErrAuth", step, err)
				}
				if !tc.ok && len(got)%chunk != 0 {
					t.Fatalf("step %d: %d bytes reached the slot: not whole chunks", step, len(got))
				}
			}
		})
	}
	if _, err := decrypt(t, plain, good, good, 100, 1); !errors.Is(err, ErrNotAligned) {
		t.Fatalf("resume mid-chunk: %v", err)
	}
	var dst bytes.Buffer
	sum := sha256.Sum256(good)
	if _, err := NewDecrypter(key(1), good[:HeaderSize], int64(len(good))+1, sum[:], int64(len(plain)), &dst); !errors.Is(err, ErrAuth) {
		t.Fatalf("wrong signed length: %v", err)
	}
	d, _ := NewDecrypter(key(2), good[:HeaderSize], int64(len(good)), sum[:], int64(len(plain)), &dst)
	if _, err := d.Write(good); !errors.Is(err, ErrAuth) || dst.Len() != 0 {
		t.Fatalf("another file key: %v, %d bytes out", err, dst.Len())
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
