package backup

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzRestore: any archive restores into the data directory or is
// refused; nothing is ever written outside it.
func FuzzRestore(f *testing.F) {
	archive := func(names ...string) []byte {
		var buf bytes.Buffer
		gz := gzip.NewWriter(&buf)
		tw := tar.NewWriter(gz)
		for _, n := range names {
			tw.WriteHeader(&tar.Header{Name: n, Mode: 0o600, Size: 2, Typeflag: tar.TypeReg})
			tw.Write([]byte("{}"))
		}
		tw.Close()
		gz.Close()
		return buf.Bytes()
	}
	f.Add(archive("roadsign-backup.json", "data/keys/k.key", "blobs/repo/1.root.json", "roadsign.db"))
	f.Add(archive("roadsign-backup.json", "../escape"))
	f.Add(archive("data/../../escape", "roadsign-backup.json"))
	f.Add([]byte("not gzip"))
	f.Fuzz(func(t *testing.T, b []byte) {
		root := t.TempDir()
		from := filepath.Join(root, "in.tar.gz")
		if err := os.WriteFile(from, b, 0o600); err != nil {
			t.Fatal(err)
		}
		data := filepath.Join(root, "d", "data")
		Restore(RestoreOptions{From: from, Data: data, Now: time.Now})
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && p != root && p != from && p != filepath.Join(root, "d") && !strings.HasPrefix(p, data) {
				t.Fatalf("restore wrote %s, outside the data directory", p)
			}
			return nil
		})
	})
}
