package signer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/atomicfile"
	"github.com/roadsign/roadsign/internal/delta"
	"github.com/roadsign/roadsign/internal/meta"
)

// DeltaOptions name the two signed images a delta goes between.
type DeltaOptions struct {
	// From and To are target paths of the workspace (as add printed them).
	From, To string
	// HardwareID is the hardware the delta is for; it may be left out
	// when the target image is for one hardware ID only.
	HardwareID string
}

// DeltaResult says what Delta made.
type DeltaResult struct {
	Path           string
	Length         int64
	Percent        float64
	TargetsVersion int64
}

// Delta makes a delta from one signed image of the workspace to another,
// keeps it in the workspace (deltas/) and signs it into the top-level
// targets with the offline targets key, like an image: publish uploads
// it. Vehicles use it exactly as the deltas the server makes online. A
// delta of half the full image or more is refused: vehicles would be
// better off with the full image.
func (w *Workspace) Delta(ctx context.Context, o DeltaOptions) (DeltaResult, error) {
	t, err := w.workingTargets()
	if err != nil {
		return DeltaResult{}, err
	}
	from, to := t.Signed.Targets[o.From], t.Signed.Targets[o.To]
	switch {
	case from == nil:
		return DeltaResult{}, fmt.Errorf("%w: --from %q is not a signed target of this workspace (see roadsign-signer status)", ErrUsage, o.From)
	case to == nil:
		return DeltaResult{}, fmt.Errorf("%w: --to %q is not a signed target of this workspace (see roadsign-signer status)", ErrUsage, o.To)
	}
	fc, err1 := meta.TargetCustom(from)
	tc, err2 := meta.TargetCustom(to)
	if err := errors.Join(err1, err2); err != nil {
		return DeltaResult{}, fmt.Errorf("%w: %v", ErrUsage, err)
	}
	hw := o.HardwareID
	if hw == "" && len(tc.HardwareIDs) == 1 {
		hw = tc.HardwareIDs[0]
	}
	switch {
	case fc.ECU != tc.ECU:
		return DeltaResult{}, fmt.Errorf("%w: --from is a %s image, --to a %s image; a delta goes between images of one ECU type", ErrUsage, fc.ECU, tc.ECU)
	case hw == "":
		return DeltaResult{}, fmt.Errorf("%w: %s is for %v; name the one the delta is for with --hardware-id", ErrUsage, o.To, tc.HardwareIDs)
	case !slices.Contains(tc.HardwareIDs, hw) || !slices.Contains(fc.HardwareIDs, hw):
		return DeltaResult{}, fmt.Errorf("%w: --hardware-id %s: both images must be built for it (--from: %v, --to: %v)", ErrUsage, hw, fc.HardwareIDs, tc.HardwareIDs)
	}
	base, err := w.openSigned(o.From, from)
	if err != nil {
		return DeltaResult{}, err
	}
	defer base.Close()
	target, err := w.openSigned(o.To, to)
	if err != nil {
		return DeltaResult{}, err
	}
	defer target.Close()

	baseSHA := hex.EncodeToString(from.Hashes["sha256"])
	path := meta.DeltaPath(hw, baseSHA, o.To)
	dir := filepath.Join(w.Dir, "deltas")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return DeltaResult{}, err
	}
	tmp, err := os.CreateTemp(dir, ".delta-*")
	if err != nil {
		return DeltaResult{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	_, err = delta.Diff(ctx, base, from.Length, target, to.Length, io.MultiWriter(tmp, h), delta.Options{MaxSize: to.Length / 2})
	if errors.Is(err, delta.ErrNotWorth) {
		return DeltaResult{}, fmt.Errorf("%w: the delta from %s to %s would be half of the full image or more; vehicles get the full image", ErrUsage, o.From, o.To)
	}
	if err != nil {
		return DeltaResult{}, fmt.Errorf("make delta: %w", err)
	}
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return DeltaResult{}, err
	}
	if err := tmp.Sync(); err != nil {
		return DeltaResult{}, err
	}
	sum := h.Sum(nil)
	file := filepath.Join(dir, filepath.Base(path))
	if err := os.Rename(tmp.Name(), file); err != nil {
		return DeltaResult{}, err
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return DeltaResult{}, err
	}
	res := DeltaResult{Path: path, Length: size, Percent: 100 * float64(size) / float64(max(to.Length, 1)), TargetsVersion: t.Signed.Version}
	if old, ok := t.Signed.Targets[path]; ok && old.Length == size && bytes.Equal(old.Hashes["sha256"], sum) {
		w.State.TargetFiles[path] = file
		return res, w.save()
	}
	tf := meta.NewDeltaTarget(delta.Format, hw, from, to, o.To, size, sum)
	tf.Path = path
	t.Signed.Targets[path] = tf
	w.bumpTargets(t)
	if err := w.signAndStoreTargets(t); err != nil {
		return DeltaResult{}, err
	}
	w.State.TargetFiles[path] = file
	if err := w.save(); err != nil {
		return DeltaResult{}, err
	}
	res.TargetsVersion = t.Signed.Version
	return res, nil
}

// openSigned opens the local file of a signed target after checking it
// still has the signed length and sha256.
func (w *Workspace) openSigned(path string, tf *metadata.TargetFiles) (*os.File, error) {
	local, ok := w.State.TargetFiles[path]
	if !ok {
		return nil, fmt.Errorf("%w: the workspace does not know the file of %s; add it again", ErrUsage, path)
	}
	n, sum, err := hashFile(local, nil)
	if err != nil {
		return nil, err
	}
	if n != tf.Length || !bytes.Equal(sum, tf.Hashes["sha256"]) {
		return nil, fmt.Errorf("%w: %s changed since it was signed (%s)", ErrSecurity, local, path)
	}
	return os.Open(local)
}
