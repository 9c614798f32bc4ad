package jobs_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/jobs"
	"github.com/roadsign/roadsign/server/sqlite"
)

// setImage is a test image with a sha256 of its own (fill) and the
// requirements it declares.
func setImage(ecu, hw, version string, counter int64, fill byte, requires ...meta.Requirement) *metadata.TargetFiles {
	b, _ := json.Marshal(meta.Custom{ECU: ecu, HardwareIDs: []string{hw}, Version: version, ReleaseCounter: counter, Requires: requires})
	raw := json.RawMessage(b)
	sum := make([]byte, 32)
	for i := range sum {
		sum[i] = fill
	}
	return &metadata.TargetFiles{Length: 10, Hashes: metadata.Hashes{"sha256": sum}, Custom: &raw}
}

func shaOf(tf *metadata.TargetFiles) string { return hex.EncodeToString(tf.Hashes["sha256"]) }

// setSetup is a vehicle with a head unit on 2.0.0 and a DCM on 1.0.0,
// and images where head unit 3.0.0 needs DCM 2.1.0 or newer.
func setSetup(t *testing.T) (*jobs.Service, server.Store, images) {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	v := server.Vehicle{VIN: "VIN1", Model: "m", Year: 2024, Region: "EU", PublicKey: []byte{1},
		ECUs: []server.ECU{{Serial: "HU1", Type: "head-unit", HardwareID: "HU-A"}, {Serial: "DCM1", Type: "dcm", HardwareID: "DCM-4G"}}}
	if err := st.CreateVehicle(ctx, v); err != nil {
		t.Fatal(err)
	}
	imgs := images{
		"head-unit/hu-2.0.0.img": setImage("head-unit", "HU-A", "2.0.0", 1, 1),
		"head-unit/hu-3.0.0.img": setImage("head-unit", "HU-A", "3.0.0", 2, 2, meta.Requirement{ECU: "dcm", MinVersion: "2.1.0"}),
		"dcm/dcm-1.0.0.img":      setImage("dcm", "DCM-4G", "1.0.0", 1, 3),
		"dcm/dcm-2.0.0.img":      setImage("dcm", "DCM-4G", "2.0.0", 2, 4),
		"dcm/dcm-2.1.0.img":      setImage("dcm", "DCM-4G", "2.1.0", 3, 5),
	}
	report(t, st, "2.0.0", "1.0.0")
	c := &clock{t: time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)}
	svc, err := jobs.New(jobs.Config{Store: st, Images: imgs, MaxAttempts: 3, RetryBase: time.Minute, Timeout: time.Hour, Now: c.now, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return svc, st, imgs
}

// report records what the vehicle's ECUs run, as a check-in does.
func report(t *testing.T, st server.Store, hu, dcm string) {
	t.Helper()
	err := st.ReportECUs(context.Background(), "VIN1", []server.ECU{
		{Serial: "HU1", InstalledTarget: "head-unit/hu-" + hu + ".img", InstalledVersion: hu},
		{Serial: "DCM1", InstalledTarget: "dcm/dcm-" + dcm + ".img", InstalledVersion: dcm},
	}, server.Health{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
}

var newSet = jobs.CreateRequest{VIN: "VIN1", ECUs: []jobs.PartRequest{{ECU: "head-unit", Version: "3.0.0"}, {ECU: "dcm", Version: "2.1.0"}}, Reason: "connected services fail"}

// TestUpdateSetIsOneJob: several ECUs named together are one job with
// its parts in the stated order; it succeeds only when the vehicle names
// every part's image, and the software record keeps it as one entry.
func TestUpdateSetIsOneJob(t *testing.T) {
	svc, st, imgs := setSetup(t)
	ctx := context.Background()
	j, err := svc.Create(ctx, dealer, newSet)
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Parts) != 2 || j.Parts[0].ECUSerial != "HU1" || j.Parts[1].ECUSerial != "DCM1" || j.Parts[1].TargetPath != "dcm/dcm-2.1.0.img" {
		t.Fatalf("parts %+v, want HU1 then DCM1", j.Parts)
	}
	all, err := svc.ByVIN(ctx, "VIN1")
	if err != nil || len(all) != 1 || len(all[0].Parts) != 2 {
		t.Fatalf("jobs of VIN1: %+v %v (want the one set with its parts)", all, err)
	}
	hu, dcm := shaOf(imgs["head-unit/hu-3.0.0.img"]), shaOf(imgs["dcm/dcm-2.1.0.img"])
	for _, k := range []string{"downloading", "installing", "rebooting"} {
		if _, err := svc.Event(ctx, "VIN1", j.ID, jobs.EventRequest{Kind: k}); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range []struct {
		name string
		r    jobs.EventRequest
	}{
		{"one image's sha256 alone", jobs.EventRequest{Kind: "succeeded", SHA256: hu}},
		{"one part missing", jobs.EventRequest{Kind: "succeeded", Installed: map[string]string{"HU1": hu}}},
		{"a part on another image", jobs.EventRequest{Kind: "succeeded", Installed: map[string]string{"HU1": hu, "DCM1": shaOf(imgs["dcm/dcm-2.0.0.img"])}}},
		{"an ECU not in the set", jobs.EventRequest{Kind: "succeeded", Installed: map[string]string{"HU1": hu, "DCMX": dcm}}},
	} {
		if _, err := svc.Event(ctx, "VIN1", j.ID, bad.r); err == nil {
			t.Fatalf("%s: succeeded was accepted", bad.name)
		}
	}
	got, err := svc.Event(ctx, "VIN1", j.ID, jobs.EventRequest{Kind: "succeeded", Installed: map[string]string{"HU1": hu, "DCM1": dcm}})
	if err != nil || got.State != server.JobSucceeded {
		t.Fatalf("succeeded naming both images: %+v %v", got, err)
	}
	recs, err := st.SoftwareRecords(ctx, "VIN1", server.RecordQuery{Limit: 10})
	if err != nil || len(recs) != 1 {
		t.Fatalf("software record: %+v %v (want one entry for the set)", recs, err)
	}
	r := recs[0]
	want := []server.RecordPart{
		{ECUSerial: "HU1", ECUType: "head-unit", FromVersion: "2.0.0", ToVersion: "3.0.0", ToSHA256: hu},
		{ECUSerial: "DCM1", ECUType: "dcm", FromVersion: "1.0.0", ToVersion: "2.1.0", ToSHA256: dcm},
	}
	if r.ECUType != jobs.SetECUType || r.Outcome != "installed" || len(r.Parts) != 2 || r.Parts[0] != want[0] || r.Parts[1] != want[1] ||
		r.ToVersion != "head-unit 3.0.0 + dcm 2.1.0" {
		t.Fatalf("set entry %+v, want parts %+v", r, want)
	}
}

// TestRolledBackSetIsOneOutcome: a set that rolled back is one entry.
func TestRolledBackSetIsOneOutcome(t *testing.T) {
	svc, st, _ := setSetup(t)
	ctx := context.Background()
	j, err := svc.Create(ctx, dealer, newSet)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"downloading", "installing", "rebooting", "rolled_back"} {
		if _, err := svc.Event(ctx, "VIN1", j.ID, jobs.EventRequest{Kind: k, Message: "dcm 2.1.0 failed its boot check"}); err != nil {
			t.Fatal(err)
		}
	}
	recs, _ := st.SoftwareRecords(ctx, "VIN1", server.RecordQuery{Limit: 10})
	if len(recs) != 1 || recs[0].Outcome != "rolled_back" || len(recs[0].Parts) != 2 {
		t.Fatalf("software record %+v, want one rolled_back entry with two parts", recs)
	}
}

// TestRequirementsHoldAtCreation: a job whose image declares a
// requirement the vehicle would break is refused with requirement_unmet
// naming it; the set that moves both ECUs is not.
func TestRequirementsHoldAtCreation(t *testing.T) {
	svc, st, _ := setSetup(t)
	ctx := context.Background()
	for _, c := range []struct {
		name     string
		r        jobs.CreateRequest
		code     string
		contains string
	}{
		{"head unit alone, DCM too old", jobs.CreateRequest{VIN: "VIN1", ECU: "head-unit", Version: "3.0.0", Reason: "r"}, errcode.RequirementUnmet, "requires dcm>=2.1.0, and the dcm would run 1.0.0"},
		{"a set with a DCM too old", jobs.CreateRequest{VIN: "VIN1", ECUs: []jobs.PartRequest{{ECU: "head-unit", Version: "3.0.0"}, {ECU: "dcm", Version: "2.0.0"}}, Reason: "r"}, errcode.RequirementUnmet, "the dcm would run 2.0.0"},
		{"ecu and ecus", jobs.CreateRequest{VIN: "VIN1", ECU: "dcm", Version: "2.1.0", ECUs: newSet.ECUs, Reason: "r"}, errcode.Invalid, "not both"},
		{"one ECU twice", jobs.CreateRequest{VIN: "VIN1", ECUs: []jobs.PartRequest{{ECU: "dcm", Version: "2.0.0"}, {ECU: "DCM1", Version: "2.1.0"}}, Reason: "r"}, errcode.Invalid, "twice"},
		{"more ECUs than the car has", jobs.CreateRequest{VIN: "VIN1", ECUs: []jobs.PartRequest{{ECU: "dcm"}, {ECU: "head-unit"}, {ECU: "dcm"}}, Reason: "r"}, errcode.Invalid, "has 2"},
		{"a set without a reason", jobs.CreateRequest{VIN: "VIN1", ECUs: newSet.ECUs}, errcode.Invalid, "reason"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := svc.Create(ctx, dealer, c.r)
			var se *server.Error
			if !errors.As(err, &se) || se.Code != c.code || !strings.Contains(err.Error(), c.contains) {
				t.Fatalf("err = %v, want %s saying %q", err, c.code, c.contains)
			}
		})
	}
	if js, _ := svc.ByVIN(ctx, "VIN1"); len(js) != 0 {
		t.Fatalf("refused requests left %d jobs", len(js))
	}
	if _, err := svc.Create(ctx, dealer, newSet); err != nil {
		t.Fatalf("the set that moves both: %v", err)
	}
	report(t, st, "2.0.0", "2.1.0")
	if _, err := svc.Create(ctx, dealer, jobs.CreateRequest{VIN: "VIN1", ECU: "head-unit", Version: "3.0.0", Reason: "r"}); err != nil {
		t.Fatalf("head unit alone once the DCM runs 2.1.0: %v", err)
	}
}
