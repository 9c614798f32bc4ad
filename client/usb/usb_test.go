package usb

import (
	"errors"
	"os"
	"path/filepath"
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
