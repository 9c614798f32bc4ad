package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server"
)

// Announcer tells replicas that the image repository changed: a version
// row in the shared database, raised (never lowered) after every signed
// timestamp.
type Announcer interface {
	RepoVersion(ctx context.Context) (int64, error)
	SetRepoVersion(ctx context.Context, v int64) error
}

// WatchInterval is how often a replica looks at the version row; a
// replica serves a newly published version within HeadBound.
const (
	WatchInterval = 250 * time.Millisecond
	HeadBound     = time.Second
	// rereadInterval is how often a replica re-reads timestamp.json from
	// the blob store whatever the version row says (a missed announcement
	// still converges).
	rereadInterval = 30 * time.Second
)

// memFile is a metadata file served from memory, pre-encoded.
type memFile struct {
	body []byte
	etag string
	kind FileKind
}

func newMemFile(body []byte, kind FileKind) memFile {
	sum := sha256.Sum256(body)
	return memFile{body: body, etag: `"` + hex.EncodeToString(sum[:16]) + `"`, kind: kind}
}

// head is the published top-level metadata of the image repository, as
// this replica serves it: timestamp.json and root.json, and the current
// versioned root, snapshot and targets, each with its parsed form where
// the server needs it.
type head struct {
	tsVersion int64
	tsExpires time.Time
	files     map[string]memFile
	targets   *metadata.Metadata[metadata.TargetsType]
	// deltas is the delegated deltas role (nil: none yet).
	deltas *metadata.Metadata[metadata.TargetsType]
	readAt time.Time
	// rootVersion and dirRootVersion are the current roots' versions: a
	// client asking for the next root (is there a rotation?) is answered
	// 404 from memory.
	rootVersion, dirRootVersion int64
}

type headCache struct {
	mu  sync.RWMutex
	cur *head
	// dirRoots are director root files (N.root.json), immutable once
	// published and shared by every VIN.
	dirRoots map[string]memFile
}

// loadHead reads the published head from the blob store.
func (r *Repo) loadHead(ctx context.Context) (*head, error) {
	st, err := r.loadState(ctx)
	if err != nil {
		return nil, err
	}
	h := &head{files: map[string]memFile{}, readAt: time.Now()}
	if st.root != nil {
		h.rootVersion = st.root.Signed.Version
		h.files["root.json"] = newMemFile(st.rootRaw, Mutable)
		h.files[fmt.Sprintf("%d.root.json", st.root.Signed.Version)] = newMemFile(st.rootRaw, Immutable)
	}
	dirRoot, _, err := r.loadRoot(ctx, directorPrefix)
	if err != nil {
		return nil, err
	}
	if dirRoot != nil {
		h.dirRootVersion = dirRoot.Signed.Version
	}
	if st.timestamp == nil {
		return h, nil
	}
	h.tsVersion = st.timestamp.Signed.Version
	h.tsExpires = st.timestamp.Signed.Expires
	h.files["timestamp.json"] = newMemFile(st.tsRaw, Mutable)
	h.files[fmt.Sprintf("%d.snapshot.json", st.snapshot.Signed.Version)] = newMemFile(st.snapRaw, Immutable)
	if st.targetsV > 0 {
		t, raw, err := r.loadRole(ctx, metadata.TARGETS, st.targetsV)
		if err != nil {
			return nil, err
		}
		for p, tf := range t.Signed.Targets {
			tf.Path = p
		}
		h.targets = t
		h.files[fmt.Sprintf("%d.targets.json", st.targetsV)] = newMemFile(raw, Immutable)
	}
	if st.deltasV > 0 {
		d, raw, err := r.loadRole(ctx, meta.DeltaRole, st.deltasV)
		if err != nil {
			return nil, err
		}
		h.deltas = d
		h.files[fmt.Sprintf("%d.%s.json", st.deltasV, meta.DeltaRole)] = newMemFile(raw, Immutable)
	}
	return h, nil
}

// current returns the head this replica serves, loading it on first use.
func (r *Repo) current(ctx context.Context) (*head, error) {
	r.cache.mu.RLock()
	h := r.cache.cur
	r.cache.mu.RUnlock()
	if h != nil {
		return h, nil
	}
	return r.refresh(ctx)
}

// refresh reads the head from the blob store and serves it, unless it is
// older than the one served: a replica never goes back a version.
func (r *Repo) refresh(ctx context.Context) (*head, error) {
	h, err := r.loadHead(ctx)
	if err != nil {
		return nil, err
	}
	r.cache.mu.Lock()
	defer r.cache.mu.Unlock()
	if cur := r.cache.cur; cur != nil && cur.tsVersion > h.tsVersion {
		cur.readAt = h.readAt
		return cur, nil
	}
	r.cache.cur = h
	r.m.servedVersion.Set(float64(h.tsVersion))
	return h, nil
}

// announce raises the shared version row to tsV and serves the new head
// here at once; other replicas see the row within WatchInterval.
func (r *Repo) announce(ctx context.Context, tsV int64) {
	if r.announcer != nil {
		if err := r.announcer.SetRepoVersion(ctx, tsV); err != nil {
			r.log.Warn("announce the new timestamp to other replicas (they re-read it within 30 s)", "version", tsV, "err", err)
		}
	}
	if _, err := r.refresh(ctx); err != nil {
		r.log.Warn("serve the new timestamp", "version", tsV, "err", err)
	}
}

// Watch keeps this replica's head current until ctx ends: every
// WatchInterval it reads the version row and, when it is above the served
// version, the new head from the blob store; it also re-reads the head
// every 30 s whatever the row says. Vehicle polls never touch the blob
// store.
func (r *Repo) Watch(ctx context.Context) {
	t := time.NewTicker(WatchInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.cache.mu.RLock()
		cur := r.cache.cur
		r.cache.mu.RUnlock()
		stale := cur == nil || time.Since(cur.readAt) > rereadInterval
		if !stale && r.announcer != nil {
			v, err := r.announcer.RepoVersion(ctx)
			if err != nil {
				r.log.Warn("read the repository's version row", "err", err)
				continue
			}
			stale = v > cur.tsVersion
		}
		if stale {
			if _, err := r.refresh(ctx); err != nil && ctx.Err() == nil {
				r.log.Warn("re-read the image repository's head", "err", err)
			}
		}
	}
}

// openCached serves name from memory when it is part of the head; ok is
// false for any other file.
func (r *Repo) openCached(ctx context.Context, name string) (*File, bool, error) {
	f, found, err := r.cachedFile(ctx, name)
	if err != nil || !found {
		return nil, found, err
	}
	return memOpen(f), true, nil
}

// cachedFile finds name in the head served from memory. found with an
// error is a definite answer (a root that does not exist yet); not found
// sends the caller to the blob store.
func (r *Repo) cachedFile(ctx context.Context, name string) (memFile, bool, error) {
	v, role, versioned := ParseVersionedName(name)
	switch {
	case name == "timestamp.json" || name == "root.json":
	case versioned && (role == "root" || role == "snapshot" || role == "targets" || role == meta.DeltaRole):
	default:
		return memFile{}, false, nil
	}
	h, err := r.current(ctx)
	if err != nil {
		return memFile{}, false, err
	}
	if f, ok := h.files[name]; ok {
		return f, true, nil
	}
	if !versioned {
		// The head is the answer for the mutable files: a replica whose
		// head has no timestamp yet does not serve one from the blob
		// store, where its director could not yet assign what it names.
		return memFile{}, true, server.Errorf(server.KindNotFound, "no such repository file %q: nothing is published yet", name)
	}
	if role == "root" && v > h.rootVersion {
		return memFile{}, true, server.Errorf(server.KindNotFound, "no such repository file %q", name) // no rotation yet
	}
	return memFile{}, false, nil // an older version: from the blob store
}

func (r *Repo) HeadFile(ctx context.Context, name string) (body []byte, etag string, kind FileKind, ok bool) {
	f, found, err := r.cachedFile(ctx, name)
	if err != nil || !found {
		return nil, "", 0, false
	}
	return f.body, f.etag, f.kind, true
}

func memOpen(f memFile) *File {
	return &File{ReadSeekCloser: nopCloser{bytes.NewReader(f.body)}, BlobInfo: server.BlobInfo{Size: int64(len(f.body))}, Kind: f.kind, ETag: f.etag}
}

type nopCloser struct{ io.ReadSeeker }

func (nopCloser) Close() error { return nil }
