package e2e

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	servercli "github.com/roadsign/roadsign/server/cli"
)

func serverCmd(t *testing.T, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := servercli.Run(context.Background(), args, servercli.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	return result{code, out.String(), errb.String()}
}

// TestBackupAndRestoreMidTraffic: a backup taken while simulated vehicles
// register and check in, restored into a new directory after the old
// server carried on (more publishes, a vehicle updated) and died. The
// restored server signs above every version the old one served, so a
// vehicle provisioned before the backup, which saw those later versions,
// updates from it.
func TestBackupAndRestoreMidTraffic(t *testing.T) {
	w := newWorld(t)
	w.signerInit()
	w.add(findSample(t, huHW, "1.1.0"))
	w.add(findSample(t, dcmHW, "1.1.0"))
	w.publish()
	v := w.vehicle(1)

	archive := filepath.Join(w.dir, "backup.tar.gz")
	if r := serverCmd(t, "backup", "--data", w.data, "--out", filepath.Join(w.dir, "no-such-dir", "b.tar.gz")); r.code != 2 || !strings.Contains(r.stderr, "does not exist") || strings.Contains(r.stderr, ".tmp") {
		t.Fatalf("backup into a missing directory: want exit 2 naming it, got %s", r)
	}
	var wg sync.WaitGroup
	var traffic result
	wg.Go(func() {
		traffic = runFleetsim(t, "--server", w.url, "--token", adminToken, "--samples", samplesDir(), "--vehicles", "20",
			"--register", "--cycles", "5", "--interval", "100ms")
	})
	if r := serverCmd(t, "backup", "--data", w.data, "--out", archive); r.code != 0 {
		t.Fatalf("backup while serving: %s", r)
	}
	wg.Wait()
	if traffic.code != 0 {
		t.Fatalf("traffic during the backup: %s", traffic)
	}
	if st, err := os.Stat(archive); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the archive holds private keys: want mode 0600, got %v %v", st.Mode(), err)
	}

	// The old server carries on after the backup: a new image, and the
	// vehicle sees newer image and director versions than the backup has.
	w.add(findSample(t, huHW, "2.0.0"))
	w.publish()
	update(t, v.dir, 0)
	if got := versions(t, v); got["head-unit"] != "2.0.0" || got["dcm"] != "1.1.0" {
		t.Fatalf("before the loss: %v", got)
	}
	w.shutdown()

	restored := filepath.Join(w.dir, "restored")
	if r := serverCmd(t, "restore", "--data", restored, "--from", archive); r.code != 0 || !strings.Contains(r.stdout, "publish again from the signer's workspace") {
		t.Fatalf("restore (it must say a publish is due): %s", r)
	}
	if r := serverCmd(t, "restore", "--data", restored, "--from", archive); r.code != 2 || !strings.Contains(r.stderr, "not empty") {
		t.Fatalf("restore over a non-empty directory: want exit 2, got %s", r)
	}
	for _, f := range []string{"roadsign.db", "online-keys.json", "restored.json", "keys", "blobs"} {
		if _, err := os.Stat(filepath.Join(restored, f)); err != nil {
			t.Errorf("restored data lacks %s: %v", f, err)
		}
	}

	// The new server runs from the restored directory at the same address.
	w.data = restored
	_, addr, _ := strings.Cut(w.url, "://")
	w.extra = append(w.extra, "--listen", addr)
	w.start()
	// Until the signer publishes again, the restored server says so, and
	// the vehicle that saw the later targets refuses the older ones.
	publishDue := func() (string, string) {
		var ready struct{ Notices map[string]string }
		w.api("GET", "/readyz", "", nil, &ready)
		resp, err := http.Get(w.url + "/status")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		page, _ := io.ReadAll(resp.Body)
		return ready.Notices["publish"], string(page)
	}
	if notice, page := publishDue(); !strings.Contains(notice, "publish again") || !strings.Contains(page, "Restored from a backup") || strings.Contains(page, "All systems working") {
		t.Fatalf("before the publish: /readyz notice %q; /status:\n%s", notice, page)
	}
	update(t, v.dir, 3)
	w.add(findSample(t, dcmHW, "2.0.0"))
	w.publish() // the workspace republishes what the backup missed
	if notice, page := publishDue(); notice != "" || strings.Contains(page, "Restored from a backup") {
		t.Fatalf("after the publish: /readyz notice %q; /status:\n%s", notice, page)
	}
	r := update(t, v.dir, 0)
	if got := versions(t, v); got["head-unit"] != "2.0.0" || got["dcm"] != "2.0.0" {
		t.Fatalf("after the restore: %v\n%s", got, r)
	}
}
