package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/client/fleetsim"
	"github.com/roadsign/roadsign/internal/testsupport"
	"github.com/roadsign/roadsign/internal/vehicleauth"
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
	w.approveStart(t, c.ID)
	if code := w.api("POST", "/api/v1/campaigns/"+c.ID+"/start", adminToken, nil, &c); code != 200 || c.State != "running" {
		t.Fatalf("start campaign: %d %+v", code, c)
	}
	return c.ID
}

// approveStart asks to start campaign id (409 approval_required) and has
// a second account, an approver, approve it.
func (w *world) approveStart(t *testing.T, id string) {
	t.Helper()
	var e struct {
		Error struct{ Code, Message string }
	}
	if code := w.api("POST", "/api/v1/campaigns/"+id+"/start", adminToken, nil, &e); code != 409 || e.Error.Code != "approval_required" {
		t.Fatalf("start without an approval: %d %+v, want 409 approval_required", code, e)
	}
	if w.approver == "" {
		w.approver = w.account("approver", "approver-1")
	}
	if code := w.api("POST", "/api/v1/campaigns/"+id+"/approve", w.approver, nil, nil); code != 200 {
		t.Fatalf("approve campaign %s: %d", id, code)
	}
}

// simFleet registers n simulated vehicles on HU-GEN5-NA and DCM-4G-24MM 1.0.0.
func (w *world) simFleet(t *testing.T, n int, seed int64, fail, rollback map[string]float64) *fleetsim.Fleet {
	t.Helper()
	specs := factorySpecs(t)
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
		logged := "(not captured)"
		if w.logBuf != nil {
			logged = w.logBuf.String()
		}
		t.Fatalf("%v\nthe server logged:\n%s", err, logged)
	}
	return f
}

// factorySpecs are a simulated vehicle's ECUs: a head unit and a DCM on
// the 1.0.0 samples.
func factorySpecs(t testing.TB) []fleetsim.ECUSpec {
	t.Helper()
	var specs []fleetsim.ECUSpec
	for _, s := range []sample{findSample(t, huHW, "1.0.0"), findSample(t, dcmHW, "1.0.0")} {
		b, err := os.ReadFile(filepath.Join(samplesDir(), s.File))
		if err != nil {
			t.Fatal(err)
		}
		specs = append(specs, fleetsim.ECUSpec{Type: s.ECU, HardwareID: s.HardwareID, Version: s.Version, SHA256: sha(b), Length: int64(len(b))})
	}
	return specs
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
		if c.Waves[1].State != "pending" || c.Waves[1].Targeted != 0 { // the API keeps pending; the page says "never opened"
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

// waitFor polls a campaign (without cycling any vehicle) until ok.
func (w *world) waitCampaign(t *testing.T, id, what string, ok func(campaignView) bool) campaignView {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c := w.campaign(t, id)
		if ok(c) {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %+v", what, c)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *world) campaignAction(t *testing.T, id, action string) {
	t.Helper()
	if code := w.api("POST", "/api/v1/campaigns/"+id+"/"+action, adminToken, nil, nil); code != 200 {
		t.Fatalf("%s: %d", action, code)
	}
}

// TestCampaignPauseResumeAbort: a campaign paused mid-wave lets started
// installs finish but opens no wave and assigns nothing until resumed; an
// aborted one cancels the jobs no vehicle started.
func TestCampaignPauseResumeAbort(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none", "--campaign-tick", "50ms")
	w.setup(func(s sample) bool { return s.Version != "2.0.0" })
	f := w.simFleet(t, 100, 3, nil, nil)
	id := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "1.1.0", "waves": []int{10, 100}, "minSamples": 5})
	w.waitCampaign(t, id, "wave 1 to open and assign", func(c campaignView) bool { return c.Waves[0].Queued == 10 })
	w.campaignAction(t, id, "pause")
	for range 4 {
		f.Cycle(context.Background())
		time.Sleep(150 * time.Millisecond)
	}
	c := w.campaign(t, id)
	if c.State != "paused" || c.Waves[0].Succeeded != 10 || c.Waves[1].State != "pending" || c.Waves[1].Targeted != 0 {
		t.Fatalf("paused: wave 1's installs should finish and wave 2 stay shut: %+v", c)
	}
	w.campaignAction(t, id, "resume")
	runUntil(t, f, "the resumed campaign to complete", func() bool { return w.campaign(t, id).State == "completed" })
	if n := len(received(f, "1.1.0")); n != 100 {
		t.Fatalf("%d of 100 vehicles got the image after the resume", n)
	}

	// Abort, mid-wave: a slow campaign for the head units.
	id = w.startCampaign(t, map[string]any{"ecu": "head-unit", "version": "1.1.0", "waves": []int{100}, "maxPerMinute": 300})
	c = w.waitCampaign(t, id, "a few assignments", func(c campaignView) bool { return c.Totals.Queued >= 3 })
	w.campaignAction(t, id, "abort")
	for range 3 {
		f.Cycle(context.Background())
	}
	c = w.campaign(t, id)
	if c.State != "aborted" || c.Totals.Queued != 0 || c.Totals.Canceled < 3 || c.Totals.Succeeded != 0 {
		t.Fatalf("after abort: %+v", c)
	}
	if n := len(received(f, "1.1.0")); n != 100 { // head units: none
		t.Fatalf("an aborted campaign's image was installed: %d receipts of 1.1.0", n)
	}
	if code := w.api("POST", "/api/v1/campaigns/"+id+"/resume", adminToken, nil, nil); code != 409 {
		t.Fatalf("resuming an aborted campaign: %d, want 409", code)
	}
}

// TestCampaignAfterOneAbortedMidInstall: a campaign aborted while a
// vehicle was installing its image (its job stays open: started installs
// finish), then a second campaign for the same image, as the demo's
// rehearsal does. The vehicle installs through the first job, the older
// one, and runs the image when the second job reaches it: it reports that
// job done too (as the agent does), and the second campaign completes.
func TestCampaignAfterOneAbortedMidInstall(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none", "--campaign-tick", "50ms")
	w.setup(func(s sample) bool { return s.Version != "2.0.0" })
	f := w.simFleet(t, 3, 6, nil, nil)
	x := f.Vehicles()[0]
	first := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "1.1.0", "waves": []int{100}, "minSamples": 1})
	w.waitCampaign(t, first, "the first campaign's jobs", func(c campaignView) bool { return c.Totals.Queued == 3 })
	// x starts installing, and its program stops (the fleet never ran).
	var started string
	for _, j := range w.jobsOf(t, x.VIN) {
		if j.Origin == "campaign" && j.ECUType == "dcm" {
			started = j.ID
		}
	}
	xapi := &api.Client{Base: w.url, VIN: x.VIN, Key: x.Key, HTTP: http.DefaultClient, Now: time.Now}
	if err := xapi.JobEvent(context.Background(), started, api.JobEvent{Kind: "downloading"}); err != nil {
		t.Fatal(err)
	}
	w.campaignAction(t, first, "abort")

	second := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "1.1.0", "waves": []int{100}, "minSamples": 1})
	runUntil(t, f, "the second campaign to complete", func() bool { return w.campaign(t, second).State == "completed" })
	if c := w.campaign(t, second); c.Totals.Succeeded != 3 {
		t.Fatalf("the second campaign completed with %d of 3 succeeded: %+v", c.Totals.Succeeded, c.Totals)
	}
	states := map[string]string{}
	for _, j := range w.jobsOf(t, x.VIN) {
		if j.Origin == "campaign" && j.ECUType == "dcm" {
			states[j.ID] = j.State + ": " + j.Events[len(j.Events)-1].Message
		}
	}
	already := 0
	for id, st := range states {
		if !strings.HasPrefix(st, "succeeded") {
			t.Errorf("job %s: %s", id, st)
		}
		if strings.Contains(st, "was already installed") {
			already++
		}
	}
	if len(states) != 2 || already != 1 || !strings.Contains(states[started], "booted") {
		t.Fatalf("the vehicle's two campaign jobs: %q; want the first (%s) installed, the second already done", states, started)
	}
}

// TestCampaignRateCap: maxPerMinute paces assignments.
func TestCampaignRateCap(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none", "--campaign-tick", "50ms")
	w.setup(func(s sample) bool { return s.Version != "2.0.0" })
	w.simFleet(t, 100, 4, nil, nil)
	id := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "1.1.0", "waves": []int{100}, "maxPerMinute": 120})
	time.Sleep(3 * time.Second)
	c := w.campaign(t, id)
	assigned := c.Totals.Targeted - c.Totals.Waiting
	// 2 a second: about 6 in 3 s (a tick of slack either way), never 100.
	if assigned < 2 || assigned > 8 {
		t.Fatalf("%d assigned in 3 s at 120 a minute", assigned)
	}
}

// TestCampaignPrecedence: a dealer's job beats a campaign's, a campaign's
// beats auto-assign, and the image a campaign covers reaches no vehicle
// outside it.
func TestCampaignPrecedence(t *testing.T) {
	w := newWorld(t, "--campaign-tick", "50ms") // --auto-assign latest
	w.setup(func(s sample) bool { return s.ECU == "dcm" || s.Version != "2.0.0" })
	f := w.simFleet(t, 3, 5, nil, nil)
	a, b, c := f.Vehicles()[0].VIN, f.Vehicles()[1].VIN, f.Vehicles()[2].VIN
	id := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "2.0.0", "selector": map[string]any{"vins": []string{a, b}}, "waves": []int{100}})
	w.waitCampaign(t, id, "both campaign jobs", func(c campaignView) bool { return c.Totals.Queued == 2 })
	dealer := w.account("dealer", "dealer-1")
	dj := w.job(dealer, map[string]any{"vin": b, "ecu": "dcm", "version": "1.1.0", "reason": "customer asked for 1.1.0"})
	runUntil(t, f, "the campaign to complete", func() bool { return w.campaign(t, id).State == "completed" })
	for range 2 {
		f.Cycle(context.Background())
	}
	got := map[string]string{}
	for vin, rs := range f.Receipts() {
		for _, r := range rs {
			if strings.HasPrefix(r.Serial, "DCM-") && r.Outcome == "succeeded" {
				got[vin] += r.Version + " "
			}
		}
	}
	if got[a] != "2.0.0 " || got[b] != "1.1.0 " || got[c] != "1.1.0 " {
		t.Fatalf("DCM installs: campaign vehicle %q, dealer's %q, outside %q; want 2.0.0, 1.1.0 (the job), 1.1.0 (auto-assign, not the campaign's image)", got[a], got[b], got[c])
	}
	if j := w.getJob(dealer, dj.ID); j.State != "succeeded" {
		t.Fatalf("dealer job: %s", j.State)
	}
	cv := w.campaign(t, id)
	if cv.Totals.Succeeded != 1 || cv.Totals.Canceled != 1 {
		t.Fatalf("campaign totals: %+v; want one success and one job taken over by the dealer", cv.Totals)
	}
}

// TestCampaignConsent: with owner consent, nothing installs until the
// owner accepts; a declined vehicle counts as neither success nor failure.
func TestCampaignConsent(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none", "--campaign-tick", "50ms")
	w.setup(func(s sample) bool { return s.Version != "2.0.0" })
	f := w.simFleet(t, 2, 6, nil, nil)
	v1, v2 := f.Vehicles()[0].VIN, f.Vehicles()[1].VIN
	alice, bob := w.account("owner", "alice"), w.account("owner", "bob")
	for vin, owner := range map[string]string{v1: "alice", v2: "bob"} {
		if code := w.api("POST", "/api/v1/vehicles/"+vin+"/owner", adminToken, map[string]string{"owner": owner}, nil); code != 200 {
			t.Fatalf("link %s: %d", vin, code)
		}
	}
	id := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "1.1.0", "waves": []int{100}, "consent": "owner"})
	w.waitCampaign(t, id, "the wave to open", func(c campaignView) bool { return c.Waves[0].Targeted == 2 })
	for range 3 {
		f.Cycle(context.Background())
	}
	if n := len(received(f, "1.1.0")); n != 0 {
		t.Fatalf("%d vehicles installed before their owners agreed", n)
	}
	var pending struct {
		Updates []struct{ CampaignID, VIN, Version string } `json:"updates"`
	}
	w.api("GET", "/api/v1/owners/me/updates", alice, nil, &pending)
	if len(pending.Updates) != 1 || pending.Updates[0].VIN != v1 || pending.Updates[0].Version != "1.1.0" {
		t.Fatalf("alice's pending updates: %+v", pending)
	}
	for _, d := range []struct{ token, vin, decision string }{{alice, v1, "decline"}, {bob, v2, "accept"}} {
		if code := w.api("POST", "/api/v1/owners/me/vehicles/"+d.vin+"/consent", d.token, map[string]string{"campaign": id, "decision": d.decision}, nil); code != 200 {
			t.Fatalf("%s %s: %d", d.decision, d.vin, code)
		}
	}
	runUntil(t, f, "the campaign to complete", func() bool { return w.campaign(t, id).State == "completed" })
	c := w.campaign(t, id)
	got := received(f, "1.1.0")
	if got[v1] || !got[v2] || c.Totals.Declined != 1 || c.Totals.Succeeded != 1 || c.Totals.Failed != 0 {
		t.Fatalf("declined %v accepted %v; totals %+v", got[v1], got[v2], c.Totals)
	}
}

// TestCampaignMaintenanceWindow: the real agent does not install a
// campaign's image outside the campaign's window, and does in it.
func TestCampaignMaintenanceWindow(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none", "--campaign-tick", "50ms")
	w.setup(func(s sample) bool { return s.Version != "2.0.0" })
	v := w.vehicle(1)
	start := time.Now().UTC().Add(2 * time.Minute).Truncate(time.Minute)
	window := map[string]string{"start": start.Format("15:04"), "end": start.Add(time.Minute).Format("15:04"), "tz": "UTC"}
	w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "1.1.0", "selector": map[string]any{"vins": []string{v.vin}}, "waves": []int{100}, "window": window})
	waitFor(t, "the campaign's job", func() bool { return len(w.jobsOf(t, v.vin)) == 1 })
	r := agent(t, "update", "--state", v.dir)
	if r.code != 0 || !strings.Contains(r.stdout, "waiting for the maintenance window") || versions(t, v)["dcm"] != "1.0.0" {
		t.Fatalf("outside the window: %s", r)
	}
	if j := w.jobsOf(t, v.vin)[0]; j.State != "queued" {
		t.Fatalf("the job moved outside the window: %s", j.State)
	}
	// The vehicle's clock reaches the window (within the 5 minutes its
	// requests may be off the server's).
	r = agentAt(t, start.Add(30*time.Second), "update", "--state", v.dir)
	if r.code != 0 || versions(t, v)["dcm"] != "1.1.0" {
		t.Fatalf("in the window: %s", r)
	}
	if j := w.jobsOf(t, v.vin)[0]; j.State != "succeeded" {
		t.Fatalf("job after the window install: %s", j.State)
	}
}

// replica is a roadsign-server process (the real binary) of a shared
// PostgreSQL deployment.
type replica struct {
	url  string
	cmd  *exec.Cmd
	log  *testsupport.LockedBuffer
	done chan struct{}
}

func startReplica(t *testing.T, w *world, extra ...string) *replica {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	r := &replica{url: "http://" + addr, log: &testsupport.LockedBuffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(filepath.Join(builtPrograms(t), "roadsign-server"), append([]string{"--listen", addr, "--data", w.data, "--log-format", "text"}, extra...)...)
	r.cmd.Env = append(os.Environ(), "ROADSIGN_ADMIN_TOKEN="+adminToken)
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		r.cmd.Process.Signal(syscall.SIGCONT)
		r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.done:
		case <-time.After(20 * time.Second):
			r.cmd.Process.Kill()
		}
	})
	waitFor(t, "replica "+addr, func() bool {
		resp, err := http.Get(r.url + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	return r
}

// leads reads the replica's own roadsign_leader metric.
func (r *replica) leads(t *testing.T) bool {
	t.Helper()
	_, body := httpGet(t, r.url+"/metrics", nil)
	return strings.Contains(string(body), `roadsign_leader{lease="leader"} 1`)
}

// TestCampaignSurvivesAFrozenLeader: two replicas on one PostgreSQL
// database; the one leading is frozen (SIGSTOP) past its lease in the
// middle of a campaign and later thawed. The other takes over; every wave
// opens exactly once and no vehicle is assigned twice.
func TestCampaignSurvivesAFrozenLeader(t *testing.T) {
	w := &world{t: t, dir: t.TempDir(), env: map[string]string{"ROADSIGN_ADMIN_TOKEN": adminToken}}
	w.data, w.ws = filepath.Join(w.dir, "data"), filepath.Join(w.dir, "ws")
	db := pgtest.Schema(t)
	flags := []string{"--database", db, "--auto-assign", "none", "--leader-lease", "2s", "--campaign-tick", "100ms"}
	a := startReplica(t, w, flags...)
	b := startReplica(t, w, flags...)
	waitFor(t, "a leader", func() bool { return a.leads(t) || b.leads(t) })
	lead, follow := a, b
	if b.leads(t) {
		lead, follow = b, a
	}
	w.url = follow.url // the signer, the admin and the fleet all use the follower
	w.setup(func(s sample) bool { return s.Version != "2.0.0" })
	f := w.simFleet(t, 200, 8, nil, nil)
	id := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "1.1.0", "waves": []int{10, 50, 100}, "minSamples": 10})
	runUntil(t, f, "wave 1 to open", func() bool { return w.campaign(t, id).Waves[0].Targeted > 0 })

	if err := lead.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	waitFor(t, "the follower to take over", func() bool { return follow.leads(t) })
	t.Logf("the follower leads %s after the leader froze", time.Since(frozen).Round(100*time.Millisecond))
	runUntil(t, f, "wave 2 to open under the new leader", func() bool { return w.campaign(t, id).Waves[1].Targeted > 0 })
	if err := lead.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	runUntil(t, f, "the campaign to complete", func() bool { return w.campaign(t, id).State == "completed" })
	time.Sleep(time.Second) // the thawed replica has had its chance to act on stale leadership

	opens := map[string]int{}
	for _, e := range w.auditEntries(t) {
		if e.Action == "campaign.wave_open" && e.Subject == id {
			opens[e.Detail[:strings.Index(e.Detail, ":")]]++
		}
	}
	if len(opens) != 3 || opens["wave 1 (10%)"] != 1 || opens["wave 2 (50%)"] != 1 || opens["wave 3 (100%)"] != 1 {
		t.Fatalf("wave openings: %v, want each of the 3 exactly once", opens)
	}
	for vin := range f.Receipts() {
		n := 0
		for _, j := range w.jobsOf(t, vin) {
			if j.Origin == "campaign" {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%s has %d campaign jobs, want 1", vin, n)
		}
	}
	if c := w.campaign(t, id); c.Totals.Succeeded != 200 {
		t.Fatalf("totals: %+v", c.Totals)
	}
	if lead.leads(t) || !follow.leads(t) {
		t.Fatal("after the thaw the old leader should not lead")
	}
}

// TestCampaignSkipsVehiclesThatNeedNothing: a campaign selects only ECUs
// that would move forward: not those already on its image, nor those on a
// newer release (a campaign never downgrades).
func TestCampaignSkipsVehiclesThatNeedNothing(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none", "--campaign-tick", "50ms")
	w.setup(nil)
	f := w.simFleet(t, 5, 13, nil, nil)
	vins := []string{f.Vehicles()[0].VIN, f.Vehicles()[1].VIN}
	first := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "2.0.0", "selector": map[string]any{"vins": vins}, "waves": []int{100}})
	runUntil(t, f, "the first campaign to complete", func() bool { return w.campaign(t, first).State == "completed" })
	f.Cycle(context.Background()) // every vehicle has reported what it runs
	older := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "1.1.0", "waves": []int{100}})
	if c := w.campaign(t, older); c.Selected != 3 {
		t.Fatalf("a 1.1.0 campaign selected %d ECUs; want the 3 on 1.0.0, not the 2 on 2.0.0", c.Selected)
	}
	w.campaignAction(t, older, "abort")
	same := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "2.0.0", "waves": []int{100}})
	if c := w.campaign(t, same); c.Selected != 3 {
		t.Fatalf("a second 2.0.0 campaign selected %d ECUs; want the 3 not on it yet", c.Selected)
	}
}

// TestSucceededJobIsWhatTheECURuns: between a job's success and the
// vehicle's next manifest, the director treats the ECU as running the
// job's image: it neither opens a second job for the same image nor hands
// a campaign's ECU an older, uncovered release.
func TestSucceededJobIsWhatTheECURuns(t *testing.T) {
	w := newWorld(t, "--campaign-tick", "50ms") // --auto-assign latest
	w.setup(nil)
	f := w.simFleet(t, 2, 14, nil, nil)
	a, b := f.Vehicles()[0], f.Vehicles()[1]
	id := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "2.0.0", "selector": map[string]any{"vins": []string{b.VIN}}, "waves": []int{100}})
	w.waitCampaign(t, id, "the campaign's job", func(c campaignView) bool { return c.Totals.Queued == 1 })
	f.Cycle(context.Background()) // both install what they are assigned and report success
	for _, v := range []*fleetsim.Vehicle{a, b} {
		// The director timestamp is fetched before the next manifest.
		req, _ := http.NewRequest(http.MethodGet, w.url+"/director/"+v.VIN+"/timestamp.json", nil)
		vehicleauth.Sign(req, v.Key, v.VIN, nil, time.Now())
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("director timestamp: %v %v", resp, err)
		}
		resp.Body.Close()
		for _, j := range w.jobsOf(t, v.VIN) {
			if j.State != "succeeded" {
				t.Errorf("%s: a %s job for %s (%s) opened after the installs succeeded", v.VIN, j.Origin, j.Target, j.State)
			}
		}
	}
}
