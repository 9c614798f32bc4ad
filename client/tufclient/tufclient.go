// Package tufclient refreshes one TUF repository (image or director) with
// go-tuf's updater, on top of a local metadata cache that survives power
// loss: cached non-root files that no longer parse are dropped and fetched
// again, and the cached root.json (never dropped) is what the updater
// starts from, so root rotations seen earlier are never forgotten.
package tufclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/fetcher"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/internal/atomicfile"
)

// Repo is a repository's local cache and remote location.
type Repo struct {
	// Name is used in messages ("image", "director").
	Name string
	// Dir holds root.json and the cached top-level metadata.
	Dir string
	// MetadataURL is where N.root.json, timestamp.json, ... are served.
	MetadataURL string
	Client      *http.Client
	Log         *slog.Logger
	// Sign, if set, authenticates each metadata request (the director
	// serves a VIN's metadata to that vehicle only).
	Sign func(*http.Request)
	// Fetcher, if set, replaces HTTP (a USB bundle).
	Fetcher fetcher.Fetcher
	// Now, if set, is the clock expiry is checked against.
	Now func() time.Time
}

// Trusted is a repository's verified state after a refresh.
type Trusted struct {
	up  *updater.Updater
	dir string
}

// Pin writes the provisioning root as the cache's root.json, once
// CheckRoot passed.
func Pin(dir string, root []byte) error {
	if err := CheckRoot(root); err != nil {
		return err
	}
	return PinChecked(dir, root)
}

// CheckRoot checks that root is root metadata signed by a threshold of
// its own keys.
func CheckRoot(root []byte) error {
	m, err := metadata.Root().FromBytes(root)
	if err != nil {
		return fmt.Errorf("not root metadata: %w", err)
	}
	if err := m.VerifyDelegate(metadata.ROOT, m); err != nil {
		return fmt.Errorf("root v%d is not signed by a threshold of its own keys: %w", m.Signed.Version, err)
	}
	return nil
}

// PinChecked is Pin for a root that CheckRoot already passed: a fleet
// simulator pins one root for thousands of vehicles and checks it once.
func PinChecked(dir string, root []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "root.json"), root, 0o600)
}

// SeedRoot makes the root in dir at least as new as the one in from (both
// caches verified their roots from the same pinned one): a USB cache
// starts from every rotation the vehicle has seen online.
func SeedRoot(from, dir string) error {
	src, err := os.ReadFile(filepath.Join(from, "root.json"))
	if err != nil {
		return fmt.Errorf("no trusted root in %s: %w", from, err)
	}
	srcRoot, err := metadata.Root().FromBytes(src)
	if err != nil {
		return fmt.Errorf("trusted root in %s: %w", from, err)
	}
	if cur, err := os.ReadFile(filepath.Join(dir, "root.json")); err == nil {
		if r, err := metadata.Root().FromBytes(cur); err == nil && r.Signed.Version >= srcRoot.Signed.Version {
			return nil
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, "root.json"), src, 0o600)
}

// CachedVersion returns the version of a role's metadata cached in dir
// (verified when it was written), or 0 if none is cached.
func CachedVersion(dir, role string) int64 {
	b, err := os.ReadFile(filepath.Join(dir, role+".json"))
	if err != nil {
		return 0
	}
	var m struct {
		Signed struct {
			Version int64 `json:"version"`
		} `json:"signed"`
	}
	if json.Unmarshal(b, &m) != nil {
		return 0
	}
	return m.Signed.Version
}

// Refresh runs the TUF client workflow (root, timestamp, snapshot,
// targets). Security failures wrap client.ErrRefused.
func (r *Repo) Refresh(ctx context.Context) (*Trusted, error) {
	root, err := os.ReadFile(filepath.Join(r.Dir, "root.json"))
	if err != nil {
		return nil, fmt.Errorf("%s repository: no trusted root (was the vehicle provisioned?): %w", r.Name, err)
	}
	r.dropDamaged()
	cfg, err := config.New(strings.TrimRight(r.MetadataURL, "/"), root)
	if err != nil {
		return nil, fmt.Errorf("%s repository: %w", r.Name, err)
	}
	cfg.LocalMetadataDir = r.Dir
	cfg.LocalTargetsDir = filepath.Join(r.Dir, "unused-targets")
	cfg.Fetcher = &download.MetadataFetcher{Ctx: ctx, Client: r.Client, Timeout: time.Minute, Sign: r.Sign}
	if r.Fetcher != nil {
		cfg.Fetcher = r.Fetcher
	}
	up, err := updater.New(cfg)
	if err != nil {
		return nil, r.classify(err)
	}
	if r.Now != nil {
		up.UnsafeSetRefTime(r.Now())
	}
	if err := up.Refresh(); err != nil {
		return nil, r.classify(err)
	}
	return &Trusted{up: up, dir: r.Dir}, nil
}

// dropDamaged removes cached non-root metadata that does not parse, as a
// power loss during a write may leave (go-tuf would otherwise fail every
// later refresh on it). root.json is never dropped: it anchors trust.
func (r *Repo) dropDamaged() {
	checks := map[string]func([]byte) error{
		"timestamp.json": func(b []byte) error { _, err := metadata.Timestamp().FromBytes(b); return err },
		"snapshot.json":  func(b []byte) error { _, err := metadata.Snapshot().FromBytes(b); return err },
		"targets.json":   func(b []byte) error { _, err := metadata.Targets().FromBytes(b); return err },
	}
	for name, check := range checks {
		p := filepath.Join(r.Dir, name)
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if err := check(b); err != nil {
			r.Log.Warn("dropping damaged cached metadata; it will be fetched again", "repository", r.Name, "file", name, "err", err)
			os.Remove(p)
		}
	}
}

// classify wraps security failures in client.ErrRefused.
func (r *Repo) classify(err error) error {
	switch {
	case errors.Is(err, &metadata.ErrExpiredMetadata{}):
		return fmt.Errorf("%w: %s repository: metadata has expired (%v); nothing installed; the server must re-sign it, check its /status", client.ErrRefused, r.Name, err)
	case errors.Is(err, &metadata.ErrBadVersionNumber{}):
		return fmt.Errorf("%w: %s repository: rollback attack suspected: %v; nothing installed", client.ErrRefused, r.Name, err)
	case errors.Is(err, &metadata.ErrRepository{}), errors.Is(err, &metadata.ErrDownloadLengthMismatch{}):
		return fmt.Errorf("%w: %s repository: %v; nothing installed", client.ErrRefused, r.Name, err)
	case download.IsNotFound(err):
		return fmt.Errorf("%s repository at %s has no published metadata yet (%v)", r.Name, r.MetadataURL, err)
	case download.IsUnreachable(err):
		return fmt.Errorf("%w: %s repository at %s: %v", client.ErrUnreachable, r.Name, r.MetadataURL, err)
	}
	return fmt.Errorf("%s repository at %s: %w", r.Name, r.MetadataURL, err)
}

// TargetsCustom returns the top-level targets' signed "custom" object
// (the director puts the VIN there), or nil.
func (t *Trusted) TargetsCustom() map[string]any {
	s := t.up.GetTrustedMetadataSet()
	c, _ := s.Targets[metadata.TARGETS].Signed.UnrecognizedFields["custom"].(map[string]any)
	return c
}

// Targets returns the top-level targets.
func (t *Trusted) Targets() map[string]*metadata.TargetFiles {
	return t.up.GetTopLevelTargets()
}

// TargetInfo resolves a target path through delegations.
func (t *Trusted) TargetInfo(path string) (*metadata.TargetFiles, error) {
	return t.up.GetTargetInfo(path)
}

// Expired reports which of the trusted root and top-level targets has
// expired at t ("" if neither).
func (t *Trusted) Expired(at time.Time) string {
	s := t.up.GetTrustedMetadataSet()
	switch {
	case s.Root.Signed.IsExpired(at):
		return fmt.Sprintf("root v%d expired at %s", s.Root.Signed.Version, s.Root.Signed.Expires.Format(time.RFC3339))
	case s.Targets[metadata.TARGETS].Signed.IsExpired(at):
		tg := s.Targets[metadata.TARGETS].Signed
		return fmt.Sprintf("targets v%d expired at %s", tg.Version, tg.Expires.Format(time.RFC3339))
	}
	return ""
}

// Version returns the trusted version of a top-level role.
func (t *Trusted) Version(role string) int64 {
	s := t.up.GetTrustedMetadataSet()
	switch role {
	case metadata.ROOT:
		return s.Root.Signed.Version
	case metadata.TIMESTAMP:
		return s.Timestamp.Signed.Version
	case metadata.SNAPSHOT:
		return s.Snapshot.Signed.Version
	case metadata.TARGETS:
		return s.Targets[metadata.TARGETS].Signed.Version
	}
	return 0
}

// Files are the trusted top-level metadata as the repository serves
// them, the exact bytes verified (from the cache), by served name: what a
// primary forwards to a secondary to verify for itself.
func (t *Trusted) Files() (map[string][]byte, error) {
	out := map[string][]byte{}
	for role, names := range map[string][]string{
		metadata.ROOT:      {fmt.Sprintf("%d.root.json", t.Version(metadata.ROOT))},
		metadata.TIMESTAMP: {"timestamp.json"},
		metadata.SNAPSHOT:  {"snapshot.json", fmt.Sprintf("%d.snapshot.json", t.Version(metadata.SNAPSHOT))},
		metadata.TARGETS:   {"targets.json", fmt.Sprintf("%d.targets.json", t.Version(metadata.TARGETS))},
	} {
		b, err := os.ReadFile(filepath.Join(t.dir, role+".json"))
		if err != nil {
			return nil, fmt.Errorf("trusted %s metadata: %w", role, err)
		}
		for _, n := range names {
			out[n] = b
		}
	}
	return out, nil
}

// ConsistentSnapshot reports whether the trusted root asks for
// hash-prefixed target file names.
func (t *Trusted) ConsistentSnapshot() bool {
	return t.up.GetTrustedMetadataSet().Root.Signed.ConsistentSnapshot
}
