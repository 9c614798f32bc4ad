// Package fleetsim simulates a fleet of vehicles with the agent's own
// code: each vehicle has its own ed25519 key and ECUs, checks in with
// signed manifests, fetches and verifies its director metadata with the
// agent's TUF client, and reports job and campaign events with an outcome
// chosen per version at configurable rates. It rehearses rollouts and
// measures the server; it links no server code.
package fleetsim

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/client/tufclient"
	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/timeattest"
	"github.com/roadsign/roadsign/internal/vehicleauth"
	"github.com/roadsign/roadsign/internal/vin"
)

// ECUSpec is one ECU every simulated vehicle has, with its factory image.
type ECUSpec struct {
	Type, HardwareID, Version, SHA256 string
	Length                            int64
}

// Config describes the fleet.
type Config struct {
	Server      string
	Token       string // admin or dealer, for registration
	Vehicles    int
	Concurrency int
	Seed        int64
	ECUs        []ECUSpec
	Model       string
	Year        int
	Region      string
	// Fail and Rollback give, per version, the share of vehicles whose
	// install of it fails (before the switch) or rolls back (after).
	Fail, Rollback map[string]float64
	// Download fetches each assigned image and checks its signed hash.
	Download bool
	// CheckInOnly: a cycle is the signed check-in alone, without the
	// director poll (to measure check-ins).
	CheckInOnly bool
	// Secondaries: every ECU has a key of its own and signs its own
	// version report at each check-in (Uptane); the first ECU is the
	// primary, whose key is the vehicle's.
	Secondaries bool
	// AttestTime asks for the server's signed time at each check-in and
	// verifies it against the director root's time key, as an agent does.
	AttestTime bool
	// StateDir keeps each vehicle's verified director metadata.
	StateDir string
	// DirectorRoot is the pinned director root; nil: fetched from the
	// server the first time (trust on first use).
	DirectorRoot []byte
	// ImageRoot is the pinned image repository root, to verify the
	// deltas the director offers (with Download); nil: fetched from the
	// server the first time.
	ImageRoot []byte
	HTTP      *http.Client
	Now       func() time.Time
	Log       *slog.Logger
}

// Receipt is an install a vehicle was assigned, and what it reported.
type Receipt struct {
	Serial  string `json:"serial"`
	Target  string `json:"target"`
	Version string `json:"version"`
	JobID   string `json:"jobId,omitempty"`
	Outcome string `json:"outcome"` // succeeded, failed, rolled_back, canceled, waiting
}

type ecu struct {
	ECUSpec
	Serial string
	// target is the installed image's path, as the director named it.
	target string
	// key signs its version reports (Config.Secondaries), with a counter
	// that rises with every report, across runs too (it starts from the
	// clock).
	key     ed25519.PrivateKey
	counter int64
}

// Vehicle is one simulated vehicle.
type Vehicle struct {
	VIN  string
	Key  ed25519.PrivateKey
	ecus []ecu
	api  *api.Client
	// dirVersion is the director timestamp version last verified.
	dirVersion int64
	receipts   []Receipt
	health     Health
}

// Health is what one vehicle saw of the server: its failed cycles, and
// the longest time between two cycles that went through.
type Health struct {
	VIN        string
	Errors     int
	LongestGap time.Duration
	// lastOK is when the last cycle that went through ended.
	lastOK time.Time
}

// Health lists every vehicle's (safe once no cycle runs).
func (f *Fleet) Health() []Health {
	out := make([]Health, len(f.vehicles))
	for i, v := range f.vehicles {
		out[i] = v.health
		out[i].VIN = v.VIN
	}
	return out
}

// Installed is each vehicle's ECUs' installed versions: VIN → ECU type →
// version (safe once no cycle runs).
func (f *Fleet) Installed() map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, v := range f.vehicles {
		m := map[string]string{}
		for _, e := range v.ecus {
			m[e.Type] = e.Version
		}
		out[v.VIN] = m
	}
	return out
}

// Fleet is the simulated fleet.
type Fleet struct {
	cfg      Config
	vehicles []*Vehicle
	root     []byte
	rootOnce sync.Once
	// rootCheck checks the pinned root once: every vehicle pins the same.
	rootCheck sync.Once
	// timeRoot is the parsed director root the time attestations are
	// verified against.
	timeRootOnce sync.Once
	timeRoot     *metadata.Metadata[metadata.RootType]
	timeRootErr  error
	rootErr      error
	// images is the verified image repository, refreshed when the
	// director offers a delta it does not list yet (deltas.go).
	images images

	checkIns, errs, lostEvents, wakeups atomic.Int64
	// lastErr is the last failed cycle's error, for the summary.
	lastErr   atomic.Value
	mu        sync.Mutex
	latencies []time.Duration
	// cycleLatencies are whole cycles': check-in, director poll and
	// whatever the poll brought.
	cycleLatencies []time.Duration
	// started is when the measured window began (the first cycle after
	// New or ResetStats); done when its last cycle so far ended.
	started, done time.Time
}

// New makes the fleet's vehicles: VINs with valid check digits, keys and
// all derived from the seed, so a later run with the same seed is the
// same fleet.
func New(cfg Config) (*Fleet, error) {
	if cfg.Vehicles < 1 || cfg.Vehicles > 10_000_000 || len(cfg.ECUs) == 0 {
		return nil, errors.New("fleet: want 1 to 10 000 000 vehicles and at least one ECU")
	}
	if cfg.Concurrency < 1 {
		cfg.Concurrency = 32
	}
	if cfg.HTTP == nil {
		cfg.HTTP = download.NewHTTPClient()
		cfg.HTTP.Transport.(*http.Transport).MaxIdleConnsPerHost = cfg.Concurrency * 2
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{cfg: cfg, root: cfg.DirectorRoot}
	for i := range cfg.Vehicles {
		v, err := makeVIN(cfg.Seed, i)
		if err != nil {
			return nil, err
		}
		seed := sha256.Sum256(fmt.Appendf(nil, "roadsign-fleetsim/%d/%d", cfg.Seed, i))
		veh := &Vehicle{VIN: v, Key: ed25519.NewKeyFromSeed(seed[:])}
		for j, s := range cfg.ECUs {
			e := ecu{ECUSpec: s, Serial: serialPrefix(s.Type) + v}
			if cfg.Secondaries {
				e.key = veh.Key // the primary's key is the vehicle's
				if j > 0 {
					es := sha256.Sum256(fmt.Appendf(nil, "roadsign-fleetsim/%d/%d/%s", cfg.Seed, i, e.Serial))
					e.key = ed25519.NewKeyFromSeed(es[:])
				}
			}
			veh.ecus = append(veh.ecus, e)
		}
		veh.api = &api.Client{Base: cfg.Server, HTTP: cfg.HTTP, VIN: v, Key: veh.Key, Now: cfg.Now}
		f.vehicles = append(f.vehicles, veh)
	}
	return f, nil
}

func serialPrefix(typ string) string {
	if typ == "dcm" {
		return "DCM-"
	}
	return "HU-"
}

// makeVIN is vehicle i's VIN: "1RS", two digits of the seed, "FLT", the
// check digit, "S" and i.
func makeVIN(seed int64, i int) (string, error) {
	base := fmt.Sprintf("1RS%02dFLT0S%07d", (seed%90+90)%90, i)
	d, err := vin.CheckDigit(base)
	if err != nil {
		return "", err
	}
	return base[:8] + string(d) + base[9:], nil
}

// Vehicles returns the fleet.
func (f *Fleet) Vehicles() []*Vehicle { return f.vehicles }

// Receipts returns what each vehicle was assigned, by VIN.
func (f *Fleet) Receipts() map[string][]Receipt {
	out := map[string][]Receipt{}
	for _, v := range f.vehicles {
		out[v.VIN] = slices.Clone(v.receipts)
	}
	return out
}

// each runs fn for every vehicle on cfg.Concurrency workers.
func (f *Fleet) each(ctx context.Context, fn func(context.Context, *Vehicle) error) {
	f.eachUntil(ctx, time.Time{}, fn)
}

// eachUntil is each that starts no vehicle after end (zero: no end);
// those in flight finish.
func (f *Fleet) eachUntil(ctx context.Context, end time.Time, fn func(context.Context, *Vehicle) error) {
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range f.cfg.Concurrency {
		wg.Go(func() {
			for ctx.Err() == nil && (end.IsZero() || time.Now().Before(end)) {
				i := next.Add(1) - 1
				if i >= int64(len(f.vehicles)) {
					return
				}
				if err := fn(ctx, f.vehicles[i]); err != nil && ctx.Err() == nil {
					f.failed(f.vehicles[i], err)
				}
			}
		})
	}
	wg.Wait()
}

// Register registers every vehicle with the server (409, already
// registered, is fine: the fleet may have run before). onDone, if set,
// hears each one.
func (f *Fleet) Register(ctx context.Context, onDone func()) error {
	var failed atomic.Int64
	var first atomic.Value
	f.each(ctx, func(ctx context.Context, v *Vehicle) error {
		reg := api.Registration{VIN: v.VIN, Model: f.cfg.Model, Year: f.cfg.Year, Region: f.cfg.Region, PublicKey: v.Key.Public().(ed25519.PublicKey)}
		for _, e := range v.ecus {
			ae := api.ECU{Type: e.Type, Serial: e.Serial, HardwareID: e.HardwareID}
			if e.key != nil {
				ae.PublicKey = e.key.Public().(ed25519.PublicKey)
			}
			reg.ECUs = append(reg.ECUs, ae)
		}
		err := v.api.Register(ctx, f.cfg.Token, reg)
		var ae *api.Error
		if errors.As(err, &ae) && ae.Status == http.StatusConflict {
			err = nil
		}
		if err != nil {
			failed.Add(1)
			first.CompareAndSwap(nil, err)
		}
		if onDone != nil {
			onDone()
		}
		return nil
	})
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d registrations failed, the first: %v", n, first.Load())
	}
	return nil
}

// Cycle runs one update cycle for every vehicle: check in, then refresh
// and verify its director metadata if it changed, and act on what it
// assigns.
func (f *Fleet) Cycle(ctx context.Context) { f.CycleUntil(ctx, time.Time{}) }

// CycleUntil is Cycle that starts no vehicle's cycle after end (zero: no
// end): the vehicles in flight then finish, the rest wait for the next
// cycle. It reports whether the whole fleet was done.
func (f *Fleet) CycleUntil(ctx context.Context, end time.Time) bool {
	f.begin()
	var n atomic.Int64
	f.eachUntil(ctx, end, func(ctx context.Context, v *Vehicle) error {
		n.Add(1)
		return f.cycleOne(ctx, v)
	})
	return n.Load() == int64(len(f.vehicles))
}

// begin starts the measured window, unless it runs already.
func (f *Fleet) begin() {
	f.mu.Lock()
	if f.started.IsZero() {
		f.started = time.Now()
	}
	f.mu.Unlock()
}

// cycleOne runs v's cycle and keeps its statistics and health.
func (f *Fleet) cycleOne(ctx context.Context, v *Vehicle) error {
	t0 := time.Now()
	d, err := f.cycle(ctx, v)
	end := time.Now()
	if err != nil {
		v.health.Errors++
	} else {
		if !v.health.lastOK.IsZero() {
			v.health.LongestGap = max(v.health.LongestGap, end.Sub(v.health.lastOK))
		}
		v.health.lastOK = end
	}
	f.mu.Lock()
	if d > 0 {
		f.latencies = append(f.latencies, d)
		f.cycleLatencies = append(f.cycleLatencies, end.Sub(t0))
	}
	f.done = end
	f.mu.Unlock()
	return err
}

func (f *Fleet) cycle(ctx context.Context, v *Vehicle) (time.Duration, error) {
	var reports []vehicleauth.ECUReport
	var info api.CheckInInfo
	now := f.cfg.Now()
	for i := range v.ecus {
		e := &v.ecus[i]
		reports = append(reports, vehicleauth.ECUReport{Serial: e.Serial, InstalledTarget: e.target, Version: e.Version, SHA256: e.SHA256, Length: e.Length})
		if !f.cfg.Secondaries {
			continue
		}
		// Each ECU signs its own report, as a secondary does.
		e.counter = max(e.counter+1, now.UnixMicro())
		sr, err := vehicleauth.SignECUReport(e.key, vehicleauth.ECUVersionReport{ECUSerial: e.Serial, LatestTime: now.UTC(), Counter: e.counter,
			InstalledImage: vehicleauth.InstalledImage{Filename: e.target, Length: e.Length, Hashes: map[string]string{"sha256": e.SHA256}}})
		if err != nil {
			return 0, err
		}
		info.PrimarySerial = v.ecus[0].Serial
		info.ECUReports = append(info.ECUReports, sr)
	}
	info.AttestTime = f.cfg.AttestTime
	t0 := time.Now()
	res, err := v.api.CheckIn(ctx, reports, nil, info)
	d := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("check-in: %w", err)
	}
	if f.cfg.AttestTime {
		if err := f.checkTime(ctx, v, res); err != nil {
			return 0, err
		}
	}
	f.checkIns.Add(1)
	if f.cfg.CheckInOnly {
		return d, nil
	}
	return d, f.direct(ctx, v)
}

// direct fetches the vehicle's director timestamp and, when it changed,
// verifies the director metadata and acts on it.
func (f *Fleet) direct(ctx context.Context, v *Vehicle) error {
	base := f.cfg.Server + "/director/" + url.PathEscape(v.VIN)
	// A vehicle that has verified nothing yet (in this run) goes straight
	// to the verification, which fetches the timestamp itself.
	if v.dirVersion != 0 {
		if same, err := f.unchanged(ctx, v, base); same || err != nil {
			return err
		}
	}
	root, err := f.directorRoot(ctx, v)
	if err != nil {
		return err
	}
	dir := filepath.Join(f.cfg.StateDir, v.VIN)
	if _, err := os.Stat(filepath.Join(dir, "root.json")); err != nil {
		if err := tufclient.PinChecked(dir, root); err != nil { // directorRoot checked it
			return err
		}
	}
	repo := &tufclient.Repo{Name: "director", Dir: dir, MetadataURL: base, Client: f.cfg.HTTP, Sign: v.api.SignGet, Log: f.cfg.Log, Now: f.cfg.Now}
	trusted, err := repo.Refresh(ctx)
	if err != nil {
		return err
	}
	if got, _ := trusted.TargetsCustom()["vin"].(string); got != v.VIN {
		return fmt.Errorf("director metadata for VIN %q, this vehicle is %s", got, v.VIN)
	}
	v.dirVersion = trusted.Version(metadata.TIMESTAMP)
	paths := make([]string, 0, len(trusted.Targets()))
	for p := range trusted.Targets() {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var errs []error
	for _, p := range paths {
		tf := trusted.Targets()[p]
		var c struct {
			ECUIdentifiers map[string]struct{ HardwareID string } `json:"ecuIdentifiers"`
			Version        string                                 `json:"version"`
			JobID          string                                 `json:"jobId"`
			Window         *struct{ Start, End, TZ string }       `json:"window"`
			Deltas         map[string]string                      `json:"deltas"`
		}
		if tf.Custom == nil || json.Unmarshal(*tf.Custom, &c) != nil {
			return fmt.Errorf("director target %s names no ECU", p)
		}
		sum := hex.EncodeToString(tf.Hashes["sha256"])
		for i := range v.ecus {
			e := &v.ecus[i]
			if _, ok := c.ECUIdentifiers[e.Serial]; !ok {
				continue
			}
			if e.SHA256 == sum {
				if c.JobID != "" {
					// As the agent: the ECU runs the job's image already (an
					// earlier job, say of an aborted campaign, installed it),
					// so the job succeeded. Until the server takes that, the
					// metadata is looked at again each cycle.
					err := f.report(ctx, v, c.JobID, api.JobEvent{Kind: "succeeded", Percent: 100, SHA256: sum, Message: c.Version + " was already installed"})
					var ae *api.Error
					if !errors.As(err, &ae) || ae.Code != errcode.JobCanceled {
						errs = append(errs, err)
					}
					v.dirVersion = 0
				}
				continue
			}
			if c.Window != nil {
				if in, err := meta.InWindow(c.Window.Start, c.Window.End, c.Window.TZ, f.cfg.Now()); err != nil || !in {
					v.dirVersion = 0 // look again next cycle
					continue
				}
			}
			errs = append(errs, f.install(ctx, v, e, p, tf, c.Version, c.JobID, c.Deltas[e.Serial]))
		}
	}
	return errors.Join(errs...)
}

// unchanged fetches the vehicle's director timestamp and reports whether
// its version is the one the vehicle verified last (or garbage, which
// the verification would refuse anyway).
func (f *Fleet) unchanged(ctx context.Context, v *Vehicle, base string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/timestamp.json", nil)
	if err != nil {
		return false, err
	}
	v.api.SignGet(req)
	resp, err := f.cfg.HTTP.Do(req)
	if err != nil {
		return false, fmt.Errorf("director timestamp: %w", err)
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("director timestamp: %s", resp.Status)
	}
	var ts struct {
		Signed struct{ Version int64 } `json:"signed"`
	}
	return json.Unmarshal(raw, &ts) != nil || ts.Signed.Version == v.dirVersion, nil
}

// checkTime verifies a check-in's time attestation as an agent does:
// signed by the director root's time key, for this VIN and nonce.
func (f *Fleet) checkTime(ctx context.Context, v *Vehicle, res api.CheckInResult) error {
	if res.Time == nil {
		return errors.New("check-in: the server sent no time attestation")
	}
	raw, err := f.directorRoot(ctx, v)
	if err != nil {
		return err
	}
	f.timeRootOnce.Do(func() { f.timeRoot, f.timeRootErr = metadata.Root().FromBytes(raw) })
	if f.timeRootErr != nil {
		return f.timeRootErr
	}
	if _, err := timeattest.Verify(f.timeRoot, *res.Time, v.VIN, res.Nonce); err != nil {
		return fmt.Errorf("check-in: %w", err)
	}
	return nil
}

func (f *Fleet) directorRoot(ctx context.Context, v *Vehicle) ([]byte, error) {
	f.rootOnce.Do(func() {
		if f.root != nil {
			return
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.cfg.Server+"/director/"+url.PathEscape(v.VIN)+"/1.root.json", nil)
		if err != nil {
			f.rootErr = err
			return
		}
		v.api.SignGet(req)
		resp, err := f.cfg.HTTP.Do(req)
		if err != nil {
			f.rootErr = err
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			f.rootErr = fmt.Errorf("director root: %s", resp.Status)
			return
		}
		f.root, f.rootErr = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	})
	f.rootCheck.Do(func() {
		if f.rootErr == nil {
			f.rootErr = tufclient.CheckRoot(f.root) // once for the whole fleet
		}
	})
	return f.root, f.rootErr
}

// chance is the vehicle's fixed draw in [0,1) for a version: the same
// vehicles fail a version in every run with the same seed.
func (f *Fleet) chance(vinStr, version, what string) float64 {
	h := sha256.Sum256(fmt.Appendf(nil, "%d/%s/%s/%s", f.cfg.Seed, vinStr, version, what))
	return float64(binary.BigEndian.Uint64(h[:8])>>11) / float64(1<<53)
}

// install plays out an assigned install and reports it.
func (f *Fleet) install(ctx context.Context, v *Vehicle, e *ecu, path string, tf *metadata.TargetFiles, version, jobID, delta string) error {
	sum := hex.EncodeToString(tf.Hashes["sha256"])
	rec := Receipt{Serial: e.Serial, Target: path, Version: version, JobID: jobID}
	event := func(kind string, pct int, msg string) error {
		if jobID == "" {
			return nil
		}
		ev := api.JobEvent{Kind: kind, Percent: pct, Message: msg}
		if kind == "succeeded" {
			ev.SHA256 = sum
		}
		return f.report(ctx, v, jobID, ev)
	}
	defer func() { v.receipts = append(v.receipts, rec) }()
	steps := []struct {
		kind string
		pct  int
	}{{"downloading", 0}, {"installing", 100}, {"rebooting", 100}}
	for i, s := range steps {
		if err := event(s.kind, s.pct, ""); err != nil {
			var ae *api.Error
			if errors.As(err, &ae) && ae.Code == errcode.JobCanceled {
				rec.Outcome = "canceled"
				return nil
			}
			rec.Outcome = "error"
			return fmt.Errorf("job %s %s: %w", jobID, s.kind, err)
		}
		if i == 0 {
			if f.cfg.Download {
				fetch := func() error { return f.fetch(ctx, path, sum, tf.Length) }
				if delta != "" {
					fetch = func() error { return f.fetchDelta(ctx, delta, path, sum, e.SHA256) }
				}
				if err := fetch(); err != nil {
					rec.Outcome = "failed"
					return errors.Join(err, event("failed", 0, err.Error()))
				}
			}
			if f.chance(v.VIN, version, "fail") < f.cfg.Fail[version] {
				rec.Outcome = "failed"
				return event("failed", 0, "simulated failure")
			}
		}
	}
	if f.chance(v.VIN, version, "rollback") < f.cfg.Rollback[version] {
		rec.Outcome = "rolled_back"
		return event("rolled_back", 100, "simulated boot-check failure; rolled back")
	}
	e.target, e.Version, e.SHA256, e.Length = path, version, sum, tf.Length
	rec.Outcome = "succeeded"
	return event("succeeded", 100, version+" booted and committed (simulated)")
}

// Event reports are retried while the server cannot take them (no
// answer, 5xx, 429), with exponential backoff and jitter, for at most
// eventTries attempts; a repeated report is harmless (the server takes a
// repeated outcome as the one it has).
const (
	eventTries   = 6
	eventBackoff = 250 * time.Millisecond
)

// report posts a job event as an agent does. After the retries it gives
// up on the event, as an agent does, and goes on: the next check-in tells
// the server what the ECU runs. Only job_canceled stops the install.
func (f *Fleet) report(ctx context.Context, v *Vehicle, jobID string, ev api.JobEvent) error {
	var err error
	for attempt := range eventTries {
		if err = v.api.JobEvent(ctx, jobID, ev); err == nil {
			return nil
		}
		var ae *api.Error
		if errors.As(err, &ae) && ae.Code == errcode.JobCanceled {
			return err
		}
		if errors.As(err, &ae) && ae.Status < 500 && ae.Status != http.StatusTooManyRequests {
			break // the server heard it and said no: retrying changes nothing
		}
		d := eventBackoff << attempt
		d += time.Duration(rand.Int64N(int64(d))) // jitter: replicas coming back are not hit at once
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
	f.lostEvents.Add(1)
	f.cfg.Log.Warn("job event not delivered", "vin", v.VIN, "job", jobID, "kind", ev.Kind, "err", err)
	return nil
}

// LostEvents is how many job events were given up on.
func (f *Fleet) LostEvents() int64 { return f.lostEvents.Load() }

// fetch downloads an image and checks it against the signed hash.
func (f *Fleet) fetch(ctx context.Context, path, sum string, length int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.cfg.Server+"/repo/targets/"+meta.ConsistentPath(path, sum, true), nil)
	if err != nil {
		return err
	}
	resp, err := f.cfg.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(resp.Body, length+1))
	switch {
	case err != nil:
		return err
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("download %s: %s", path, resp.Status)
	case n != length || hex.EncodeToString(h.Sum(nil)) != sum:
		return fmt.Errorf("download %s: length or sha256 does not match the signed metadata", path)
	}
	return nil
}

// CampaignStatus is the part of a campaign the simulator watches.
type CampaignStatus struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	HaltReason string `json:"haltReason"`
}

// Campaign reads a campaign's state with the fleet's token.
func (f *Fleet) Campaign(ctx context.Context, id string) (CampaignStatus, error) {
	var c CampaignStatus
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.cfg.Server+"/api/v1/campaigns/"+url.PathEscape(id), nil)
	if err != nil {
		return c, err
	}
	req.Header.Set("Authorization", "Bearer "+f.cfg.Token)
	resp, err := f.cfg.HTTP.Do(req)
	if err != nil {
		return c, fmt.Errorf("campaign %s: %w", id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return c, fmt.Errorf("campaign %s: %s (is the ID right, and the token an admin's or dealer's?)", id, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&c); err != nil {
		return c, fmt.Errorf("campaign %s: %w", id, err)
	}
	return c, nil
}

// Summary is what a run did.
type Summary struct {
	Vehicles int
	CheckIns int64
	Errors   int64
	// LastError is the last failed cycle's error ("" when none failed).
	LastError string
	Elapsed   time.Duration
	// P50 and P99 are check-ins' latencies; CycleP50 and CycleP99 whole
	// cycles' (check-in, director poll and what it brought).
	P50, P99           time.Duration
	CycleP50, CycleP99 time.Duration
}

// Rate is check-ins per second.
func (s Summary) Rate() float64 { return float64(s.CheckIns) / max(s.Elapsed.Seconds(), 1e-9) }

func (s Summary) String() string {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }
	return fmt.Sprintf("%d vehicles, %d check-ins in %.1f s, %.0f check-ins/s, p50 %s ms, p99 %s ms, %d errors",
		s.Vehicles, s.CheckIns, s.Elapsed.Seconds(), s.Rate(), ms(s.P50), ms(s.P99), s.Errors)
}

// SetCheckInOnly switches between full cycles and check-ins alone (not
// while a cycle runs).
func (f *Fleet) SetCheckInOnly(on bool) { f.cfg.CheckInOnly = on }

// ResetStats forgets the cycles so far: the next Summary covers only the
// cycles after it (to measure a steady state after a warm-up).
func (f *Fleet) ResetStats() {
	f.mu.Lock()
	f.latencies, f.cycleLatencies, f.started, f.done = nil, nil, time.Time{}, time.Time{}
	f.mu.Unlock()
	f.checkIns.Store(0)
	f.errs.Store(0)
}

// failed counts a vehicle's failed cycle and keeps its error.
func (f *Fleet) failed(v *Vehicle, err error) {
	f.errs.Add(1)
	f.lastErr.Store(v.VIN + ": " + err.Error())
	f.cfg.Log.Warn("vehicle", "vin", v.VIN, "err", err)
}

// Summary says what the cycles so far did.
func (f *Fleet) Summary() Summary {
	f.mu.Lock()
	lat, whole := slices.Clone(f.latencies), slices.Clone(f.cycleLatencies)
	elapsed := f.done.Sub(f.started)
	f.mu.Unlock()
	last, _ := f.lastErr.Load().(string)
	return Summary{Vehicles: len(f.vehicles), CheckIns: f.checkIns.Load(), Errors: f.errs.Load(), LastError: last, Elapsed: max(elapsed, 0),
		P50: quantile(lat, 0.50), P99: quantile(lat, 0.99), CycleP50: quantile(whole, 0.50), CycleP99: quantile(whole, 0.99)}
}

// quantile is the p-quantile of ds (sorted here), 0 if there are none.
func quantile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(math.Ceil(p*float64(len(ds))))-1)]
}
