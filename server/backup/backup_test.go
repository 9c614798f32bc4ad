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

// TestExternalStoresAreNamedNotCopied: with PostgreSQL and S3 the archive
// holds the keys and the rest of the data directory, says who owns the
// database and the blobs, and restores.
func TestExternalStoresAreNamedNotCopied(t *testing.T) {
	data := t.TempDir()
	for name, body := range map[string]string{"keys/image-timestamp.key": "k", "online-keys.json": "{}", "connect.secret": "s"} {
		p := filepath.Join(data, filepath.FromSlash(name))
		os.MkdirAll(filepath.Dir(p), 0o700)
		os.WriteFile(p, []byte(body), 0o600)
	}
	out := filepath.Join(t.TempDir(), "b.tar.gz")
	m, err := Create(t.Context(), Options{Data: data, Out: out, Database: "postgres://x@127.0.0.1/db", S3: true, Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	if m.Database != "external" || m.Blobs != "external" || len(m.Notes) != 2 || !strings.Contains(m.Notes[0], "pg_dump") {
		t.Fatalf("manifest: %+v", m)
	}
	restored := filepath.Join(t.TempDir(), "r")
	if _, err := Restore(RestoreOptions{From: out, Data: restored, Now: time.Now}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"keys/image-timestamp.key", "online-keys.json", "connect.secret", RestoredFile} {
		if _, err := os.Stat(filepath.Join(restored, filepath.FromSlash(name))); err != nil {
			t.Errorf("restored data lacks %s: %v", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(restored, "roadsign.db")); err == nil {
		t.Error("an archive of a PostgreSQL server restored a SQLite database")
	}
	if st, err := os.Stat(filepath.Join(restored, "keys/image-timestamp.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("a restored key file must stay 0600: %v %v", st.Mode(), err)
	}
	if floor, err := Floor(restored); err != nil || floor < time.Now().Add(-time.Minute).Unix() {
		t.Errorf("version floor %d, %v: want the restore's Unix time", floor, err)
	}
}
