package repo

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server"
)

// The image repository's deltas are the targets of a delegated role,
// meta.DeltaRole, which the offline top-level targets delegate to the
// server's online deltas key for deltas/ paths only. The server adds a
// delta by signing a new version of that role, then a new snapshot and
// timestamp.

// loadRole reads and parses version v of a targets role: the top-level
// targets or a delegated one (meta.DeltaRole).
func (r *Repo) loadRole(ctx context.Context, role string, v int64) (*metadata.Metadata[metadata.TargetsType], []byte, error) {
	raw, err := server.ReadBlob(ctx, r.blobs, fmt.Sprintf("%s%d.%s.json", imagePrefix, v, role), maxMetadata)
	if err != nil {
		return nil, nil, fmt.Errorf("load %s v%d: %w", role, v, err)
	}
	t, err := metadata.Targets().FromBytes(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("parse %s v%d: %w", role, v, err)
	}
	return t, raw, nil
}

// deltasExpiry is how long each version of the deltas role is valid; it
// is re-signed at half of it.
func (r *Repo) deltasExpiry() time.Duration { return r.cfg.SnapshotExpiry }

// Delta returns the delta target at path: one signed offline into the
// top-level targets (roadsign-signer delta) or one the served deltas role
// has.
func (r *Repo) Delta(ctx context.Context, path string) (*metadata.TargetFiles, bool, error) {
	h, err := r.current(ctx)
	if err != nil {
		return nil, false, err
	}
	if h.targets != nil {
		if tf, ok := h.targets.Signed.Targets[path]; ok {
			return tf, true, nil
		}
	}
	if h.deltas == nil {
		return nil, false, nil
	}
	tf, ok := h.deltas.Signed.Targets[path]
	return tf, ok, nil
}

// DeltasVersion is the served version of the deltas role (0: none).
func (r *Repo) DeltasVersion(ctx context.Context) (int64, error) {
	h, err := r.current(ctx)
	if err != nil || h.deltas == nil {
		return 0, err
	}
	return h.deltas.Signed.Version, nil
}

// DeltasDelegated says whether the published targets delegate deltas to
// this server's deltas key (else deltas cannot be signed online).
func (r *Repo) DeltasDelegated(ctx context.Context) (bool, error) {
	h, err := r.current(ctx)
	if err != nil || h.targets == nil {
		return false, err
	}
	return r.keys.ImageDeltas != nil && slices.Contains(meta.DeltaDelegation(&h.targets.Signed), r.keys.ImageDeltas.ID), nil
}

// AddDelta signs tf, a delta whose file is stored already (UploadTarget),
// into the deltas role at path. Adding one that is there changes nothing.
func (r *Repo) AddDelta(ctx context.Context, path string, tf *metadata.TargetFiles) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	release, ok, err := r.lease(ctx, 30*time.Second)
	if err != nil {
		return false, err
	}
	if !ok {
		return false, server.Errorf(server.KindUnavailable, "another replica is signing the image repository; retry")
	}
	defer release()
	now := r.now()
	st, err := r.loadState(ctx)
	if err != nil {
		return false, err
	}
	if st.targetsV == 0 {
		return false, server.Errorf(server.KindConflict, "nothing is published in the image repository yet")
	}
	targets, _, err := r.loadRole(ctx, metadata.TARGETS, st.targetsV)
	if err != nil {
		return false, err
	}
	if r.keys.ImageDeltas == nil || !slices.Contains(meta.DeltaDelegation(&targets.Signed), r.keys.ImageDeltas.ID) {
		return false, server.Errorf(server.KindConflict, "targets v%d does not delegate %s to this server's deltas key; sign a new targets version with a workspace made from this server's online-keys.json", st.targetsV, meta.DeltaRole)
	}
	role := metadata.DelegatedRole{Paths: meta.DeltaPaths}
	if ok, _ := role.IsDelegatedPath(path); !ok {
		return false, server.Errorf(server.KindInvalid, "delta path %q is outside %v", path, meta.DeltaPaths)
	}
	d := metadata.Targets(meta.Expires(now, r.deltasExpiry()))
	if st.deltasV > 0 {
		cur, _, err := r.loadRole(ctx, meta.DeltaRole, st.deltasV)
		if err != nil {
			return false, err
		}
		if _, ok := cur.Signed.Targets[path]; ok {
			return false, nil
		}
		d.Signed.Targets = cur.Signed.Targets
	}
	tf.Path = path
	d.Signed.Targets[path] = tf
	if err := r.signDeltas(ctx, st, d, now); err != nil {
		return false, err
	}
	return true, nil
}

// signDeltas signs d as the next version of the deltas role, then a new
// snapshot and timestamp naming it.
func (r *Repo) signDeltas(ctx context.Context, st *state, d *metadata.Metadata[metadata.TargetsType], now time.Time) error {
	d.Signed.Version = st.deltasV + 1
	d.Signed.Expires = meta.Expires(now, r.deltasExpiry())
	if err := meta.Sign(d, r.keys.ImageDeltas); err != nil {
		return err
	}
	raw, err := d.ToBytes(false)
	if err != nil {
		return fmt.Errorf("encode deltas: %w", err)
	}
	if err := server.PutBytes(ctx, r.blobs, fmt.Sprintf("%s%d.%s.json", imagePrefix, d.Signed.Version, meta.DeltaRole), raw); err != nil {
		return fmt.Errorf("store deltas v%d: %w", d.Signed.Version, err)
	}
	st.deltasV = d.Signed.Version
	snapV, tsV, err := r.signSnapshotAndTimestamp(ctx, st, st.targetsV, now)
	if err != nil {
		return err
	}
	r.log.Info("signed deltas", "deltas", d.Signed.Version, "count", len(d.Signed.Targets), "snapshot", snapV, "timestamp", tsV)
	return nil
}

// resignDeltas re-signs the deltas role when less than half of its life
// is left.
func (r *Repo) resignDeltas(ctx context.Context, st *state, now time.Time) (bool, error) {
	if st.deltasV == 0 || r.keys.ImageDeltas == nil {
		return false, nil
	}
	d, _, err := r.loadRole(ctx, meta.DeltaRole, st.deltasV)
	if err != nil {
		return false, err
	}
	if d.Signed.Expires.Sub(now) >= r.deltasExpiry()/2 {
		return false, nil
	}
	d.ClearSignatures()
	if err := r.signDeltas(ctx, st, d, now); err != nil {
		return false, fmt.Errorf("re-sign deltas: %w", err)
	}
	return true, nil
}
