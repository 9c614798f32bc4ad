// Package repo is the image repository: it accepts offline-signed root and
// targets metadata from the signer, stores target files, signs snapshot and
// timestamp with the server's online keys, re-signs them before they
// expire, and tells the HTTP layer what to serve.
package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server"
)

// Blob key prefixes. Everything under imagePrefix is served at /repo/.
const (
	imagePrefix    = "repo/"
	directorPrefix = "director/"
	// maxMetadata caps any metadata file we read back (go-tuf's largest
	// default cap, for snapshot/targets).
	maxMetadata = 5_000_000
)

// Config tunes a Repo.
type Config struct {
	TimestampExpiry time.Duration
	SnapshotExpiry  time.Duration
	// MaxTargetSize caps one uploaded target file.
	MaxTargetSize int64
	// VersionFloor is the least snapshot and timestamp version signed (a
	// restored server, see server/backup); 0 when never restored.
	VersionFloor int64
	// Leases, if set, makes publish and re-sign take the shared lease
	// first (as Holder), so several replicas never sign the same version
	// twice. If it is also an Announcer, replicas learn of each other's
	// publishes through it. Nil: one process.
	Leases Leaser
	Holder string
	// Redirects makes target downloads redirect to the blob store itself,
	// so their bytes never pass through a replica. The blob store must be
	// able to presign URLs (S3), and vehicles must reach it.
	Redirects bool
	// Encrypt lists the hardware IDs whose images are kept only sealed
	// (--encrypt-hardware-id); KEK is the key-encryption key (LoadKEK).
	Encrypt []string
	KEK     []byte
}

// Leaser hands out named leases shared by all replicas (the state store).
type Leaser interface {
	AcquireLeadership(ctx context.Context, name, holder string, ttl time.Duration, now time.Time) (epoch int64, ok bool, err error)
	ReleaseLease(ctx context.Context, name, holder string) error
}

// leaseName is the lease a replica holds while it writes the image
// repository's snapshot and timestamp: two replicas signing at once would
// publish different files under the same version.
const leaseName = "image-repository"

// Repo is the image repository service.
type Repo struct {
	// leases and holder make writers take turns across replicas (nil: one process).
	leases Leaser
	holder string

	blobs server.BlobStore
	keys  *OnlineKeys
	cfg   Config
	now   func() time.Time
	log   *slog.Logger
	m     *metrics

	// mu serializes writers (publish, re-sign) in this process. Several
	// replicas need the state store's lock as well (director issue).
	mu sync.Mutex
	// lastResign is when snapshot/timestamp were last signed successfully.
	lastResign time.Time
	resignErr  error

	// announcer tells other replicas of a new timestamp; cache is the
	// head this replica serves from memory.
	announcer Announcer
	cache     headCache
	// presign, when set, sends target downloads to the blob store.
	presign Presigner
	// sealer keeps the images of Config.Encrypt sealed (nil: none).
	sealer *sealer
}

// New returns a Repo, or an error for a configuration it cannot serve.
// reg may be nil.
func New(blobs server.BlobStore, k *OnlineKeys, cfg Config, now func() time.Time, log *slog.Logger, reg prometheus.Registerer) (*Repo, error) {
	if blobs == nil || now == nil || log == nil {
		return nil, errors.New("repo: blob store, clock and logger are required")
	}
	if cfg.Leases != nil && cfg.Holder == "" {
		return nil, errors.New("repo: a lease holder name is required with leases")
	}
	if cfg.TimestampExpiry <= 0 {
		cfg.TimestampExpiry = 24 * time.Hour
	}
	if cfg.SnapshotExpiry <= 0 {
		cfg.SnapshotExpiry = 7 * 24 * time.Hour
	}
	if cfg.SnapshotExpiry < cfg.TimestampExpiry {
		cfg.SnapshotExpiry = cfg.TimestampExpiry
	}
	if cfg.MaxTargetSize <= 0 {
		cfg.MaxTargetSize = 8 << 30
	}
	r := &Repo{blobs: blobs, keys: k, cfg: cfg, now: now, log: log, m: newMetrics(reg), leases: cfg.Leases, holder: cfg.Holder}
	if a, ok := cfg.Leases.(Announcer); ok {
		r.announcer = a
	}
	if cfg.Redirects {
		p, err := presigner(blobs)
		if err != nil {
			return nil, err
		}
		r.presign = p
	}
	var err error
	if r.sealer, err = newSealer(blobs, cfg.KEK, cfg.Encrypt); err != nil {
		return nil, err
	}
	if reg != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "roadsign_repo_resign_lag_seconds",
			Help: "How long the timestamp this replica serves is past its re-sign time (half its life); 0 while on schedule.",
		}, func() float64 { return r.resignLag().Seconds() }))
	}
	return r, nil
}

// resignLag is how far the served timestamp is past the point where the
// re-signer should have replaced it: growing means signing has stalled
// (or this replica does not see the new versions).
func (r *Repo) resignLag() time.Duration {
	r.cache.mu.RLock()
	h := r.cache.cur
	r.cache.mu.RUnlock()
	if h == nil || h.tsVersion == 0 {
		return 0
	}
	return max(0, r.now().Sub(h.tsExpires.Add(-r.cfg.TimestampExpiry/2)))
}

// lease takes the shared lease, waiting up to wait for it. It returns a
// release function, or ok=false if another replica kept it.
func (r *Repo) lease(ctx context.Context, wait time.Duration) (release func(), ok bool, err error) {
	if r.leases == nil {
		return func() {}, true, nil
	}
	deadline := time.Now().Add(wait)
	for {
		// Wall-clock time: the lease measures real elapsed time, whatever
		// clock signs metadata.
		_, ok, err := r.leases.AcquireLeadership(ctx, leaseName, r.holder, time.Minute, time.Now())
		if err != nil {
			return nil, false, err
		}
		if ok {
			return func() { r.leases.ReleaseLease(context.WithoutCancel(ctx), leaseName, r.holder) }, true, nil
		}
		if time.Now().After(deadline) {
			return nil, false, nil
		}
		select {
		case <-ctx.Done():
			return nil, false, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// PublishRequest is the body of POST /api/v1/repo/publish: the signer's
// root chains (any suffix that connects to what the server has) and its
// signed top-level targets.
type PublishRequest struct {
	ImageRoots    []json.RawMessage `json:"imageRoots"`
	Targets       json.RawMessage   `json:"targets"`
	DirectorRoots []json.RawMessage `json:"directorRoots"`
}

// PublishResult says what a publish changed.
type PublishResult struct {
	Changed          bool  `json:"changed"`
	RootVersion      int64 `json:"rootVersion"`
	TargetsVersion   int64 `json:"targetsVersion"`
	SnapshotVersion  int64 `json:"snapshotVersion"`
	TimestampVersion int64 `json:"timestampVersion"`
	DirectorRoot     int64 `json:"directorRootVersion"`
}

// state is the published head of the image repository.
type state struct {
	root      *metadata.Metadata[metadata.RootType]
	rootRaw   []byte
	timestamp *metadata.Metadata[metadata.TimestampType]
	snapshot  *metadata.Metadata[metadata.SnapshotType]
	targetsV  int64
	// deltasV is the version of the delegated deltas role (0: none yet).
	deltasV int64
	// tsRaw and snapRaw are the served bytes of timestamp and snapshot.
	tsRaw, snapRaw []byte
}

func (r *Repo) loadRoot(ctx context.Context, prefix string) (*metadata.Metadata[metadata.RootType], []byte, error) {
	raw, err := server.ReadBlob(ctx, r.blobs, prefix+"root.json", maxMetadata)
	if errors.Is(err, server.ErrBlobNotFound) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("load %sroot.json: %w", prefix, err)
	}
	root, err := metadata.Root().FromBytes(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("parse %sroot.json: %w", prefix, err)
	}
	return root, raw, nil
}

func (r *Repo) loadState(ctx context.Context) (*state, error) {
	s := &state{}
	var err error
	if s.root, s.rootRaw, err = r.loadRoot(ctx, imagePrefix); err != nil || s.root == nil {
		return s, err
	}
	raw, err := server.ReadBlob(ctx, r.blobs, imagePrefix+"timestamp.json", maxMetadata)
	if errors.Is(err, server.ErrBlobNotFound) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load timestamp: %w", err)
	}
	if s.timestamp, err = metadata.Timestamp().FromBytes(raw); err != nil {
		return nil, fmt.Errorf("parse timestamp: %w", err)
	}
	s.tsRaw = raw
	snapV := s.timestamp.Signed.Meta["snapshot.json"].Version
	raw, err = server.ReadBlob(ctx, r.blobs, fmt.Sprintf("%s%d.snapshot.json", imagePrefix, snapV), maxMetadata)
	if err != nil {
		return nil, fmt.Errorf("load snapshot v%d: %w", snapV, err)
	}
	if s.snapshot, err = metadata.Snapshot().FromBytes(raw); err != nil {
		return nil, fmt.Errorf("parse snapshot v%d: %w", snapV, err)
	}
	s.snapRaw = raw
	if tm, ok := s.snapshot.Signed.Meta["targets.json"]; ok {
		s.targetsV = tm.Version
	}
	if dm, ok := s.snapshot.Signed.Meta[meta.DeltaRole+".json"]; ok {
		s.deltasV = dm.Version
	}
	return s, nil
}

// Head is the published top-level metadata, as served and parsed.
type Head struct {
	TimestampRaw, SnapshotRaw, TargetsRaw []byte
	Timestamp                             *metadata.Metadata[metadata.TimestampType]
	Snapshot                              *metadata.Metadata[metadata.SnapshotType]
	Targets                               *metadata.Metadata[metadata.TargetsType]
}

// Head returns the published timestamp, snapshot and targets.
func (r *Repo) Head(ctx context.Context) (*Head, error) {
	st, err := r.loadState(ctx)
	if err != nil {
		return nil, err
	}
	if st.timestamp == nil || st.targetsV == 0 {
		return nil, server.Errorf(server.KindConflict, "nothing is published in the image repository yet")
	}
	h := &Head{TimestampRaw: st.tsRaw, SnapshotRaw: st.snapRaw, Timestamp: st.timestamp, Snapshot: st.snapshot}
	if h.Targets, h.TargetsRaw, err = r.loadRole(ctx, metadata.TARGETS, st.targetsV); err != nil {
		return nil, err
	}
	return h, nil
}

// Publish verifies and stores the signer's metadata, then signs a new
// snapshot and timestamp. Publishing the same metadata twice changes nothing.
func (r *Repo) Publish(ctx context.Context, req PublishRequest) (PublishResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	release, ok, err := r.lease(ctx, 30*time.Second)
	if err != nil {
		return PublishResult{}, err
	}
	if !ok {
		return PublishResult{}, server.Errorf(server.KindUnavailable, "another replica is publishing or re-signing the image repository; retry in a minute")
	}
	defer release()
	res, err := r.publish(ctx, req)
	outcome := "changed"
	switch {
	case err != nil:
		outcome = "refused"
	case !res.Changed:
		outcome = "unchanged"
	}
	r.m.publishes.WithLabelValues(outcome).Inc()
	return res, err
}

func (r *Repo) publish(ctx context.Context, req PublishRequest) (PublishResult, error) {
	now := r.now()
	st, err := r.loadState(ctx)
	if err != nil {
		return PublishResult{}, err
	}
	imageRoot, newImageRoots, err := r.checkRootChain(ctx, "image", imagePrefix, st.root, req.ImageRoots, now)
	if err != nil {
		return PublishResult{}, err
	}
	if err := requireOnlineKey(imageRoot, metadata.SNAPSHOT, r.keys.ImageSnapshot); err != nil {
		return PublishResult{}, err
	}
	if err := requireOnlineKey(imageRoot, metadata.TIMESTAMP, r.keys.ImageTimestamp); err != nil {
		return PublishResult{}, err
	}
	var curDirector *metadata.Metadata[metadata.RootType]
	if curDirector, _, err = r.loadRoot(ctx, directorPrefix); err != nil {
		return PublishResult{}, err
	}
	directorRoot, newDirectorRoots, err := r.checkRootChain(ctx, "director", directorPrefix, curDirector, req.DirectorRoots, now)
	if err != nil {
		return PublishResult{}, err
	}
	if directorRoot != nil {
		for role, k := range map[string]*keys.Key{metadata.TARGETS: r.keys.DirectorTargets, metadata.SNAPSHOT: r.keys.DirectorSnapshot, metadata.TIMESTAMP: r.keys.DirectorTimestamp} {
			if err := requireOnlineKey(directorRoot, role, k); err != nil {
				return PublishResult{}, fmt.Errorf("director %w", err)
			}
		}
	}

	targets, err := r.checkTargets(ctx, imageRoot, req.Targets, st.targetsV, now)
	if err != nil {
		return PublishResult{}, err
	}
	targetsChanged := targets != nil
	res := PublishResult{RootVersion: imageRoot.Signed.Version, TargetsVersion: st.targetsV}
	if directorRoot != nil {
		res.DirectorRoot = directorRoot.Signed.Version
	}
	if st.timestamp != nil {
		res.SnapshotVersion = st.snapshot.Signed.Version
		res.TimestampVersion = st.timestamp.Signed.Version
	}
	if !targetsChanged && len(newImageRoots) == 0 && len(newDirectorRoots) == 0 && st.timestamp != nil {
		return res, nil
	}

	// Write order: immutable files first, the mutable heads last, so a
	// crash midway leaves the old repository state served unchanged.
	for _, nr := range newDirectorRoots {
		if err := r.putRoot(ctx, directorPrefix, nr); err != nil {
			return PublishResult{}, err
		}
	}
	for _, nr := range newImageRoots {
		if err := r.putRoot(ctx, imagePrefix, nr); err != nil {
			return PublishResult{}, err
		}
	}
	if targetsChanged {
		key := fmt.Sprintf("%s%d.targets.json", imagePrefix, targets.Signed.Version)
		if err := server.PutBytes(ctx, r.blobs, key, req.Targets); err != nil {
			return PublishResult{}, fmt.Errorf("store targets v%d: %w", targets.Signed.Version, err)
		}
		res.TargetsVersion = targets.Signed.Version
	}
	if res.TargetsVersion == 0 {
		// Roots only, nothing to snapshot yet.
		res.Changed = true
		return res, nil
	}
	snapV, tsV, err := r.signSnapshotAndTimestamp(ctx, st, res.TargetsVersion, now)
	if err != nil {
		return PublishResult{}, err
	}
	res.SnapshotVersion, res.TimestampVersion, res.Changed = snapV, tsV, true
	r.log.Info("published image repository", "root", res.RootVersion, "targets", res.TargetsVersion,
		"snapshot", snapV, "timestamp", tsV, "director_root", res.DirectorRoot)
	return res, nil
}

type rootUpdate struct {
	version int64
	raw     []byte
}

// checkRootChain verifies the roots offered against the stored one. Roots
// the server has must be byte-identical; newer ones must each be signed by
// a threshold of the previous and of their own keys. With nothing stored,
// the chain must start at version 1 (first publish is trust on first use
// by the admin). It returns the newest root and the ones to store.
func (r *Repo) checkRootChain(ctx context.Context, name, prefix string, cur *metadata.Metadata[metadata.RootType], offered []json.RawMessage, now time.Time) (*metadata.Metadata[metadata.RootType], []rootUpdate, error) {
	var updates []rootUpdate
	trusted := cur
	for i, raw := range offered {
		root, err := metadata.Root().FromBytes(raw)
		if err != nil {
			return nil, nil, server.Errorf(server.KindInvalid, "%s root #%d: not valid root metadata: %v", name, i+1, err)
		}
		v := root.Signed.Version
		switch {
		case v < 1:
			return nil, nil, server.Errorf(server.KindInvalid, "%s root #%d has version %d; versions start at 1", name, i+1, v)
		case cur != nil && v <= cur.Signed.Version:
			stored, err := server.ReadBlob(ctx, r.blobs, fmt.Sprintf("%s%d.root.json", prefix, v), maxMetadata)
			if err != nil {
				return nil, nil, fmt.Errorf("load %s root v%d: %w", name, v, err)
			}
			if !bytes.Equal(stored, raw) {
				return nil, nil, server.Errorf(server.KindConflict, "%s root v%d differs from the one already published; roots are immutable, publish a new version with roadsign-signer rotate", name, v)
			}
			continue
		case trusted == nil && v != 1:
			return nil, nil, server.Errorf(server.KindConflict, "%s root: the server has none yet, so the chain must start at version 1, not %d", name, v)
		case trusted == nil:
			if err := root.VerifyDelegate(metadata.ROOT, root); err != nil {
				return nil, nil, server.CodedErrorf(server.KindInvalid, errcode.BadSignature, "%s root v1 is not signed by a threshold of its own keys: %v", name, err)
			}
		default:
			if err := meta.VerifyNextRoot(trusted, root); err != nil {
				return nil, nil, server.CodedErrorf(server.KindInvalid, errcode.BadSignature, "%s %v", name, err)
			}
		}
		if root.Signed.IsExpired(now) {
			return nil, nil, server.CodedErrorf(server.KindInvalid, errcode.Expired, "%s root v%d expired at %s; re-sign it with roadsign-signer rotate", name, v, root.Signed.Expires.Format(time.RFC3339))
		}
		trusted = root
		updates = append(updates, rootUpdate{version: v, raw: raw})
	}
	if trusted == nil && name == "image" {
		return nil, nil, server.Errorf(server.KindConflict, "the server has no image root yet: publish the workspace's root chain with the targets")
	}
	return trusted, updates, nil
}

func (r *Repo) putRoot(ctx context.Context, prefix string, u rootUpdate) error {
	if err := server.PutBytes(ctx, r.blobs, fmt.Sprintf("%s%d.root.json", prefix, u.version), u.raw); err != nil {
		return fmt.Errorf("store root v%d: %w", u.version, err)
	}
	if err := server.PutBytes(ctx, r.blobs, prefix+"root.json", u.raw); err != nil {
		return fmt.Errorf("store root v%d: %w", u.version, err)
	}
	return nil
}

func requireOnlineKey(root *metadata.Metadata[metadata.RootType], role string, k *keys.Key) error {
	ids, threshold := meta.RoleKeyIDs(&root.Signed, role)
	for _, id := range ids {
		if id == k.ID {
			if threshold != 1 {
				return server.Errorf(server.KindConflict, "root v%d gives role %s a threshold of %d; an online role needs 1", root.Signed.Version, role, threshold)
			}
			return nil
		}
	}
	return server.Errorf(server.KindConflict, "root v%d does not list this server's online %s key %s; build the workspace from this server's online-keys.json", root.Signed.Version, role, shortID(k.ID))
}

// checkTargets verifies offered targets metadata. It returns nil when the
// offered targets are exactly the published ones.
func (r *Repo) checkTargets(ctx context.Context, root *metadata.Metadata[metadata.RootType], raw json.RawMessage, curVersion int64, now time.Time) (*metadata.Metadata[metadata.TargetsType], error) {
	if len(raw) == 0 {
		return nil, nil
	}
	t, err := metadata.Targets().FromBytes(raw)
	if err != nil {
		return nil, server.Errorf(server.KindInvalid, "targets: not valid targets metadata: %v", err)
	}
	if err := root.VerifyDelegate(metadata.TARGETS, t); err != nil {
		return nil, server.CodedErrorf(server.KindInvalid, errcode.BadSignature, "targets v%d is not signed by a threshold of the keys root v%d lists for targets: %v", t.Signed.Version, root.Signed.Version, err)
	}
	v := t.Signed.Version
	if v < 1 {
		return nil, server.Errorf(server.KindInvalid, "targets has version %d; versions start at 1", v)
	}
	if v < curVersion {
		return nil, server.Errorf(server.KindConflict, "targets v%d is older than the published v%d; sign with a newer version", v, curVersion)
	}
	if v == curVersion {
		stored, err := server.ReadBlob(ctx, r.blobs, fmt.Sprintf("%s%d.targets.json", imagePrefix, v), maxMetadata)
		if err != nil {
			return nil, fmt.Errorf("load targets v%d: %w", v, err)
		}
		if !bytes.Equal(stored, raw) {
			return nil, server.Errorf(server.KindConflict, "targets v%d differs from the one already published; versions are immutable, sign a new version", v)
		}
		return nil, nil
	}
	if t.Signed.IsExpired(now) {
		return nil, server.CodedErrorf(server.KindInvalid, errcode.Expired, "targets v%d expired at %s; re-sign it", v, t.Signed.Expires.Format(time.RFC3339))
	}
	for p, tf := range t.Signed.Targets {
		key, err := TargetKey(p, tf)
		if err != nil {
			return nil, server.Errorf(server.KindInvalid, "target %s: %v", p, err)
		}
		if c, err := meta.TargetCustom(tf); err == nil && r.Encrypts(c.HardwareIDs) {
			if err := r.checkSealed(ctx, p, key, tf); err != nil {
				return nil, err
			}
			continue
		}
		info, err := r.blobs.Stat(ctx, key)
		if errors.Is(err, server.ErrBlobNotFound) {
			return nil, server.Errorf(server.KindConflict, "target %s has not been uploaded; upload it before publishing metadata that lists it", p)
		}
		if err != nil {
			return nil, fmt.Errorf("stat target %s: %w", p, err)
		}
		if info.Size != tf.Length {
			return nil, server.Errorf(server.KindConflict, "target %s is stored with %d bytes, metadata says %d", p, info.Size, tf.Length)
		}
	}
	return t, nil
}

// TargetKey is the blob key of a target under consistent snapshots:
// repo/targets/DIR/SHA256.NAME.
func TargetKey(targetPath string, tf *metadata.TargetFiles) (string, error) {
	h, ok := tf.Hashes["sha256"]
	if !ok || len(h) != sha256.Size {
		return "", errors.New("target has no sha256 hash")
	}
	key := imagePrefix + "targets/" + meta.ConsistentPath(targetPath, hex.EncodeToString(h), false)
	if err := server.CheckBlobKey(key); err != nil {
		return "", fmt.Errorf("unsafe target path: %w", err)
	}
	return key, nil
}

var targetFileRE = regexp.MustCompile(`^([0-9a-f]{64})\.[^/]+$`)

// UploadTarget stores a target file at its consistent-snapshot path
// (DIR/SHA256.NAME), verifying while it streams that the content has that
// sha256 and size bytes; a mismatch stores nothing. An image for hardware
// whose images are kept sealed (hardwareIDs, as the uploader says; publish
// checks again from the signed metadata) is sealed as it streams and never
// stored in clear.
func (r *Repo) UploadTarget(ctx context.Context, filePath string, hardwareIDs []string, body io.Reader, size int64) (created bool, err error) {
	key := imagePrefix + "targets/" + filePath
	if err := server.CheckBlobKey(key); err != nil {
		return false, server.Errorf(server.KindInvalid, "target path %q is not a clean relative path", filePath)
	}
	m := targetFileRE.FindStringSubmatch(path.Base(filePath))
	if m == nil {
		return false, server.Errorf(server.KindInvalid, "target file %q must be named SHA256.NAME (hex sha256 of its content)", filePath)
	}
	if size < 0 {
		return false, server.Errorf(server.KindLengthRequired, "upload of %s needs a Content-Length", filePath)
	}
	if size > r.cfg.MaxTargetSize {
		return false, server.Errorf(server.KindTooLarge, "target %s is %d bytes, over the server's limit of %d", filePath, size, r.cfg.MaxTargetSize)
	}
	if r.Encrypts(hardwareIDs) {
		if img, ok, err := r.sealer.lookup(ctx, m[1]); err != nil || (ok && img.PlainLength == size) {
			return false, err
		}
		if _, err := r.sealer.seal(ctx, m[1], body, size); err != nil {
			if errors.Is(err, errHashMismatch) {
				return false, server.CodedErrorf(server.KindInvalid, errcode.HashMismatch, "target %s: %v", filePath, err)
			}
			return false, err
		}
		r.m.uploadedBytes.Add(float64(size))
		return true, nil
	}
	if info, err := r.blobs.Stat(ctx, key); err == nil && info.Size == size {
		return false, nil // content-addressed: same name and size is the same file
	}
	want, _ := hex.DecodeString(m[1])
	vr := &verifyingReader{r: body, h: sha256.New(), want: want, size: size}
	if err := r.blobs.Put(ctx, key, vr, size); err != nil {
		if vr.mismatch {
			return false, server.CodedErrorf(server.KindInvalid, errcode.HashMismatch, "target %s: content sha256 is %s, not the one in its name; nothing stored", filePath, hex.EncodeToString(vr.h.Sum(nil)))
		}
		return false, fmt.Errorf("store target %s: %w", filePath, err)
	}
	r.m.uploadedBytes.Add(float64(size))
	return true, nil
}

// verifyingReader passes through exactly size bytes and withholds the last
// chunk unless the whole content hashes to want, so a blob store never
// completes an upload whose content is wrong.
type verifyingReader struct {
	r        io.Reader
	h        hash.Hash
	want     []byte
	size, n  int64
	mismatch bool
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if v.n >= v.size {
		return 0, io.EOF
	}
	if rem := v.size - v.n; int64(len(p)) > rem {
		p = p[:rem]
	}
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.n == v.size {
		if !bytes.Equal(v.h.Sum(nil), v.want) {
			v.mismatch = true
			return 0, errors.New("content does not match its sha256")
		}
		return n, nil
	}
	if errors.Is(err, io.EOF) {
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12] + "…"
	}
	return id
}

// ParseVersionedName splits "N.role.json" into N and role.
func ParseVersionedName(name string) (int64, string, bool) {
	dot := strings.IndexByte(name, '.')
	if dot <= 0 || !strings.HasSuffix(name, ".json") {
		return 0, "", false
	}
	v, err := strconv.ParseInt(name[:dot], 10, 64)
	if err != nil || v < 1 {
		return 0, "", false
	}
	return v, strings.TrimSuffix(name[dot+1:], ".json"), true
}

// CurrentTargets returns the published top-level targets of the image
// repository and their version (0 and nil before the first publish), from
// the head this replica serves (see Watch).
func (r *Repo) CurrentTargets(ctx context.Context) (map[string]*metadata.TargetFiles, int64, error) {
	h, err := r.current(ctx)
	if err != nil || h.targets == nil {
		return nil, 0, err
	}
	return h.targets.Signed.Targets, h.targets.Signed.Version, nil
}

// OpenDirectorRoot opens a director root file (N.root.json) as published
// by the signer; every VIN's director shares the root.
// They are immutable once published, so each is read once and then served
// from memory.
func (r *Repo) OpenDirectorRoot(ctx context.Context, name string) (*File, error) {
	if _, role, ok := ParseVersionedName(name); !ok || role != "root" {
		return nil, server.Errorf(server.KindNotFound, "no such director file %q", name)
	}
	r.cache.mu.RLock()
	f, ok := r.cache.dirRoots[name]
	r.cache.mu.RUnlock()
	if ok {
		return memOpen(f), nil
	}
	if v, _, _ := ParseVersionedName(name); v > 0 {
		if h, err := r.current(ctx); err == nil && v > h.dirRootVersion {
			return nil, server.Errorf(server.KindNotFound, "no such director file %q", name) // no rotation yet
		}
	}
	raw, err := server.ReadBlob(ctx, r.blobs, directorPrefix+name, maxMetadata)
	if errors.Is(err, server.ErrBlobNotFound) {
		return nil, server.Errorf(server.KindNotFound, "no such director file %q", name)
	}
	if err != nil {
		return nil, err
	}
	f = newMemFile(raw, Immutable)
	r.cache.mu.Lock()
	if r.cache.dirRoots == nil {
		r.cache.dirRoots = map[string]memFile{}
	}
	if len(r.cache.dirRoots) < 64 {
		r.cache.dirRoots[name] = f
	}
	r.cache.mu.Unlock()
	return memOpen(f), nil
}
