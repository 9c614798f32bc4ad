package repo

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server"
)

// signSnapshotAndTimestamp writes snapshot v+1 naming targetsV and then
// timestamp v+1 naming that snapshot. Versions only ever increase: a client
// ignores a timestamp whose version it has seen, whatever its content.
func (r *Repo) signSnapshotAndTimestamp(ctx context.Context, st *state, targetsV int64, now time.Time) (int64, int64, error) {
	snapV := int64(1)
	if st.snapshot != nil {
		snapV = st.snapshot.Signed.Version + 1
	}
	snapV = max(snapV, r.cfg.VersionFloor)
	roles := map[string]int64{metadata.TARGETS: targetsV}
	if st.deltasV > 0 {
		roles[meta.DeltaRole] = st.deltasV
	}
	snapRaw, err := meta.SignSnapshotRoles(snapV, roles, meta.Expires(now, r.cfg.SnapshotExpiry), nil, r.keys.ImageSnapshot)
	if err != nil {
		return 0, 0, err
	}
	if err := server.PutBytes(ctx, r.blobs, fmt.Sprintf("%s%d.snapshot.json", imagePrefix, snapV), snapRaw); err != nil {
		return 0, 0, fmt.Errorf("store snapshot v%d: %w", snapV, err)
	}
	tsV, err := r.signTimestamp(ctx, st, snapV, snapRaw, now)
	if err != nil {
		return 0, 0, err
	}
	return snapV, tsV, nil
}

func (r *Repo) signTimestamp(ctx context.Context, st *state, snapV int64, snapRaw []byte, now time.Time) (int64, error) {
	tsV := int64(1)
	if st.timestamp != nil {
		tsV = st.timestamp.Signed.Version + 1
	}
	tsV = max(tsV, r.cfg.VersionFloor)
	exp := meta.Expires(now, r.cfg.TimestampExpiry)
	raw, err := meta.SignTimestamp(tsV, snapV, snapRaw, exp, nil, r.keys.ImageTimestamp)
	if err != nil {
		return 0, err
	}
	if err := server.PutBytes(ctx, r.blobs, imagePrefix+"timestamp.json", raw); err != nil {
		return 0, fmt.Errorf("store timestamp v%d: %w", tsV, err)
	}
	r.lastResign = now
	r.resignErr = nil
	r.m.lastSign.Set(float64(now.Unix()))
	r.m.timestampExpiry.Set(float64(exp.Unix()))
	r.announce(ctx, tsV)
	return tsV, nil
}

// ResignIfNeeded re-signs the snapshot and/or timestamp when less than
// half of their lifetime is left. It reports whether it signed anything.
func (r *Repo) ResignIfNeeded(ctx context.Context) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	release, ok, err := r.lease(ctx, 0)
	if err != nil || !ok {
		return false, err // another replica holds the lease and does the work
	}
	defer release()
	signed, err := r.resign(ctx)
	if err != nil {
		r.resignErr = err
		r.m.resigns.WithLabelValues("error").Inc()
	} else if signed {
		r.m.resigns.WithLabelValues("ok").Inc()
	}
	return signed, err
}

func (r *Repo) resign(ctx context.Context) (bool, error) {
	now := r.now()
	st, err := r.loadState(ctx)
	if err != nil {
		return false, err
	}
	if st.timestamp == nil {
		return false, nil // nothing published yet
	}
	if signed, err := r.resignDeltas(ctx, st, now); err != nil || signed {
		return signed, err
	}
	// A restored server signs above every version the lost one may have
	// served before vehicles see anything from it.
	if st.snapshot.Signed.Expires.Sub(now) < r.cfg.SnapshotExpiry/2 || st.timestamp.Signed.Version < r.cfg.VersionFloor {
		snapV, tsV, err := r.signSnapshotAndTimestamp(ctx, st, st.targetsV, now)
		if err != nil {
			return false, fmt.Errorf("re-sign snapshot: %w", err)
		}
		r.log.Info("re-signed snapshot and timestamp", "snapshot", snapV, "timestamp", tsV)
		return true, nil
	}
	if st.timestamp.Signed.Expires.Sub(now) < r.cfg.TimestampExpiry/2 {
		snapV := st.snapshot.Signed.Version
		snapRaw, err := server.ReadBlob(ctx, r.blobs, fmt.Sprintf("%s%d.snapshot.json", imagePrefix, snapV), maxMetadata)
		if err != nil {
			return false, fmt.Errorf("re-sign timestamp: %w", err)
		}
		tsV, err := r.signTimestamp(ctx, st, snapV, snapRaw, now)
		if err != nil {
			return false, fmt.Errorf("re-sign timestamp: %w", err)
		}
		r.log.Info("re-signed timestamp", "timestamp", tsV, "expires", meta.Expires(now, r.cfg.TimestampExpiry))
		return true, nil
	}
	r.m.timestampExpiry.Set(float64(st.timestamp.Signed.Expires.Unix()))
	return false, nil
}

// ResignInterval is how often to check whether re-signing is due: an
// eighth of the timestamp's life, between a second and a minute.
func (r *Repo) ResignInterval() time.Duration {
	return max(min(r.cfg.TimestampExpiry/8, time.Minute), time.Second)
}

// SigningHealth reports when snapshot/timestamp were last signed and the
// last re-sign error, for /status and /readyz.
func (r *Repo) SigningHealth() (time.Time, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastResign, r.resignErr
}

type metrics struct {
	publishes       *prometheus.CounterVec
	resigns         *prometheus.CounterVec
	lastSign        prometheus.Gauge
	timestampExpiry prometheus.Gauge
	uploadedBytes   prometheus.Counter
	servedVersion   prometheus.Gauge
	redirects       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "roadsign_repo_publishes_total", Help: "Publish requests by outcome (changed, unchanged, refused).",
		}, []string{"outcome"}),
		resigns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "roadsign_repo_resigns_total", Help: "Background re-signs of snapshot/timestamp by result.",
		}, []string{"result"}),
		lastSign: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "roadsign_repo_timestamp_signed_seconds", Help: "Unix time the image timestamp was last signed.",
		}),
		timestampExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "roadsign_repo_timestamp_expiry_seconds", Help: "Unix time the served image timestamp expires.",
		}),
		uploadedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roadsign_repo_uploaded_bytes_total", Help: "Bytes of target files uploaded.",
		}),
		redirects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roadsign_repo_target_redirects_total", Help: "Target downloads sent to the blob store with a presigned URL.",
		}),
		servedVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "roadsign_repo_served_timestamp_version", Help: "Version of the image timestamp this replica serves from memory.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.publishes, m.resigns, m.lastSign, m.timestampExpiry, m.uploadedBytes, m.servedVersion, m.redirects)
	}
	return m
}

// Health describes the served timestamp, for the status page.
type Health struct {
	Published        bool
	TimestampVersion int64
	TimestampExpires time.Time
	LastResign       time.Time
	ResignErr        error
}

// Health reads the timestamp this replica serves and the re-signer's last
// outcome.
func (r *Repo) Health(ctx context.Context) (Health, error) {
	last, rerr := r.SigningHealth()
	h := Health{LastResign: last, ResignErr: rerr}
	head, err := r.current(ctx)
	if err != nil {
		return h, err
	}
	f, ok := head.files["timestamp.json"]
	if !ok {
		return h, nil
	}
	ts, err := metadata.Timestamp().FromBytes(f.body)
	if err != nil {
		return h, err
	}
	h.Published, h.TimestampVersion, h.TimestampExpires = true, ts.Signed.Version, ts.Signed.Expires
	return h, nil
}

// DirectorRootVersion is the published director root's version (0: none).
func (r *Repo) DirectorRootVersion(ctx context.Context) (int64, error) {
	root, _, err := r.loadRoot(ctx, directorPrefix)
	if err != nil || root == nil {
		return 0, err
	}
	return root.Signed.Version, nil
}
