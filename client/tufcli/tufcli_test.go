package tufcli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/meta"
)

// testRepo writes a one-key consistent-snapshot repository holding one
// target into dir/metadata and dir/targets, and returns the initial root.
func testRepo(t *testing.T, dir string, content []byte, expires time.Time) []byte {
	t.Helper()
	k, err := keys.Generate(filepath.Join(t.TempDir(), "k.key"))
	if err != nil {
		t.Fatal(err)
	}
	root := metadata.Root(expires)
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		if err := root.Signed.AddKey(k.Public, role); err != nil {
			t.Fatal(err)
		}
	}
	targets := metadata.Targets(expires)
	tf, err := metadata.TargetFile().FromBytes("fw/image.bin", content, "sha256")
	if err != nil {
		t.Fatal(err)
	}
	targets.Signed.Targets["fw/image.bin"] = tf
	snap := metadata.Snapshot(expires)
	ts := metadata.Timestamp(expires)
	md, tg := filepath.Join(dir, "metadata"), filepath.Join(dir, "targets", "fw")
	for _, d := range []string{md, tg} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name string, b []byte) {
		if err := os.WriteFile(name, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sign := func(name string, m interface{ ToBytes(bool) ([]byte, error) }, signFn func() error) []byte {
		if err := signFn(); err != nil {
			t.Fatal(err)
		}
		b, err := m.ToBytes(true)
		if err != nil {
			t.Fatal(err)
		}
		write(filepath.Join(md, name), b)
		return b
	}
	rootRaw := sign("1.root.json", root, func() error { return meta.Sign(root, k) })
	sign("1.targets.json", targets, func() error { return meta.Sign(targets, k) })
	sign("1.snapshot.json", snap, func() error { return meta.Sign(snap, k) })
	sign("timestamp.json", ts, func() error { return meta.Sign(ts, k) })
	sum := sha256.Sum256(content)
	write(filepath.Join(tg, hex.EncodeToString(sum[:])+".image.bin"), content)
	return rootRaw
}

func TestInitRefreshDownload(t *testing.T) {
	repoDir := t.TempDir()
	content := []byte("firmware image bytes")
	rootRaw := testRepo(t, repoDir, content, time.Now().Add(24*time.Hour).UTC().Truncate(time.Second))
	var targetGets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/targets/") {
			targetGets.Add(1)
		}
		http.FileServer(http.Dir(repoDir)).ServeHTTP(w, r)
	}))
	defer srv.Close()
	rootFile := filepath.Join(t.TempDir(), "root.json")
	if err := os.WriteFile(rootFile, rootRaw, 0o644); err != nil {
		t.Fatal(err)
	}
	mdDir, tgDir := filepath.Join(t.TempDir(), "md"), filepath.Join(t.TempDir(), "tg")
	now := func() (time.Time, error) { return time.Now(), nil }
	run := func(now func() (time.Time, error), args ...string) (int, string) {
		var errb bytes.Buffer
		code := Run(context.Background(), args, Env{Stdout: &errb, Stderr: &errb, Now: now})
		return code, errb.String()
	}
	dl := []string{"--metadata-dir", mdDir, "--metadata-url", srv.URL + "/metadata", "--target-name", "fw/image.bin",
		"--target-base-url", srv.URL + "/targets", "--target-dir", tgDir, "download"}

	if code, out := run(now, "--metadata-dir", mdDir, "init", rootFile); code != 0 {
		t.Fatalf("init: exit %d: %s", code, out)
	}
	if code, out := run(now, "--metadata-dir", mdDir, "--metadata-url", srv.URL+"/metadata", "refresh"); code != 0 {
		t.Fatalf("refresh: exit %d: %s", code, out)
	}
	for _, f := range []string{"root.json", "timestamp.json", "snapshot.json", "targets.json"} {
		if _, err := os.Stat(filepath.Join(mdDir, f)); err != nil {
			t.Errorf("refresh did not store %s: %v", f, err)
		}
	}
	for i := range 2 {
		if code, out := run(now, dl...); code != 0 {
			t.Fatalf("download %d: exit %d: %s", i, code, out)
		}
	}
	got, err := os.ReadFile(filepath.Join(tgDir, "fw%2Fimage.bin"))
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("downloaded target = %q, %v", got, err)
	}
	if n := targetGets.Load(); n != 1 {
		t.Errorf("target fetched %d times, want once (the second download finds it verified on disk)", n)
	}

	// The reference time comes from Env.Now (date(1) under faketime).
	later := func() (time.Time, error) { return time.Now().Add(48 * time.Hour), nil }
	if code, out := run(later, dl...); code != 1 || !strings.Contains(out, "expired") {
		t.Errorf("download after expiry: exit %d, want 1 naming the expiry: %s", code, out)
	}

	// A target whose bytes differ from the signed hash is never stored.
	sum := sha256.Sum256(content)
	bad := bytes.ToUpper(content)
	if err := os.WriteFile(filepath.Join(repoDir, "targets", "fw", hex.EncodeToString(sum[:])+".image.bin"), bad, 0o644); err != nil {
		t.Fatal(err)
	}
	tg2 := t.TempDir()
	dl2 := append(append([]string(nil), dl[:len(dl)-3]...), "--target-dir", tg2, "download")
	if code, out := run(now, dl2...); code != 1 || !strings.Contains(out, "does not match the signed") {
		t.Errorf("tampered target: exit %d, want 1 naming the hash: %s", code, out)
	}
	if entries, _ := os.ReadDir(tg2); len(entries) != 0 {
		t.Errorf("tampered target left files in the target dir: %v", entries)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "usage"},
		{[]string{"init", "root.json"}, "--metadata-dir DIR is required"},
		{[]string{"--metadata-dir", "d", "init"}, "init needs the trusted root"},
		{[]string{"--metadata-dir", "d", "refresh"}, "needs --metadata-url"},
		{[]string{"--metadata-dir", "d", "--metadata-url", "http://127.0.0.1:1", "download"}, "download needs --target-name"},
		{[]string{"--metadata-dir", "d", "fly"}, `unknown command "fly"`},
	} {
		var out bytes.Buffer
		code := Run(context.Background(), tc.args, Env{Stdout: &out, Stderr: &out, Now: func() (time.Time, error) { return time.Now(), nil }})
		if code != 2 || !strings.Contains(out.String(), tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tc.args, code, out.String(), tc.want)
		}
	}
}
