package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/roadsign/roadsign/server/softwarerecord"
)

// TestUpdateSetJob: through the API, a head-unit image that declares it
// needs a newer DCM (roadsign-signer add --requires) is refused alone
// (409 requirement_unmet naming the requirement) and goes out only as an
// update set with that DCM: one job for both ECUs. When the set's DCM
// fails its boot check after the head unit switched, both end on their
// old versions and the job has one outcome; the next set installs both.
// The software record keeps each attempt as one entry with its parts.
func TestUpdateSetJob(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.signerInit()
	hu := findSample(t, huHW, "1.1.0")
	w.mustSigner("add", w.ws, filepath.Join(samplesDir(), hu.File), "--ecu", hu.ECU, "--hardware-id", hu.HardwareID,
		"--version", hu.Version, "--release-counter", fmt.Sprint(hu.ReleaseCounter), "--requires", "dcm>=1.1.0")
	w.add(findSample(t, dcmHW, "1.1.0"))
	var bootfail sample
	for _, s := range loadSamples(t) {
		if !s.Bootable && s.HardwareID == dcmHW {
			bootfail = s
			w.add(s)
		}
	}
	w.publish()
	v := w.vehicle(1)
	update(t, v.dir, 0) // the first check-in: the server learns what each ECU runs

	var refusal struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	code := w.api("POST", "/api/v1/jobs", adminToken, map[string]any{"vin": v.vin, "ecu": "head-unit", "version": "1.1.0", "reason": "alone"}, &refusal)
	if code != 409 || refusal.Error.Code != "requirement_unmet" || !strings.Contains(refusal.Error.Message, "dcm>=1.1.0") {
		t.Fatalf("head unit 1.1.0 alone: %d %+v, want 409 requirement_unmet naming dcm>=1.1.0", code, refusal)
	}

	set := func(dcm string) jobView {
		return w.job(adminToken, map[string]any{"vin": v.vin, "reason": "connected services fail",
			"ecus": []map[string]string{{"ecu": "head-unit", "version": "1.1.0"}, {"ecu": "dcm", "version": dcm}}})
	}
	failing := set(bootfail.Version)
	update(t, v.dir, 4)
	if got := versions(t, v); got["head-unit"] != "1.0.0" || got["dcm"] != "1.0.0" {
		t.Fatalf("after the set's DCM failed its boot check: %v, want both on 1.0.0", got)
	}
	j := w.getJob(adminToken, failing.ID)
	outcomes := 0
	for _, e := range j.Events {
		if e.Kind == "succeeded" || e.Kind == "failed" || e.Kind == "rolled_back" {
			outcomes++
		}
	}
	if j.State != "rolled_back" || outcomes != 1 {
		t.Fatalf("the failed set's job: %s with %d outcomes, want rolled_back once: %+v", j.State, outcomes, j.Events)
	}

	good := set("1.1.0")
	update(t, v.dir, 0)
	if got := versions(t, v); got["head-unit"] != "1.1.0" || got["dcm"] != "1.1.0" {
		t.Fatalf("after the good set: %v, want both on 1.1.0", got)
	}
	if j := w.getJob(adminToken, good.ID); j.State != "succeeded" {
		t.Fatalf("the good set's job is %s: %+v", j.State, j.Events)
	}

	var doc softwarerecord.Document
	if code := w.api("GET", "/api/v1/vehicles/"+v.vin+"/software-record", adminToken, nil, &doc); code != 200 {
		t.Fatalf("software record: %d", code)
	}
	var got []string
	for _, r := range doc.Entries {
		if r.JobID != failing.ID && r.JobID != good.ID {
			continue
		}
		parts := []string{}
		for _, p := range r.Parts {
			parts = append(parts, fmt.Sprintf("%s %s->%s", p.ECUType, p.FromVersion, p.ToVersion))
		}
		got = append(got, r.Outcome+": "+strings.Join(parts, ", "))
	}
	want := []string{
		"rolled_back: head-unit 1.0.0->1.1.0, dcm 1.0.0->" + bootfail.Version,
		"installed: head-unit 1.0.0->1.1.0, dcm 1.0.0->1.1.0",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("software record of the sets:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
