package backup

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTargetStaysInTheDataDirectory(t *testing.T) {
	for _, tc := range []struct {
		name, want, err string
	}{
		{"roadsign.db", "D/roadsign.db", ""},
		{"blobs/repo/1.root.json", "D/blobs/repo/1.root.json", ""},
		{"data/keys/image-timestamp.key", "D/keys/image-timestamp.key", ""},
		{"../etc/passwd", "", "escapes"},
		{"/etc/passwd", "", "escapes"},
		{"data/../../x", "", "escapes"},
		{"blobs//x", "", "escapes"},
		{"other/file", "", "not part of a Roadsign backup"},
	} {
		got, err := target("D", tc.name)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("target(%q) = %q, %v; want an error naming %q", tc.name, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != filepath.FromSlash(tc.want) {
			t.Errorf("target(%q) = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestRestoreRefusesWhatIsNotABackup(t *testing.T) {
	dir := t.TempDir()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	tw.WriteHeader(&tar.Header{Name: "roadsign.db", Mode: 0o600, Size: 1, Typeflag: tar.TypeReg})
	tw.Write([]byte("x"))
	tw.Close()
	gz.Close()
	noManifest := filepath.Join(dir, "nomanifest.tar.gz")
	os.WriteFile(noManifest, buf.Bytes(), 0o600)
	plain := filepath.Join(dir, "plain.txt")
	os.WriteFile(plain, []byte("hello"), 0o600)
	for _, tc := range []struct{ from, want string }{
		{noManifest, "not a Roadsign backup"},
		{plain, "not gzip"},
		{filepath.Join(dir, "missing"), "open backup"},
	} {
		_, err := Restore(RestoreOptions{From: tc.from, Data: filepath.Join(t.TempDir(), "data"), Now: time.Now})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("restore %s: %v; want an error naming %q", filepath.Base(tc.from), err, tc.want)
		}
	}
}
