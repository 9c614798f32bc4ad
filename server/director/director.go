// Package director is the Uptane director repository: for each VIN it
// decides which image each ECU serial must run (a dealer job, or the
// server's auto-assign policy) and signs per-VIN targets, snapshot and
// timestamp with the server's online director keys. Metadata is
// regenerated lazily, when a vehicle asks for its timestamp and either the
// assignment changed or the timestamp passed half its life; per-VIN
// versions are durable in the state store.
package director

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/repo"
)

// Auto-assign policies for ECUs no job covers.
const (
	AutoLatest = "latest"
	AutoNone   = "none"
)

// Images is the image repository as the director needs it.
type Images interface {
	CurrentTargets(ctx context.Context) (map[string]*metadata.TargetFiles, int64, error)
}

// AutoJobs records installs the auto-assign policy decides as jobs, so
// they have progress and history (the jobs service).
type AutoJobs interface {
	CreateAuto(ctx context.Context, v server.Vehicle, e server.ECU, path string, c meta.Custom) (server.Job, error)
	Supersede(ctx context.Context, j server.Job, why string) (stillOpen bool, err error)
}

// Store is what the director needs of the state store: the per-vehicle
// metadata it signs, and the vehicle's jobs it signs for.
type Store interface {
	server.DirectorMetadata
	JobsByVIN(ctx context.Context, vin string) ([]server.Job, error)
}

// Service is the director.
type Service struct {
	store      Store
	images     Images
	jobs       AutoJobs
	campaigns  Campaigns
	deltas     Deltas
	sealer     Sealer
	keys       *repo.OnlineKeys
	autoAssign string
	expiry     time.Duration
	now        func() time.Time
	log        *slog.Logger
	// floor is the least version signed for any VIN's metadata (a
	// restored server, see server/backup); 0 when never restored.
	floor int64
}

// Config is what a director is built from.
type Config struct {
	Store  Store
	Images Images
	// Keys are the director's online keys (targets, snapshot, timestamp).
	Keys *repo.OnlineKeys
	// Jobs, if set, records what auto-assign decides as jobs.
	Jobs AutoJobs
	// Campaigns, if set, makes the director defer to campaigns.
	Campaigns Campaigns
	// Deltas, if set, offers deltas from what each ECU runs.
	Deltas Deltas
	// Sealer, if set, sends images of encrypted hardware sealed.
	Sealer Sealer
	// AutoAssign is AutoLatest or AutoNone ("": none).
	AutoAssign string
	// Expiry is how long signed timestamp metadata lives.
	Expiry time.Duration
	// VersionFloor makes every version signed at least it, and metadata
	// signed below it stale (re-signed at the next fetch): a restored
	// server (see server/backup); 0 when never restored.
	VersionFloor int64
	Now          func() time.Time
	Log          *slog.Logger
}

// New returns a director, or an error naming what cfg lacks.
func New(cfg Config) (*Service, error) {
	if cfg.AutoAssign == "" {
		cfg.AutoAssign = AutoNone
	}
	switch {
	case cfg.Store == nil || cfg.Keys == nil || cfg.Now == nil || cfg.Log == nil:
		return nil, errors.New("director: store, online keys, clock and logger are required")
	case cfg.AutoAssign != AutoLatest && cfg.AutoAssign != AutoNone:
		return nil, fmt.Errorf("director: auto-assign %q: want %s or %s", cfg.AutoAssign, AutoLatest, AutoNone)
	case cfg.AutoAssign == AutoLatest && cfg.Images == nil:
		return nil, errors.New("director: auto-assign needs the image repository")
	case cfg.Expiry <= 0:
		return nil, fmt.Errorf("director: metadata expiry %v must be positive", cfg.Expiry)
	}
	return &Service{store: cfg.Store, images: cfg.Images, keys: cfg.Keys, jobs: cfg.Jobs, campaigns: cfg.Campaigns, deltas: cfg.Deltas,
		sealer: cfg.Sealer, autoAssign: cfg.AutoAssign, expiry: cfg.Expiry, floor: cfg.VersionFloor, now: cfg.Now, log: cfg.Log}, nil
}

// Campaigns is what the director asks of campaigns.
type Campaigns interface {
	// CampaignTargets are the images campaigns cover: those reach vehicles
	// only through their campaign's waves (or a dealer's job).
	CampaignTargets(ctx context.Context) (map[string]bool, error)
	// CampaignHolds are the ECUs of vin waiting in a campaign for their
	// job: auto-assign leaves them alone.
	CampaignHolds(ctx context.Context, vin string) (map[string]bool, error)
	// CampaignDeltas is a campaign's deltas policy (DeltasWait, ...).
	CampaignDeltas(ctx context.Context, id string) (string, error)
}

// Deltas offers deltas (server/deltas).
type Deltas interface {
	// Offer names the delta from the image with sha256 baseSHA to the
	// target at path for hardware hw, when it is made (ready), or says it
	// is being made (pending).
	Offer(ctx context.Context, hw, baseSHA, path string, target *metadata.TargetFiles) (deltaPath string, state int, err error)
	// Version changes whenever a delta is added.
	Version(ctx context.Context) (int64, error)
}

// Offer states of Deltas.Offer.
const (
	DeltaNone    = 0
	DeltaReady   = 1
	DeltaPending = 2
)

// Deltas policies of a campaign ("" is prefer).
const (
	DeltasWait   = "wait"
	DeltasPrefer = "prefer"
	DeltasOff    = "off"
)

// Assigned is one ECU's assignment.
type Assigned struct {
	Serial     string
	HardwareID string
	ECUType    string
	Path       string
	Target     *metadata.TargetFiles
	Image      meta.Custom
	JobID      string
	Downgrade  bool
	Window     *server.Window
	// CampaignID is the campaign of the job, if any.
	CampaignID string
	// Delta, when set, is the delta the vehicle may use instead of the
	// full image (a path of the image repository's deltas role).
	Delta string
	// Encrypted, for hardware whose images are kept sealed, is the sealed
	// image (and delta); EncryptionKey the ECU's key its file key is
	// wrapped to.
	Encrypted     *EncryptedTarget
	EncryptionKey []byte
}

// Assignment decides what each ECU of v must run, without changing
// anything (see assign).
func (d *Service) Assignment(ctx context.Context, v server.Vehicle) ([]Assigned, error) {
	dec, err := d.assign(ctx, v, recordNothing)
	return dec.As, err
}

// decision is an assignment with what it was decided from.
type decision struct {
	As []Assigned
	// ImageVersion is the version of the image repository's targets it
	// was decided on, DeltasVersion that of its deltas role.
	ImageVersion, DeltasVersion int64
	// Volatile is set when it depends on more than the stored inputs:
	// on the clock (a job waiting for its retry time) or on a job's
	// success that the ECU has yet to report. It is then decided again
	// at every poll until it settles.
	Volatile bool
}

// What assign writes down.
type recordMode int

const (
	recordNothing recordMode = iota
	// recordReported: jobs for installs an ECU needs by its last check-in.
	recordReported
	// recordAll: also for ECUs that never reported (a USB bundle is
	// issued for them: its install deserves a record).
	recordAll
)

// assign decides what each ECU of v must run. Precedence, per ECU (the
// one place it is decided): its oldest open dealer job (once its retry
// time has come); else its open campaign job; else, with --auto-assign
// latest, the newest image for its hardware that no campaign covers, if
// it is not older than what the ECU runs. Auto-assign does not push an
// image again onto an ECU where an auto-assigned install of it failed or
// rolled back (a dealer job can).
//
// Unless mode is recordNothing (a read-only question), decisions are
// written down: an auto-assigned install the ECU does not run yet gets a
// job, and open auto-assign jobs that no longer match the decision are
// superseded.
func (d *Service) assign(ctx context.Context, v server.Vehicle, mode recordMode) (decision, error) {
	record := mode != recordNothing && d.jobs != nil
	var dec decision
	targets, iv, err := d.images.CurrentTargets(ctx)
	if err != nil {
		return dec, err
	}
	dec.ImageVersion = iv
	jobs, err := d.store.JobsByVIN(ctx, v.VIN)
	if err != nil {
		return dec, err
	}
	covered, held := map[string]bool{}, map[string]bool{}
	if d.campaigns != nil && d.autoAssign == AutoLatest {
		if covered, err = d.campaigns.CampaignTargets(ctx); err != nil {
			return dec, err
		}
		if held, err = d.campaigns.CampaignHolds(ctx, v.VIN); err != nil {
			return dec, err
		}
	}
	now := d.now()
	var out []Assigned
	// fromJob is d.fromJob, noting a job that waits for its retry time.
	fromJob := func(e server.ECU, j server.Job) (Assigned, bool) {
		if j.State == server.JobQueued && j.NextAttemptAt.After(now) {
			dec.Volatile = true
		}
		return d.fromJob(e, j, targets, now)
	}
	for _, e := range v.ECUs {
		var dealer, campaign *server.Job
		var autos []server.Job
		for i, j := range jobs { // oldest first: the first open dealer job is the active one
			// A job that succeeded after the ECU's last report is what the
			// ECU runs now, though its next manifest has yet to say so.
			part, covers := j.Part(e.Serial)
			if covers && j.State == server.JobSucceeded && j.UpdatedAt.After(e.ReportedAt) {
				if tf, ok := targets[part.TargetPath]; ok {
					e.InstalledSHA256, e.ReportedAt = hex.EncodeToString(tf.Hashes["sha256"]), j.UpdatedAt
					dec.Volatile = true
				}
			}
			switch {
			case !covers || server.JobTerminal(j.State):
			case j.Origin == server.OriginAutoAssign:
				autos = append(autos, j)
			case j.Origin == server.OriginCampaign:
				if campaign == nil {
					campaign = &jobs[i]
				}
			case dealer == nil:
				dealer = &jobs[i]
			}
		}
		// supersede ends the open auto jobs but keep; it reports whether
		// one stays open (mid-flash: it ends as the install does).
		supersede := func(keep string, why string) (bool, error) {
			open := false
			if !record {
				return false, nil
			}
			for _, j := range autos {
				if j.ID != keep {
					still, err := d.jobs.Supersede(ctx, j, why)
					if err != nil {
						return false, err
					}
					open = open || still
				}
			}
			return open, nil
		}
		if dealer != nil {
			if campaign != nil {
				autos = append(autos, *campaign) // a dealer's job beats a campaign's too
			}
			if _, err := supersede("", "superseded by dealer job "+dealer.ID); err != nil {
				return dec, err
			}
			if a, ok := fromJob(e, *dealer); ok {
				out = append(out, a)
			}
			continue
		}
		if campaign != nil {
			if _, err := supersede("", "superseded by campaign job "+campaign.ID); err != nil {
				return dec, err
			}
			if a, ok := fromJob(e, *campaign); ok {
				out = append(out, a)
			}
			continue
		}
		p, tf, c, ok := latest(targets, e, covered)
		if d.autoAssign != AutoLatest || !ok || held[e.Serial] {
			if _, err := supersede("", "auto-assign no longer assigns an image to this ECU"); err != nil {
				return dec, err
			}
			continue
		}
		var job *server.Job
		for i, j := range autos {
			if j.TargetPath == p && job == nil {
				job = &autos[i]
			}
		}
		keep := ""
		if job != nil {
			keep = job.ID
		}
		pending, err := supersede(keep, "superseded by "+p)
		if err != nil {
			return dec, err
		}
		if job == nil && failedBefore(jobs, e.Serial, p) {
			continue
		}
		// A job only for what the ECU does not run yet, as far as the
		// vehicle has said (never checked in: nothing to compare with).
		// While a superseded job is still flashing, the new image goes
		// without a record of its own (one open auto job per ECU).
		known := !e.ReportedAt.IsZero()
		if job == nil && record && !pending && (known || mode == recordAll) && e.InstalledSHA256 != hex.EncodeToString(tf.Hashes["sha256"]) {
			j, err := d.jobs.CreateAuto(ctx, v, e, p, c)
			if err != nil {
				return dec, err // ErrConflict: another request recorded it first
			}
			job = &j
		}
		if job != nil {
			if a, ok := fromJob(e, *job); ok {
				out = append(out, a)
			}
			continue
		}
		out = append(out, Assigned{Serial: e.Serial, HardwareID: e.HardwareID, ECUType: e.Type, Path: p, Target: tf, Image: c})
	}
	if out, err = d.withDeltas(ctx, v, out, &dec); err != nil {
		return dec, err
	}
	if out, err = d.withSealed(ctx, v, out); err != nil {
		return dec, err
	}
	dec.As = d.withRequirements(v, wholeSets(out, jobs))
	return dec, nil
}

// withDeltas names, for each install, the delta from the image the ECU
// runs when one is made; it asks for it when not. A campaign with deltas
// "wait" holds an install back while its delta is being made, "off"
// sends full images. While a delta is being made the decision is
// volatile: taken again at the next poll.
func (d *Service) withDeltas(ctx context.Context, v server.Vehicle, as []Assigned, dec *decision) ([]Assigned, error) {
	if d.deltas == nil {
		return as, nil
	}
	dv, err := d.deltas.Version(ctx)
	if err != nil {
		return nil, err
	}
	dec.DeltasVersion = dv
	installed := map[string]string{}
	for _, e := range v.ECUs {
		installed[e.Serial] = e.InstalledSHA256
	}
	policies := map[string]string{}
	kept := as[:0:0]
	for _, a := range as {
		policy := DeltasPrefer
		if a.CampaignID != "" && d.campaigns != nil {
			p, ok := policies[a.CampaignID]
			if !ok {
				if p, err = d.campaigns.CampaignDeltas(ctx, a.CampaignID); err != nil {
					return nil, err
				}
				policies[a.CampaignID] = p
			}
			if p != "" {
				policy = p
			}
		}
		if policy != DeltasOff {
			path, state, err := d.deltas.Offer(ctx, a.HardwareID, installed[a.Serial], a.Path, a.Target)
			if err != nil {
				return nil, err
			}
			switch state {
			case DeltaReady:
				a.Delta = path
			case DeltaPending:
				dec.Volatile = true
				if policy == DeltasWait {
					continue // the campaign waits for its delta
				}
			}
		}
		kept = append(kept, a)
	}
	return kept, nil
}

// wholeSets drops the parts of an update set that is not assigned whole
// (another job comes first on one of its ECUs, or one of its images is
// gone): a set installs all together or waits.
func wholeSets(as []Assigned, jobs []server.Job) []Assigned {
	want := map[string]int{}
	for _, j := range jobs {
		if len(j.Parts) > 1 {
			want[j.ID] = len(j.Parts)
		}
	}
	have := map[string]int{}
	for _, a := range as {
		have[a.JobID]++
	}
	kept := as[:0:0]
	for _, a := range as {
		if n, set := want[a.JobID]; !set || have[a.JobID] == n {
			kept = append(kept, a)
		}
	}
	return kept
}

// withRequirements drops from as every install whose image declares a
// requirement (custom.requires) that v's recorded software, with all of
// as installed, breaks; an update set goes whole (its other parts too).
// It repeats until what is left holds together.
func (d *Service) withRequirements(v server.Vehicle, as []Assigned) []Assigned {
	for {
		parts := make([]server.JobPart, len(as))
		for i, a := range as {
			parts[i] = server.JobPart{ECUSerial: a.Serial, ECUType: a.ECUType, TargetPath: a.Path, Version: a.Image.Version}
		}
		run := v.RunningWith(parts)
		drop := -1
		for i, a := range as {
			if req, why, ok := meta.Unmet(a.Image.Requires, run); !ok {
				d.log.Warn("not issuing an image whose requirement the vehicle does not meet", "vin", v.VIN, "ecu", a.Serial,
					"target", a.Path, "job", a.JobID, "requirement", req.String(), "why", why)
				drop = i
				break
			}
		}
		if drop < 0 {
			return as
		}
		job := as[drop].JobID
		kept := as[:0:0]
		for i, a := range as {
			if i != drop && (job == "" || a.JobID != job) {
				kept = append(kept, a)
			}
		}
		as = kept
	}
}

// fromJob is what an open job assigns to e: its image, unless the job
// waits for a retry or names an image the repository no longer has.
func (d *Service) fromJob(e server.ECU, j server.Job, targets map[string]*metadata.TargetFiles, now time.Time) (Assigned, bool) {
	if j.State == server.JobQueued && j.NextAttemptAt.After(now) {
		return Assigned{}, false // waiting for its retry: assign nothing yet
	}
	part, _ := j.Part(e.Serial)
	tf, ok := targets[part.TargetPath]
	if !ok {
		d.log.Warn("job names a target the image repository no longer has", "job", j.ID, "target", part.TargetPath, "targets_served", len(targets))
		return Assigned{}, false
	}
	c, err := meta.TargetCustom(tf)
	if err != nil {
		return Assigned{}, false
	}
	return Assigned{Serial: e.Serial, HardwareID: e.HardwareID, ECUType: e.Type, Path: part.TargetPath, Target: tf, Image: c,
		JobID: j.ID, Downgrade: j.Forced, Window: j.Window, CampaignID: j.CampaignID}, true
}

// latest is what auto-assign gives e: the newest image for its hardware
// that no campaign covers, unless e already runs a newer one (a
// campaign's, say).
func latest(targets map[string]*metadata.TargetFiles, e server.ECU, covered map[string]bool) (string, *metadata.TargetFiles, meta.Custom, bool) {
	open := targets
	if len(covered) > 0 {
		open = make(map[string]*metadata.TargetFiles, len(targets))
		for p, tf := range targets {
			if !covered[p] {
				open[p] = tf
			}
		}
	}
	p, tf, c, ok := meta.Latest(open, e.Type, e.HardwareID)
	if !ok || e.InstalledSHA256 == "" {
		return p, tf, c, ok
	}
	for _, itf := range targets {
		if hex.EncodeToString(itf.Hashes["sha256"]) != e.InstalledSHA256 {
			continue
		}
		if ic, err := meta.TargetCustom(itf); err == nil && ic.Supports(e.Type, e.HardwareID) && ic.ReleaseCounter > c.ReleaseCounter {
			return "", nil, c, false
		}
	}
	return p, tf, c, ok
}

// failedBefore reports whether an auto-assigned install of path on serial
// failed or rolled back.
func failedBefore(jobs []server.Job, serial, path string) bool {
	for _, j := range jobs {
		if j.ECUSerial == serial && j.TargetPath == path && j.Origin == server.OriginAutoAssign &&
			(j.State == server.JobFailed || j.State == server.JobRolledBack) {
			return true
		}
	}
	return false
}

// TargetCustom is the custom metadata of a director target (Uptane's
// ecuIdentifiers, plus the job it comes from).
type TargetCustom struct {
	ECUIdentifiers map[string]ECUIdentifier `json:"ecuIdentifiers"`
	ECUType        string                   `json:"ecuType"`
	Version        string                   `json:"version"`
	ReleaseCounter int64                    `json:"releaseCounter"`
	JobID          string                   `json:"jobId,omitempty"`
	Downgrade      bool                     `json:"downgrade,omitempty"`
	// Window, from a campaign, is when the vehicle may install.
	Window *server.Window `json:"window,omitempty"`
	// Deltas name, per ECU serial, a delta of the image repository that
	// rebuilds this target from what the ECU runs.
	Deltas map[string]string `json:"deltas,omitempty"`
	// Encrypted, per ECU serial, is where that ECU's sealed image is and
	// its file key, wrapped for it alone.
	Encrypted map[string]*EncryptedTarget `json:"encrypted,omitempty"`
}

// ECUIdentifier names the hardware an ECU serial must have.
type ECUIdentifier struct {
	HardwareID string `json:"hardwareId"`
}

// build turns an assignment into director targets (without version and
// expiry) and a hash identifying it. With wrapKeys, the encrypted
// targets carry their file keys wrapped for each ECU: random each time,
// so only for targets about to be signed, and never part of the hash
// (their recipients are).
func build(vin string, as []Assigned, wrapKeys bool) (map[string]*metadata.TargetFiles, string, error) {
	sort.Slice(as, func(i, j int) bool { return as[i].Serial < as[j].Serial })
	customs := map[string]*TargetCustom{}
	files := map[string]*metadata.TargetFiles{}
	for _, a := range as {
		c, ok := customs[a.Path]
		if !ok {
			c = &TargetCustom{ECUIdentifiers: map[string]ECUIdentifier{}, ECUType: a.ECUType, Version: a.Image.Version, ReleaseCounter: a.Image.ReleaseCounter}
			customs[a.Path] = c
			files[a.Path] = &metadata.TargetFiles{Length: a.Target.Length, Hashes: a.Target.Hashes, Path: a.Path}
		}
		c.ECUIdentifiers[a.Serial] = ECUIdentifier{HardwareID: a.HardwareID}
		if a.Delta != "" {
			if c.Deltas == nil {
				c.Deltas = map[string]string{}
			}
			c.Deltas[a.Serial] = a.Delta
		}
		if a.Encrypted != nil {
			if c.Encrypted == nil {
				c.Encrypted = map[string]*EncryptedTarget{}
			}
			c.Encrypted[a.Serial] = a.Encrypted
		}
		if a.JobID != "" {
			c.JobID, c.Downgrade, c.Window = a.JobID, a.Downgrade, a.Window
		}
	}
	marshal := func() error {
		for p, c := range customs {
			b, err := json.Marshal(c)
			if err != nil {
				return err
			}
			raw := json.RawMessage(b)
			files[p].Custom = &raw
		}
		return nil
	}
	if err := marshal(); err != nil {
		return nil, "", err
	}
	h := sha256.New()
	enc, _ := json.Marshal(struct {
		VIN   string
		Files map[string]*metadata.TargetFiles
	}{vin, files})
	h.Write(enc)
	wrapped := false
	for _, a := range as {
		if a.Encrypted == nil || !wrapKeys {
			continue
		}
		w, err := wrap(vin, a, a.Encrypted)
		if err != nil {
			return nil, "", err
		}
		customs[a.Path].Encrypted[a.Serial], wrapped = w, true
	}
	if wrapped {
		if err := marshal(); err != nil {
			return nil, "", err
		}
	}
	return files, hex.EncodeToString(h.Sum(nil)), nil
}

// Timestamp returns the VIN's current timestamp.json. A poll of unchanged
// metadata costs one read: when nothing the assignment is decided from
// changed since it was last decided (the head's basis: the vehicle's and
// the campaigns' generations, the image repository's targets version and
// this director's policy) and the metadata is not half expired, the
// stored timestamp is the answer. Otherwise load gives the vehicle, the
// assignment is decided again, and re-signed if it changed.
func (d *Service) Timestamp(ctx context.Context, vin string, load func(context.Context) (server.Vehicle, error)) ([]byte, error) {
	head, metas, err := d.refresh(ctx, vin, load)
	if err != nil {
		return nil, err
	}
	if metas != nil {
		return metas[2].Body, nil
	}
	if head.Timestamp != nil {
		return head.Timestamp, nil
	}
	f, err := d.store.DirectorFile(ctx, vin, metadata.TIMESTAMP, head.TimestampVersion)
	return f.Body, err
}

// ForBundle signs director metadata for one USB bundle: the current
// assignment (recorded as for an online fetch), for the vehicle b.VIN,
// expiring at b.ValidUntil and marked with b (meta.USBBundle) in all three
// roles, so the agent trusts it offline only. Its versions come from the
// VIN's own bundle counter, so a vehicle never takes an older bundle after
// a newer one. None of it is stored: the vehicle's online metadata, and
// its expiry, are untouched.
func (d *Service) ForBundle(ctx context.Context, v server.Vehicle, b meta.USBBundle) ([]server.DirectorMeta, []Assigned, error) {
	var dec decision
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if dec, err = d.assign(ctx, v, recordAll); !errors.Is(err, server.ErrConflict) {
			break
		}
	}
	as := dec.As
	if err != nil {
		return nil, nil, err
	}
	files, _, err := build(v.VIN, as, true)
	if err != nil {
		return nil, nil, err
	}
	n, err := d.store.NextBundleVersion(ctx, v.VIN)
	if err != nil {
		return nil, nil, err
	}
	n = max(n, d.floor)
	b.VIN = v.VIN
	metas, err := d.sign(v.VIN, n, n, n, files, b.ValidUntil.UTC().Truncate(time.Second), b.Custom())
	return metas, as, err
}

// refresh re-signs the VIN's director metadata, valid for the director
// expiry, when the assignment changed or less than half of its life is
// left. It returns the head and the new files (nil when the current ones
// stand).
// Concurrent refreshes (other requests, other replicas) are resolved by
// the store: the loser reloads and uses the winner's metadata.
func (d *Service) refresh(ctx context.Context, vin string, load func(context.Context) (server.Vehicle, error)) (server.DirectorHead, []server.DirectorMeta, error) {
	life := d.expiry
	for attempt := 0; attempt < 5; attempt++ {
		// The head (with the generations) is read before the inputs, so
		// a change made meanwhile is decided again at the next poll.
		head, err := d.store.DirectorHead(ctx, vin)
		if err != nil {
			return head, nil, err
		}
		now := d.now()
		current := head.TimestampVersion > 0 && head.TimestampExpires.Sub(now) > life/2 && head.TimestampVersion >= d.floor
		if current && head.Timestamp != nil { // a volatile head's basis is "", which never matches
			if iv, dv, err := d.imageVersion(ctx); err != nil {
				return head, nil, err
			} else if head.Basis == d.basis(head, iv, dv) {
				return head, nil, nil
			}
		}
		v, err := load(ctx)
		if err != nil {
			return head, nil, err
		}
		dec, err := d.assign(ctx, v, recordReported)
		if errors.Is(err, server.ErrConflict) {
			continue
		}
		if err != nil {
			return head, nil, err
		}
		_, hash, err := build(vin, dec.As, false)
		if err != nil {
			return head, nil, err
		}
		basis := ""
		if !dec.Volatile {
			basis = d.basis(head, dec.ImageVersion, dec.DeltasVersion)
		}
		if current && hash == head.AssignmentHash {
			if basis != head.Basis {
				if err := d.store.SaveDirectorBasis(ctx, vin, head.TimestampVersion, basis); err != nil {
					return head, nil, err
				}
			}
			return head, nil, nil
		}
		files, _, err := build(vin, dec.As, true)
		if err != nil {
			return head, nil, err
		}
		next, metas, err := d.Sign(vin, head, files, hash, now, life)
		if err != nil {
			return head, nil, err
		}
		next.Basis = basis
		err = d.store.SaveDirector(ctx, head, next, metas)
		if errors.Is(err, server.ErrConflict) {
			continue
		}
		if err != nil {
			return head, nil, err
		}
		d.log.Info("signed director metadata", "vin", vin, "targets", next.TargetsVersion, "timestamp", next.TimestampVersion, "ecus_assigned", len(dec.As))
		return next, metas, nil
	}
	return server.DirectorHead{}, nil, server.Errorf(server.KindUnavailable, "director metadata for %s is being regenerated concurrently; retry", vin)
}

// basis is what an assignment decided now, after head was read, was
// decided on: the vehicle's and the campaigns' generations read with the
// head, the image repository's targets version, and the director's own
// policy.
func (d *Service) basis(head server.DirectorHead, imageVersion, deltasVersion int64) string {
	return fmt.Sprintf("v%d.c%d.i%d.d%d.%s.f%d", head.VehicleGen, head.CampaignGen, imageVersion, deltasVersion, d.autoAssign, d.floor)
}

// imageVersion is the version of the image repository's targets this
// replica serves, and of its deltas role.
func (d *Service) imageVersion(ctx context.Context) (iv, dv int64, err error) {
	if d.images != nil {
		if _, iv, err = d.images.CurrentTargets(ctx); err != nil {
			return 0, 0, err
		}
	}
	if d.deltas != nil {
		dv, err = d.deltas.Version(ctx)
	}
	return iv, dv, err
}

// Sign signs director targets (files), snapshot and timestamp for a VIN
// as the versions after head, valid for life. The caller stores them
// with SaveDirector.
func (d *Service) Sign(vin string, head server.DirectorHead, files map[string]*metadata.TargetFiles, hash string, now time.Time, life time.Duration) (server.DirectorHead, []server.DirectorMeta, error) {
	exp := meta.Expires(now, life)
	next := server.DirectorHead{VIN: vin, TargetsVersion: max(head.TargetsVersion+1, d.floor), SnapshotVersion: max(head.SnapshotVersion+1, d.floor),
		TimestampVersion: max(head.TimestampVersion+1, d.floor), AssignmentHash: hash, TimestampExpires: exp}
	// The VIN is signed into the targets: a vehicle refuses another's.
	metas, err := d.sign(vin, next.TargetsVersion, next.SnapshotVersion, next.TimestampVersion, files, exp, map[string]any{"vin": vin})
	return next, metas, err
}

// sign signs targets (with custom in targets; in snapshot and timestamp
// too when it marks a USB bundle), snapshot and timestamp at the given
// versions, all expiring at exp.
func (d *Service) sign(vin string, targetsV, snapV, tsV int64, files map[string]*metadata.TargetFiles, exp time.Time, custom map[string]any) ([]server.DirectorMeta, error) {
	t := metadata.Targets(exp)
	t.Signed.Version = targetsV
	t.Signed.Targets = files
	t.Signed.UnrecognizedFields = map[string]any{"custom": custom}
	if err := meta.Sign(t, d.keys.DirectorTargets); err != nil {
		return nil, err
	}
	tRaw, err := t.ToBytes(false)
	if err != nil {
		return nil, fmt.Errorf("encode director targets: %w", err)
	}
	var outer map[string]any
	if _, ok := custom[meta.USBBundleField]; ok {
		outer = custom
	}
	sRaw, err := meta.SignSnapshot(snapV, targetsV, exp, outer, d.keys.DirectorSnapshot)
	if err != nil {
		return nil, err
	}
	tsRaw, err := meta.SignTimestamp(tsV, snapV, sRaw, exp, outer, d.keys.DirectorTimestamp)
	if err != nil {
		return nil, err
	}
	return []server.DirectorMeta{
		{VIN: vin, Role: metadata.TARGETS, Version: targetsV, Body: tRaw, Expires: exp},
		{VIN: vin, Role: metadata.SNAPSHOT, Version: snapV, Body: sRaw, Expires: exp},
		{VIN: vin, Role: metadata.TIMESTAMP, Version: tsV, Body: tsRaw, Expires: exp},
	}, nil
}

// File returns a versioned director file (N.snapshot.json, N.targets.json).
func (d *Service) File(ctx context.Context, vin, name string) ([]byte, error) {
	v, role, ok := repo.ParseVersionedName(name)
	if !ok || (role != metadata.SNAPSHOT && role != metadata.TARGETS) {
		return nil, server.Errorf(server.KindNotFound, "no such director file %q", name)
	}
	f, err := d.store.DirectorFile(ctx, vin, role, v)
	if errors.Is(err, server.ErrNotFound) {
		return nil, server.Errorf(server.KindNotFound, "no director file %s for %s", name, vin)
	}
	return f.Body, err
}
