package hostile

import (
	"archive/tar"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// TestVehicleReportsAreBounded: job events follow the job's state machine
// and size limits; manifests too.
func TestVehicleReportsAreBounded(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	var job struct{ ID string }
	if code := w.api(t, "POST", "/api/v1/jobs", adminToken, map[string]any{"vin": w.vin, "ecu": "dcm", "version": "1.1.0", "reason": "test"}, &job); code != 201 {
		t.Fatalf("job: %d", code)
	}
	event := func(ev map[string]any) (int, string) {
		b, _ := json.Marshal(ev)
		return send(t, w.signed("POST", "/api/v1/jobs/"+job.ID+"/events", b))
	}
	tests := []struct {
		name  string
		ev    map[string]any
		code  int
		ecode string
	}{
		{"a queued job marked succeeded without naming its image", map[string]any{"kind": "succeeded"}, 409, "invalid_transition"},
		{"a 500 KB message", map[string]any{"kind": "downloading", "message": strings.Repeat("x", 500_000)}, 413, "too_large"},
		{"a 2 KB message", map[string]any{"kind": "downloading", "message": strings.Repeat("x", 2_000)}, 400, "invalid"},
		{"rolled back before any switch", map[string]any{"kind": "rolled_back"}, 409, "invalid_transition"},
	}
	for _, tt := range tests {
		if code, ecode := event(tt.ev); code != tt.code || ecode != tt.ecode {
			t.Errorf("%s: %d %s, want %d %s", tt.name, code, ecode, tt.code, tt.ecode)
		}
	}
	manifest := func(nonce string) (int, string) {
		m, _ := json.Marshal(vehicleauth.Manifest{VIN: w.vin, Nonce: nonce, Time: time.Now().UTC()})
		sm, _ := json.Marshal(vehicleauth.SignedManifest{Signed: m, Signature: ed25519.Sign(w.key, m)})
		return send(t, w.signed("POST", "/api/v1/vehicles/"+w.vin+"/manifest", sm))
	}
	if code, _ := manifest(strings.Repeat("ab", 5000)); code != 400 {
		t.Errorf("a 10 KB manifest nonce: %d, want 400", code)
	}
	if code, _ := manifest(strings.Repeat("ab", 50_000)); code != 413 {
		t.Errorf("a 100 KB manifest: %d, want 413", code)
	}
}

// TestPublicPagesHideInternals: /readyz and /status say what is
// unavailable but not the paths or addresses behind it; /status sends the
// pages' security headers. A blob store that fails leaves the replica
// ready but degraded (check-ins and director metadata do not need it).
func TestPublicPagesHideInternals(t *testing.T) {
	s := start(t)
	if err := os.RemoveAll(filepath.Join(s.data, "blobs", ".tmp")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/readyz", "/status"} {
		resp, err := http.Get(s.url + p)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1<<16)
		n, _ := resp.Body.Read(b)
		resp.Body.Close()
		body := string(b[:n])
		want := 503
		if p == "/readyz" {
			want = 200
			if !strings.Contains(body, `"status":"degraded"`) || !strings.Contains(body, `"blobs":"unavailable"`) {
				t.Errorf("/readyz does not say the blob store is down:\n%s", body)
			}
		}
		if resp.StatusCode != want || strings.Contains(body, s.dir) || strings.Contains(body, "no such file") {
			t.Errorf("%s: %d, shows internals:\n%s", p, resp.StatusCode, body)
		}
		if p == "/status" {
			for _, h := range []string{"Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options"} {
				if resp.Header.Get(h) == "" {
					t.Errorf("/status lacks %s", h)
				}
			}
		}
	}
	if !strings.Contains(s.log.String(), "readiness check failed") {
		t.Error("the cause should be in the server's log")
	}
}

// TestClientAddressesAreNotTakenFromHeaders: X-Forwarded-For from a
// client that is not a trusted proxy is not what the log records.
func TestClientAddressesAreNotTakenFromHeaders(t *testing.T) {
	s := start(t)
	req, _ := http.NewRequest("GET", s.url+"/api/v1/openapi.json", nil)
	req.Header.Set("X-Forwarded-For", "203.0.113.77")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	time.Sleep(100 * time.Millisecond)
	log := s.log.String()
	if strings.Contains(log, "203.0.113.77") || !strings.Contains(log, `"remote":"127.0.0.1"`) {
		t.Fatalf("the log believes X-Forwarded-For:\n%s", log)
	}
}

// TestSmallerRefusals: a root of version 0 is 400 (not 500); a
// subscription cannot be set to the year 9999; the database and the data
// directory are private.
func TestSmallerRefusals(t *testing.T) {
	s := start(t)
	root := metadata.Root(time.Now().Add(time.Hour).UTC().Truncate(time.Second))
	root.Signed.Version = 0
	raw, _ := root.ToBytes(false)
	var e apiError
	if code := s.api(t, "POST", "/api/v1/repo/publish", adminToken, map[string]any{"imageRoots": []json.RawMessage{raw}}, &e); code != 400 {
		t.Errorf("a root of version 0: %d %s, want 400", code, e.Error.Message)
	}
	s.account(t, "owner", "alice")
	s.vehicle(t, "JTMBFREV1N0000001")
	if code := s.api(t, "POST", "/api/v1/vehicles/JTMBFREV1N0000001/owner", adminToken,
		map[string]string{"owner": "alice", "subscriptionEnds": "9999-12-31T00:00:00Z"}, nil); code != 400 {
		t.Errorf("a subscription to 9999: %d, want 400", code)
	}
	for p, want := range map[string]os.FileMode{filepath.Join(s.data, "roadsign.db"): 0o600, s.data: 0o700} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", filepath.Base(p), fi.Mode().Perm(), want)
		}
	}
}

// TestUSBBundlesStayConfined: the agent refuses a directory bundle whose
// metadata directory is a symlink out of it, and an archive with more
// entries than a bundle has.
func TestUSBBundlesStayConfined(t *testing.T) {
	w := newWorld(t)
	dir, outside := filepath.Join(w.dir, "usb-dir"), filepath.Join(w.dir, "elsewhere")
	os.MkdirAll(dir, 0o700)
	os.MkdirAll(outside, 0o700)
	os.WriteFile(filepath.Join(dir, "bundle.json"), []byte(fmt.Sprintf(`{"vin":%q,"validUntil":"2099-01-01T00:00:00Z"}`, w.vin)), 0o600)
	os.WriteFile(filepath.Join(outside, "1.root.json"), []byte("{}"), 0o600)
	os.Symlink(outside, filepath.Join(dir, "director"))
	if code, out := run(t, "roadsign-agent", "install-usb", "--state", w.car, dir); code != 3 {
		t.Errorf("a bundle with a symlinked directory: exit %d, want 3\n%s", code, out)
	}

	archive := filepath.Join(w.dir, "many.tar")
	f, _ := os.Create(archive)
	tw := tar.NewWriter(f)
	for i := range 2000 {
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("image/%d.json", i), Mode: 0o644, Size: 2, Typeflag: tar.TypeReg})
		tw.Write([]byte("{}"))
	}
	tw.Close()
	f.Close()
	if code, out := run(t, "roadsign-agent", "install-usb", "--state", w.car, archive); code != 3 || !strings.Contains(out, "entries") {
		t.Errorf("an archive of 2000 entries: exit %d, want 3\n%s", code, out)
	}
}
