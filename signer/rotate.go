package signer

import (
	"fmt"
	"os"
	"path/filepath"
)

// RotateRoot replaces a repository's root keys with n new keys and the
// given threshold. Root N+1 is signed by a threshold of the old keys and of
// the new ones, so vehicles that trust root N accept it; the old key files
// move to keys/retired.
func (w *Workspace) RotateRoot(repoName string, n, threshold int) (int64, error) {
	if repoName != Image && repoName != Director {
		return 0, fmt.Errorf("%w: --repository %q: want image or director", ErrUsage, repoName)
	}
	if n == 0 {
		n = len(w.State.RootKeys[repoName])
	}
	if threshold == 0 {
		threshold = min(w.State.RootThreshold[repoName], n)
	}
	if threshold < 1 || threshold > n {
		return 0, fmt.Errorf("%w: --root-threshold %d of --root-keys %d: want 1 <= threshold <= keys", ErrUsage, threshold, n)
	}
	prev, err := w.CurrentRoot(repoName)
	if err != nil {
		return 0, err
	}
	if _, err := w.loadKeys(w.prevRootKeyFiles(repoName, prev)); err != nil {
		return 0, err
	}
	old := w.State.RootKeys[repoName]
	fresh, err := w.generateKeys(repoName+"-root", n)
	if err != nil {
		return 0, err
	}
	w.State.RootKeys[repoName], w.State.RootThreshold[repoName] = fresh, threshold
	root, err := w.newRoot(repoName)
	if err != nil {
		return 0, err
	}
	root.Signed.Version = prev.Signed.Version + 1
	if err := w.signAndStoreRoot(repoName, root, prev); err != nil {
		return 0, err
	}
	if err := w.retire(old); err != nil {
		return 0, err
	}
	return root.Signed.Version, w.save()
}

// RotateTargets replaces the image repository's targets key: a new root
// (signed by the current root keys) lists the new key, and targets are
// re-signed with it at a new version.
func (w *Workspace) RotateTargets() (rootVersion, targetsVersion int64, err error) {
	prev, err := w.CurrentRoot(Image)
	if err != nil {
		return 0, 0, err
	}
	t, _, err := w.Targets()
	if err != nil {
		return 0, 0, err
	}
	old := w.State.TargetsKeys
	fresh, err := w.generateKeys("image-targets", 1)
	if err != nil {
		return 0, 0, err
	}
	w.State.TargetsKeys, w.State.TargetsThreshold = fresh, 1
	root, err := w.newRoot(Image)
	if err != nil {
		return 0, 0, err
	}
	root.Signed.Version = prev.Signed.Version + 1
	if err := w.signAndStoreRoot(Image, root, prev); err != nil {
		return 0, 0, err
	}
	w.bumpTargets(t)
	if err := w.signAndStoreTargets(t); err != nil {
		return 0, 0, err
	}
	if err := w.retire(old); err != nil {
		return 0, 0, err
	}
	return root.Signed.Version, t.Signed.Version, w.save()
}

func (w *Workspace) retire(names []string) error {
	dir := filepath.Join(w.Dir, "keys", "retired")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("retire keys: %w", err)
	}
	for _, n := range names {
		if err := os.Rename(filepath.Join(w.Dir, "keys", n), filepath.Join(dir, n)); err != nil {
			return fmt.Errorf("retire key %s: %w", n, err)
		}
	}
	return nil
}
