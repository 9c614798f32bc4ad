package usb

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/client"
)

func TestConfine(t *testing.T) {
	for _, bad := range []string{"../x", "a/../../x", "/etc/passwd", "..", ".", "a\\..\\..\\x", "a\x00b/../.."} {
		if _, err := confine(bad); !errors.Is(err, client.ErrRefused) {
			t.Errorf("%q: err = %v, want refused", bad, err)
		}
	}
	for in, want := range map[string]string{"image/1.root.json": "image/1.root.json", "./a/b": "a/b", "a/../b": "b"} {
		if got, err := confine(in); err != nil || got != filepath.FromSlash(want) {
			t.Errorf("%q: %q %v", in, got, err)
		}
	}
}

func TestFetcherStaysInsideTheBundle(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "bundle.json"), []byte(`{"vin":"X"}`), 0o644)
	os.MkdirAll(filepath.Join(dir, "image"), 0o755)
	os.WriteFile(filepath.Join(dir, "image", "timestamp.json"), []byte("0123456789"), 0o644)
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, []byte("secret"), 0o644)
	os.Symlink(outside, filepath.Join(dir, "image", "1.root.json"))
	b, err := Open(dir, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b.DownloadFile(Scheme+"image/timestamp.json", 100, 0); err != nil || string(got) != "0123456789" {
		t.Fatalf("read: %q %v", got, err)
	}
	if _, err := b.DownloadFile(Scheme+"image/timestamp.json", 5, 0); !errors.Is(err, &metadata.ErrDownloadLengthMismatch{}) {
		t.Fatalf("over maxLength: %v", err)
	}
	var httpErr *metadata.ErrDownloadHTTP
	if _, err := b.DownloadFile(Scheme+"image/2.root.json", 100, 0); !errors.As(err, &httpErr) || httpErr.StatusCode != 404 {
		t.Fatalf("missing file must be a 404 (it ends the root walk): %v", err)
	}
	if _, err := b.DownloadFile(Scheme+"image/1.root.json", 100, 0); !errors.Is(err, client.ErrRefused) {
		t.Fatalf("symlink out of the bundle: %v", err)
	}
	if _, err := b.DownloadFile(Scheme+"../"+filepath.Base(outside), 100, 0); !errors.Is(err, client.ErrRefused) {
		t.Fatalf("escaping path: %v", err)
	}
}

// TestSymlinkedDirectoryLeadsNowhere: a directory bundle whose "image"
// is a symlink to a directory outside cannot be read through it.
func TestSymlinkedDirectoryLeadsNowhere(t *testing.T) {
	dir, outside := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(dir, "bundle.json"), []byte(`{"vin":"X"}`), 0o644)
	os.WriteFile(filepath.Join(outside, "timestamp.json"), []byte("secret"), 0o644)
	if err := os.Symlink(outside, filepath.Join(dir, "image")); err != nil {
		t.Fatal(err)
	}
	b, err := Open(dir, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got, err := b.DownloadFile(Scheme+"image/timestamp.json", 100, 0); !errors.Is(err, client.ErrRefused) {
		t.Fatalf("read through a symlinked directory: %q, %v; want refused", got, err)
	}
}

func writeTar(t *testing.T, entries map[string]int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bundle.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	for name, size := range entries {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(tw, zeros{}, size); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	f.Close()
	return p
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) { clear(b); return len(b), nil }

// TestArchiveLimits: too many entries, or metadata larger than metadata
// is, are refused before they fill the disk.
func TestArchiveLimits(t *testing.T) {
	many := map[string]int64{"bundle.json": 2}
	for i := range maxEntries + 1 {
		many[fmt.Sprintf("image/%d.json", i)] = 1
	}
	tests := map[string]struct {
		entries map[string]int64
		want    string
	}{
		"too many entries":   {many, "more than 1024 entries"},
		"oversized metadata": {map[string]int64{"bundle.json": 2, "image/timestamp.json": maxMetadataSize + 1}, "more than metadata may be"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			scratch := t.TempDir()
			_, err := Open(writeTar(t, tt.entries), scratch)
			if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want refused: %s", err, tt.want)
			}
			if left, _ := os.ReadDir(scratch); len(left) != 0 {
				t.Fatalf("a refused archive left %d entries unpacked", len(left))
			}
		})
	}
}
