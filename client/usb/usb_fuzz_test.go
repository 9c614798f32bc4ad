package usb

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/roadsign/roadsign/client"
)

// tarOf builds an archive of name/body pairs (for seeds).
func tarOf(files ...string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := 0; i+1 < len(files); i += 2 {
		tw.WriteHeader(&tar.Header{Name: files[i], Mode: 0o600, Size: int64(len(files[i+1])), Typeflag: tar.TypeReg})
		tw.Write([]byte(files[i+1]))
	}
	tw.Close()
	return buf.Bytes()
}

// FuzzOpenArchive: any bytes as a bundle archive open or fail, never a
// panic; nothing lands outside the scratch directory,
// and closing the bundle leaves the scratch directory empty.
func FuzzOpenArchive(f *testing.F) {
	manifest := `{"vin":"JTMBFREV0N0000001","issuedAt":"2026-11-30T12:00:00Z","validUntil":"2026-12-30T12:00:00Z","images":["dcm"]}`
	f.Add(tarOf("bundle.json", manifest, "image/root.json", "{}", "targets/dcm/x.img", "abc"))
	f.Add(tarOf("../escape", "x", "bundle.json", manifest))
	f.Add(tarOf("/etc/passwd", "x"))
	f.Add(tarOf("bundle.json", "{"))
	f.Add(tarOf("a/../../b", "x"))
	f.Add([]byte("not a tar"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, archive []byte) {
		parent := t.TempDir()
		src, scratch := filepath.Join(parent, "bundle.tar"), filepath.Join(parent, "scratch")
		if err := os.WriteFile(src, archive, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(scratch, 0o700); err != nil {
			t.Fatal(err)
		}
		if b, err := Open(src, scratch); err == nil {
			b.Close()
		}
		entries, _ := os.ReadDir(parent)
		for _, e := range entries {
			if e.Name() != "bundle.tar" && e.Name() != "scratch" {
				t.Fatalf("Open wrote %s outside its scratch directory", e.Name())
			}
		}
		if left, _ := os.ReadDir(scratch); len(left) != 0 {
			t.Fatalf("scratch directory not emptied: %v", left)
		}
	})
}

// FuzzBundleDirectory: a bundle directory's bundle.json and any name the
// TUF client may ask for are read inside the bundle or refused; a file
// outside, reached by a path or a symlink, is never read.
func FuzzBundleDirectory(f *testing.F) {
	f.Add(`{"vin":"JTMBFREV0N0000001","images":["dcm"]}`, "image/1.root.json")
	f.Add(`{"vin":"X"}`, "../secret")
	f.Add(`{"vin":"X"}`, "link/secret")
	f.Add(`{"vin":"X"}`, "direct")
	f.Add(`{`, "bundle.json")
	f.Fuzz(func(t *testing.T, manifest, name string) {
		parent := t.TempDir()
		dir := filepath.Join(parent, "bundle")
		os.MkdirAll(filepath.Join(dir, "image"), 0o700)
		os.WriteFile(filepath.Join(parent, "secret"), []byte("outside"), 0o600)
		os.WriteFile(filepath.Join(dir, "bundle.json"), []byte(manifest), 0o600)
		os.WriteFile(filepath.Join(dir, "image", "1.root.json"), []byte("inside"), 0o600)
		os.Symlink(parent, filepath.Join(dir, "link"))
		os.Symlink(filepath.Join(parent, "secret"), filepath.Join(dir, "direct"))
		b, err := Open(dir, parent)
		if err != nil {
			if !errors.Is(err, client.ErrRefused) {
				t.Fatalf("Open(directory): %v is not a refusal", err)
			}
			return
		}
		defer b.Close()
		data, err := b.DownloadFile(Scheme+name, 1<<20, 0)
		if err == nil && bytes.Contains(data, []byte("outside")) {
			t.Fatalf("bundle path %q read a file outside the bundle", name)
		}
	})
}
