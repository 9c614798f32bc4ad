package fleetsim

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	"github.com/roadsign/roadsign/client/tufclient"
	"github.com/roadsign/roadsign/internal/meta"
)

// images is the fleet's one verified view of the image repository, for
// the deltas the director offers: simulated vehicles hold no image bytes,
// so they download a delta and check it against its signed length and
// sha256 (and that it names their base and the assigned image) without
// applying it; the agent's own tests apply them.
type images struct {
	mu      sync.Mutex
	trusted *tufclient.Trusted
	dir     string
}

// deltaTarget finds a delta in the verified image repository, refreshing
// it once when the delta is not listed yet.
func (f *Fleet) deltaTarget(ctx context.Context, delta string) (meta.Delta, int64, string, error) {
	im := &f.images
	im.mu.Lock()
	defer im.mu.Unlock()
	for attempt := 0; attempt < 2; attempt++ {
		if im.trusted != nil {
			if tf, err := im.trusted.TargetInfo(delta); err == nil {
				d, err := meta.TargetDelta(tf)
				return d, tf.Length, hex.EncodeToString(tf.Hashes["sha256"]), err
			}
		}
		if err := f.refreshImages(ctx); err != nil {
			return meta.Delta{}, 0, "", err
		}
	}
	return meta.Delta{}, 0, "", fmt.Errorf("delta %s is not in the image repository", delta)
}

func (f *Fleet) refreshImages(ctx context.Context) error {
	im := &f.images
	if im.dir == "" {
		dir := filepath.Join(f.cfg.StateDir, "image-repository")
		if f.cfg.StateDir == "" {
			d, err := os.MkdirTemp("", "roadsign-fleetsim-images-*")
			if err != nil {
				return err
			}
			dir = d
		}
		root := f.cfg.ImageRoot
		if root == nil {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.cfg.Server+"/repo/1.root.json", nil)
			if err != nil {
				return err
			}
			resp, err := f.cfg.HTTP.Do(req)
			if err != nil {
				return fmt.Errorf("image root: %w", err)
			}
			root, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK {
				return fmt.Errorf("image root: %s %v", resp.Status, err)
			}
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(dir, "root.json")); err != nil {
			if err := tufclient.Pin(dir, root); err != nil {
				return err
			}
		}
		im.dir = dir
	}
	r := &tufclient.Repo{Name: "image", Dir: im.dir, MetadataURL: f.cfg.Server + "/repo", Client: f.cfg.HTTP, Log: f.cfg.Log, Now: f.cfg.Now}
	t, err := r.Refresh(ctx)
	if err != nil {
		return err
	}
	im.trusted = t
	return nil
}

// fetchDelta downloads the delta the director offers for an install of
// the image with sha256 sum, on an ECU running base, checking it names
// both and matches its signed length and sha256.
func (f *Fleet) fetchDelta(ctx context.Context, delta, path, sum, base string) error {
	d, length, dsum, err := f.deltaTarget(ctx, delta)
	if err != nil {
		return err
	}
	if d.Target != path || d.TargetSHA256 != sum || d.BaseSHA256 != base {
		return fmt.Errorf("delta %s rebuilds %s from %.12s…, not %s from %.12s…", delta, d.Target, d.BaseSHA256, path, base)
	}
	return f.fetch(ctx, delta, dsum, length)
}
