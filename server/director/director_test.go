package director_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/director"
	"github.com/roadsign/roadsign/server/jobs"
	"github.com/roadsign/roadsign/server/repo"
	"github.com/roadsign/roadsign/server/sqlite"
	"github.com/roadsign/roadsign/server/sqlstore"
)

var ctx = context.Background()

const vin = "1RSDA0000000000A1"

// images is a fixed image repository: path -> target.
type images map[string]*metadata.TargetFiles

func (i images) CurrentTargets(context.Context) (map[string]*metadata.TargetFiles, int64, error) {
	return i, 1, nil
}

// image is a target built for ecu/hw at version with counter.
func image(ecu, hw, version string, counter int64) *metadata.TargetFiles {
	sum := sha256.Sum256([]byte(ecu + hw + version))
	c, _ := json.Marshal(meta.Custom{ECU: ecu, HardwareIDs: []string{hw}, Version: version, ReleaseCounter: counter})
	raw := json.RawMessage(c)
	return &metadata.TargetFiles{Length: 1000 + counter, Hashes: metadata.Hashes{"sha256": sum[:]}, Custom: &raw}
}

func sumOf(tf *metadata.TargetFiles) string { return hex.EncodeToString(tf.Hashes["sha256"]) }

// repository: two head-unit images and two DCM images for DCM-A, one for DCM-B.
var catalog = images{
	"hu-1.0.bin":   image("head-unit", "HU-A", "1.0.0", 1),
	"hu-2.0.bin":   image("head-unit", "HU-A", "2.0.0", 2),
	"dcm-1.0.bin":  image("dcm", "DCM-A", "1.0.0", 1),
	"dcm-2.0.bin":  image("dcm", "DCM-A", "2.0.0", 2),
	"dcmb-9.0.bin": image("dcm", "DCM-B", "9.0.0", 9),
}

// campaigns is what running campaigns cover and hold.
type campaigns struct {
	covered map[string]bool
	held    map[string]bool
}

func (c campaigns) CampaignDeltas(context.Context, string) (string, error)   { return "", nil }
func (c campaigns) CampaignTargets(context.Context) (map[string]bool, error) { return c.covered, nil }
func (c campaigns) CampaignHolds(context.Context, string) (map[string]bool, error) {
	return c.held, nil
}

type world struct {
	store *sqlstore.Store
	keys  *repo.OnlineKeys
	jobs  *jobs.Service
	now   time.Time
}

func newWorld(t testing.TB) *world {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	k, _, err := repo.InitKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{store: st, keys: k, now: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)}
	w.jobs, err = jobs.New(jobs.Config{Store: st, Images: catalog, Now: w.clock, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *world) clock() time.Time { return w.now }

// load is how the director reads the vehicle when it decides again.
func (w *world) load(ctx context.Context) (server.Vehicle, error) { return w.store.Vehicle(ctx, vin) }

func (w *world) director(t *testing.T, auto string, c director.Campaigns, floor int64) *director.Service {
	t.Helper()
	d, err := director.New(director.Config{Store: w.store, Images: catalog, Keys: w.keys, Jobs: w.jobs, Campaigns: c,
		AutoAssign: auto, Expiry: 24 * time.Hour, VersionFloor: floor, Now: w.clock, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// vehicle registers a car with a head unit HU1 (HU-A) and a DCM DCM1
// (DCM-A), each reported running runs[serial] (a target path; "" never
// reported).
func (w *world) vehicle(t testing.TB, runs map[string]string) server.Vehicle {
	t.Helper()
	v := server.Vehicle{VIN: vin, Model: "M", Year: 2026, Region: "EU", PublicKey: []byte{1}, CreatedAt: w.now,
		ECUs: []server.ECU{{Serial: "HU1", Type: "head-unit", HardwareID: "HU-A"}, {Serial: "DCM1", Type: "dcm", HardwareID: "DCM-A"}}}
	if err := w.store.CreateVehicle(ctx, v); err != nil {
		t.Fatal(err)
	}
	var reported []server.ECU
	for _, e := range v.ECUs {
		if p := runs[e.Serial]; p != "" {
			e.InstalledTarget, e.InstalledSHA256 = p, sumOf(catalog[p])
			reported = append(reported, e)
		}
	}
	if len(reported) > 0 {
		if err := w.store.ReportECUs(ctx, vin, reported, server.Health{}, w.now.Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := w.store.Vehicle(ctx, vin)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// job stores a job for serial.
func (w *world) job(t testing.TB, serial, path, origin, state string, edit ...func(*server.Job)) server.Job {
	t.Helper()
	j := server.Job{ID: uuid.NewString(), VIN: vin, ECUSerial: serial, TargetPath: path, Origin: origin, State: state,
		CreatedAt: w.now, UpdatedAt: w.now, MaxAttempts: 3}
	for _, f := range edit {
		f(&j)
	}
	if err := w.store.CreateJob(ctx, j); err != nil {
		t.Fatal(err)
	}
	w.now = w.now.Add(time.Second) // jobs are ordered by creation
	return j
}

// assigned is what Assignment gives each serial: "path" or "path job:ORIGIN".
func assigned(t *testing.T, d *director.Service, v server.Vehicle, jobOrigins map[string]string) map[string]string {
	t.Helper()
	as, err := d.Assignment(ctx, v)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, a := range as {
		s := a.Path
		if a.JobID != "" {
			s += " job:" + jobOrigins[a.JobID]
		}
		if a.Downgrade {
			s += " downgrade"
		}
		out[a.Serial] = s
	}
	return out
}

// TestPrecedence: per ECU, an open dealer job beats a campaign's, which
// beats auto-assign; auto-assign gives the newest image for the hardware
// that no campaign covers, never a downgrade, never an image whose
// auto-assigned install failed there, and nothing to an ECU a campaign
// holds.
func TestPrecedence(t *testing.T) {
	type jobSpec struct {
		serial, path, origin, state string
		edit                        func(*server.Job)
	}
	tests := []struct {
		name      string
		auto      string
		runs      map[string]string
		jobs      []jobSpec
		campaigns campaigns
		want      map[string]string
	}{
		{name: "auto-assign none: nothing without a job", auto: director.AutoNone,
			want: map[string]string{}},
		{name: "auto-assign latest: the newest image for each ECU's hardware", auto: director.AutoLatest,
			want: map[string]string{"HU1": "hu-2.0.bin", "DCM1": "dcm-2.0.bin"}},
		{name: "a dealer job beats auto-assign", auto: director.AutoLatest,
			jobs: []jobSpec{{"DCM1", "dcm-1.0.bin", server.OriginDealer, server.JobQueued, nil}},
			want: map[string]string{"HU1": "hu-2.0.bin", "DCM1": "dcm-1.0.bin job:dealer"}},
		{name: "a dealer job beats a campaign job", auto: director.AutoNone,
			jobs: []jobSpec{
				{"HU1", "hu-2.0.bin", server.OriginCampaign, server.JobQueued, nil},
				{"HU1", "hu-1.0.bin", server.OriginDealer, server.JobQueued, nil},
			},
			want: map[string]string{"HU1": "hu-1.0.bin job:dealer"}},
		{name: "the oldest open dealer job is the active one", auto: director.AutoNone,
			jobs: []jobSpec{
				{"HU1", "hu-1.0.bin", server.OriginDealer, server.JobInProgress, nil},
				{"HU1", "hu-2.0.bin", server.OriginDealer, server.JobQueued, nil},
			},
			want: map[string]string{"HU1": "hu-1.0.bin job:dealer"}},
		{name: "a campaign job beats auto-assign", auto: director.AutoLatest,
			jobs: []jobSpec{{"HU1", "hu-1.0.bin", server.OriginCampaign, server.JobQueued, nil}},
			want: map[string]string{"HU1": "hu-1.0.bin job:campaign", "DCM1": "dcm-2.0.bin"}},
		{name: "finished jobs assign nothing", auto: director.AutoNone,
			jobs: []jobSpec{
				{"HU1", "hu-2.0.bin", server.OriginDealer, server.JobFailed, nil},
				{"DCM1", "dcm-2.0.bin", server.OriginCampaign, server.JobCanceled, nil},
			},
			want: map[string]string{}},
		{name: "a forced dealer job asks for a downgrade", auto: director.AutoNone,
			jobs: []jobSpec{{"HU1", "hu-1.0.bin", server.OriginDealer, server.JobQueued, func(j *server.Job) { j.Forced = true }}},
			want: map[string]string{"HU1": "hu-1.0.bin job:dealer downgrade"}},
		{name: "a job waiting for its retry assigns nothing yet", auto: director.AutoNone,
			jobs: []jobSpec{{"HU1", "hu-2.0.bin", server.OriginDealer, server.JobQueued, func(j *server.Job) { j.NextAttemptAt = j.CreatedAt.Add(time.Hour) }}},
			want: map[string]string{}},
		{name: "a job naming an image the repository no longer has assigns nothing", auto: director.AutoNone,
			jobs: []jobSpec{{"HU1", "hu-0.9.bin", server.OriginDealer, server.JobQueued, nil}},
			want: map[string]string{}},
		{name: "auto-assign skips images a campaign covers", auto: director.AutoLatest,
			campaigns: campaigns{covered: map[string]bool{"hu-2.0.bin": true}},
			want:      map[string]string{"HU1": "hu-1.0.bin", "DCM1": "dcm-2.0.bin"}},
		{name: "auto-assign leaves an ECU a campaign holds", auto: director.AutoLatest,
			campaigns: campaigns{held: map[string]bool{"DCM1": true}},
			want:      map[string]string{"HU1": "hu-2.0.bin"}},
		{name: "auto-assign never downgrades what an ECU runs", auto: director.AutoLatest,
			runs:      map[string]string{"HU1": "hu-2.0.bin"},
			campaigns: campaigns{covered: map[string]bool{"hu-2.0.bin": true}},
			want:      map[string]string{"DCM1": "dcm-2.0.bin"}},
		{name: "an ECU running the newest image is still assigned it", auto: director.AutoLatest,
			runs: map[string]string{"HU1": "hu-2.0.bin", "DCM1": "dcm-2.0.bin"},
			want: map[string]string{"HU1": "hu-2.0.bin", "DCM1": "dcm-2.0.bin"}},
		{name: "auto-assign does not push again an image that rolled back", auto: director.AutoLatest,
			jobs: []jobSpec{{"DCM1", "dcm-2.0.bin", server.OriginAutoAssign, server.JobRolledBack, nil}},
			want: map[string]string{"HU1": "hu-2.0.bin"}},
		{name: "an open auto-assign job is what auto-assign gives", auto: director.AutoLatest,
			jobs: []jobSpec{{"DCM1", "dcm-2.0.bin", server.OriginAutoAssign, server.JobInProgress, nil}},
			want: map[string]string{"HU1": "hu-2.0.bin", "DCM1": "dcm-2.0.bin job:auto-assign"}},
		{name: "a job that succeeded since the last report counts as installed", auto: director.AutoLatest,
			runs:      map[string]string{"HU1": "hu-1.0.bin"},
			jobs:      []jobSpec{{"HU1", "hu-2.0.bin", server.OriginDealer, server.JobSucceeded, nil}},
			campaigns: campaigns{covered: map[string]bool{"hu-2.0.bin": true}},
			want:      map[string]string{"DCM1": "dcm-2.0.bin"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			v := w.vehicle(t, tt.runs)
			origins := map[string]string{}
			for _, js := range tt.jobs {
				j := w.job(t, js.serial, js.path, js.origin, js.state, func(j *server.Job) {
					if js.edit != nil {
						js.edit(j)
					}
				})
				origins[j.ID] = j.Origin
			}
			var c director.Campaigns
			if tt.campaigns.covered != nil || tt.campaigns.held != nil {
				c = tt.campaigns
			}
			got := assigned(t, w.director(t, tt.auto, c, 0), v, origins)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("assigned %v, want %v", got, tt.want)
			}
		})
	}
}

// TestTimestampRecordsAutoAssignAsJobs: a fetch writes auto-assign's
// decision down as a job (for an ECU that reported what it runs), and a
// job superseded by a dealer's is canceled.
func TestTimestampRecordsAutoAssignAsJobs(t *testing.T) {
	w := newWorld(t)
	w.vehicle(t, map[string]string{"HU1": "hu-1.0.bin"})
	d := w.director(t, director.AutoLatest, nil, 0)
	if _, err := d.Timestamp(ctx, vin, w.load); err != nil {
		t.Fatal(err)
	}
	js, err := w.store.JobsByVIN(ctx, vin)
	if err != nil {
		t.Fatal(err)
	}
	if len(js) != 1 || js[0].ECUSerial != "HU1" || js[0].TargetPath != "hu-2.0.bin" || js[0].Origin != server.OriginAutoAssign {
		t.Fatalf("jobs after a fetch: %+v (want one auto-assign job for HU1: DCM1 never reported)", js)
	}
	dealer := w.job(t, "HU1", "hu-1.0.bin", server.OriginDealer, server.JobQueued)
	if _, err := d.Timestamp(ctx, vin, w.load); err != nil {
		t.Fatal(err)
	}
	auto, err := w.store.Job(ctx, js[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if auto.State != server.JobCanceled {
		t.Fatalf("the auto-assign job is %s after dealer job %s, want canceled", auto.State, dealer.ID)
	}
}

// TestSigningVersions: metadata is re-signed when the assignment changes
// or half its life has passed, not otherwise; every version is at least
// the floor; the VIN is signed in; files are served by version.
func TestSigningVersions(t *testing.T) {
	w := newWorld(t)
	w.vehicle(t, nil)
	d := w.director(t, director.AutoNone, nil, 0)
	version := func() (int64, string) {
		t.Helper()
		raw, err := d.Timestamp(ctx, vin, w.load)
		if err != nil {
			t.Fatal(err)
		}
		ts, err := (&metadata.Metadata[metadata.TimestampType]{}).FromBytes(raw)
		if err != nil {
			t.Fatal(err)
		}
		head, err := w.store.DirectorHead(ctx, vin)
		if err != nil {
			t.Fatal(err)
		}
		return ts.Signed.Version, head.AssignmentHash
	}
	steps := []struct {
		name string
		do   func()
		want int64
	}{
		{"first fetch signs version 1", func() {}, 1},
		{"the same assignment keeps it", func() { w.now = w.now.Add(time.Hour) }, 1},
		{"a new job re-signs", func() { w.job(t, "HU1", "hu-2.0.bin", server.OriginDealer, server.JobQueued) }, 2},
		{"half its life re-signs", func() { w.now = w.now.Add(13 * time.Hour) }, 3},
	}
	for _, s := range steps {
		s.do()
		if got, _ := version(); got != s.want {
			t.Fatalf("%s: timestamp v%d, want v%d", s.name, got, s.want)
		}
	}
	targets, err := d.File(ctx, vin, "3.targets.json")
	if err != nil {
		t.Fatal(err)
	}
	tm, err := (&metadata.Metadata[metadata.TargetsType]{}).FromBytes(targets)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := tm.Signed.UnrecognizedFields["custom"].(map[string]any); c["vin"] != vin || tm.Signed.Targets["hu-2.0.bin"] == nil {
		t.Fatalf("director targets: custom %v, targets %v", tm.Signed.UnrecognizedFields, tm.Signed.Targets)
	}
	for _, name := range []string{"9.targets.json", "3.timestamp.json", "root.json", "x"} {
		if _, err := d.File(ctx, vin, name); !errors.Is(err, server.ErrNotFound) {
			t.Errorf("File(%s): %v, want not found", name, err)
		}
	}

	// A restored server signs at or above its floor.
	floored := w.director(t, director.AutoNone, nil, 50)
	raw, err := floored.Timestamp(ctx, vin, w.load)
	if err != nil {
		t.Fatal(err)
	}
	ts, _ := (&metadata.Metadata[metadata.TimestampType]{}).FromBytes(raw)
	if ts.Signed.Version < 50 {
		t.Fatalf("after a restore: timestamp v%d, want ≥ 50", ts.Signed.Version)
	}
}

// versioned is an image repository whose targets version can change.
type versioned struct {
	images
	v int64
}

func (i *versioned) CurrentTargets(context.Context) (map[string]*metadata.TargetFiles, int64, error) {
	return i.images, i.v, nil
}

// TestPollOfUnchangedMetadata: once decided, a poll is one read of the
// stored head and timestamp, and neither reads the vehicle nor decides
// again; each change the assignment depends on makes the next poll
// decide again, and a check-in that reports nothing new does not.
func TestPollOfUnchangedMetadata(t *testing.T) {
	w := newWorld(t)
	w.vehicle(t, map[string]string{"HU1": "hu-1.0.bin", "DCM1": "dcm-1.0.bin"})
	repo := &versioned{images: catalog, v: 1}
	d, err := director.New(director.Config{Store: w.store, Images: repo, Keys: w.keys, Jobs: w.jobs, Campaigns: w.store,
		AutoAssign: director.AutoNone, Expiry: 24 * time.Hour, Now: w.clock, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	var statements, loads int
	w.store.TraceQueries(func(string, []any) { statements++ })
	defer w.store.TraceQueries(nil)
	// poll fetches the timestamp; it says whether the assignment was
	// decided again (the vehicle read), and the version served.
	poll := func(step string) (bool, int64) {
		t.Helper()
		statements, loads = 0, 0
		raw, err := d.Timestamp(ctx, vin, func(ctx context.Context) (server.Vehicle, error) {
			loads++
			return w.load(ctx)
		})
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		ts, err := (&metadata.Metadata[metadata.TimestampType]{}).FromBytes(raw)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if loads == 0 && statements != 1 {
			t.Fatalf("%s: a poll of unchanged metadata ran %d statements, want 1", step, statements)
		}
		return loads > 0, ts.Signed.Version
	}
	report := func(dcm string) func() {
		return func() {
			e := server.ECU{Serial: "DCM1", InstalledTarget: dcm, InstalledSHA256: sumOf(catalog[dcm])}
			if err := w.store.ReportECUs(ctx, vin, []server.ECU{e}, server.Health{}, w.now); err != nil {
				t.Fatal(err)
			}
		}
	}
	var dealer server.Job
	steps := []struct {
		name    string
		do      func()
		decided bool
		version int64
	}{
		{"first poll", func() {}, true, 1},
		{"nothing changed", func() { w.now = w.now.Add(time.Minute) }, false, 1},
		{"a check-in reporting what it said before", report("dcm-1.0.bin"), false, 1},
		{"a dealer job", func() { dealer = w.job(t, "DCM1", "dcm-2.0.bin", server.OriginDealer, server.JobQueued) }, true, 2},
		{"after it", func() {}, false, 2},
		{"the job in progress (same assignment)", func() {
			j := dealer
			j.State, j.UpdatedAt = server.JobInProgress, w.now
			if err := w.store.UpdateJob(ctx, j, server.JobQueued); err != nil {
				t.Fatal(err)
			}
		}, true, 2},
		{"after it, nothing decided again", func() {}, false, 2},
		{"a check-in reporting another image", report("dcm-2.0.bin"), true, 2},
		{"an image repository publish", func() { repo.v++ }, true, 2},
		{"a campaign created", func() {
			c := server.Campaign{ID: uuid.NewString(), Name: "c", State: server.CampaignDraft, CreatedAt: w.now, UpdatedAt: w.now}
			if err := w.store.CreateCampaign(ctx, c); err != nil {
				t.Fatal(err)
			}
		}, true, 2},
		{"a replaced DCM", func() {
			if err := w.store.ReplaceECU(ctx, vin, "DCM1", server.ECU{Serial: "DCM2", HardwareID: "DCM-A"}, []byte{2}); err != nil {
				t.Fatal(err)
			}
		}, true, 3},
		{"half its life", func() { w.now = w.now.Add(13 * time.Hour) }, true, 4},
		{"settled again", func() {}, false, 4},
	}
	for _, s := range steps {
		s.do()
		decided, version := poll(s.name)
		if decided != s.decided || version != s.version {
			t.Fatalf("%s: decided again %v, timestamp v%d; want %v, v%d", s.name, decided, version, s.decided, s.version)
		}
	}
	// A job waiting for its retry time is decided at every poll until then.
	w.job(t, "HU1", "hu-2.0.bin", server.OriginDealer, server.JobQueued, func(j *server.Job) { j.NextAttemptAt = w.now.Add(time.Hour) })
	for i, want := range []bool{true, true} {
		if decided, _ := poll("retry wait"); decided != want {
			t.Fatalf("poll %d while a job waits for its retry: decided again %v, want %v", i, decided, want)
		}
	}
	w.now = w.now.Add(2 * time.Hour)
	if _, v := poll("retry time came"); v != 5 {
		t.Fatalf("once the retry time came: timestamp v%d, want 5 (the job assigned)", v)
	}
	if decided, _ := poll("settled"); decided {
		t.Fatal("settled after the retry: decided again")
	}
}

// TestForBundle: bundle metadata is signed for the VIN, marked as a
// bundle, versioned by the bundle counter, and stores nothing online.
func TestForBundle(t *testing.T) {
	w := newWorld(t)
	v := w.vehicle(t, nil)
	w.job(t, "DCM1", "dcm-2.0.bin", server.OriginDealer, server.JobQueued)
	d := w.director(t, director.AutoNone, nil, 0)
	for want := int64(1); want <= 2; want++ {
		metas, as, err := d.ForBundle(ctx, v, meta.USBBundle{IssuedAt: w.now, ValidUntil: w.now.Add(72 * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		if len(metas) != 3 || len(as) != 1 || as[0].Serial != "DCM1" {
			t.Fatalf("bundle %d: %d files, assignment %+v", want, len(metas), as)
		}
		for _, m := range metas {
			if m.Version != want || !meta.IsUSBBundleMetadata(m.Body) {
				t.Fatalf("bundle %d: %s v%d, marked %v", want, m.Role, m.Version, meta.IsUSBBundleMetadata(m.Body))
			}
		}
	}
	if head, _ := w.store.DirectorHead(ctx, vin); head.TimestampVersion != 0 {
		t.Fatalf("bundles changed the online head: %+v", head)
	}
}

func TestNewRefusesAnIncompleteConfig(t *testing.T) {
	w := newWorld(t)
	base := director.Config{Store: w.store, Images: catalog, Keys: w.keys, Expiry: time.Hour, Now: time.Now, Log: slog.New(slog.DiscardHandler)}
	tests := []struct {
		name string
		edit func(*director.Config)
		ok   bool
	}{
		{"complete", func(*director.Config) {}, true},
		{"no store", func(c *director.Config) { c.Store = nil }, false},
		{"no keys", func(c *director.Config) { c.Keys = nil }, false},
		{"unknown auto-assign", func(c *director.Config) { c.AutoAssign = "newest" }, false},
		{"auto-assign without images", func(c *director.Config) { c.AutoAssign, c.Images = director.AutoLatest, nil }, false},
		{"no expiry", func(c *director.Config) { c.Expiry = 0 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base
			tt.edit(&c)
			if _, err := director.New(c); (err == nil) != tt.ok {
				t.Fatalf("New: %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// BenchmarkTimestampUnchanged is a vehicle's everyday poll: its director
// timestamp when nothing changed (a few finished jobs in its history).
func BenchmarkTimestampUnchanged(b *testing.B) {
	w := newWorld(b)
	w.vehicle(b, map[string]string{"HU1": "hu-1.0.bin", "DCM1": "dcm-1.0.bin"})
	for _, p := range []string{"hu-2.0.bin", "hu-1.0.bin"} {
		w.job(b, "HU1", p, server.OriginDealer, server.JobSucceeded)
	}
	d, err := director.New(director.Config{Store: w.store, Images: catalog, Keys: w.keys, Jobs: w.jobs,
		AutoAssign: director.AutoNone, Expiry: 24 * time.Hour, Now: w.clock, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := d.Timestamp(ctx, vin, w.load); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := d.Timestamp(ctx, vin, w.load); err != nil {
			b.Fatal(err)
		}
	}
}

// TestUpdateSetsAreIssuedWholeAndCompatible: the director issues an
// update set's parts together or not at all, and never an image whose
// declared requirement the vehicle's software would break.
func TestUpdateSetsAreIssuedWholeAndCompatible(t *testing.T) {
	w := newWorld(t)
	withReq := images{"dcm-7.0.bin": image("dcm", "DCM-A", "7.0.0", 7)}
	for p, tf := range catalog {
		withReq[p] = tf
	}
	hu3 := image("head-unit", "HU-A", "3.0.0", 3)
	c, _ := json.Marshal(meta.Custom{ECU: "head-unit", HardwareIDs: []string{"HU-A"}, Version: "3.0.0", ReleaseCounter: 3,
		Requires: []meta.Requirement{{ECU: "dcm", MinVersion: "2.0.0"}}})
	raw := json.RawMessage(c)
	hu3.Custom = &raw
	withReq["hu-3.0.bin"] = hu3
	d, err := director.New(director.Config{Store: w.store, Images: withReq, Keys: w.keys, Jobs: w.jobs,
		AutoAssign: director.AutoNone, Expiry: 24 * time.Hour, Now: w.clock, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	w.vehicle(t, nil)
	if err := w.store.ReportECUs(ctx, vin, []server.ECU{
		{Serial: "HU1", InstalledTarget: "hu-1.0.bin", InstalledSHA256: sumOf(catalog["hu-1.0.bin"]), InstalledVersion: "1.0.0"},
		{Serial: "DCM1", InstalledTarget: "dcm-1.0.bin", InstalledSHA256: sumOf(catalog["dcm-1.0.bin"]), InstalledVersion: "1.0.0"},
	}, server.Health{}, w.now); err != nil {
		t.Fatal(err)
	}
	v, _ := w.store.Vehicle(ctx, vin)
	set := func(parts ...server.JobPart) func(*server.Job) {
		return func(j *server.Job) { j.Parts = parts }
	}
	origins := map[string]string{}
	end := func(j server.Job) {
		j.State = server.JobCanceled
		if err := w.store.UpdateJob(ctx, j, server.JobQueued, server.JobEvent{At: w.now, Kind: server.JobCanceled}); err != nil {
			t.Fatal(err)
		}
	}

	alone := w.job(t, "HU1", "hu-3.0.bin", server.OriginDealer, server.JobQueued)
	if got := assigned(t, d, v, origins); len(got) != 0 {
		t.Fatalf("head unit 3.0.0 alone, which needs DCM 2.0.0 on a car whose DCM runs 1.0.0, was issued: %v", got)
	}
	end(alone)

	gone := w.job(t, "HU1", "hu-2.0.bin", server.OriginDealer, server.JobQueued, set(
		server.JobPart{ECUSerial: "HU1", ECUType: "head-unit", TargetPath: "hu-2.0.bin", Version: "2.0.0"},
		server.JobPart{ECUSerial: "DCM1", ECUType: "dcm", TargetPath: "dcm-9.9.bin", Version: "9.9.0"}))
	origins[gone.ID] = "set"
	if got := assigned(t, d, v, origins); len(got) != 0 {
		t.Fatalf("a set with one image no longer in the repository was issued in part: %v", got)
	}
	end(gone)

	broken := w.job(t, "HU1", "hu-3.0.bin", server.OriginDealer, server.JobQueued, set(
		server.JobPart{ECUSerial: "HU1", ECUType: "head-unit", TargetPath: "hu-3.0.bin", Version: "3.0.0"},
		server.JobPart{ECUSerial: "DCM1", ECUType: "dcm", TargetPath: "dcm-1.0.bin", Version: "1.0.0"}))
	origins[broken.ID] = "set"
	if got := assigned(t, d, v, origins); len(got) != 0 {
		t.Fatalf("a set breaking its own requirement was issued: %v", got)
	}
	end(broken)

	good := w.job(t, "HU1", "hu-3.0.bin", server.OriginDealer, server.JobQueued, set(
		server.JobPart{ECUSerial: "HU1", ECUType: "head-unit", TargetPath: "hu-3.0.bin", Version: "3.0.0"},
		server.JobPart{ECUSerial: "DCM1", ECUType: "dcm", TargetPath: "dcm-2.0.bin", Version: "2.0.0"}))
	origins[good.ID] = "set"
	got := assigned(t, d, v, origins)
	if want := map[string]string{"HU1": "hu-3.0.bin job:set", "DCM1": "dcm-2.0.bin job:set"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the compatible set: assigned %v, want %v", got, want)
	}

	// An older dealer job on one ECU of the set comes first: the set
	// waits whole.
	end(good)
	first := w.job(t, "DCM1", "dcm-7.0.bin", server.OriginDealer, server.JobQueued)
	origins[first.ID] = "dealer"
	later := w.job(t, "HU1", "hu-3.0.bin", server.OriginDealer, server.JobQueued, set(
		server.JobPart{ECUSerial: "HU1", ECUType: "head-unit", TargetPath: "hu-3.0.bin", Version: "3.0.0"},
		server.JobPart{ECUSerial: "DCM1", ECUType: "dcm", TargetPath: "dcm-2.0.bin", Version: "2.0.0"}))
	origins[later.ID] = "set"
	got = assigned(t, d, v, origins)
	if want := map[string]string{"DCM1": "dcm-7.0.bin job:dealer"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("a set behind another job on its DCM: assigned %v, want %v", got, want)
	}
}
