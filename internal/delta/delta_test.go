package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"testing"
)

// randBytes returns n pseudo-random bytes from seed.
func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 1})
	r.Read(b)
	return b
}

// Synthetic makes the test pair: a base of n random bytes (with a
// zero-filled stretch, as file systems have), and a target where frac of
// its 4 KiB blocks are rewritten and insert bytes are put in near the
// start, off any block boundary.
func Synthetic(seed uint64, n int, frac float64, insert int) (base, target []byte) {
	base = randBytes(seed, n)
	clear(base[n/2 : n/2+n/16])
	t := bytes.Clone(base)
	r := rand.New(rand.NewPCG(seed, 7))
	blocks := n / BlockSize
	for range int(float64(blocks) * frac) {
		b := r.IntN(blocks)
		copy(t[b*BlockSize:], randBytes(uint64(r.Int64()), BlockSize))
	}
	at := min(n/4, 1<<20) + 1234
	ins := randBytes(seed+1, insert)
	target = append(append(append([]byte{}, t[:at]...), ins...), t[at:]...)
	return base, target
}

func diff(t testing.TB, base, target []byte, opt Options) ([]byte, Stats, error) {
	t.Helper()
	var out bytes.Buffer
	st, err := Diff(context.Background(), bytes.NewReader(base), int64(len(base)), bytes.NewReader(target), int64(len(target)), &out, opt)
	return out.Bytes(), st, err
}

func apply(d, base []byte) ([]byte, error) {
	var out bytes.Buffer
	_, err := ApplyAll(bytes.NewReader(d), bytes.NewReader(base), int64(len(base)), &out)
	return out.Bytes(), err
}

func TestRoundTrip(t *testing.T) {
	big := randBytes(1, 3<<20)
	shifted := append(append([]byte{}, big[:100_000]...), append(randBytes(2, 777), big[100_000:]...)...)
	edited := bytes.Clone(big)
	copy(edited[2<<20+5:], "a small edit in the middle of a block")
	for _, tc := range []struct {
		name         string
		base, target []byte
		maxRatio     float64
	}{
		{"identical", big, big, 0.01},
		{"small edit", big, edited, 0.01},
		{"unaligned insert", big, shifted, 0.01},
		{"truncated target", big, big[:1<<20+17], 0.01},
		{"zeros", big, make([]byte, 2<<20), 0.01},
		{"unrelated", big, randBytes(3, 1<<20), 1.01},
		{"empty base", nil, big[:10_000], 1.01},
		{"empty target", big, nil, 1},
		{"tiny", []byte("abc"), []byte("abd"), 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, st, err := diff(t, tc.base, tc.target, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if limit := int(tc.maxRatio*float64(len(tc.target))) + 256; len(d) > limit {
				t.Errorf("delta is %d bytes for a %d-byte target (limit %d); ops %v", len(d), len(tc.target), limit, st.Ops)
			}
			got, err := apply(d, tc.base)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.target) {
				t.Fatalf("rebuilt %d bytes differ from the %d-byte target", len(got), len(tc.target))
			}
		})
	}
}

// TestSyntheticSize is the measure at 16 MiB (make bench runs it
// at 256 MiB): 2 % of the blocks rewritten and 100 KiB inserted near the
// start make a delta of at most 5 % of the image.
func TestSyntheticSize(t *testing.T) {
	base, target := Synthetic(9, 16<<20, 0.02, 100<<10)
	d, st, err := diff(t, base, target, Options{MaxSize: int64(len(target)) / 2})
	if err != nil {
		t.Fatal(err)
	}
	ratio := float64(len(d)) / float64(len(target))
	t.Logf("delta %d bytes = %.2f%% of %d; ops %v", len(d), 100*ratio, len(target), st.Ops)
	if ratio > 0.05 {
		t.Errorf("delta is %.2f%% of the image, want at most 5%%", 100*ratio)
	}
	got, err := apply(d, base)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(target) {
		t.Fatal("rebuilt image differs from the target")
	}
}

func TestNotWorth(t *testing.T) {
	base, target := randBytes(4, 1<<20), randBytes(5, 1<<20)
	if _, _, err := diff(t, base, target, Options{MaxSize: 1 << 19}); !errors.Is(err, ErrNotWorth) {
		t.Fatalf("unrelated images: %v, want ErrNotWorth", err)
	}
}

func TestRefused(t *testing.T) {
	base := randBytes(6, 2<<20)
	target := bytes.Clone(base)
	copy(target[1<<20:], randBytes(7, 50_000))
	d, st, err := diff(t, base, target, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Ops[Literal]+st.Ops[Patch] == 0 {
		t.Fatalf("no literal data in %v", st.Ops)
	}
	otherBase := bytes.Clone(base)
	otherBase[3] ^= 1
	flipped := bytes.Clone(d)
	flipped[len(flipped)-200] ^= 0x40 // inside the last operations
	for _, tc := range []struct {
		name  string
		delta []byte
		base  []byte
		want  error
	}{
		{"altered base", d, otherBase, ErrOpHash},
		{"shorter base", d, base[:len(base)-1], ErrOpHash},
		{"flipped bit", flipped, base, ErrOpHash},
		{"truncated", d[:len(d)/2], base, ErrCorrupt},
		{"no end", d[:len(d)-1], base, ErrCorrupt},
		{"not a delta", []byte("hello, this is not a delta at all, but long enough for a header............................."), base, ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := apply(tc.delta, tc.base); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func FuzzParseOp(f *testing.F) {
	f.Add(AppendOp(nil, Op{Kind: Copy, Len: 10, BaseOff: 5}))
	f.Add(AppendOp(nil, Op{Kind: Patch, Len: 10, Window: 3, Data: []byte("xyz")}))
	f.Add(AppendOp(nil, Op{Kind: Literal, Len: 3, Data: []byte("abc")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		op, n, err := ParseOp(b)
		if err != nil {
			return
		}
		if n > len(b) || n > MaxEncodedOp || op.Len > MaxOp || len(op.Data) > 2*MaxOp {
			t.Fatalf("parsed %+v from %d bytes taking %d", op.Kind, len(b), n)
		}
		if re := AppendOp(nil, op); !bytes.Equal(re, b[:n]) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func BenchmarkSynthetic256(b *testing.B) {
	base, target := Synthetic(9, 256<<20, 0.02, 100<<10)
	b.SetBytes(int64(len(target)))
	var d []byte
	for b.Loop() {
		var err error
		if d, _, err = diff(b, base, target, Options{MaxSize: int64(len(target)) / 2}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	got, err := apply(d, base)
	if err != nil || sha256.Sum256(got) != sha256.Sum256(target) {
		b.Fatalf("the image rebuilt from the delta does not match the target (%v)", err)
	}
	b.ReportMetric(100*float64(len(d))/float64(len(target)), "%-of-full")
}
