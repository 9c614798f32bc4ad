// Package jobs runs dealer reflash jobs: one image on one ECU of one VIN,
// or an update set (images on several ECUs of one VIN, installed all
// together or not at all).
//
//	queued → in_progress → succeeded | failed | rolled_back | canceled | timed_out
//
// A job is succeeded only when the vehicle reports the new image booted
// and was committed. Only the oldest open job of an ECU is active; later
// ones wait. Failed jobs are retried with backoff a bounded number of
// times; a job the vehicle never reports on times out. Cancel before the
// download finishes cancels; once flashing started the install finishes
// or rolls back, and the job says which.
package jobs

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/approvals"
	"github.com/roadsign/roadsign/server/auditlog"
)

// Config is what the jobs service is built from.
type Config struct {
	Store  Store
	Images Images
	// MaxAttempts (3), RetryBase (1 min): a failed install is retried.
	MaxAttempts int
	RetryBase   time.Duration
	// Timeout (72 h) ends a job the vehicle has not reported on for this long.
	Timeout time.Duration
	// Wake, if set, is told the VINs whose assignment a job changed (push).
	Wake func(vins ...string)
	Now  func() time.Time
	Log  *slog.Logger
	// Notify hears of job state changes (job.state_changed).
	Notify server.Notify
	// Approvals and ApproveOver: jobs for more than ApproveOver vehicles
	// in one request need another account's approval (four eyes).
	Approvals   *approvals.Service
	ApproveOver int
}

// Images is the image repository as jobs need it.
type Images interface {
	CurrentTargets(ctx context.Context) (map[string]*metadata.TargetFiles, int64, error)
}

// Store is what jobs need of the state store: the jobs, the vehicles
// they are for, the software record their outcomes go to, and the audit
// log.
type Store interface {
	server.Jobs
	Vehicle(ctx context.Context, vin string) (server.Vehicle, error)
	AddSoftwareRecord(ctx context.Context, r server.SoftwareRecord) error
	auditlog.Appender
}

// Service manages jobs.
type Service struct {
	store  Store
	images Images
	cfg    Config
	now    func() time.Time
	log    *slog.Logger
}

// New returns a job service, or an error naming what cfg lacks.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.Images == nil || cfg.Now == nil || cfg.Log == nil {
		return nil, errors.New("jobs: store, image repository, clock and logger are required")
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 3
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = time.Minute
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 72 * time.Hour
	}
	return &Service{store: cfg.Store, images: cfg.Images, cfg: cfg, now: cfg.Now, log: cfg.Log}, nil
}

// CreateRequest is the body of POST /api/v1/jobs: one ECU (ECU and
// Version), or an update set (ECUs).
type CreateRequest struct {
	VIN string `json:"vin,omitempty"`
	// VINs, instead of VIN, make the same job for each of many vehicles
	// (over the approval threshold, approved first).
	VINs    []string `json:"vins,omitempty"`
	ECU     string   `json:"ecu"`     // dcm, head-unit or an ECU serial
	Version string   `json:"version"` // e.g. 1.1.0, or latest
	// ECUs, instead of ECU and Version, make an update set: several ECUs
	// that install together, in this order, all or none.
	ECUs   []PartRequest `json:"ecus,omitempty"`
	Forced bool          `json:"forced"` // allow a downgrade (the image must permit it)
	Reason string        `json:"reason"`
}

// PartRequest is one ECU of an update set.
type PartRequest struct {
	ECU     string `json:"ecu"`
	Version string `json:"version"`
}

// Create queues a job after resolving its ECUs and images. The images'
// declared requirements (custom.requires) must hold for the vehicle's
// recorded software with the job's images installed; an update set is
// how two ECUs that need each other move together.
func (s *Service) Create(ctx context.Context, by server.Principal, r CreateRequest) (server.Job, error) {
	if len(r.VINs) > 0 {
		return server.Job{}, server.Errorf(server.KindInvalid, "vins: jobs for many vehicles are made by CreateMany")
	}
	targets, _, err := s.images.CurrentTargets(ctx)
	if err != nil {
		return server.Job{}, err
	}
	pl, err := s.plan(ctx, by, r, targets)
	if err != nil {
		return server.Job{}, err
	}
	return s.store1(ctx, by, pl)
}

// planned is a job checked and ready to be stored.
type planned struct {
	job    server.Job
	v      server.Vehicle
	parts  []server.JobPart
	audit  string
	reason string
	forced bool
}

// plan resolves and checks a job for one vehicle, storing nothing.
func (s *Service) plan(ctx context.Context, by server.Principal, r CreateRequest, targets map[string]*metadata.TargetFiles) (planned, error) {
	v, err := s.store.Vehicle(ctx, r.VIN)
	if err == nil {
		err = by.Reach(v)
	}
	if err != nil {
		return planned{}, err
	}
	asked := r.ECUs
	switch {
	case len(asked) > 0 && (r.ECU != "" || r.Version != ""):
		return planned{}, server.Errorf(server.KindInvalid, "give ecu and version for one ECU, or ecus for an update set, not both")
	case len(asked) == 0:
		asked = []PartRequest{{ECU: r.ECU, Version: r.Version}}
	case len(asked) > len(v.ECUs):
		return planned{}, server.Errorf(server.KindInvalid, "ecus names %d ECUs; %s has %d", len(asked), v.VIN, len(v.ECUs))
	}
	if strings.TrimSpace(r.Reason) == "" {
		return planned{}, server.Errorf(server.KindInvalid, "reason is required: say why this ECU is reflashed (it is audited)")
	}
	var parts []server.JobPart
	customs := map[string]meta.Custom{}
	for _, a := range asked {
		ecu, err := pickECU(v, a.ECU)
		if err != nil {
			return planned{}, err
		}
		if _, dup := customs[ecu.Serial]; dup {
			return planned{}, server.Errorf(server.KindInvalid, "ecus names ECU %s twice; an update set installs one image per ECU", ecu.Serial)
		}
		path, c, err := pickImage(targets, ecu, a.Version)
		if err != nil {
			return planned{}, err
		}
		if err := checkDowngrade(targets, ecu, path, c, r.Forced); err != nil {
			return planned{}, err
		}
		customs[ecu.Serial] = c
		parts = append(parts, server.JobPart{ECUSerial: ecu.Serial, ECUType: ecu.Type, TargetPath: path, Version: c.Version})
	}
	if err := CheckRequirements(v, parts, customs); err != nil {
		return planned{}, err
	}
	now := s.now().UTC()
	first := parts[0]
	j := server.Job{
		ID: uuid.NewString(), VIN: v.VIN, ECUSerial: first.ECUSerial, ECUType: first.ECUType, TargetPath: first.TargetPath, Version: first.Version,
		Forced: r.Forced, Reason: r.Reason, State: server.JobQueued, CreatedBy: by.Name, Origin: server.OriginDealer,
		CreatedAt: now, UpdatedAt: now, MaxAttempts: s.cfg.MaxAttempts,
	}
	what := fmt.Sprintf("%s on %s %s", first.Version, first.ECUType, first.ECUSerial)
	audit := fmt.Sprintf("vin=%s ecu=%s target=%s", j.VIN, j.ECUSerial, first.TargetPath)
	if len(parts) > 1 {
		j.Parts = parts
		what, audit = "update set "+describeParts(parts), fmt.Sprintf("vin=%s set=%s", j.VIN, auditParts(parts))
	}
	j.Events = []server.JobEvent{{At: now, Kind: server.JobQueued, Message: fmt.Sprintf("%s, by %s: %s", what, by.Name, r.Reason)}}
	return planned{job: j, v: v, parts: parts, audit: audit, reason: r.Reason, forced: r.Forced}, nil
}

// store1 stores a planned job and ends the campaign and auto-assign
// installs it supersedes.
func (s *Service) store1(ctx context.Context, by server.Principal, pl planned) (server.Job, error) {
	j, v, parts, now := pl.job, pl.v, pl.parts, pl.job.CreatedAt
	if err := s.store.CreateJob(ctx, j); err != nil {
		return server.Job{}, err
	}
	if err := auditlog.Record(ctx, s.store, now, by, "job.create", j.ID, fmt.Sprintf("%s forced=%v reason=%q", pl.audit, pl.forced, pl.reason)); err != nil {
		return server.Job{}, err
	}
	defer s.wake(j.VIN)
	// A dealer job beats a campaign's and auto-assign: their installs
	// still open on its ECUs end now (or, mid-flash, as the install does).
	open, err := s.store.JobsByVIN(ctx, v.VIN)
	if err != nil {
		return server.Job{}, err
	}
	for _, o := range open {
		if o.Origin == server.OriginDealer || server.JobTerminal(o.State) {
			continue
		}
		for _, p := range parts {
			if _, ok := o.Part(p.ECUSerial); ok {
				if _, err := s.Supersede(ctx, o, "superseded by dealer job "+j.ID); err != nil {
					return server.Job{}, err
				}
				break
			}
		}
	}
	return j, nil
}

// checkDowngrade refuses an image older than the one ecu runs, unless
// the job is forced and the image permits it.
func checkDowngrade(targets map[string]*metadata.TargetFiles, ecu server.ECU, path string, c meta.Custom, forced bool) error {
	tf, ok := targets[ecu.InstalledTarget]
	if ecu.InstalledTarget == "" || !ok {
		return nil
	}
	ic, err := meta.TargetCustom(tf)
	if err != nil || c.ReleaseCounter >= ic.ReleaseCounter {
		return nil
	}
	if !forced {
		return server.Errorf(server.KindConflict, "%s is older than the installed %s on %s (release %d < %d); set forced to downgrade", c.Version, ic.Version, ecu.Serial, c.ReleaseCounter, ic.ReleaseCounter)
	}
	if !c.AllowDowngrade {
		return server.Errorf(server.KindConflict, "image %s does not permit downgrades; the release engineer must sign it with --allow-downgrade", path)
	}
	return nil
}

// CheckRequirements answers requirement_unmet (409) when an image of
// parts declares a requirement (custom.requires, by the ECU serial in
// customs) that v's recorded software, with parts installed, breaks.
func CheckRequirements(v server.Vehicle, parts []server.JobPart, customs map[string]meta.Custom) error {
	run := v.RunningWith(parts)
	for _, p := range parts {
		if req, why, ok := meta.Unmet(customs[p.ECUSerial].Requires, run); !ok {
			return server.CodedErrorf(server.KindConflict, errcode.RequirementUnmet,
				"%s %s on %s %s; install both in one update set (ecus) or update the %s first", p.ECUType, p.Version, p.ECUSerial, why, req.ECU)
		}
	}
	return nil
}

// describeParts is "head-unit 3.0.0 on HU-1 + dcm 2.1.0 on DCM-1".
func describeParts(parts []server.JobPart) string {
	var out []string
	for _, p := range parts {
		out = append(out, fmt.Sprintf("%s %s on %s", p.ECUType, p.Version, p.ECUSerial))
	}
	return strings.Join(out, " + ")
}

// auditParts is "HU-1:head-unit/hu-3.0.0.img,DCM-1:dcm/dcm-2.1.0.img".
func auditParts(parts []server.JobPart) string {
	var out []string
	for _, p := range parts {
		out = append(out, p.ECUSerial+":"+p.TargetPath)
	}
	return strings.Join(out, ",")
}

// CreateAuto records an install the --auto-assign policy decided for ECU
// e of v, so it has progress and history like a dealer job.
func (s *Service) CreateAuto(ctx context.Context, v server.Vehicle, e server.ECU, path string, c meta.Custom) (server.Job, error) {
	now := s.now().UTC()
	j := server.Job{
		ID: uuid.NewString(), VIN: v.VIN, ECUSerial: e.Serial, ECUType: e.Type, TargetPath: path, Version: c.Version,
		Reason: "auto-assign latest: the newest image for " + e.HardwareID, State: server.JobQueued,
		CreatedBy: server.System.Name, Origin: server.OriginAutoAssign, CreatedAt: now, UpdatedAt: now, MaxAttempts: s.cfg.MaxAttempts,
		Events: []server.JobEvent{{At: now, Kind: server.JobQueued, Message: fmt.Sprintf("%s on %s %s, assigned by the server's auto-assign policy", c.Version, e.Type, e.Serial)}},
	}
	if err := s.store.CreateJob(ctx, j); err != nil {
		return server.Job{}, err
	}
	if err := auditlog.Record(ctx, s.store, now, server.System, "job.create", j.ID, fmt.Sprintf("vin=%s ecu=%s target=%s origin=auto-assign", j.VIN, j.ECUSerial, path)); err != nil {
		return server.Job{}, err
	}
	return j, nil
}

// Supersede ends an open job the server no longer assigns (a dealer job
// or a newer image took its place), with the same semantics as a cancel:
// before flashing it is canceled, while flashing it ends as the install
// does. It reports whether the job is still open afterwards.
func (s *Service) Supersede(ctx context.Context, j server.Job, why string) (bool, error) {
	if j.CancelRequested {
		return true, nil // already asked; the install decides
	}
	got, err := s.cancel(ctx, server.System, j.ID, why)
	var se *server.Error
	if errors.As(err, &se) && se.Kind == server.KindConflict {
		return false, nil // it ended meanwhile
	}
	return err == nil && !server.JobTerminal(got.State), err
}

func pickECU(v server.Vehicle, want string) (server.ECU, error) {
	if e, ok := v.ECUBySerial(want); ok {
		return e, nil
	}
	var found []server.ECU
	for _, e := range v.ECUs {
		if e.Type == want {
			found = append(found, e)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return server.ECU{}, server.Errorf(server.KindInvalid, "ecu %q: %s has no ECU of that type or serial", want, v.VIN)
	}
	return server.ECU{}, server.Errorf(server.KindInvalid, "ecu %q: %s has %d of those; name the serial", want, v.VIN, len(found))
}

func pickImage(targets map[string]*metadata.TargetFiles, e server.ECU, version string) (string, meta.Custom, error) {
	if version == "" || version == "latest" {
		p, _, c, ok := meta.Latest(targets, e.Type, e.HardwareID)
		if !ok {
			return "", c, server.Errorf(server.KindConflict, "no image is published for %s hardware %s", e.Type, e.HardwareID)
		}
		return p, c, nil
	}
	var best string
	var bc meta.Custom
	for p, tf := range targets {
		c, err := meta.TargetCustom(tf)
		if err == nil && c.Supports(e.Type, e.HardwareID) && c.Version == version && (best == "" || c.ReleaseCounter > bc.ReleaseCounter) {
			best, bc = p, c
		}
	}
	if best == "" {
		return "", bc, server.Errorf(server.KindConflict, "no image version %s is published for %s hardware %s", version, e.Type, e.HardwareID)
	}
	return best, bc, nil
}

// Get returns a job.
func (s *Service) Get(ctx context.Context, id string) (server.Job, error) {
	if err := checkID(id); err != nil {
		return server.Job{}, err
	}
	return s.store.Job(ctx, id) // "no job ID" for an unknown one
}

// checkID refuses what is not a job ID before the store is asked.
func checkID(id string) error {
	if _, err := uuid.Parse(id); err != nil {
		return server.Errorf(server.KindNotFound, "no job %q (job IDs are UUIDs)", id)
	}
	return nil
}

// ByVIN lists a vehicle's jobs, oldest first.
func (s *Service) ByVIN(ctx context.Context, vin string) ([]server.Job, error) {
	return s.store.JobsByVIN(ctx, vin)
}

// flashing reports whether the vehicle has started writing or booting.
func flashing(j server.Job) bool { return j.Phase == "installing" || j.Phase == "rebooting" }

// Cancel cancels a job that has not started flashing; once flashing has
// started it records the request and the job ends as the install does.
func (s *Service) Cancel(ctx context.Context, by server.Principal, id string) (server.Job, error) {
	j, err := s.Get(ctx, id)
	if err != nil {
		return j, err
	}
	v, err := s.store.Vehicle(ctx, j.VIN)
	if err == nil {
		err = by.Reach(v)
	}
	if err != nil {
		return server.Job{}, err
	}
	return s.cancel(ctx, by, id, "canceled by "+by.Name)
}

func (s *Service) cancel(ctx context.Context, by server.Principal, id, why string) (server.Job, error) {
	for attempt := 0; attempt < 3; attempt++ {
		j, err := s.Get(ctx, id)
		if err != nil {
			return j, err
		}
		if server.JobTerminal(j.State) {
			return j, server.Errorf(server.KindConflict, "job %s is already %s", id, j.State)
		}
		from := j.State
		now := s.now().UTC()
		ev := server.JobEvent{At: now, Kind: server.JobCanceled, Message: why}
		if flashing(j) {
			j.CancelRequested = true
			ev = server.JobEvent{At: now, Kind: "cancel_requested", Message: why + " while flashing; the install will finish or roll back"}
		} else {
			j.State = server.JobCanceled
		}
		j.UpdatedAt = now
		if err := s.store.UpdateJob(ctx, j, from, ev); errors.Is(err, server.ErrConflict) {
			continue
		} else if err != nil {
			return j, err
		}
		if err := auditlog.Record(ctx, s.store, now, by, "job.cancel", j.ID, ev.Message); err != nil {
			return j, err
		}
		if j.State != from {
			s.cfg.Notify.Emit(ctx, "job.state_changed", server.JobChanged(j, from, why))
		}
		s.wake(j.VIN) // a vehicle mid-download hears of it at once
		return s.Get(ctx, id)
	}
	return server.Job{}, server.Errorf(server.KindUnavailable, "job %s changed while canceling; retry", id)
}

// EventRequest is the body of POST /api/v1/jobs/{id}/events.
type EventRequest struct {
	Kind    string `json:"kind"`
	Percent int    `json:"percent,omitempty"`
	Message string `json:"message,omitempty"`
	// SHA256 is the installed image's, with succeeded: it must be the job's.
	SHA256 string `json:"sha256,omitempty"`
	// Installed, with succeeded for an update set, is each ECU serial's
	// installed image sha256: every part's, and each the part's image.
	Installed map[string]string `json:"installed,omitempty"`
}

// Limits on what a vehicle may report.
const (
	maxEventMessage = 1024
	maxJobEvents    = 500
)

// phases orders the progress events: a job never goes back to an earlier
// phase within one attempt.
var phases = map[string]int{"": 0, "downloading": 1, "installing": 2, "rebooting": 3}

// checkEvent holds a vehicle's report to the job state machine:
//
//	downloading ≤ installing ≤ rebooting   (progress, never backwards)
//	succeeded    from any open state, naming the job's image by sha256
//	rolled_back  only once installing (a rollback needs a switch)
//	failed       from any open state
func (s *Service) checkEvent(ctx context.Context, j server.Job, r EventRequest) error {
	switch {
	case len(r.Message) > maxEventMessage:
		return server.Errorf(server.KindInvalid, "event message is %d bytes; at most %d", len(r.Message), maxEventMessage)
	case r.Percent < 0 || r.Percent > 100:
		return server.Errorf(server.KindInvalid, "percent %d: want 0 to 100", r.Percent)
	case j.EventCount >= maxJobEvents:
		return server.CodedErrorf(server.KindConflict, errcode.TooManyEvents, "job %s has %d events, the most it keeps; report its outcome", j.ID, j.EventCount)
	}
	switch r.Kind {
	case "downloading", "installing", "rebooting":
		if phases[r.Kind] < phases[j.Phase] {
			return server.CodedErrorf(server.KindConflict, errcode.InvalidTransition, "job %s is %s; it cannot go back to %s", j.ID, j.Phase, r.Kind)
		}
	case server.JobRolledBack:
		if phases[j.Phase] < phases["installing"] {
			return server.CodedErrorf(server.KindConflict, errcode.InvalidTransition, "job %s never switched slots (phase %q); it cannot have rolled back", j.ID, j.Phase)
		}
	case server.JobSucceeded:
		targets, _, err := s.images.CurrentTargets(ctx)
		if err != nil {
			return err
		}
		if len(j.Parts) == 0 {
			tf, ok := targets[j.TargetPath]
			if !ok || r.SHA256 != hex.EncodeToString(tf.Hashes["sha256"]) {
				return server.CodedErrorf(server.KindConflict, errcode.InvalidTransition, "succeeded must name the job's image by its sha256 (got %.16q)", r.SHA256)
			}
			break
		}
		if len(r.Installed) != len(j.Parts) {
			return server.CodedErrorf(server.KindConflict, errcode.InvalidTransition, "succeeded for update set %s must name, in installed, the image of each of its %d ECUs (got %d)", j.ID, len(j.Parts), len(r.Installed))
		}
		for _, p := range j.Parts {
			tf, ok := targets[p.TargetPath]
			if got := r.Installed[p.ECUSerial]; !ok || got != hex.EncodeToString(tf.Hashes["sha256"]) {
				return server.CodedErrorf(server.KindConflict, errcode.InvalidTransition, "succeeded must name ECU %s's image %s by its sha256 (got %.16q)", p.ECUSerial, p.TargetPath, got)
			}
		}
	case server.JobFailed:
	default:
		return server.Errorf(server.KindInvalid, "event kind %q: want downloading, installing, rebooting, succeeded, failed or rolled_back", r.Kind)
	}
	return nil
}

// Event records a progress report from the job's vehicle and moves the
// job's state. It answers job_canceled (409) when the job was canceled, so
// the vehicle abandons a download.
func (s *Service) Event(ctx context.Context, vin, id string, r EventRequest) (server.Job, error) {
	if err := checkID(id); err != nil {
		return server.Job{}, err
	}
	for attempt := 0; attempt < 3; attempt++ {
		j, err := s.store.JobHead(ctx, id)
		if err != nil {
			return j, err
		}
		if j.VIN != vin {
			return j, server.Errorf(server.KindForbidden, "job %s belongs to another vehicle", id)
		}
		if j.State == server.JobCanceled {
			return j, server.CodedErrorf(server.KindConflict, errcode.JobCanceled, "job %s was canceled; abandon it", id)
		}
		if server.JobTerminal(j.State) {
			// A vehicle repeating the outcome it reported (its answer was
			// lost: a replica died, a connection dropped) is told it
			// landed, and nothing is recorded twice.
			if r.Kind == j.State {
				if r.Kind == server.JobSucceeded {
					if err := s.checkEvent(ctx, j, r); err != nil {
						return j, err
					}
				}
				return j, nil
			}
			return j, server.Errorf(server.KindConflict, "job %s is already %s", id, j.State)
		}
		if err := s.checkEvent(ctx, j, r); err != nil {
			return j, err
		}
		from, now := j.State, s.now().UTC()
		j.UpdatedAt = now
		msg := r.Message
		switch r.Kind {
		case "downloading", "installing", "rebooting":
			j.State, j.Phase = server.JobInProgress, r.Kind
		case server.JobSucceeded, server.JobRolledBack:
			j.State, j.Phase = r.Kind, r.Kind
			if j.CancelRequested {
				msg = strings.TrimSpace(msg + " (cancel was requested while flashing; the install " + map[string]string{server.JobSucceeded: "finished", server.JobRolledBack: "rolled back"}[r.Kind] + ")")
			}
		case server.JobFailed:
			j.Attempts++
			if j.Attempts < j.MaxAttempts && !j.CancelRequested {
				j.State, j.Phase = server.JobQueued, ""
				j.NextAttemptAt = now.Add(s.cfg.RetryBase << (j.Attempts - 1))
				msg = fmt.Sprintf("%s; retry %d of %d at %s", msg, j.Attempts, j.MaxAttempts-1, j.NextAttemptAt.Format(time.RFC3339))
			} else {
				j.State, j.Phase = server.JobFailed, server.JobFailed
			}
		}
		ev := server.JobEvent{At: now, Kind: r.Kind, Percent: r.Percent, Message: msg}
		// An outcome goes to the software record in the job's own
		// transaction: a replica or database lost between the two would
		// leave the job ended and the record without it, for good (the
		// vehicle's repeat is taken as already recorded).
		if rec, ok := s.recordFor(ctx, j, r.Kind, msg, now); ok {
			err = s.store.UpdateJobRecorded(ctx, j, from, rec, ev)
		} else {
			err = s.store.UpdateJob(ctx, j, from, ev)
		}
		if errors.Is(err, server.ErrConflict) {
			continue
		} else if err != nil {
			return j, err
		}
		j.Events, j.EventCount = append(j.Events, ev), j.EventCount+1
		if from != j.State {
			if err := auditlog.Record(ctx, s.store, now, server.Principal{VIN: vin}, "job.state", id, from+" -> "+j.State); err != nil {
				return j, err
			}
			s.cfg.Notify.Emit(ctx, "job.state_changed", server.JobChanged(j, from, msg))
		}
		return j, nil
	}
	return server.Job{}, server.Errorf(server.KindUnavailable, "job %s changed concurrently; retry", id)
}

// Sweep times out jobs the vehicle has not reported on within the
// timeout. Safe to run on every replica: transitions are conditional.
func (s *Service) Sweep(ctx context.Context) (int, error) {
	open, err := s.store.OpenJobs(ctx, 1000)
	if err != nil {
		return 0, err
	}
	now := s.now().UTC()
	n := 0
	for _, j := range open {
		if now.Sub(j.UpdatedAt) < s.cfg.Timeout {
			continue
		}
		from := j.State
		j.State, j.UpdatedAt = server.JobTimedOut, now
		msg := fmt.Sprintf("no report from the vehicle for %s", s.cfg.Timeout)
		if err := s.store.UpdateJob(ctx, j, from, server.JobEvent{At: now, Kind: server.JobTimedOut, Message: msg}); errors.Is(err, server.ErrConflict) {
			continue
		} else if err != nil {
			return n, err
		}
		if err := auditlog.Record(ctx, s.store, now, server.System, "job.state", j.ID, from+" -> timed_out: "+msg); err != nil {
			return n, err
		}
		s.cfg.Notify.Emit(ctx, "job.state_changed", server.JobChanged(j, from, msg))
		n++
	}
	return n, nil
}

// record adds an install attempt's outcome to the vehicle's software
// record: what the ECU ran (as last reported) and what the job installs;
// an update set is one entry with its parts.
func (s *Service) recordFor(ctx context.Context, j server.Job, kind, msg string, now time.Time) (server.SoftwareRecord, bool) {
	outcome := map[string]string{server.JobSucceeded: "installed", server.JobRolledBack: "rolled_back", server.JobFailed: "failed"}[kind]
	if outcome == "" {
		return server.SoftwareRecord{}, false
	}
	var v server.Vehicle
	if got, err := s.store.Vehicle(ctx, j.VIN); err == nil {
		v = got
	}
	targets, _, _ := s.images.CurrentTargets(ctx)
	var parts []server.RecordPart
	for _, p := range j.AllParts() {
		rp := server.RecordPart{ECUSerial: p.ECUSerial, ECUType: p.ECUType, ToVersion: p.Version}
		if e, ok := v.ECUBySerial(p.ECUSerial); ok {
			rp.FromVersion, rp.FromSHA256 = e.InstalledVersion, e.InstalledSHA256
		}
		if tf, ok := targets[p.TargetPath]; ok {
			rp.ToSHA256 = hex.EncodeToString(tf.Hashes["sha256"])
		}
		parts = append(parts, rp)
	}
	rec := server.SoftwareRecord{VIN: j.VIN, At: now, Via: j.Origin, JobID: j.ID, CampaignID: j.CampaignID, Outcome: outcome, Detail: msg}
	if len(j.Parts) == 0 {
		p := parts[0]
		rec.ECUSerial, rec.ECUType, rec.FromVersion, rec.FromSHA256, rec.ToVersion, rec.ToSHA256 = p.ECUSerial, p.ECUType, p.FromVersion, p.FromSHA256, p.ToVersion, p.ToSHA256
		if outcome == "installed" && rec.FromSHA256 != "" && rec.FromSHA256 == rec.ToSHA256 {
			return rec, false // the ECU already ran it (installed offline, recorded then)
		}
	} else {
		rec.ECUType, rec.Parts = SetECUType, parts
		var serials, from, to []string
		for _, p := range parts {
			serials = append(serials, p.ECUSerial)
			from = append(from, p.ECUType+" "+p.FromVersion)
			to = append(to, p.ECUType+" "+p.ToVersion)
		}
		rec.ECUSerial, rec.FromVersion, rec.ToVersion = strings.Join(serials, " + "), strings.Join(from, " + "), strings.Join(to, " + ")
	}
	return rec, true
}

// SetECUType is the ECU type of an update set's software record entry.
const SetECUType = "set"

func (s *Service) wake(vin string) {
	if s.cfg.Wake != nil {
		s.cfg.Wake(vin)
	}
}
