package agent_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/agent"
	"github.com/roadsign/roadsign/client/secondary"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/testsupport"
)

// withSecondary is a car whose head unit (HU1) is the primary and whose
// DCM (DCM1) is a secondary served on loopback with its own state and
// key, pinned to the director root given (the car's own unless set).
type withSecondary struct {
	*car
	dcm  *secondary.State
	stop func()
}

func newCarWithSecondary(t *testing.T, mode string, directorRoot []byte) *withSecondary {
	t.Helper()
	base := newCar(t)
	u := base.u
	dir := t.TempDir()
	if directorRoot == nil {
		directorRoot = u.DirectorRoot()
	}
	dcmFirmware := filepath.Join(dir, "dcm.bin")
	huFirmware := filepath.Join(dir, "hu.bin")
	if err := os.WriteFile(dcmFirmware, testsupport.ImageBytes(t, dcm1), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(huFirmware, testsupport.ImageBytes(t, hu1), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := secondary.Init(filepath.Join(dir, "dcm"), secondary.Config{VIN: vin, ECU: vehicle.ECUConfig{Type: "dcm", Serial: "DCM1", HardwareID: "DCM-A"}, Verification: mode},
		dcmFirmware, directorRoot, u.ImageRoot(), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&secondary.Server{State: st, Log: slog.New(slog.DiscardHandler), Timeout: 5 * time.Second}).Serve(ctx, ln)
	}()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	cfg := vehicle.Config{VIN: vin, Server: u.URL, Primary: "HU1", ECUs: []vehicle.ECUConfig{
		{Type: "head-unit", Serial: "HU1", HardwareID: "HU-A"},
		{Type: "dcm", Serial: "DCM1", HardwareID: "DCM-A", Addr: ln.Addr().String(), PublicKey: st.PublicKey()}}}
	v, err := vehicle.Create(filepath.Join(dir, "state"), cfg, u.ImageRoot(), u.DirectorRoot(), map[string]string{"HU1": huFirmware}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	a := *base.a
	a.V = v
	a.API.Key = mustKey(t, v.KeyPath())
	return &withSecondary{car: &car{u: u, v: v, a: &a}, dcm: st, stop: stop}
}

// TestSecondaryOverTheVehicleNetwork: the primary installs an update set
// on its own head unit and on a DCM secondary that verifies for itself,
// in both verification modes; the set's job hears one outcome naming both
// images; the check-in carries both ECUs' own signed reports.
func TestSecondaryOverTheVehicleNetwork(t *testing.T) {
	for _, mode := range []string{secondary.Full, secondary.Partial} {
		t.Run(mode, func(t *testing.T) {
			c := newCarWithSecondary(t, mode, nil)
			c.u.Direct("", testsupport.Assign{Path: "hu-2.0.bin", ECUs: map[string]string{"HU1": "HU-A"}, JobID: "job-set"},
				testsupport.Assign{Path: "dcm-2.0.bin", ECUs: map[string]string{"DCM1": "DCM-A"}, JobID: "job-set"})
			c.u.Publish()
			rep, err := c.a.Update(context.Background())
			if err != nil {
				t.Fatalf("update: %v (%+v)", err, rep)
			}
			if got := c.running(t); got["HU1"] != "2.0.0" || got["DCM1"] != "2.0.0" {
				t.Fatalf("runs %v, want both on 2.0.0", got)
			}
			var outcome testsupport.JobEvent
			for _, e := range c.u.Events() {
				if e.Kind == "succeeded" || e.Kind == "failed" || e.Kind == "rolled_back" {
					outcome = e
				}
			}
			if outcome.Kind != "succeeded" || len(outcome.Installed) != 2 {
				t.Fatalf("the set's outcome: %+v", outcome)
			}
			m := c.u.LastManifest()
			if m.PrimarySerial != "HU1" || len(m.ECUReports) != 2 {
				t.Fatalf("the check-in: primary %q, %d ECU reports", m.PrimarySerial, len(m.ECUReports))
			}
			for _, sr := range m.ECUReports {
				r, err := sr.Peek()
				if err != nil {
					t.Fatal(err)
				}
				key := c.dcm.PublicKey()
				if r.ECUSerial == "HU1" {
					key = mustKey(t, c.v.KeyPath()).Public().(ed25519.PublicKey)
				}
				if _, err := sr.Open(key); err != nil || r.InstalledImage.Filename != map[string]string{"HU1": "hu-2.0.bin", "DCM1": "dcm-2.0.bin"}[r.ECUSerial] {
					t.Fatalf("the report of %s: %+v, %v", r.ECUSerial, r, err)
				}
			}
		})
	}
}

// TestSecondaryFailuresStopTheSet: when the DCM secondary's image fails
// its boot check, the head unit goes back with it; when the secondary
// refuses the metadata itself (it trusts another director root), or
// cannot be reached, nothing is installed anywhere, and a check-in lists
// an unreachable secondary as such.
func TestSecondaryFailuresStopTheSet(t *testing.T) {
	set := func(c *withSecondary, dcm string) {
		c.u.Direct("", testsupport.Assign{Path: "hu-2.0.bin", ECUs: map[string]string{"HU1": "HU-A"}},
			testsupport.Assign{Path: dcm, ECUs: map[string]string{"DCM1": "DCM-A"}})
		c.u.Publish()
	}
	t.Run("the DCM fails its boot check", func(t *testing.T) {
		c := newCarWithSecondary(t, secondary.Full, nil)
		c.u.AddImage("dcm-3.0.bin", testsupport.Image{ECU: "dcm", HardwareID: "DCM-A", Version: "3.0.0", ReleaseCounter: 3, Unbootable: true})
		set(c, "dcm-3.0.bin")
		if _, err := c.a.Update(context.Background()); !errors.Is(err, client.ErrRolledBack) {
			t.Fatalf("update: %v, want rolled back", err)
		}
		if got := c.running(t); got["HU1"] != "1.0.0" || got["DCM1"] != "1.0.0" {
			t.Fatalf("runs %v, want both back on 1.0.0", got)
		}
	})
	t.Run("the DCM refuses what the primary verified", func(t *testing.T) {
		other := testsupport.NewUptane(t, vin)
		c := newCarWithSecondary(t, secondary.Partial, other.DirectorRoot())
		set(c, "dcm-2.0.bin")
		_, err := c.a.Update(context.Background())
		if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "secondary dcm DCM1 refused") {
			t.Fatalf("update: %v, want the secondary's refusal", err)
		}
		if got := c.running(t); got["HU1"] != "1.0.0" || got["DCM1"] != "1.0.0" {
			t.Fatalf("runs %v, want nothing installed", got)
		}
	})
	t.Run("the DCM is unreachable", func(t *testing.T) {
		c := newCarWithSecondary(t, secondary.Full, nil)
		set(c, "dcm-2.0.bin")
		c.stop()
		if _, err := c.a.Update(context.Background()); !errors.Is(err, client.ErrUnreachable) {
			t.Fatalf("update: %v, want unreachable", err)
		}
		st, err := agent.VehicleStatus(c.v)
		if err != nil || len(st.ECUs) != 2 || !strings.Contains(st.ECUs[1].LastResult, "unreachable") {
			t.Fatalf("status with the DCM away: %+v %v", st.ECUs, err)
		}
		if rec, err := c.v.ECU(c.v.ECUs[0]).LoadRecord(); err != nil || rec.Slots[rec.Active].Version != "1.0.0" {
			t.Fatalf("the head unit switched without its set: %+v %v", rec, err)
		}
		if m := c.u.LastManifest(); len(m.Unreachable) != 1 || m.Unreachable[0] != "DCM1" || len(m.ECUReports) != 1 {
			t.Fatalf("the check-in: unreachable %v, %d reports", m.Unreachable, len(m.ECUReports))
		}
	})
}

func mustKey(t *testing.T, path string) ed25519.PrivateKey {
	t.Helper()
	k, err := keys.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return k.Private
}
