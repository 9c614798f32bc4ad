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

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/repo"
	"github.com/roadsign/roadsign/signer/meta"
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

// Service is the director.
type Service struct {
	store      server.Store
	images     Images
	keys       *repo.OnlineKeys
	autoAssign string
	expiry     time.Duration
	now        func() time.Time
	log        *slog.Logger
}

// New returns a director.
func New(store server.Store, images Images, keys *repo.OnlineKeys, autoAssign string, expiry time.Duration, now func() time.Time, log *slog.Logger) *Service {
	return &Service{store: store, images: images, keys: keys, autoAssign: autoAssign, expiry: expiry, now: now, log: log}
}

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
}

// Assignment decides what each ECU of v must run. An ECU with an open job
// runs the job's image (once its retry time has come); other ECUs follow
// the auto-assign policy.
func (d *Service) Assignment(ctx context.Context, v server.Vehicle) ([]Assigned, error) {
	targets, _, err := d.images.CurrentTargets(ctx)
	if err != nil {
		return nil, err
	}
	jobs, err := d.store.JobsByVIN(ctx, v.VIN)
	if err != nil {
		return nil, err
	}
	current := map[string]server.Job{}
	for _, j := range jobs { // oldest first: the first open job per ECU is the active one
		if _, ok := current[j.ECUSerial]; !ok && !server.JobTerminal(j.State) {
			current[j.ECUSerial] = j
		}
	}
	now := d.now()
	var out []Assigned
	for _, e := range v.ECUs {
		if j, ok := current[e.Serial]; ok {
			if j.State == server.JobQueued && j.NextAttemptAt.After(now) {
				continue // covered by a job waiting for its retry: assign nothing yet
			}
			tf, ok := targets[j.TargetPath]
			if !ok {
				d.log.Warn("job names a target the image repository no longer has", "job", j.ID, "target", j.TargetPath)
				continue
			}
			c, err := meta.TargetCustom(tf)
			if err != nil {
				continue
			}
			out = append(out, Assigned{Serial: e.Serial, HardwareID: e.HardwareID, ECUType: e.Type, Path: j.TargetPath, Target: tf, Image: c, JobID: j.ID, Downgrade: j.Forced})
			continue
		}
		if d.autoAssign != AutoLatest {
			continue
		}
		if p, tf, c, ok := Latest(targets, e.Type, e.HardwareID); ok {
			out = append(out, Assigned{Serial: e.Serial, HardwareID: e.HardwareID, ECUType: e.Type, Path: p, Target: tf, Image: c})
		}
	}
	return out, nil
}

// Latest returns the image with the highest release counter for an ECU.
func Latest(targets map[string]*metadata.TargetFiles, ecuType, hw string) (string, *metadata.TargetFiles, meta.Custom, bool) {
	var best string
	var bc meta.Custom
	for p, tf := range targets {
		c, err := meta.TargetCustom(tf)
		if err != nil || !c.Supports(ecuType, hw) {
			continue
		}
		if best == "" || c.ReleaseCounter > bc.ReleaseCounter || (c.ReleaseCounter == bc.ReleaseCounter && p > best) {
			best, bc = p, c
		}
	}
	if best == "" {
		return "", nil, bc, false
	}
	return best, targets[best], bc, true
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
}

// ECUIdentifier names the hardware an ECU serial must have.
type ECUIdentifier struct {
	HardwareID string `json:"hardwareId"`
}

// build turns an assignment into director targets (without version and
// expiry) and a hash identifying it.
func build(vin string, as []Assigned) (map[string]*metadata.TargetFiles, string, error) {
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
		if a.JobID != "" {
			c.JobID, c.Downgrade = a.JobID, a.Downgrade
		}
	}
	for p, c := range customs {
		b, err := json.Marshal(c)
		if err != nil {
			return nil, "", err
		}
		raw := json.RawMessage(b)
		files[p].Custom = &raw
	}
	h := sha256.New()
	enc, _ := json.Marshal(struct {
		VIN   string
		Files map[string]*metadata.TargetFiles
	}{vin, files})
	h.Write(enc)
	return files, hex.EncodeToString(h.Sum(nil)), nil
}

// Timestamp returns the VIN's current timestamp.json, re-signing the
// director metadata first if the assignment changed or it is half expired.
func (d *Service) Timestamp(ctx context.Context, v server.Vehicle) ([]byte, error) {
	head, metas, _, err := d.refresh(ctx, v, d.expiry, false)
	if err != nil {
		return nil, err
	}
	if metas != nil {
		return metas[2].Body, nil
	}
	f, err := d.store.DirectorFile(ctx, v.VIN, metadata.TIMESTAMP, head.TimestampVersion)
	return f.Body, err
}

// ForBundle signs director metadata for a USB bundle: the current
// assignment, from the VIN's own version counter (so the vehicle's online
// metadata continues from it), valid until at least until.
func (d *Service) ForBundle(ctx context.Context, v server.Vehicle, until time.Time) ([]server.DirectorMeta, []Assigned, error) {
	_, metas, as, err := d.refresh(ctx, v, max(d.expiry, until.Sub(d.now())+time.Hour), true)
	return metas, as, err
}

// refresh re-signs the VIN's director metadata, valid for life, when force
// is set, the assignment changed, or less than half of life is left. It
// returns the new files (nil when the current ones stand) and the head.
// Concurrent refreshes (other requests, other replicas) are resolved by
// the store: the loser reloads and uses the winner's metadata.
func (d *Service) refresh(ctx context.Context, v server.Vehicle, life time.Duration, force bool) (server.DirectorHead, []server.DirectorMeta, []Assigned, error) {
	for attempt := 0; attempt < 5; attempt++ {
		head, err := d.store.DirectorHead(ctx, v.VIN)
		if err != nil {
			return head, nil, nil, err
		}
		as, err := d.Assignment(ctx, v)
		if err != nil {
			return head, nil, nil, err
		}
		files, hash, err := build(v.VIN, as)
		if err != nil {
			return head, nil, nil, err
		}
		now := d.now()
		if !force && head.TimestampVersion > 0 && hash == head.AssignmentHash && head.TimestampExpires.Sub(now) > life/2 {
			return head, nil, as, nil
		}
		next, metas, err := d.Sign(v.VIN, head, files, hash, now, life)
		if err != nil {
			return head, nil, nil, err
		}
		err = d.store.SaveDirector(ctx, head, next, metas)
		if errors.Is(err, server.ErrConflict) {
			continue
		}
		if err != nil {
			return head, nil, nil, err
		}
		d.log.Info("signed director metadata", "vin", v.VIN, "targets", next.TargetsVersion, "timestamp", next.TimestampVersion, "ecus_assigned", len(as))
		return next, metas, as, nil
	}
	return server.DirectorHead{}, nil, nil, server.Errorf(server.KindUnavailable, "director metadata for %s is being regenerated concurrently; retry", v.VIN)
}

// Sign signs director targets (files), snapshot and timestamp for a VIN
// as the versions after head, valid for life. The caller stores them
// with SaveDirector.
func (d *Service) Sign(vin string, head server.DirectorHead, files map[string]*metadata.TargetFiles, hash string, now time.Time, life time.Duration) (server.DirectorHead, []server.DirectorMeta, error) {
	exp := meta.Expires(now, life)
	next := server.DirectorHead{VIN: vin, TargetsVersion: head.TargetsVersion + 1, SnapshotVersion: head.SnapshotVersion + 1,
		TimestampVersion: head.TimestampVersion + 1, AssignmentHash: hash, TimestampExpires: exp}

	t := metadata.Targets(exp)
	t.Signed.Version = next.TargetsVersion
	t.Signed.Targets = files
	// The VIN is signed into the metadata: a vehicle refuses another's.
	t.Signed.UnrecognizedFields = map[string]any{"custom": map[string]any{"vin": vin}}
	if err := meta.Sign(t, d.keys.DirectorTargets); err != nil {
		return next, nil, err
	}
	tRaw, err := t.ToBytes(false)
	if err != nil {
		return next, nil, fmt.Errorf("encode director targets: %w", err)
	}
	sRaw, err := meta.SignSnapshot(next.SnapshotVersion, next.TargetsVersion, exp, d.keys.DirectorSnapshot)
	if err != nil {
		return next, nil, err
	}
	tsRaw, err := meta.SignTimestamp(next.TimestampVersion, next.SnapshotVersion, sRaw, exp, d.keys.DirectorTimestamp)
	if err != nil {
		return next, nil, err
	}
	return next, []server.DirectorMeta{
		{VIN: vin, Role: metadata.TARGETS, Version: next.TargetsVersion, Body: tRaw, Expires: exp},
		{VIN: vin, Role: metadata.SNAPSHOT, Version: next.SnapshotVersion, Body: sRaw, Expires: exp},
		{VIN: vin, Role: metadata.TIMESTAMP, Version: next.TimestampVersion, Body: tsRaw, Expires: exp},
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
