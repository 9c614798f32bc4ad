// Package blobtest is the conformance suite every server.BlobStore must
// pass; each backend's tests call Run with a fresh store.
package blobtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/roadsign/roadsign/server"
)

// Run runs the suite against stores made by newStore.
func Run(t *testing.T, newStore func(t *testing.T) server.BlobStore) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s server.BlobStore)
	}{
		{"RoundTrip", testRoundTrip},
		{"Overwrite", testOverwrite},
		{"NotFound", testNotFound},
		{"ShortReaderLeavesNothing", testShortReader},
		{"FailingReaderKeepsOld", testFailingReaderKeepsOld},
		{"Seek", testSeek},
		{"InvalidKeys", testInvalidKeys},
		{"LargeStreamed", testLarge},
		{"Concurrent", testConcurrent},
		{"Ping", func(t *testing.T, s server.BlobStore) {
			if err := s.Ping(context.Background()); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newStore(t)) })
	}
}

func put(t *testing.T, s server.BlobStore, key string, b []byte) {
	t.Helper()
	if err := s.Put(context.Background(), key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func get(t *testing.T, s server.BlobStore, key string) []byte {
	t.Helper()
	r, info, err := s.Open(context.Background(), key)
	if err != nil {
		t.Fatalf("open %s: %v", key, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	if info.Size != int64(len(b)) {
		t.Fatalf("open %s: info size %d, read %d bytes", key, info.Size, len(b))
	}
	return b
}

func testRoundTrip(t *testing.T, s server.BlobStore) {
	ctx := context.Background()
	for _, key := range []string{"timestamp.json", "targets/dcm/abc.dcm-1.img", "a/b/c/d.bin"} {
		want := []byte("content of " + key)
		put(t, s, key, want)
		if got := get(t, s, key); !bytes.Equal(got, want) {
			t.Errorf("%s: got %q, want %q", key, got, want)
		}
		info, err := s.Stat(ctx, key)
		if err != nil || info.Size != int64(len(want)) {
			t.Errorf("stat %s: %+v, %v", key, info, err)
		}
	}
	put(t, s, "empty", nil)
	if got := get(t, s, "empty"); len(got) != 0 {
		t.Errorf("empty blob: got %d bytes", len(got))
	}
}

func testOverwrite(t *testing.T, s server.BlobStore) {
	put(t, s, "timestamp.json", []byte("v1, longer content"))
	put(t, s, "timestamp.json", []byte("v2"))
	if got := get(t, s, "timestamp.json"); string(got) != "v2" {
		t.Fatalf("got %q after overwrite", got)
	}
}

func testNotFound(t *testing.T, s server.BlobStore) {
	ctx := context.Background()
	put(t, s, "dir/present", []byte("x"))
	for _, key := range []string{"missing", "dir/missing", "dir", "dir/present/below"} {
		if _, _, err := s.Open(ctx, key); !errors.Is(err, server.ErrBlobNotFound) {
			t.Errorf("open %s: err = %v, want ErrBlobNotFound", key, err)
		}
		if _, err := s.Stat(ctx, key); !errors.Is(err, server.ErrBlobNotFound) {
			t.Errorf("stat %s: err = %v, want ErrBlobNotFound", key, err)
		}
	}
	if err := s.Delete(ctx, "missing"); err != nil {
		t.Errorf("delete missing: %v", err)
	}
	if err := s.Delete(ctx, "dir/present"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := s.Stat(ctx, "dir/present"); !errors.Is(err, server.ErrBlobNotFound) {
		t.Errorf("after delete: err = %v, want ErrBlobNotFound", err)
	}
}

func testShortReader(t *testing.T, s server.BlobStore) {
	ctx := context.Background()
	err := s.Put(ctx, "short", bytes.NewReader([]byte("only ten b")), 100)
	if err == nil {
		t.Fatal("put with fewer bytes than its size succeeded")
	}
	if _, err := s.Stat(ctx, "short"); !errors.Is(err, server.ErrBlobNotFound) {
		t.Fatalf("a failed put left a blob behind: stat err = %v", err)
	}
}

type failingReader struct {
	r     io.Reader
	after int
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.after <= 0 {
		return 0, errors.New("injected read failure")
	}
	if len(p) > f.after {
		p = p[:f.after]
	}
	n, err := f.r.Read(p)
	f.after -= n
	return n, err
}

func testFailingReaderKeepsOld(t *testing.T, s server.BlobStore) {
	old := []byte("old content")
	put(t, s, "k", old)
	b := make([]byte, 64<<10)
	err := s.Put(context.Background(), "k", &failingReader{r: bytes.NewReader(b), after: 10 << 10}, int64(len(b)))
	if err == nil {
		t.Fatal("put from a failing reader succeeded")
	}
	if got := get(t, s, "k"); !bytes.Equal(got, old) {
		t.Fatalf("failed put changed the blob: got %d bytes", len(got))
	}
}

func testSeek(t *testing.T, s server.BlobStore) {
	b := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{1}).Read(b)
	put(t, s, "seek.bin", b)
	r, _, err := s.Open(context.Background(), "seek.bin")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	end, err := r.Seek(0, io.SeekEnd)
	if err != nil || end != int64(len(b)) {
		t.Fatalf("seek end: %d, %v", end, err)
	}
	for _, off := range []int64{0, 1, 4095, 500000, int64(len(b)) - 10} {
		if _, err := r.Seek(off, io.SeekStart); err != nil {
			t.Fatalf("seek %d: %v", off, err)
		}
		got := make([]byte, 10)
		if _, err := io.ReadFull(r, got); err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
		if !bytes.Equal(got, b[off:off+10]) {
			t.Fatalf("read at %d: wrong bytes", off)
		}
	}
}

func testInvalidKeys(t *testing.T, s server.BlobStore) {
	ctx := context.Background()
	for _, key := range []string{"", "/abs", "../escape", "a/../../b", "a//b", "a/./b", "a\\b"} {
		if err := s.Put(ctx, key, bytes.NewReader([]byte("x")), 1); err == nil {
			t.Errorf("put %q succeeded", key)
		}
		if _, _, err := s.Open(ctx, key); err == nil {
			t.Errorf("open %q succeeded", key)
		}
	}
}

// prng is an endless deterministic stream, so a large blob needs no buffer.
type prng struct{ r *rand.ChaCha8 }

func (p prng) Read(b []byte) (int, error) { return p.r.Read(b) }

func testLarge(t *testing.T, s server.BlobStore) {
	const size = 40<<20 + 123 // several S3 parts, not a multiple of anything
	src := func() io.Reader { return io.LimitReader(prng{rand.NewChaCha8([32]byte{7})}, size) }
	want := sha256.New()
	io.Copy(want, src())
	if err := s.Put(context.Background(), "large.img", src(), size); err != nil {
		t.Fatal(err)
	}
	r, info, err := s.Open(context.Background(), "large.img")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := sha256.New()
	n, err := io.Copy(got, r)
	if err != nil || n != size || info.Size != size {
		t.Fatalf("read back %d bytes (info %d), err %v", n, info.Size, err)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatal("large blob read back differs")
	}
}

func testConcurrent(t *testing.T, s server.BlobStore) {
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("c/%d", i)
			b := bytes.Repeat([]byte{byte(i)}, 1000+i)
			if err := s.Put(context.Background(), key, bytes.NewReader(b), int64(len(b))); err != nil {
				errs <- err
				return
			}
			// Readers racing a writer of the same key see whole blobs only.
			if err := s.Put(context.Background(), "shared", bytes.NewReader(b), int64(len(b))); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got := get(t, s, "shared")
	if len(got) < 1000 || !bytes.Equal(got, bytes.Repeat(got[:1], len(got))) || len(got) != 1000+int(got[0]) {
		t.Fatalf("shared blob is a mix of writers: %d bytes", len(got))
	}
}
