package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/fwimage"
)

// TestDowngradeNeedsForcedJobAndPermittingImage: the release counter
// never goes down unless a dealer forces it and the signer permitted it
// for that image; a forced job to a newer image just installs.
func TestDowngradeNeedsForcedJobAndPermittingImage(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.signerInit()
	w.add(findSample(t, dcmHW, "1.1.0"))
	s2 := findSample(t, dcmHW, "2.0.0")
	w.mustSigner("add", w.ws, filepath.Join(samplesDir(), s2.File), "--ecu", "dcm", "--hardware-id", dcmHW, "--version", "2.0.0", "--release-counter", "10")
	img := filepath.Join(w.dir, "dcm-1.5.0.img")
	f, _ := os.Create(img)
	if err := fwimage.Write(f, fwimage.Spec{ECU: "dcm", HardwareID: dcmHW, Version: "1.5.0", Size: 100 << 10}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	w.mustSigner("add", w.ws, img, "--ecu", "dcm", "--hardware-id", dcmHW, "--version", "1.5.0", "--release-counter", "5", "--allow-downgrade")
	w.publish()
	v := w.vehicle(1)

	install := func(version string, forced bool) {
		t.Helper()
		j := w.job(adminToken, map[string]any{"vin": v.vin, "ecu": "dcm", "version": version, "forced": forced, "reason": "test"})
		update(t, v.dir, 0)
		if got := versions(t, v)["dcm"]; got != version || w.getJob(adminToken, j.ID).State != "succeeded" {
			t.Fatalf("after the %s job: dcm %s", version, got)
		}
	}
	install("2.0.0", false)
	for _, tt := range []struct {
		version string
		forced  bool
		want    string
	}{
		{"1.1.0", false, "set forced to downgrade"},
		{"1.1.0", true, "does not permit downgrades"},
		{"1.5.0", false, "set forced to downgrade"},
	} {
		var e struct {
			Error struct{ Message string } `json:"error"`
		}
		code := w.api("POST", "/api/v1/jobs", adminToken, map[string]any{"vin": v.vin, "ecu": "dcm", "version": tt.version, "forced": tt.forced, "reason": "test"}, &e)
		if code != 409 || !strings.Contains(e.Error.Message, tt.want) {
			t.Fatalf("job to %s (forced %v): %d %q, want 409 %q", tt.version, tt.forced, code, e.Error.Message, tt.want)
		}
	}
	install("1.5.0", true) // forced, and the image permits it
	install("2.0.0", true) // forced but not a downgrade: the image need not permit anything

	// A director that names an older image without a forced job is refused
	// by the vehicle itself.
	p, tf := directorTarget(t, dcmHW, "1.1.0", map[string]string{"DCM000001": dcmHW}, nil)
	w.forgeDirector(v, map[string]*metadata.TargetFiles{p: tf}, v.vin)
	r := agent(t, "update", "--state", v.dir)
	if r.code != 3 || !strings.Contains(r.stderr, "rollback refused") {
		t.Fatalf("unforced downgrade: want exit 3, got %s", r)
	}
	if versions(t, v)["dcm"] != "2.0.0" {
		t.Fatal("the refused downgrade changed the DCM")
	}
}
