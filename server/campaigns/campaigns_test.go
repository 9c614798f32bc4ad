package campaigns_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/approvals"
	"github.com/roadsign/roadsign/server/campaigns"
	"github.com/roadsign/roadsign/server/jobs"
	"github.com/roadsign/roadsign/server/postgres"
	"github.com/roadsign/roadsign/server/postgres/pgtest"
	"github.com/roadsign/roadsign/server/sqlite"
	"github.com/roadsign/roadsign/server/sqlstore"
)

var ctx = context.Background()

type images map[string]*metadata.TargetFiles

func (i images) CurrentTargets(context.Context) (map[string]*metadata.TargetFiles, int64, error) {
	return i, 1, nil
}

func image(ecu, hw, version string, counter int64, notes string) *metadata.TargetFiles {
	sum := sha256.Sum256([]byte(ecu + hw + version))
	c, _ := json.Marshal(meta.Custom{ECU: ecu, HardwareIDs: []string{hw}, Version: version, ReleaseCounter: counter, ReleaseNotes: notes})
	raw := json.RawMessage(c)
	return &metadata.TargetFiles{Length: 100, Hashes: metadata.Hashes{"sha256": sum[:]}, Custom: &raw}
}

var catalog = images{
	"dcm-1.0.bin": image("dcm", "DCM-A", "1.0.0", 1, ""),
	"dcm-2.0.bin": image("dcm", "DCM-A", "2.0.0", 2, "fixes the modem"),
	"hu-2.0.bin":  image("head-unit", "HU-A", "2.0.0", 2, ""),
}

var (
	admin    = server.Principal{ID: "a1", Name: "release-manager", Roles: server.Roles{server.RoleReleaseManager}}
	approver = server.Principal{ID: "ap1", Name: "approver-1", Roles: server.Roles{server.RoleApprover}}
)

type world struct {
	store     *sqlstore.Store
	approvals *approvals.Service
	jobs      *jobs.Service
	svc       *campaigns.Service
	now       time.Time
	fence     server.Fence
	woken     []string
}

func newWorld(t *testing.T, vehicles int) *world {
	t.Helper()
	return newWorldOn(t, sqliteStore(t), vehicles)
}

func sqliteStore(t *testing.T) *sqlstore.Store {
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func postgresStore(t *testing.T) *sqlstore.Store {
	st, err := postgres.Open(ctx, pgtest.Schema(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newWorldOn(t *testing.T, st *sqlstore.Store, vehicles int) *world {
	t.Helper()
	var err error
	w := &world{store: st, now: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)}
	w.approvals = approvals.New(st, w.clock, nil)
	w.jobs, err = jobs.New(jobs.Config{Store: st, Images: catalog, Now: w.clock, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	w.svc, err = campaigns.New(campaigns.Config{Store: st, Images: catalog, Jobs: w.jobs, Now: w.clock, Approvals: w.approvals,
		Wake: func(vins ...string) { w.woken = append(w.woken, vins...) }})
	if err != nil {
		t.Fatal(err)
	}
	epoch, ok, err := st.AcquireLeadership(ctx, "leader", "test", 1000*time.Hour, w.now)
	if err != nil || !ok {
		t.Fatalf("leadership: %v %v", ok, err)
	}
	w.fence = server.Fence{Name: "leader", Holder: "test", Epoch: epoch}
	for i := range vehicles {
		w.register(t, i, "dcm-1.0.bin")
	}
	return w
}

func (w *world) clock() time.Time { return w.now }

// start starts campaign id as the release manager, with the approval a
// second account gives when the first try asks for one.
func (w *world) start(t *testing.T, id string) (campaigns.View, error) {
	t.Helper()
	v, err := w.svc.Start(ctx, admin, id)
	if server.ErrorOf(err).Code != errcode.ApprovalRequired {
		return v, err
	}
	pending, ok, err := w.approvals.Pending(ctx, id)
	if err != nil || !ok {
		t.Fatalf("no pending approval after approval_required: %v", err)
	}
	if _, err := w.approvals.Decide(ctx, approver, pending.ID, true, ""); err != nil {
		t.Fatal(err)
	}
	return w.svc.Start(ctx, admin, id)
}

func vinOf(i int) string { return fmt.Sprintf("1RSDA0000000%05d", i) }

// register adds vehicle i with a DCM reported running installed ("": never reported).
func (w *world) register(t *testing.T, i int, installed string) server.Vehicle {
	t.Helper()
	v := server.Vehicle{VIN: vinOf(i), Model: "M", Year: 2026, Region: "EU", PublicKey: []byte{byte(i)}, CreatedAt: w.now,
		ECUs: []server.ECU{{Serial: fmt.Sprintf("DCM%d", i), Type: "dcm", HardwareID: "DCM-A"}}}
	if err := w.store.CreateVehicle(ctx, v); err != nil {
		t.Fatal(err)
	}
	if installed != "" {
		e := v.ECUs[0]
		e.InstalledTarget = installed
		if err := w.store.ReportECUs(ctx, v.VIN, []server.ECU{e}, server.Health{}, w.now); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

func (w *world) tick(t *testing.T) campaigns.View {
	t.Helper()
	if err := w.svc.Tick(ctx, w.fence); err != nil {
		t.Fatal(err)
	}
	cs, err := w.svc.List(ctx)
	if err != nil || len(cs) == 0 {
		t.Fatalf("list: %v %v", cs, err)
	}
	return cs[0]
}

// finish ends every job of the campaign in state from as to.
func (w *world) finish(t *testing.T, id, from, to string, n int) {
	t.Helper()
	js, err := w.store.CampaignJobs(ctx, id, from)
	if err != nil {
		t.Fatal(err)
	}
	if len(js) < n {
		t.Fatalf("%d %s jobs, want at least %d", len(js), from, n)
	}
	for _, j := range js[:n] {
		next := j
		next.State, next.UpdatedAt = to, w.now
		if err := w.store.UpdateJob(ctx, next, from); err != nil {
			t.Fatal(err)
		}
		if err := w.store.AddJobEvent(ctx, j.ID, server.JobEvent{At: w.now, Kind: to, Message: "the agent says " + to}); err != nil {
			t.Fatal(err)
		}
	}
}

func (w *world) create(t *testing.T, r campaigns.CreateRequest) campaigns.View {
	t.Helper()
	seed := int64(7)
	r.Seed = &seed
	if r.Name == "" {
		r.Name = "modem fix"
	}
	r.ECU, r.Version = "dcm", "2.0.0"
	v, err := w.svc.Create(ctx, admin, r)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func waveTargets(v campaigns.View) []int {
	var out []int
	for _, w := range v.Waves {
		out = append(out, w.Targeted)
	}
	return out
}

// TestRolloutRunsItsWaves: waves open as cumulative percentages once the
// last one qualifies (minSamples finished, success rate, soak), jobs are
// assigned no faster than the rate cap, and the campaign completes.
func TestRolloutRunsItsWaves(t *testing.T) {
	w := newWorld(t, 40)
	w.register(t, 99, "dcm-2.0.bin") // already on it: not selected
	c := w.create(t, campaigns.CreateRequest{Waves: []int{10, 50, 100}, MinSamples: 2, Soak: "1h", MaxPerMinute: 6})
	if c.State != server.CampaignDraft || c.Config.Targets["DCM-A"] != "dcm-2.0.bin" {
		t.Fatalf("created: %+v", c)
	}
	v, err := w.start(t, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if v.Selected != 40 {
		t.Fatalf("selected %d, want 40 (the vehicle on 2.0.0 needs nothing)", v.Selected)
	}
	v = w.tick(t)
	if got := waveTargets(v); !slices.Equal(got, []int{4, 0, 0}) || v.Totals.Waiting != 4 {
		t.Fatalf("after the first tick: waves %v, totals %+v (want wave 1 of 4, waiting: no time for the rate cap yet)", got, v.Totals)
	}
	w.now = w.now.Add(time.Minute)
	if v = w.tick(t); v.Totals.Queued != 4 {
		t.Fatalf("a minute later: %+v (want all 4 queued: the rate cap allows 6 a minute)", v.Totals)
	}
	if len(w.woken) != 4 {
		t.Fatalf("woke %d vehicles, want 4", len(w.woken))
	}
	w.finish(t, c.ID, server.JobQueued, server.JobSucceeded, 4)
	w.now = w.now.Add(30 * time.Minute)
	if v = w.tick(t); v.Waves[1].State != "pending" {
		t.Fatalf("wave 2 opened before the soak: %+v", v.Waves)
	}
	w.now = w.now.Add(31 * time.Minute)
	v = w.tick(t)
	if got := waveTargets(v); !slices.Equal(got, []int{4, 16, 0}) {
		t.Fatalf("wave 2: %v, want 16 more (50%% of 40, cumulative)", got)
	}
	if v.Totals.Queued != 6 || v.Totals.Waiting != 10 || v.Waves[0].State != "done" {
		t.Fatalf("the rate cap: totals %+v, waves %+v (want 6 assigned in a minute, 10 waiting)", v.Totals, v.Waves)
	}
	for range 3 { // three more minutes: the rest of wave 2
		w.now = w.now.Add(time.Minute)
		v = w.tick(t)
	}
	w.finish(t, c.ID, server.JobQueued, server.JobSucceeded, 16)
	w.now = w.now.Add(2 * time.Hour)
	v = w.tick(t)
	if got := waveTargets(v); !slices.Equal(got, []int{4, 16, 20}) {
		t.Fatalf("wave 3: %v", got)
	}
	for range 5 {
		w.now = w.now.Add(time.Minute)
		w.tick(t)
	}
	w.finish(t, c.ID, server.JobQueued, server.JobSucceeded, 20)
	if v = w.tick(t); v.State != server.CampaignCompleted || v.Totals.Succeeded != 40 {
		t.Fatalf("at the end: %s, totals %+v", v.State, v.Totals)
	}
}

// TestFailuresHaltTheCampaign: over the threshold, the campaign halts,
// says why, cancels the jobs no vehicle started, and lists its failures.
func TestFailuresHaltTheCampaign(t *testing.T) {
	w := newWorld(t, 20)
	c := w.create(t, campaigns.CreateRequest{Waves: []int{50, 100}, MinSamples: 5, Soak: "0s"})
	if _, err := w.start(t, c.ID); err != nil {
		t.Fatal(err)
	}
	w.tick(t)
	w.now = w.now.Add(time.Minute)
	if v := w.tick(t); v.Totals.Queued != 10 {
		t.Fatalf("wave 1: %+v", v.Totals)
	}
	w.finish(t, c.ID, server.JobQueued, server.JobInProgress, 2)
	w.finish(t, c.ID, server.JobInProgress, server.JobRolledBack, 1)
	v := w.tick(t)
	if v.State != server.CampaignHalted || v.HaltReason == "" {
		t.Fatalf("one rollback over a sample of 5 is 20%%: %s %q", v.State, v.HaltReason)
	}
	if v.Totals.Queued != 0 || v.Totals.InProgress != 1 || v.Totals.Canceled != 8 {
		t.Fatalf("after the halt: %+v (queued jobs canceled, the started one left to finish)", v.Totals)
	}
	fs, err := w.svc.Failures(ctx, c.ID, 10)
	if err != nil || len(fs) != 1 || fs[0].State != server.JobRolledBack || fs[0].Why != "the agent says rolled_back" {
		t.Fatalf("failures: %+v %v", fs, err)
	}
	if _, err := w.svc.Act(ctx, admin, c.ID, "resume"); server.ErrorOf(err).Kind != server.KindConflict {
		t.Fatalf("resume a halted campaign: %v, want a conflict", err)
	}
	if v, err := w.svc.Act(ctx, admin, c.ID, "abort"); err != nil || v.State != server.CampaignAborted {
		t.Fatalf("abort: %+v %v", v, err)
	}
}

// TestOperatorActions: start, pause, resume and abort move a campaign
// only along its states.
func TestOperatorActions(t *testing.T) {
	w := newWorld(t, 3)
	c := w.create(t, campaigns.CreateRequest{Waves: []int{100}, MinSamples: 1})
	steps := []struct {
		action, want string
		kind         server.Kind
	}{
		{"pause", "", server.KindConflict}, // a draft does not pause
		{"start", server.CampaignRunning, 0},
		{"start", "", server.KindConflict},
		{"pause", server.CampaignPaused, 0},
		{"pause", "", server.KindConflict},
		{"resume", server.CampaignRunning, 0},
		{"fly", "", server.KindNotFound},
		{"abort", server.CampaignAborted, 0},
		{"abort", "", server.KindConflict},
	}
	for _, s := range steps {
		var v campaigns.View
		var err error
		if s.action == "start" {
			v, err = w.start(t, c.ID)
		} else {
			v, err = w.svc.Act(ctx, admin, c.ID, s.action)
		}
		if s.want == "" {
			if server.ErrorOf(err).Kind != s.kind {
				t.Fatalf("%s: %v, want kind %v", s.action, err, s.kind)
			}
			continue
		}
		if err != nil || v.State != s.want {
			t.Fatalf("%s: %s %v, want %s", s.action, v.State, err, s.want)
		}
	}
	for _, id := range []string{"not-a-uuid", "00000000-0000-0000-0000-000000000000"} {
		if _, err := w.svc.Get(ctx, id); !errors.Is(err, server.ErrNotFound) {
			t.Fatalf("Get(%s): %v", id, err)
		}
	}
}

func TestCreateAndStartRefusals(t *testing.T) {
	w := newWorld(t, 0)
	if _, err := w.svc.Create(ctx, admin, campaigns.CreateRequest{Name: "x", ECU: "dcm", Version: "7.0.0"}); server.ErrorOf(err).Code != errcode.NoSuchImage {
		t.Fatalf("an unpublished version: %v", err)
	}
	c := w.create(t, campaigns.CreateRequest{})
	if _, err := w.start(t, c.ID); server.ErrorOf(err).Code != errcode.CampaignEmpty {
		t.Fatalf("no vehicle: %v, want campaign_empty", err)
	}
	open := w.create(t, campaigns.CreateRequest{Name: "for new cars", IncludeNew: true, Waves: []int{100}, MinSamples: 1, Consent: "owner"})
	if v, err := w.start(t, open.ID); err != nil || v.State != server.CampaignRunning {
		t.Fatalf("an empty campaign that includes new vehicles starts: %+v %v", v, err)
	}
}

// TestNewVehiclesAndConsent: a campaign that includes new vehicles takes
// in a vehicle registered later; with owner consent it waits for the
// owner, and a declined vehicle counts as neither success nor failure.
func TestNewVehiclesAndConsent(t *testing.T) {
	w := newWorld(t, 0)
	c := w.create(t, campaigns.CreateRequest{IncludeNew: true, Waves: []int{100}, MinSamples: 1, Consent: "owner"})
	if _, err := w.start(t, c.ID); err != nil {
		t.Fatal(err)
	}
	w.tick(t) // opens its only wave
	for i := range 2 {
		v := w.register(t, i, "dcm-1.0.bin")
		if err := w.svc.OnRegister(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	p, err := w.svc.PendingConsent(ctx, vinOf(0))
	if err != nil || len(p) != 1 || p[0].Version != "2.0.0" || p[0].ReleaseNotes != "fixes the modem" {
		t.Fatalf("pending consent: %+v %v", p, err)
	}
	owner := server.Principal{ID: "o", Name: "owner", Roles: server.Roles{server.RoleOwner}}
	if err := w.svc.Consent(ctx, owner, vinOf(0), c.ID, "accept"); err != nil {
		t.Fatal(err)
	}
	if err := w.svc.Consent(ctx, owner, vinOf(1), c.ID, "decline"); err != nil {
		t.Fatal(err)
	}
	if err := w.svc.Consent(ctx, owner, vinOf(1), c.ID, "decline"); server.ErrorOf(err).Kind != server.KindConflict {
		t.Fatalf("a second answer: %v", err)
	}
	if err := w.svc.Consent(ctx, owner, vinOf(1), c.ID, "maybe"); server.ErrorOf(err).Kind != server.KindInvalid {
		t.Fatalf("a bad decision: %v", err)
	}
	w.now = w.now.Add(time.Minute)
	v := w.tick(t)
	if v.Totals.Targeted != 2 || v.Totals.Declined != 1 || v.Totals.Queued != 1 {
		t.Fatalf("after consent: %+v", v.Totals)
	}
	w.finish(t, c.ID, server.JobQueued, server.JobSucceeded, 1)
	if v := w.tick(t); v.State != server.CampaignCompleted {
		t.Fatalf("declined vehicles do not hold a campaign open: %s %+v", v.State, v.Totals)
	}
}

func TestNewRefusesAnIncompleteConfig(t *testing.T) {
	if _, err := campaigns.New(campaigns.Config{Images: catalog, Now: time.Now}); err == nil {
		t.Fatal("New without a store or jobs worked")
	}
}

// TestCampaignOfAnUpdateSet: a campaign may name several ECUs; its
// members are the vehicles whose first ECU needs its image, and each
// member gets one job for the whole set (its DCM and its head unit), the
// set's images are the campaign's (auto-assign leaves them alone), and a
// vehicle that lacks an ECU of the set gets none.
func TestCampaignOfAnUpdateSet(t *testing.T) {
	w := newWorld(t, 0)
	for i := range 3 {
		v := server.Vehicle{VIN: vinOf(i), Model: "M", Year: 2026, Region: "EU", PublicKey: []byte{byte(i)}, CreatedAt: w.now,
			ECUs: []server.ECU{{Serial: fmt.Sprintf("DCM%d", i), Type: "dcm", HardwareID: "DCM-A"}, {Serial: fmt.Sprintf("HU%d", i), Type: "head-unit", HardwareID: "HU-A"}}}
		if err := w.store.CreateVehicle(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	w.register(t, 9, "") // a DCM alone: it has no head unit for the set
	for _, bad := range []campaigns.CreateRequest{
		{Name: "x", ECU: "dcm", Version: "2.0.0", ECUs: []campaigns.Part{{ECU: "dcm", Version: "2.0.0"}}},
		{Name: "x", ECUs: []campaigns.Part{{ECU: "dcm", Version: "2.0.0"}, {ECU: "dcm", Version: "1.0.0"}}},
		{Name: "x", ECUs: []campaigns.Part{{ECU: "dcm", Version: "2.0.0"}, {ECU: "head-unit"}}},
		{Name: "x", ECUs: []campaigns.Part{{ECU: "dcm", Version: "2.0.0"}, {ECU: "radio", Version: "1.0.0"}}},
	} {
		if _, err := w.svc.Create(ctx, admin, bad); server.ErrorOf(err).Code != errcode.InvalidCampaign {
			t.Fatalf("campaign %+v: %v, want invalid_campaign", bad.ECUs, err)
		}
	}
	if _, err := w.svc.Create(ctx, admin, campaigns.CreateRequest{Name: "x", ECUs: []campaigns.Part{{ECU: "dcm", Version: "2.0.0"}, {ECU: "head-unit", Version: "9.0.0"}}}); server.ErrorOf(err).Code != errcode.NoSuchImage {
		t.Fatalf("a set with an unpublished image: %v", err)
	}
	seed := int64(7)
	c, err := w.svc.Create(ctx, admin, campaigns.CreateRequest{Name: "modem and head unit", Seed: &seed, Waves: []int{100}, MinSamples: 1, MaxPerMinute: 600,
		ECUs: []campaigns.Part{{ECU: "dcm", Version: "2.0.0"}, {ECU: "head-unit", Version: "2.0.0"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.start(t, c.ID); err != nil {
		t.Fatal(err)
	}
	w.tick(t)
	w.now = w.now.Add(time.Minute)
	w.tick(t)
	js, err := w.store.CampaignJobs(ctx, c.ID, server.JobQueued)
	if err != nil {
		t.Fatal(err)
	}
	if len(js) != 3 {
		t.Fatalf("%d jobs, want one per vehicle with both ECUs (3)", len(js))
	}
	for _, j := range js {
		if len(j.Parts) != 2 || j.Parts[0].TargetPath != "dcm-2.0.bin" || j.Parts[1].TargetPath != "hu-2.0.bin" || j.Parts[1].ECUType != "head-unit" {
			t.Fatalf("job %s of %s: parts %+v, want the DCM then the head unit", j.ID, j.VIN, j.Parts)
		}
	}
	covered, err := w.store.CampaignTargets(ctx)
	if err != nil || !covered["hu-2.0.bin"] || !covered["dcm-2.0.bin"] {
		t.Fatalf("the images campaigns cover: %v %v", covered, err)
	}
}
