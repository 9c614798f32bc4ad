package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/agent"
	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/client/fault"
	"github.com/roadsign/roadsign/client/usb"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/testsupport"
)

var vin = testsupport.VIN("1RSDA0000000000A1")

var (
	hu1  = testsupport.Image{ECU: "head-unit", HardwareID: "HU-A", Version: "1.0.0", ReleaseCounter: 1}
	hu2  = testsupport.Image{ECU: "head-unit", HardwareID: "HU-A", Version: "2.0.0", ReleaseCounter: 2}
	dcm1 = testsupport.Image{ECU: "dcm", HardwareID: "DCM-A", Version: "1.0.0", ReleaseCounter: 1}
	dcm2 = testsupport.Image{ECU: "dcm", HardwareID: "DCM-A", Version: "2.0.0", ReleaseCounter: 2}
)

// car is a provisioned vehicle (head unit HU1 and DCM DCM1 on 1.0.0)
// whose agent talks to an Uptane fixture.
type car struct {
	u *testsupport.Uptane
	v *vehicle.Vehicle
	a *agent.Agent
}

func newCar(t *testing.T) *car {
	t.Helper()
	u := testsupport.NewUptane(t, vin)
	u.AddImage("hu-1.0.bin", hu1)
	u.AddImage("dcm-1.0.bin", dcm1)
	u.AddImage("hu-2.0.bin", hu2)
	u.AddImage("dcm-2.0.bin", dcm2)
	u.Publish()
	dir := t.TempDir()
	firmware := map[string]string{}
	for serial, im := range map[string]testsupport.Image{"HU1": hu1, "DCM1": dcm1} {
		p := filepath.Join(dir, serial+".bin")
		if err := os.WriteFile(p, testsupport.ImageBytes(t, im), 0o600); err != nil {
			t.Fatal(err)
		}
		firmware[serial] = p
	}
	cfg := vehicle.Config{VIN: vin, Server: u.URL, ECUs: []vehicle.ECUConfig{
		{Type: "head-unit", Serial: "HU1", HardwareID: "HU-A"}, {Type: "dcm", Serial: "DCM1", HardwareID: "DCM-A"}}}
	v, err := vehicle.Create(filepath.Join(dir, "state"), cfg, u.ImageRoot(), u.DirectorRoot(), firmware, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	key, err := keys.Load(v.KeyPath())
	if err != nil {
		t.Fatal(err)
	}
	policy := download.Policy{MaxAttempts: 2, BaseBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
		Sleep: func(ctx context.Context, d time.Duration) error { return ctx.Err() }}
	a := &agent.Agent{V: v, Client: http.DefaultClient, Policy: policy, Progress: io.Discard, Now: time.Now,
		API: &api.Client{Base: u.URL, HTTP: http.DefaultClient, VIN: vin, Key: key.Private, Now: time.Now},
		Log: slog.New(slog.DiscardHandler)}
	return &car{u: u, v: v, a: a}
}

// running is the version each ECU's active slot runs.
func (c *car) running(t *testing.T) map[string]string {
	t.Helper()
	st, err := agent.VehicleStatus(c.v)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range st.ECUs {
		out[e.Serial] = e.Version
	}
	return out
}

func outcomes(rep agent.Report) map[string]string {
	out := map[string]string{}
	for _, e := range rep.ECUs {
		out[e.Serial] = e.Outcome
	}
	return out
}

var both = map[string]string{"HU1": "HU-A", "DCM1": "DCM-A"}

// TestPlanRefusals: every way the director's assignment can disagree
// with this vehicle or the image repository refuses the whole cycle,
// installs nothing, and tells the named job its attempt failed.
func TestPlanRefusals(t *testing.T) {
	tests := []struct {
		name   string
		vin    string
		assign []testsupport.Assign
		says   string
		// told: the job named hears its attempt failed (not when the
		// metadata is another car's, or names no ECU of a job's).
		told bool
	}{
		{"metadata for another VIN", testsupport.VIN("1RSDA0000000000B2"),
			[]testsupport.Assign{{Path: "hu-2.0.bin", ECUs: map[string]string{"HU1": "HU-A"}, JobID: "j1"}}, "metadata is for VIN", false},
		{"a target naming no ECU", "",
			[]testsupport.Assign{{Path: "hu-2.0.bin", ECUs: nil, JobID: "j1"}}, "names no ECU", false},
		{"an image the image repository does not list", "",
			[]testsupport.Assign{{Path: "hu-9.0.bin", ECUs: map[string]string{"HU1": "HU-A"}, JobID: "j1", Length: 4096, SHA256: make([]byte, 32)}}, "not in the image repository", true},
		{"a length that differs from the image repository's", "",
			[]testsupport.Assign{{Path: "hu-2.0.bin", ECUs: map[string]string{"HU1": "HU-A"}, JobID: "j1", Length: 9999}}, "length or hashes differ", true},
		{"a hash that differs from the image repository's", "",
			[]testsupport.Assign{{Path: "hu-2.0.bin", ECUs: map[string]string{"HU1": "HU-A"}, JobID: "j1", SHA256: make([]byte, 32)}}, "length or hashes differ", true},
		{"an ECU serial the vehicle does not have", "",
			[]testsupport.Assign{{Path: "hu-2.0.bin", ECUs: map[string]string{"HU9": "HU-A"}, JobID: "j1"}}, "does not have", true},
		{"one ECU assigned twice", "",
			[]testsupport.Assign{{Path: "hu-1.0.bin", ECUs: map[string]string{"HU1": "HU-A"}}, {Path: "hu-2.0.bin", ECUs: map[string]string{"HU1": "HU-A"}, JobID: "j1"}}, "assigned twice", true},
		{"the wrong hardware ID for the serial", "",
			[]testsupport.Assign{{Path: "hu-2.0.bin", ECUs: map[string]string{"HU1": "HU-B"}, JobID: "j1"}}, "is for hardware HU-B", true},
		{"an image built for another ECU type", "",
			[]testsupport.Assign{{Path: "dcm-2.0.bin", ECUs: map[string]string{"HU1": "HU-A"}, JobID: "j1"}}, "a dcm image", true},
		{"a lower release counter without a forced job", "",
			[]testsupport.Assign{{Path: "hu-0.5.bin", ECUs: map[string]string{"HU1": "HU-A"}, JobID: "j1"}}, "rollback refused", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCar(t)
			c.u.AddImage("hu-0.5.bin", testsupport.Image{ECU: "head-unit", HardwareID: "HU-A", Version: "0.5.0", ReleaseCounter: 0})
			c.u.Direct(tt.vin, tt.assign...)
			c.u.Publish()
			_, err := c.a.Update(context.Background())
			if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("update: %v, want a refusal saying %q", err, tt.says)
			}
			if got := c.running(t); got["HU1"] != "1.0.0" || got["DCM1"] != "1.0.0" {
				t.Fatalf("after a refusal the car runs %v", got)
			}
			failed := false
			for _, e := range c.u.Events() {
				failed = failed || (e.Job == "j1" && e.Kind == "failed")
			}
			if failed != tt.told {
				t.Fatalf("job j1 told of its failure: %v, want %v: %+v", failed, tt.told, c.u.Events())
			}
		})
	}
}

// TestUpdateInstallsReportsAndChecksIn: both ECUs move to what the
// director assigns, the job hears each phase, the car checks in and
// reauthorizes; the next cycle has nothing to do, and a job for what an
// ECU runs already succeeds at once.
func TestUpdateInstallsReportsAndChecksIn(t *testing.T) {
	c := newCar(t)
	c.u.Direct("", testsupport.Assign{Path: "hu-2.0.bin", ECUs: map[string]string{"HU1": "HU-A"}, JobID: "job-hu"},
		testsupport.Assign{Path: "dcm-2.0.bin", ECUs: map[string]string{"DCM1": "DCM-A"}})
	c.u.Publish()
	rep, err := c.a.Update(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := outcomes(rep); got["HU1"] != agent.Installed || got["DCM1"] != agent.Installed {
		t.Fatalf("outcomes %v", got)
	}
	if got := c.running(t); got["HU1"] != "2.0.0" || got["DCM1"] != "2.0.0" {
		t.Fatalf("runs %v", got)
	}
	var kinds []string
	for _, e := range c.u.Events() {
		if e.Job == "job-hu" && (len(kinds) == 0 || kinds[len(kinds)-1] != e.Kind) {
			kinds = append(kinds, e.Kind) // downloading repeats with its progress
		}
	}
	if strings.Join(kinds, " ") != "downloading installing rebooting succeeded" {
		t.Fatalf("job events %v", kinds)
	}
	if c.u.Manifests() < 2 {
		t.Fatalf("%d check-ins, want the first one and one after the cycle", c.u.Manifests())
	}
	if auth, err := c.v.Auth(); err != nil || auth.State != vehicle.Authorized {
		t.Fatalf("after the install: %+v %v", auth, err)
	}

	c.u.Direct("", testsupport.Assign{Path: "hu-2.0.bin", ECUs: map[string]string{"HU1": "HU-A"}, JobID: "job-again"})
	c.u.Publish()
	rep, err = c.a.Update(context.Background())
	if err != nil || outcomes(rep)["HU1"] != agent.UpToDate {
		t.Fatalf("second cycle: %+v %v", rep, err)
	}
	ok := false
	for _, e := range c.u.Events() {
		ok = ok || (e.Job == "job-again" && e.Kind == "succeeded" && strings.Contains(e.Message, "already installed"))
	}
	if !ok {
		t.Fatalf("the job for what runs already did not succeed: %+v", c.u.Events())
	}
}

func TestBootCheckFailureRollsBack(t *testing.T) {
	c := newCar(t)
	c.u.AddImage("dcm-3.0.bin", testsupport.Image{ECU: "dcm", HardwareID: "DCM-A", Version: "3.0.0", ReleaseCounter: 3, Unbootable: true})
	c.u.Direct("", testsupport.Assign{Path: "dcm-3.0.bin", ECUs: map[string]string{"DCM1": "DCM-A"}, JobID: "j"})
	c.u.Publish()
	rep, err := c.a.Update(context.Background())
	if !errors.Is(err, client.ErrRolledBack) || outcomes(rep)["DCM1"] != agent.RolledBack {
		t.Fatalf("update: %+v %v", rep, err)
	}
	if got := c.running(t); got["DCM1"] != "1.0.0" {
		t.Fatalf("runs %v after a failed boot check", got)
	}
	dtcs, err := c.v.DTCs()
	if err != nil || len(dtcs) == 0 {
		t.Fatalf("no DCM trouble code after a rolled-back DCM image: %v %v", dtcs, err)
	}
	// Without a job, an image that failed here is not tried again.
	c.u.Direct("", testsupport.Assign{Path: "dcm-3.0.bin", ECUs: map[string]string{"DCM1": "DCM-A"}})
	c.u.Publish()
	rep, err = c.a.Update(context.Background())
	if err != nil || outcomes(rep)["DCM1"] != agent.UpToDate || !strings.Contains(rep.ECUs[1].Detail, "failed its boot check") {
		t.Fatalf("again: %+v %v", rep, err)
	}
}

// TestUpdateSetGoesBackTogether: the ECUs one cycle switches are one
// update set; when one fails its boot check, the ones that switched
// before it go back to their old images and the ones after it never
// switch, so head unit and DCM never end on mismatched firmware. Only
// the ECU whose own image failed gets a trouble code and keeps the image
// from being tried again.
func TestUpdateSetGoesBackTogether(t *testing.T) {
	tests := []struct {
		name       string
		unbootable string // which ECU's new image fails its boot check
		dtc        bool
	}{
		{"the DCM fails after the head unit passed", "DCM1", true},
		{"the head unit fails first", "HU1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCar(t)
			hu, dcm := "hu-2.0.bin", "dcm-2.0.bin"
			if tt.unbootable == "DCM1" {
				dcm = "dcm-3.0.bin"
				c.u.AddImage(dcm, testsupport.Image{ECU: "dcm", HardwareID: "DCM-A", Version: "3.0.0", ReleaseCounter: 3, Unbootable: true})
			} else {
				hu = "hu-3.0.bin"
				c.u.AddImage(hu, testsupport.Image{ECU: "head-unit", HardwareID: "HU-A", Version: "3.0.0", ReleaseCounter: 3, Unbootable: true})
			}
			c.u.Direct("", testsupport.Assign{Path: hu, ECUs: map[string]string{"HU1": "HU-A"}, JobID: "job-hu"},
				testsupport.Assign{Path: dcm, ECUs: map[string]string{"DCM1": "DCM-A"}, JobID: "job-dcm"})
			c.u.Publish()
			rep, err := c.a.Update(context.Background())
			if !errors.Is(err, client.ErrRolledBack) {
				t.Fatalf("update: %v, want rolled back", err)
			}
			// The head unit switches first: it rolls back with the DCM, or,
			// when it fails itself, the DCM never switches.
			want := map[string]string{"HU1": agent.RolledBack, "DCM1": agent.RolledBack}
			if tt.unbootable == "HU1" {
				want["DCM1"] = agent.Failed
			}
			if got := outcomes(rep); got["HU1"] != want["HU1"] || got["DCM1"] != want["DCM1"] {
				t.Fatalf("outcomes %v, want %v", got, want)
			}
			if got := c.running(t); got["HU1"] != "1.0.0" || got["DCM1"] != "1.0.0" {
				t.Fatalf("runs %v after its update set failed, want both on 1.0.0", got)
			}
			// The failing ECU's job rolled back; the other's attempt failed
			// (it is retried: its image was fine).
			last := map[string]string{}
			for _, e := range c.u.Events() {
				last[e.Job] = e.Kind
			}
			failing, other := "job-dcm", "job-hu"
			if tt.unbootable == "HU1" {
				failing, other = other, failing
			}
			if last[failing] != "rolled_back" || last[other] != "failed" {
				t.Fatalf("last job events %v, want %s rolled_back and %s failed", last, failing, other)
			}
			if dtcs, _ := c.v.DTCs(); (len(dtcs) > 0) != tt.dtc {
				t.Fatalf("DCM trouble codes %v, want some: %v", dtcs, tt.dtc)
			}
			if set, err := c.v.UpdateSet(); err != nil || set != nil {
				t.Fatalf("update set journal left behind: %+v %v", set, err)
			}
		})
	}
}

// TestUpdateSetJobReportsOnce: when the director names one job for both
// ECUs (an update set job), the agent reports one stream of progress
// that never goes back a phase and one outcome: succeeded naming both
// images, or, when the DCM fails its boot check after the head unit
// switched, rolled back, with both ECUs on their old images.
func TestUpdateSetJobReportsOnce(t *testing.T) {
	for _, tt := range []struct {
		name    string
		dcm     string
		outcome string
	}{
		{"both install", "dcm-2.0.bin", "succeeded"},
		{"the DCM fails its boot check", "dcm-3.0.bin", "rolled_back"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCar(t)
			c.u.AddImage("dcm-3.0.bin", testsupport.Image{ECU: "dcm", HardwareID: "DCM-A", Version: "3.0.0", ReleaseCounter: 3, Unbootable: true})
			c.u.Direct("", testsupport.Assign{Path: "hu-2.0.bin", ECUs: map[string]string{"HU1": "HU-A"}, JobID: "job-set"},
				testsupport.Assign{Path: tt.dcm, ECUs: map[string]string{"DCM1": "DCM-A"}, JobID: "job-set"})
			c.u.Publish()
			c.a.Update(context.Background())
			phase := map[string]int{"downloading": 1, "installing": 2, "rebooting": 3}
			seen, outcomes := 0, 0
			var last testsupport.JobEvent
			for _, e := range c.u.Events() {
				if p, ok := phase[e.Kind]; ok {
					if p < seen {
						t.Fatalf("events went back to %s: %+v", e.Kind, c.u.Events())
					}
					seen = p
					continue
				}
				outcomes++
				last = e
			}
			if outcomes != 1 || last.Kind != tt.outcome {
				t.Fatalf("%d outcomes, last %+v; want one %s: %+v", outcomes, last, tt.outcome, c.u.Events())
			}
			want := map[string]string{"HU1": "1.0.0", "DCM1": "1.0.0"}
			if tt.outcome == "succeeded" {
				want = map[string]string{"HU1": "2.0.0", "DCM1": "2.0.0"}
				if len(last.Installed) != 2 || last.Installed["HU1"] == "" || last.Installed["DCM1"] == "" {
					t.Fatalf("succeeded names %v, want both ECUs' images", last.Installed)
				}
			}
			if got := c.running(t); got["HU1"] != want["HU1"] || got["DCM1"] != want["DCM1"] {
				t.Fatalf("runs %v, want %v", got, want)
			}
		})
	}
}

// TestPowerLossDuringAnUpdateSet cuts the power at every boot-control
// point of a two-ECU update set (each ECU's switch and commit): after
// the next start, both ECUs run their old images or both their new ones,
// never one of each, and the cycle after that completes the set.
func TestPowerLossDuringAnUpdateSet(t *testing.T) {
	type cut struct {
		phase string
		skip  int
		want  string // what both run after the restart
	}
	var cuts []cut
	for skip := range 2 {
		cuts = append(cuts, cut{"switch", skip, "1.0.0"}, cut{"commit", skip, "2.0.0"})
	}
	for _, k := range cuts {
		t.Run(fmt.Sprintf("%s of ECU %d", k.phase, k.skip+1), func(t *testing.T) {
			c := newCar(t)
			c.u.Direct("", testsupport.Assign{Path: "hu-2.0.bin", ECUs: map[string]string{"HU1": "HU-A"}},
				testsupport.Assign{Path: "dcm-2.0.bin", ECUs: map[string]string{"DCM1": "DCM-A"}})
			c.u.Publish()
			type powerCut struct{}
			c.a.Faults = fault.Set{PowerLoss: k.phase, PowerLossSkip: k.skip, Kill: func() { panic(powerCut{}) }}
			func() {
				defer func() {
					if r := recover(); r != nil {
						if _, ok := r.(powerCut); !ok {
							panic(r)
						}
					}
				}()
				c.a.Update(context.Background())
				t.Fatal("the power was never cut")
			}()
			// The next start: the same state, no more faults. Recovery
			// runs first; the director still assigns the set, so the
			// cycle may complete it: look at what recovery left.
			c.a.Faults = fault.Set{}
			c.u.Direct("")
			c.u.Publish()
			rep, _ := c.a.Update(context.Background())
			if got := c.running(t); got["HU1"] != k.want || got["DCM1"] != k.want {
				t.Fatalf("after the restart: runs %v (recovery: %+v), want both on %s", got, rep.Recovery, k.want)
			}
			c.u.Direct("", testsupport.Assign{Path: "hu-2.0.bin", ECUs: map[string]string{"HU1": "HU-A"}},
				testsupport.Assign{Path: "dcm-2.0.bin", ECUs: map[string]string{"DCM1": "DCM-A"}})
			c.u.Publish()
			if _, err := c.a.Update(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := c.running(t); got["HU1"] != "2.0.0" || got["DCM1"] != "2.0.0" {
				t.Fatalf("the set did not complete afterwards: %v", got)
			}
		})
	}
}

func TestDowngradeNeedsAForcedJobAndAPermittingImage(t *testing.T) {
	tests := []struct {
		name           string
		allowDowngrade bool
		forced         bool
		installed      bool
	}{
		{"neither", false, false, false},
		{"a forced job, an image that does not permit it", false, true, false},
		{"an image that permits it, no forced job", true, false, false},
		{"both", true, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCar(t)
			c.u.AddImage("hu-0.9.bin", testsupport.Image{ECU: "head-unit", HardwareID: "HU-A", Version: "0.9.0", ReleaseCounter: 0, AllowDowngrade: tt.allowDowngrade})
			c.u.Direct("", testsupport.Assign{Path: "hu-0.9.bin", ECUs: map[string]string{"HU1": "HU-A"}, JobID: "j", Downgrade: tt.forced})
			c.u.Publish()
			_, err := c.a.Update(context.Background())
			if got := c.running(t)["HU1"]; (got == "0.9.0") != tt.installed || (err == nil) != tt.installed {
				t.Fatalf("runs %s, err %v; want installed=%v", got, err, tt.installed)
			}
		})
	}
}

func TestCanceledJobInstallsNothing(t *testing.T) {
	c := newCar(t)
	c.u.CancelJob("gone")
	c.u.Direct("", testsupport.Assign{Path: "hu-2.0.bin", ECUs: map[string]string{"HU1": "HU-A"}, JobID: "gone"})
	c.u.Publish()
	rep, err := c.a.Update(context.Background())
	if err != nil || outcomes(rep)["HU1"] != agent.Canceled || c.running(t)["HU1"] != "1.0.0" {
		t.Fatalf("update: %+v %v, runs %v", rep, err, c.running(t))
	}
}

func TestMaintenanceWindowWaits(t *testing.T) {
	c := newCar(t)
	now := time.Now().UTC()
	closed := map[string]string{"start": now.Add(2 * time.Hour).Format("15:04"), "end": now.Add(3 * time.Hour).Format("15:04"), "tz": "UTC"}
	c.u.Direct("", testsupport.Assign{Path: "hu-2.0.bin", ECUs: map[string]string{"HU1": "HU-A"}, JobID: "j", Window: closed})
	c.u.Publish()
	rep, err := c.a.Update(context.Background())
	if err != nil || outcomes(rep)["HU1"] != agent.Waiting || c.running(t)["HU1"] != "1.0.0" {
		t.Fatalf("outside its window: %+v %v", rep, err)
	}
}

// TestMirrorServingOtherBytes: a target served longer than signed is
// refused; a server that drops the connection leaves the download to
// resume.
func TestMirrorServingOtherBytes(t *testing.T) {
	c := newCar(t)
	c.u.AddImage("hu-3.0.bin", testsupport.Image{ECU: "head-unit", HardwareID: "HU-A", Version: "3.0.0", ReleaseCounter: 3})
	c.u.Direct("", testsupport.Assign{Path: "hu-3.0.bin", ECUs: map[string]string{"HU1": "HU-A"}, JobID: "j"})
	c.u.Publish()
	c.u.ServeLength("hu-3.0.bin", 8192)
	if _, err := c.a.Update(context.Background()); !errors.Is(err, client.ErrRefused) {
		t.Fatalf("a longer target: %v, want refused", err)
	}
	c.u.ServeLength("hu-3.0.bin", -1)
	c.a.Faults = fault.Set{NetworkDropPct: 50}
	if _, err := c.a.Update(context.Background()); !errors.Is(err, client.ErrUnreachable) {
		t.Fatalf("a dropped download: %v, want unreachable", err)
	}
	c.a.Faults = fault.Set{}
	if _, err := c.a.Update(context.Background()); err != nil || c.running(t)["HU1"] != "3.0.0" {
		t.Fatalf("resumed: %v, runs %v", err, c.running(t))
	}
}

// TestUSBBundleForAnotherCarOrExpired: a bundle for another VIN, and one
// past its life by the time the car already trusts (from an attestation
// online; its RTC plays no part), are refused.
func TestUSBBundleForAnotherCarOrExpired(t *testing.T) {
	c := newCar(t)
	if _, err := c.a.Update(context.Background()); err != nil { // online once: the car trusts the time now
		t.Fatal(err)
	}
	tests := []struct {
		name string
		m    usb.Manifest
		says string
	}{
		{"another VIN", usb.Manifest{VIN: testsupport.VIN("1RSDA0000000000B2"), ValidUntil: time.Now().Add(time.Hour)}, "for VIN"},
		{"expired", usb.Manifest{VIN: vin, ValidUntil: time.Now().Add(-time.Hour)}, "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.a.InstallUSB(context.Background(), &usb.Bundle{Manifest: tt.m})
			if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("InstallUSB: %v", err)
			}
		})
	}
}

// TestUSBInstall: a bundle for this car installs with the same checks as
// online, is noted for the next check-in, leaves reauthorization pending,
// and an older bundle after a newer one is refused.
func TestUSBInstall(t *testing.T) {
	c := newCar(t)
	c.u.Direct("", testsupport.Assign{Path: "dcm-2.0.bin", ECUs: map[string]string{"DCM1": "DCM-A"}})
	c.u.Publish()
	now := time.Now().UTC().Truncate(time.Second)
	newer, older := filepath.Join(t.TempDir(), "b2"), filepath.Join(t.TempDir(), "b1")
	c.u.WriteBundle(newer, 2, now, now.Add(72*time.Hour))
	c.u.WriteBundle(older, 1, now, now.Add(72*time.Hour))
	install := func(dir string) (agent.Report, error) {
		b, err := usb.Open(dir, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		return c.a.InstallUSB(context.Background(), b)
	}
	rep, err := install(newer)
	if err != nil || outcomes(rep)["DCM1"] != agent.Installed || c.running(t)["DCM1"] != "2.0.0" {
		t.Fatalf("install from USB: %+v %v", rep, err)
	}
	if notes, _ := c.v.OfflineInstalls(); len(notes) != 1 || !strings.Contains(notes[0], "DCM1: 1.0.0 -> 2.0.0 from USB bundle") {
		t.Fatalf("offline installs: %v", notes)
	}
	if auth, _ := c.v.Auth(); auth.State != vehicle.PendingReauthorization {
		t.Fatalf("auth after a USB install: %+v", auth)
	}
	if c.u.Manifests() != 0 || len(c.u.Events()) != 0 {
		t.Fatalf("an offline install talked to the server: %d check-ins, events %v", c.u.Manifests(), c.u.Events())
	}
	if _, err := install(older); !errors.Is(err, client.ErrRefused) {
		t.Fatalf("an older bundle: %v, want refused", err)
	}
	// Online again: the USB install is reported at the first check-in.
	if _, err := c.a.Update(context.Background()); err != nil {
		t.Fatal(err)
	}
	if notes, _ := c.v.OfflineInstalls(); len(notes) != 0 || c.u.Manifests() == 0 {
		t.Fatalf("after going online: offline notes %v, %d check-ins", notes, c.u.Manifests())
	}
}

// TestDaemonRunsCyclesUntilStopped: the daemon runs a cycle per interval
// (or at a wake-up) and stops with its context.
func TestDaemonRunsCyclesUntilStopped(t *testing.T) {
	c := newCar(t)
	// Not authorized: no token to renew between cycles (Sleep is instant).
	c.u.RefuseAuth("vehicle_not_linked")
	c.u.Direct("", testsupport.Assign{Path: "hu-2.0.bin", ECUs: map[string]string{"HU1": "HU-A"}})
	c.u.Publish()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wake := make(chan struct{}, 1)
	var cycles []agent.Report
	err := c.a.Run(ctx, agent.DaemonConfig{Interval: time.Hour, RetryMin: time.Millisecond, Wake: wake,
		Sleep: func(ctx context.Context, d time.Duration) error {
			if len(cycles) >= 3 {
				cancel()
				return ctx.Err()
			}
			return nil
		},
		OnCycle: func(r agent.Report, err error, next time.Duration) {
			if err != nil {
				t.Errorf("cycle %d: %v", len(cycles), err)
			}
			cycles = append(cycles, r)
			if len(cycles) == 2 {
				wake <- struct{}{} // a push wake-up: the next cycle starts at once
			}
		}})
	if err != nil {
		t.Fatalf("Run ended with %v, want nil once stopped", err)
	}
	if len(cycles) < 3 || outcomes(cycles[0])["HU1"] != agent.Installed || outcomes(cycles[1])["HU1"] != agent.UpToDate {
		t.Fatalf("cycles: %+v", cycles)
	}
}
