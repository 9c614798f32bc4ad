package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAgentUsageErrors(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	hu := filepath.Join(samplesDir(), findSample(t, huHW, "1.0.0").File)
	dcm2 := filepath.Join(samplesDir(), findSample(t, dcmHW, "2.0.0").File)
	base := func(state, vin string, ecus ...string) []string {
		args := []string{"init", "--state", filepath.Join(w.dir, state), "--server", w.url, "--vin", vin,
			"--image-root", filepath.Join(w.ws, "image.root.json"), "--director-root", filepath.Join(w.ws, "director.root.json")}
		for _, e := range ecus {
			args = append(args, "--ecu", e)
		}
		return args
	}
	good := testVIN(7)
	badDigit := good[:8] + string("0123456789X"[(strings.IndexByte("0123456789X", good[8])+1)%11]) + good[9:]
	tests := []struct {
		name    string
		args    []string
		wantMsg string
	}{
		{"VIN too short", base("s1", "JTMBFREV1N00001", "head-unit:H1:"+huHW+":"+hu), "17"},
		{"VIN with O", base("s2", "JTMBFREV1NO000001", "head-unit:H1:"+huHW+":"+hu), "I, O or Q"},
		{"VIN check digit", base("s3", badDigit, "head-unit:H1:"+huHW+":"+hu), "check digit"},
		{"no ECUs", base("s4", good), "no ECUs"},
		{"malformed ECU", base("s5", good, "head-unit:H1"), "TYPE:SERIAL:HWID:FIRMWARE_FILE"},
		{"duplicate serial", base("s6", good, "head-unit:H1:"+huHW+":"+hu, "head-unit:H1:"+huHW+":"+hu), "twice"},
		{"firmware for other hardware", base("s7", good, "dcm:D1:DCM-5G-25MM:"+dcm2), "does not boot"},
		{"unknown simulate fault", []string{"update", "--state", w.dir, "--simulate", "meteor"}, "unknown fault"},
		{"missing state", []string{"update"}, "--state"},
		{"state without a vehicle", []string{"status", "--state", w.dir}, "holds no vehicle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := agent(t, tt.args...)
			if r.code != 2 || !strings.Contains(r.stderr, tt.wantMsg) {
				t.Fatalf("want exit 2 mentioning %q, got %s", tt.wantMsg, r)
			}
		})
	}
}

func transferred(t *testing.T, stdout string) map[string]int64 {
	t.Helper()
	var rep struct {
		ECUs []struct {
			Type        string `json:"type"`
			Transferred int64  `json:"transferred"`
		} `json:"ecus"`
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, stdout)
	}
	out := map[string]int64{}
	for _, e := range rep.ECUs {
		out[e.Type] += e.Transferred
	}
	return out
}

// TestDownloadResumesAfterNetworkDrop: the network drops at 50%, the run
// ends with exit 1 and the active slots untouched; the next run resumes and
// transfers no more than 60% of the image.
func TestDownloadResumesAfterNetworkDrop(t *testing.T) {
	w := newWorld(t)
	w.signerInit()
	dcm := findSample(t, dcmHW, "2.0.0")
	w.add(dcm)
	w.publish()
	v := w.vehicle(1)
	before := activeBytes(t, v)
	r := agent(t, "update", "--state", v.dir, "--simulate", "network-drop:50", "--json")
	if r.code != 1 || !strings.Contains(r.stderr, "the next update resumes") {
		t.Fatalf("dropped update: want exit 1 saying it will resume, got %s", r)
	}
	if after := activeBytes(t, v); !maps.Equal(before, after) {
		t.Fatal("a dropped download changed an active slot")
	}
	r = update(t, v.dir, 0, "--json")
	size, _ := os.Stat(filepath.Join(samplesDir(), dcm.File))
	got := transferred(t, r.stdout)["dcm"]
	t.Logf("resumed transfer: %d of %d bytes", got, size.Size())
	if got > size.Size()*6/10 {
		t.Fatalf("resumed download transferred %d of %d bytes, over 60%%", got, size.Size())
	}
	if versions(t, v)["dcm"] != "2.0.0" {
		t.Fatal("dcm not updated after resume")
	}
	activeBytes(t, v)
}

func TestSimulatedDownloadFaultsAreRefused(t *testing.T) {
	for _, f := range []string{"corrupt-download", "truncate-download"} {
		t.Run(f, func(t *testing.T) {
			w := newWorld(t)
			w.setup(nil)
			v := w.vehicle(1)
			before := activeBytes(t, v)
			r := agent(t, "update", "--state", v.dir, "--simulate", f)
			if r.code != 3 || !strings.Contains(r.stderr, "nothing installed") {
				t.Fatalf("want exit 3, got %s", r)
			}
			if after := activeBytes(t, v); !maps.Equal(before, after) {
				t.Fatal("active slots changed")
			}
			// The fault is gone: the next update installs.
			update(t, v.dir, 0)
		})
	}
}

func TestMissingTargetIsFinal(t *testing.T) {
	w := newWorld(t)
	w.signerInit()
	s := findSample(t, dcmHW, "2.0.0")
	w.add(s)
	w.publish()
	b, _ := os.ReadFile(filepath.Join(samplesDir(), s.File))
	if err := os.Remove(w.blobPath(fmt.Sprintf("repo/targets/dcm/%s.%s", sha256hex(b), s.File))); err != nil {
		t.Fatal(err)
	}
	v := w.vehicle(1)
	r := agent(t, "update", "--state", v.dir)
	if r.code != 1 || !strings.Contains(r.stderr, "not found") {
		t.Fatalf("want exit 1 naming the missing file, got %s", r)
	}
}

func TestTruncatedCachedTimestampHeals(t *testing.T) {
	w := newWorld(t)
	w.signerInit()
	w.add(findSample(t, dcmHW, "1.1.0"))
	w.publish()
	v := w.vehicle(1)
	update(t, v.dir, 0)
	for _, name := range []string{"timestamp.json", "snapshot.json"} {
		p := filepath.Join(v.dir, "tuf", "image", name)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b[:len(b)/2], 0o600); err != nil { // power loss mid-write
			t.Fatal(err)
		}
	}
	w.add(findSample(t, dcmHW, "2.0.0"))
	w.publish()
	update(t, v.dir, 0)
	if versions(t, v)["dcm"] != "2.0.0" {
		t.Fatal("not updated")
	}
}
