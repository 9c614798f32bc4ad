package tufclient

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/internal/atomicfile"
	"github.com/roadsign/roadsign/internal/meta"
)

// ErrMissing is what a fetch for DirectorTargets returns for a file the
// repository does not have (it ends the root walk).
var ErrMissing = errors.New("no such metadata file")

// DirectorTargets verifies a director's root and targets without its
// timestamp and snapshot: Uptane's partial verification (and directors
// that serve only root and targets). From the root cached in dir it walks
// fetch("N.root.json") for N = its version + 1, ... until one is missing,
// each signed by a threshold of the old root's and of its own root keys;
// then fetch("targets.json") must be signed by a threshold of the root's
// targets keys, unexpired at now, and not older than the targets it
// verified before. The newest root and targets are cached in dir.
// Verification failures wrap client.ErrRefused.
func DirectorTargets(dir string, fetch func(name string) ([]byte, error), now time.Time) (*metadata.Metadata[metadata.TargetsType], error) {
	refused := func(format string, args ...any) error {
		return fmt.Errorf("%w: director: "+format, append([]any{client.ErrRefused}, args...)...)
	}
	rootPath := filepath.Join(dir, "root.json")
	raw, err := os.ReadFile(rootPath)
	if err != nil {
		return nil, fmt.Errorf("director: no trusted root: %w", err)
	}
	root, err := metadata.Root().FromBytes(raw)
	if err != nil {
		return nil, fmt.Errorf("director: trusted root: %w", err)
	}
	for {
		next, err := fetch(fmt.Sprintf("%d.root.json", root.Signed.Version+1))
		if errors.Is(err, ErrMissing) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("director root v%d: %w", root.Signed.Version+1, err)
		}
		n, err := metadata.Root().FromBytes(next)
		if err != nil {
			return nil, refused("root v%d: %v", root.Signed.Version+1, err)
		}
		if n.Signed.Version != root.Signed.Version+1 {
			return nil, refused("root v%d names itself v%d", root.Signed.Version+1, n.Signed.Version)
		}
		if err := meta.VerifyNextRoot(root, n); err != nil {
			return nil, refused("root v%d: %v", n.Signed.Version, err)
		}
		if err := atomicfile.Write(rootPath, next, 0o600); err != nil {
			return nil, err
		}
		root = n
	}
	if root.Signed.IsExpired(now) {
		return nil, refused("root v%d expired at %s", root.Signed.Version, root.Signed.Expires.Format(time.RFC3339))
	}
	body, err := fetch("targets.json")
	if errors.Is(err, ErrMissing) {
		return nil, refused("no targets metadata")
	}
	if err != nil {
		return nil, fmt.Errorf("director targets: %w", err)
	}
	t, err := metadata.Targets().FromBytes(body)
	if err != nil {
		return nil, refused("targets: %v", err)
	}
	if err := root.VerifyDelegate(metadata.TARGETS, t); err != nil {
		return nil, refused("targets v%d is not signed by a threshold of the targets keys: %v", t.Signed.Version, err)
	}
	if t.Signed.IsExpired(now) {
		return nil, refused("targets v%d expired at %s (frozen metadata)", t.Signed.Version, t.Signed.Expires.Format(time.RFC3339))
	}
	targetsPath := filepath.Join(dir, "targets.json")
	if old, err := os.ReadFile(targetsPath); err == nil {
		if prev, err := metadata.Targets().FromBytes(old); err == nil && t.Signed.Version < prev.Signed.Version {
			return nil, refused("targets v%d is older than v%d, which this ECU already accepted (rollback)", t.Signed.Version, prev.Signed.Version)
		}
	}
	if err := atomicfile.Write(targetsPath, body, 0o600); err != nil {
		return nil, err
	}
	return t, nil
}
