package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/client/fleetsim"
	"github.com/roadsign/roadsign/server/postgres/pgtest"
)

// campaignView is GET /api/v1/campaigns/{id}.
type campaignView struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	HaltReason string `json:"haltReason"`
	Selected   int    `json:"selected"`
	Waves      []struct {
		Percent   int    `json:"percent"`
		State     string `json:"state"`
		Targeted  int    `json:"targeted"`
		Succeeded int    `json:"succeeded"`
		Failed    int    `json:"failed"`
		Declined  int    `json:"declined"`
		Waiting   int    `json:"waiting"`
		Queued    int    `json:"queued"`
	} `json:"waves"`
	Totals struct {
		Targeted, Succeeded, Failed, RolledBack, Declined, Canceled, Waiting, Queued, InProgress int
	} `json:"totals"`
}

func (w *world) campaign(t *testing.T, id string) campaignView {
	t.Helper()
	var c campaignView
	if code := w.api("GET", "/api/v1/campaigns/"+id, adminToken, nil, &c); code != 200 {
		t.Fatalf("get campaign: %d", code)
	}
	return c
}

// startCampaign creates and starts a campaign; body gets defaults for a
// quick test (no soak, no rate cap to speak of).
func (w *world) startCampaign(t *testing.T, body map[string]any) string {
	t.Helper()
	for k, v := range map[string]any{"name": "test campaign", "soak": "0s", "maxPerMinute": 1_000_000} {
		if _, ok := body[k]; !ok {
			body[k] = v
		}
	}
	var c campaignView
	if code := w.api("POST", "/api/v1/campaigns", adminToken, body, &c); code != 201 || c.State != "draft" {
		t.Fatalf("create campaign: %d %+v", code, c)
	}
	if code := w.api("POST", "/api/v1/campaigns/"+c.ID+"/start", adminToken, nil, &c); code != 200 || c.State != "running" {
		t.Fatalf("start campaign: %d %+v", code, c)
	}
	return c.ID
}

// simFleet registers n simulated vehicles on HU-GEN5-NA and DCM-4G-24MM 1.0.0.
func (w *world) simFleet(t *testing.T, n int, seed int64, fail, rollback map[string]float64) *fleetsim.Fleet {
	t.Helper()
	var specs []fleetsim.ECUSpec
	for _, s := range []sample{findSample(t, huHW, "1.0.0"), findSample(t, dcmHW, "1.0.0")} {
		b, err := os.ReadFile(filepath.Join(samplesDir(), s.File))
		if err != nil {
			t.Fatal(err)
		}
		specs = append(specs, fleetsim.ECUSpec{Type: s.ECU, HardwareID: s.HardwareID, Version: s.Version, SHA256: sha(b), Length: int64(len(b))})
	}
	root, err := os.ReadFile(filepath.Join(w.ws, "director.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleetsim.New(fleetsim.Config{Server: w.url, Token: adminToken, Vehicles: n, Concurrency: 16, Seed: seed,
		ECUs: specs, Model: "Roadster", Year: 2025, Region: "EU", Fail: fail, Rollback: rollback, StateDir: t.TempDir(), DirectorRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Register(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	return f
}

// runUntil cycles the fleet until done says so (or fails the test).
func runUntil(t *testing.T, f *fleetsim.Fleet, what string, done func() bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !done() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		f.Cycle(context.Background())
		time.Sleep(100 * time.Millisecond)
	}
}

// received lists the VINs that were assigned an image of version v.
func received(f *fleetsim.Fleet, version string) map[string]bool {
	out := map[string]bool{}
	for vin, rs := range f.Receipts() {
		for _, r := range rs {
			if r.Version == version {
				out[vin] = true
			}
		}
	}
	return out
}

// campaignWorlds runs fn on SQLite and on PostgreSQL.
func campaignWorlds(t *testing.T, fn func(t *testing.T, extra ...string)) {
	t.Run("sqlite", func(t *testing.T) { fn(t) })
	t.Run("postgres", func(t *testing.T) { fn(t, "--database", pgtest.Schema(t)) })
}

// TestCampaignWithGoodImageCompletes: 200 simulated vehicles, waves of
// 10, 50 and 100 percent; every wave opens in turn and the campaign
// completes with every vehicle on the image, each through one job.
func TestCampaignWithGoodImageCompletes(t *testing.T) {
	campaignWorlds(t, func(t *testing.T, extra ...string) {
		w := newWorld(t, append([]string{"--auto-assign", "none", "--campaign-tick", "50ms"}, extra...)...)
		w.setup(func(s sample) bool { return s.Version != "2.0.0" })
		f := w.simFleet(t, 200, 1, nil, nil)
		id := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "1.1.0", "waves": []int{10, 50, 100}, "minSamples": 10})
		runUntil(t, f, "the campaign to complete", func() bool { return w.campaign(t, id).State == "completed" })
		c := w.campaign(t, id)
		if c.Selected != 200 || c.Totals.Succeeded != 200 {
			t.Fatalf("completed with %d of %d succeeded: %+v", c.Totals.Succeeded, c.Selected, c)
		}
		for i, wave := range c.Waves {
			if wave.State != "done" {
				t.Errorf("wave %d is %s", i+1, wave.State)
			}
		}
		if got := []int{c.Waves[0].Targeted, c.Waves[1].Targeted, c.Waves[2].Targeted}; fmt.Sprint(got) != "[20 80 100]" {
			t.Errorf("wave sizes %v, want [20 80 100] (10%%, 50%%, 100%% of 200, cumulative)", got)
		}
		if n := len(received(f, "1.1.0")); n != 200 {
			t.Errorf("%d vehicles received 1.1.0", n)
		}
		opens := 0
		for _, e := range w.auditEntries(t) {
			if e.Action == "campaign.wave_open" && e.Subject == id {
				opens++
			}
		}
		if opens != 3 {
			t.Errorf("%d wave openings audited, want 3", opens)
		}
	})
}

// TestCampaignHaltsOnFailures: an image that fails on 30% of vehicles
// halts the campaign in its first wave, with the rate named, and no
// vehicle outside that wave ever receives it.
func TestCampaignHaltsOnFailures(t *testing.T) {
	campaignWorlds(t, func(t *testing.T, extra ...string) {
		w := newWorld(t, append([]string{"--auto-assign", "none", "--campaign-tick", "50ms"}, extra...)...)
		w.setup(func(s sample) bool { return s.Version != "2.0.0" })
		f := w.simFleet(t, 200, 2, map[string]float64{"1.1.0": 0.3}, nil)
		// Seeds fix the draw: this fleet's wave 1 holds 20 vehicles, several
		// of them among the 30% the image fails on.
		id := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "1.1.0", "waves": []int{10, 50, 100}, "minSamples": 20, "failureThreshold": 0.05, "seed": 42})
		runUntil(t, f, "the campaign to halt", func() bool { return w.campaign(t, id).State == "halted" })
		for range 5 { // nothing new reaches anyone after the halt
			f.Cycle(context.Background())
		}
		c := w.campaign(t, id)
		if !strings.Contains(c.HaltReason, "wave 1") || !strings.Contains(c.HaltReason, "failure rate") || !strings.Contains(c.HaltReason, "5% threshold") {
			t.Fatalf("halt reason should name the wave and the rate: %q", c.HaltReason)
		}
		if c.Waves[1].State != "pending" || c.Waves[1].Targeted != 0 {
			t.Fatalf("wave 2 must never open: %+v", c.Waves[1])
		}
		got := received(f, "1.1.0")
		inWave := map[string]bool{}
		for vin := range f.Receipts() {
			for _, j := range w.jobsOf(t, vin) {
				if j.Origin == "campaign" {
					inWave[vin] = true
				}
			}
		}
		if len(inWave) > c.Waves[0].Targeted || len(got) == 0 {
			t.Fatalf("%d vehicles have campaign jobs, wave 1 has %d", len(inWave), c.Waves[0].Targeted)
		}
		for vin := range got {
			if !inWave[vin] {
				t.Errorf("%s received 1.1.0 but is not in the opened wave", vin)
			}
		}
		t.Logf("halted: %s (%d received it)", c.HaltReason, len(got))
	})
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
