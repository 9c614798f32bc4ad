// Package campaigns runs staged rollouts: one image (ECU type and
// version) for the vehicles a selector picks when the campaign starts, in
// cumulative waves of a stable random order. A wave opens when the one
// before has enough finished vehicles, a high enough success rate and has
// soaked long enough; a failure rate above the threshold halts the
// campaign at once; assignments are paced (maxPerMinute). Each
// assignment is a job (origin campaign), so success means booted and
// committed, with the same history as a dealer's job. The wave work (the
// engine) runs on the elected replica only, and every write it makes is
// fenced by that replica's lease.
package campaigns

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/vin"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/approvals"
	"github.com/roadsign/roadsign/server/auditlog"
)

// Store is what campaigns need of the state store: campaigns and their
// rollout, the vehicles they cover, and the audit log.
type Store interface {
	server.Campaigns
	server.Rollouts
	Vehicle(ctx context.Context, vin string) (server.Vehicle, error)
	auditlog.Appender
}

// Images is the image repository.
type Images interface {
	CurrentTargets(ctx context.Context) (map[string]*metadata.TargetFiles, int64, error)
}

// Canceler ends jobs the campaign no longer wants (the jobs service).
type Canceler interface {
	Supersede(ctx context.Context, j server.Job, why string) (bool, error)
}

// Service manages campaigns.
type Service struct {
	store     Store
	images    Images
	jobs      Canceler
	approvals *approvals.Service
	notify    server.Notify
	now       func() time.Time
	m         *metrics
	wake      func(vins ...string)
	log       *slog.Logger
}

// Config is what the campaign service is built from.
type Config struct {
	Store  Store
	Images Images
	// Jobs ends the jobs a campaign no longer wants.
	Jobs Canceler
	// Wake, if set, is told the VINs whose assignment changed (push).
	Wake func(vins ...string)
	Now  func() time.Time
	// Metrics (may be nil) gets the campaign metrics.
	Metrics prometheus.Registerer
	// Log (may be nil) hears of members the engine cannot assign.
	Log *slog.Logger
	// Approvals is the four-eyes rule: starting a campaign and raising
	// its waves need another account's approval.
	Approvals *approvals.Service
	// Notify hears of waves opened and campaigns halted or completed.
	Notify server.Notify
}

// New returns the service, or an error naming what cfg lacks.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.Images == nil || cfg.Jobs == nil || cfg.Now == nil || cfg.Approvals == nil {
		return nil, errors.New("campaigns: store, image repository, jobs, approvals and clock are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Service{store: cfg.Store, images: cfg.Images, jobs: cfg.Jobs, approvals: cfg.Approvals, notify: cfg.Notify, now: cfg.Now, m: newMetrics(cfg.Metrics), wake: cfg.Wake, log: cfg.Log}, nil
}

// CreateRequest is the body of POST /api/v1/campaigns.
type CreateRequest struct {
	Name    string `json:"name"`
	ECU     string `json:"ecu"`
	Version string `json:"version"`
	// ECUs, instead of ECU and Version, make the campaign an update set:
	// the first ECU decides the members (vehicles whose ECU of that type
	// needs its image), and each member installs every ECU of the set
	// together, in this order (one job).
	ECUs             []Part          `json:"ecus,omitempty"`
	Selector         server.Selector `json:"selector"`
	IncludeNew       bool            `json:"includeNew"`
	Waves            []int           `json:"waves"`
	MinSamples       int             `json:"minSamples"`
	SuccessThreshold *float64        `json:"successThreshold"`
	FailureThreshold *float64        `json:"failureThreshold"`
	Soak             string          `json:"soak"`
	MaxPerMinute     int             `json:"maxPerMinute"`
	Consent          string          `json:"consent"`
	Window           *server.Window  `json:"window"`
	// Seed fixes the campaign's random order, to rehearse one rollout
	// exactly (default: a random seed).
	Seed *int64 `json:"seed"`
	// Deltas: wait (a member's install waits until the delta from what
	// it runs is made), prefer (the default: a delta when made, else the
	// full image) or off.
	Deltas string `json:"deltas"`
}

// Part is one ECU of a campaign's update set.
type Part struct {
	ECU     string `json:"ecu"`
	Version string `json:"version"`
}

func invalid(format string, args ...any) error {
	return server.CodedErrorf(server.KindInvalid, errcode.InvalidCampaign, format, args...)
}

// config validates a request and fills in defaults.
func (r CreateRequest) config() (server.CampaignConfig, error) {
	if len(r.ECUs) > 0 {
		if r.ECU != "" || r.Version != "" {
			return server.CampaignConfig{}, invalid("give ecu and version, or ecus for an update set, not both")
		}
		seen := map[string]bool{}
		for _, p := range r.ECUs {
			switch {
			case p.ECU != "head-unit" && p.ECU != "dcm":
				return server.CampaignConfig{}, invalid("ecus: ecu %q: want head-unit or dcm", p.ECU)
			case p.Version == "":
				return server.CampaignConfig{}, invalid("ecus: name the %s image's version", p.ECU)
			case seen[p.ECU]:
				return server.CampaignConfig{}, invalid("ecus names %s twice; an update set installs one image per ECU type", p.ECU)
			}
			seen[p.ECU] = true
		}
		r.ECU, r.Version = r.ECUs[0].ECU, r.ECUs[0].Version
	}
	c := server.CampaignConfig{ECU: r.ECU, Version: r.Version, Selector: r.Selector, IncludeNew: r.IncludeNew, Waves: r.Waves,
		MinSamples: r.MinSamples, SuccessThreshold: 0.95, FailureThreshold: 0.05, MaxPerMinute: r.MaxPerMinute, Consent: r.Consent, Window: r.Window}
	switch {
	case strings.TrimSpace(r.Name) == "" || len(r.Name) > 100:
		return c, invalid("name: give 1 to 100 characters")
	case r.ECU != "head-unit" && r.ECU != "dcm":
		return c, invalid("ecu %q: want head-unit or dcm", r.ECU)
	case r.Version == "":
		return c, invalid("version: name the image's version, e.g. 2.0.0")
	}
	if err := checkSelector(r.Selector); err != nil {
		return c, err
	}
	if len(c.Waves) == 0 {
		c.Waves = []int{1, 10, 50, 100}
	}
	if err := checkWaves(c.Waves); err != nil {
		return c, err
	}
	if c.MinSamples == 0 {
		c.MinSamples = 20
	}
	if r.SuccessThreshold != nil {
		c.SuccessThreshold = *r.SuccessThreshold
	}
	if r.FailureThreshold != nil {
		c.FailureThreshold = *r.FailureThreshold
	}
	switch {
	case c.MinSamples < 1:
		return c, invalid("minSamples %d: want at least 1", c.MinSamples)
	case c.SuccessThreshold < 0 || c.SuccessThreshold > 1 || c.FailureThreshold < 0 || c.FailureThreshold > 1:
		return c, invalid("successThreshold and failureThreshold are fractions from 0 to 1")
	}
	if r.Soak != "" {
		d, err := time.ParseDuration(r.Soak)
		if err != nil || d < 0 {
			return c, invalid("soak %q: want a duration such as 1h", r.Soak)
		}
		c.Soak = d
	} else {
		c.Soak = time.Hour
	}
	if c.MaxPerMinute == 0 {
		c.MaxPerMinute = 1000
	}
	if c.MaxPerMinute < 1 || c.MaxPerMinute > 1_000_000 {
		return c, invalid("maxPerMinute %d: want 1 to 1000000", c.MaxPerMinute)
	}
	switch c.Consent {
	case "":
		c.Consent = "none"
	case "none", "owner":
	default:
		return c, invalid("consent %q: want none or owner", c.Consent)
	}
	if c.Window != nil {
		if err := CheckWindow(*c.Window); err != nil {
			return c, invalid("window: %v", err)
		}
	}
	switch r.Deltas {
	case "", "prefer", "wait", "off":
		c.Deltas = r.Deltas
	default:
		return c, invalid("deltas %q: want wait, prefer or off", r.Deltas)
	}
	return c, nil
}

// checkSelector checks a selector's VINs.
func checkSelector(sel server.Selector) error {
	if len(sel.VINs) > 10_000 {
		return invalid("selector.vins: at most 10000 VINs; select by model, year, region or hardware instead")
	}
	for _, v := range sel.VINs {
		if err := vin.Validate(v); err != nil {
			return invalid("selector.vins: %v", err)
		}
	}
	return nil
}

// CheckWindow validates a maintenance window.
func CheckWindow(w server.Window) error {
	if _, err := time.LoadLocation(w.TZ); err != nil || w.TZ == "" {
		return fmt.Errorf("tz %q is not a time zone such as Europe/Berlin", w.TZ)
	}
	for _, t := range []string{w.Start, w.End} {
		if _, err := time.Parse("15:04", t); err != nil {
			return fmt.Errorf("start and end are HH:MM, got %q", t)
		}
	}
	if w.Start == w.End {
		return errors.New("start and end are the same")
	}
	return nil
}

// Create stores a draft campaign after resolving its image: every
// published image of that ECU type and version, one per hardware ID.
func (s *Service) Create(ctx context.Context, by server.Principal, r CreateRequest) (View, error) {
	cfg, err := r.config()
	if err != nil {
		return View{}, err
	}
	targets, _, err := s.images.CurrentTargets(ctx)
	if err != nil {
		return View{}, err
	}
	if cfg.Targets, err = resolve(targets, cfg); err != nil {
		return View{}, err
	}
	for _, p := range r.ECUs[min(1, len(r.ECUs)):] {
		part := server.CampaignPart{ECU: p.ECU, Version: p.Version, Targets: imagesOf(targets, p.ECU, p.Version, nil)}
		if len(part.Targets) == 0 {
			return View{}, server.CodedErrorf(server.KindConflict, errcode.NoSuchImage, "no %s image version %s is published; publish it first", p.ECU, p.Version)
		}
		cfg.With = append(cfg.With, part)
	}
	now := s.now().UTC()
	c := server.Campaign{ID: uuid.NewString(), Name: strings.TrimSpace(r.Name), State: server.CampaignDraft, Config: cfg,
		Seed: int64(binary.BigEndian.Uint64(uuidBytes())), CreatedBy: by.Name, CreatedAt: now, UpdatedAt: now}
	if r.Seed != nil {
		c.Seed = *r.Seed
	}
	if err := s.store.CreateCampaign(ctx, c); err != nil {
		return View{}, err
	}
	what := cfg.ECU + " " + cfg.Version
	for _, w := range cfg.With {
		what += " + " + w.ECU + " " + w.Version
	}
	if err := auditlog.Record(ctx, s.store, now, by, "campaign.create", c.ID, fmt.Sprintf("%q: %s to %s; waves %v", c.Name, what, describe(cfg.Selector), cfg.Waves)); err != nil {
		return View{}, err
	}
	return s.Get(ctx, c.ID)
}

func uuidBytes() []byte { u := uuid.New(); return u[:8] }

// resolve is the campaign's image for each hardware ID its selector
// allows: an error when none is published.
func resolve(targets map[string]*metadata.TargetFiles, cfg server.CampaignConfig) (map[string]string, error) {
	out := imagesOf(targets, cfg.ECU, cfg.Version, cfg.Selector.HardwareIDs)
	if len(out) == 0 {
		return nil, server.CodedErrorf(server.KindConflict, errcode.NoSuchImage, "no %s image version %s is published (for the selected hardware); publish it first", cfg.ECU, cfg.Version)
	}
	return out, nil
}

// imagesOf is every published image of an ECU type and version, by
// hardware ID (only those in hws, unless it is empty).
func imagesOf(targets map[string]*metadata.TargetFiles, ecu, version string, hws []string) map[string]string {
	out := map[string]string{}
	for p, tf := range targets {
		c, err := meta.TargetCustom(tf)
		if err != nil || c.ECU != ecu || c.Version != version {
			continue
		}
		for _, hw := range c.HardwareIDs {
			if len(hws) == 0 || slices.Contains(hws, hw) {
				out[hw] = p
			}
		}
	}
	return out
}

// draw places a member in the campaign's random order: stable for the
// campaign, unrelated to VIN order.
func draw(seed int64, vin, serial string) int64 {
	h := sha256.New()
	binary.Write(h, binary.BigEndian, seed)
	h.Write([]byte(vin + "\x00" + serial))
	return int64(binary.BigEndian.Uint64(h.Sum(nil)) >> 1)
}

func (s *Service) load(ctx context.Context, id string) (server.Campaign, error) {
	if _, err := uuid.Parse(id); err != nil {
		return server.Campaign{}, server.Errorf(server.KindNotFound, "no campaign %q (campaign IDs are UUIDs)", id)
	}
	c, err := s.store.Campaign(ctx, id)
	if errors.Is(err, server.ErrNotFound) {
		return c, server.Errorf(server.KindNotFound, "no campaign %s", id)
	}
	return c, err
}

// Start fixes the campaign's vehicles (those its selector matches now, and
// no other running campaign has for this ECU) and starts it; the engine
// opens the first wave.
func (s *Service) Start(ctx context.Context, by server.Principal, id string) (View, error) {
	c, err := s.load(ctx, id)
	if err != nil {
		return View{}, err
	}
	if c.State != server.CampaignDraft {
		return View{}, server.Errorf(server.KindConflict, "campaign %s is %s; only a draft starts", id, c.State)
	}
	what, err := s.approvalContent(ctx, c, c.Config)
	if err != nil {
		return View{}, err
	}
	grant, err := s.approvals.Require(ctx, by, approvals.Request{Action: approvals.ActionCampaignStart, Subject: id, What: what, Proposers: []string{c.CreatedBy}})
	if err != nil {
		return View{}, err
	}
	v, err := s.start(ctx, by, c)
	if err != nil {
		grant.Release(ctx)
	}
	return v, err
}

func (s *Service) start(ctx context.Context, by server.Principal, c server.Campaign) (View, error) {
	id := c.ID
	hws := make([]string, 0, len(c.Config.Targets))
	for hw := range c.Config.Targets {
		hws = append(hws, hw)
	}
	all, err := s.store.CampaignCandidates(ctx, c.Config.ECU, hws, c.Config.Selector)
	if err != nil {
		return View{}, err
	}
	targets, _, err := s.images.CurrentTargets(ctx)
	if err != nil {
		return View{}, err
	}
	now := s.now().UTC()
	var cands []server.CampaignMember
	for _, e := range all {
		if needs(targets, e.Installed, c.Config.Targets[e.HardwareID]) {
			cands = append(cands, server.CampaignMember{CampaignID: id, VIN: e.VIN, ECUSerial: e.ECUSerial, Wave: -1, JoinedAt: now,
				Draw: draw(c.Seed, e.VIN, e.ECUSerial)})
		}
	}
	if len(cands) == 0 && !c.Config.IncludeNew {
		return View{}, server.CodedErrorf(server.KindConflict, errcode.CampaignEmpty,
			"campaign %s selects no vehicle that needs %s %s (%d match its selector, all already on it or another campaign's): widen the selector, or set includeNew to take in vehicles registered later",
			id, c.Config.ECU, c.Config.Version, len(all))
	}
	if err := s.store.StartCampaign(ctx, id, cands, now); err != nil {
		if errors.Is(err, server.ErrConflict) {
			return View{}, server.Errorf(server.KindConflict, "campaign %s changed meanwhile; look again", id)
		}
		return View{}, err
	}
	if err := auditlog.Record(ctx, s.store, now, by, "campaign.start", id, fmt.Sprintf("%d vehicles selected", len(cands))); err != nil {
		return View{}, err
	}
	return s.Get(ctx, id)
}

// Act pauses, resumes or aborts a campaign. Pause stops new assignments;
// abort ends the campaign and cancels jobs not picked up yet. A halted
// campaign stays halted: it can only be aborted.
func (s *Service) Act(ctx context.Context, by server.Principal, id, action string) (View, error) {
	c, err := s.load(ctx, id)
	if err != nil {
		return View{}, err
	}
	var from []string
	var to string
	switch action {
	case "pause":
		from, to = []string{server.CampaignRunning}, server.CampaignPaused
	case "resume":
		from, to = []string{server.CampaignPaused}, server.CampaignRunning
	case "abort":
		from, to = []string{server.CampaignDraft, server.CampaignRunning, server.CampaignPaused, server.CampaignHalted}, server.CampaignAborted
	default:
		return View{}, server.Errorf(server.KindNotFound, "no campaign action %q: want start, pause, resume or abort", action)
	}
	now := s.now().UTC()
	if err := s.store.SetCampaignState(ctx, id, from, to, now); errors.Is(err, server.ErrConflict) {
		return View{}, server.Errorf(server.KindConflict, "campaign %s is %s; it cannot %s", id, c.State, action)
	} else if err != nil {
		return View{}, err
	}
	if to == server.CampaignAborted {
		if err := s.cancelQueued(ctx, id, "campaign aborted"); err != nil {
			return View{}, err
		}
	}
	if err := auditlog.Record(ctx, s.store, now, by, "campaign."+action, id, c.State+" -> "+to); err != nil {
		return View{}, err
	}
	return s.Get(ctx, id)
}

// cancelQueued cancels the campaign's jobs that no vehicle started yet;
// started ones finish or roll back.
func (s *Service) cancelQueued(ctx context.Context, id, why string) error {
	js, err := s.store.CampaignJobs(ctx, id, server.JobQueued)
	if err != nil {
		return err
	}
	var vins []string
	for _, j := range js {
		if _, err := s.jobs.Supersede(ctx, j, why); err != nil {
			return err
		}
		vins = append(vins, j.VIN)
	}
	if s.wake != nil && len(vins) > 0 {
		s.wake(vins...)
	}
	return nil
}

// OnRegister adds a newly registered vehicle to the running campaigns
// that include new vehicles and select it.
func (s *Service) OnRegister(ctx context.Context, v server.Vehicle) error {
	cs, err := s.store.Campaigns(ctx, server.CampaignRunning, server.CampaignPaused)
	if err != nil {
		return err
	}
	now := s.now().UTC()
	for _, c := range cs {
		if !c.Config.IncludeNew {
			continue
		}
		for _, e := range v.ECUs {
			if e.Type != c.Config.ECU || c.Config.Targets[e.HardwareID] == "" || !matches(c.Config.Selector, v, e) {
				continue
			}
			wave := -1
			if c.OpenWaves == len(c.Config.Waves) {
				wave = c.OpenWaves - 1 // every wave is open: it joins the last
			}
			m := server.CampaignMember{CampaignID: c.ID, VIN: v.VIN, ECUSerial: e.Serial, Draw: draw(c.Seed, v.VIN, e.Serial), Wave: wave, JoinedAt: now}
			if wave >= 0 && c.Config.Consent == "owner" {
				m.Consent = "pending"
			}
			if err := s.store.AddCampaignMember(ctx, m); err != nil {
				return err
			}
		}
	}
	return nil
}

// needs says whether an ECU running installed needs the campaign's image
// want: not when it runs it already, nor a newer release (a campaign never
// downgrades).
func needs(targets map[string]*metadata.TargetFiles, installed, want string) bool {
	if installed == want {
		return false
	}
	have, err := meta.TargetCustom(targets[installed])
	if err != nil {
		return true // nothing reported yet, or an image no longer published
	}
	w, err := meta.TargetCustom(targets[want])
	return err == nil && w.ReleaseCounter > have.ReleaseCounter
}

// describe says whom a selector picks, for the audit log.
func describe(sel server.Selector) string {
	var parts []string
	add := func(name string, vals []string) {
		if len(vals) > 0 {
			parts = append(parts, name+"="+strings.Join(vals, ","))
		}
	}
	years := make([]string, len(sel.Years))
	for i, y := range sel.Years {
		years[i] = strconv.Itoa(y)
	}
	add("models", sel.Models)
	add("years", years)
	add("regions", sel.Regions)
	add("hardwareIds", sel.HardwareIDs)
	if len(sel.VINs) > 0 {
		parts = append(parts, fmt.Sprintf("%d VINs", len(sel.VINs)))
	}
	if len(parts) == 0 {
		return "every vehicle"
	}
	return strings.Join(parts, " ")
}

func matches(sel server.Selector, v server.Vehicle, e server.ECU) bool {
	return (len(sel.Models) == 0 || slices.Contains(sel.Models, v.Model)) &&
		(len(sel.Years) == 0 || slices.Contains(sel.Years, v.Year)) &&
		(len(sel.Regions) == 0 || slices.Contains(sel.Regions, v.Region)) &&
		(len(sel.HardwareIDs) == 0 || slices.Contains(sel.HardwareIDs, e.HardwareID)) &&
		(len(sel.VINs) == 0 || slices.Contains(sel.VINs, v.VIN))
}

// View is a campaign as the API shows it.
type View struct {
	ID         string                `json:"id"`
	Name       string                `json:"name"`
	State      string                `json:"state"`
	HaltReason string                `json:"haltReason,omitempty"`
	Config     server.CampaignConfig `json:"config"`
	Waves      []WaveView            `json:"waves"`
	Totals     server.WaveCount      `json:"totals"`
	// Selected is how many ECUs the campaign covers (0 before start).
	Selected  int       `json:"selected"`
	CreatedBy string    `json:"createdBy"`
	CreatedAt time.Time `json:"createdAt"`
	StartedAt time.Time `json:"startedAt,omitzero"`
}

// WaveView is one wave.
type WaveView struct {
	Percent int       `json:"percent"`
	State   string    `json:"state"` // pending, open, done
	Opened  time.Time `json:"openedAt,omitzero"`
	server.WaveCount
}

// Get returns a campaign with its waves' counts.
func (s *Service) Get(ctx context.Context, id string) (View, error) {
	c, err := s.load(ctx, id)
	if err != nil {
		return View{}, err
	}
	return s.view(ctx, c)
}

func (s *Service) view(ctx context.Context, c server.Campaign) (View, error) {
	counts, total, err := s.store.CampaignCounts(ctx, c.ID)
	if err != nil {
		return View{}, err
	}
	v := View{ID: c.ID, Name: c.Name, State: c.State, HaltReason: c.HaltReason, Config: c.Config, Selected: total,
		CreatedBy: c.CreatedBy, CreatedAt: c.CreatedAt, StartedAt: c.StartedAt}
	for i, pct := range c.Config.Waves {
		w := WaveView{Percent: pct, State: "pending"}
		if i < len(counts) {
			w.WaveCount = counts[i]
		}
		if i < c.OpenWaves {
			w.State, w.Opened = "open", c.WaveOpened[i]
			if w.Waiting+w.Queued+w.InProgress == 0 && (i < c.OpenWaves-1 || c.State == server.CampaignCompleted) {
				w.State = "done"
			}
		}
		v.Waves = append(v.Waves, w)
		add(&v.Totals, w.WaveCount)
	}
	return v, nil
}

func add(t *server.WaveCount, w server.WaveCount) {
	t.Targeted += w.Targeted
	t.Declined += w.Declined
	t.Waiting += w.Waiting
	t.Queued += w.Queued
	t.InProgress += w.InProgress
	t.Succeeded += w.Succeeded
	t.Failed += w.Failed
	t.RolledBack += w.RolledBack
	t.TimedOut += w.TimedOut
	t.Canceled += w.Canceled
}

// List returns every campaign, newest first.
func (s *Service) List(ctx context.Context) ([]View, error) {
	cs, err := s.store.Campaigns(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]View, 0, len(cs))
	for _, c := range cs {
		v, err := s.view(ctx, c)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// Failure is a campaign vehicle whose install did not succeed, and why.
type Failure struct {
	VIN       string    `json:"vin"`
	ECUSerial string    `json:"ecuSerial"`
	State     string    `json:"state"` // failed, rolled_back, timed_out
	At        time.Time `json:"at"`
	// Why is the vehicle's last report (its agent's message).
	Why   string `json:"why,omitempty"`
	JobID string `json:"jobId"`
}

// Failures lists up to limit of the campaign's failed, rolled-back and
// timed-out installs, newest first.
func (s *Service) Failures(ctx context.Context, id string, limit int) ([]Failure, error) {
	var out []Failure
	for _, state := range []string{server.JobFailed, server.JobRolledBack, server.JobTimedOut} {
		js, err := s.store.CampaignJobs(ctx, id, state)
		if err != nil {
			return nil, err
		}
		for _, j := range js {
			f := Failure{VIN: j.VIN, ECUSerial: j.ECUSerial, State: j.State, At: j.UpdatedAt, JobID: j.ID}
			for _, e := range j.Events {
				if e.Message != "" {
					f.Why = e.Message
				}
			}
			out = append(out, f)
		}
	}
	slices.SortFunc(out, func(a, b Failure) int { return b.At.Compare(a.At) })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// Pending is a campaign update waiting for an owner's consent.
type Pending struct {
	CampaignID   string `json:"campaignId"`
	Campaign     string `json:"campaign"`
	VIN          string `json:"vin"`
	ECU          string `json:"ecu"`
	Version      string `json:"version"`
	ReleaseNotes string `json:"releaseNotes,omitempty"`
}

// PendingConsent lists the updates waiting for the owner of vin to agree.
func (s *Service) PendingConsent(ctx context.Context, vin string) ([]Pending, error) {
	ms, err := s.store.CampaignMembership(ctx, vin)
	if err != nil {
		return nil, err
	}
	var out []Pending
	targets, _, _ := s.images.CurrentTargets(ctx)
	for _, m := range ms {
		if m.Consent != "pending" {
			continue
		}
		c, err := s.store.Campaign(ctx, m.CampaignID)
		if err != nil || (c.State != server.CampaignRunning && c.State != server.CampaignPaused) {
			continue
		}
		p := Pending{CampaignID: c.ID, Campaign: c.Name, VIN: vin, ECU: c.Config.ECU, Version: c.Config.Version}
		for _, path := range c.Config.Targets {
			if cu, err := meta.TargetCustom(targets[path]); err == nil && cu.ReleaseNotes != "" {
				p.ReleaseNotes = cu.ReleaseNotes
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// Consent records the owner's accept or decline; declined vehicles count
// as neither success nor failure.
func (s *Service) Consent(ctx context.Context, owner server.Principal, vin, campaignID, decision string) error {
	var d string
	switch decision {
	case "accept":
		d = "accepted"
	case "decline":
		d = "declined"
	default:
		return server.Errorf(server.KindInvalid, "decision %q: want accept or decline", decision)
	}
	if err := s.store.SetCampaignConsent(ctx, campaignID, vin, d); errors.Is(err, server.ErrConflict) {
		return server.Errorf(server.KindConflict, "no update of campaign %s waits for your consent on %s", campaignID, vin)
	} else if err != nil {
		return err
	}
	return auditlog.Record(ctx, s.store, s.now(), owner, "campaign.consent_"+decision, campaignID, "vin="+vin)
}

// rate is a fraction for messages: 0.3 -> "30%".
func rate(f float64) string { return fmt.Sprintf("%.0f%%", math.Round(f*100)) }
