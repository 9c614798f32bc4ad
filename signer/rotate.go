package signer

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/meta"
)

// RotateRoot replaces a repository's root keys with n new keys and the
// given threshold. Root N+1 is signed by a threshold of the old keys and of
// the new ones, so vehicles that trust root N accept it; the old key files
// move to keys/retired. In a multi-party workspace the new keys are the
// holders' public keys and root N+1 is staged for both sets of holders.
func (w *Workspace) RotateRoot(repoName string, n, threshold int, holders []*metadata.Key) (int64, error) {
	if repoName != Image && repoName != Director {
		return 0, fmt.Errorf("%w: --repository %q: want image or director", ErrUsage, repoName)
	}
	if w.MultiParty() {
		return w.rotateRootHolders(repoName, threshold, holders)
	}
	if len(holders) > 0 {
		return 0, fmt.Errorf("%w: --root-key applies to multi-party workspaces (init with --root-key); this workspace holds its own keys", ErrUsage)
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
func (w *Workspace) RotateTargets(threshold int, holders []*metadata.Key) (rootVersion, targetsVersion int64, err error) {
	if w.MultiParty() {
		return w.rotateTargetsHolders(threshold, holders)
	}
	if len(holders) > 0 {
		return 0, 0, fmt.Errorf("%w: --targets-key applies to multi-party workspaces (init with --targets-key); this workspace holds its own keys", ErrUsage)
	}
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

func (w *Workspace) rotateRootHolders(repoName string, threshold int, holders []*metadata.Key) (int64, error) {
	if len(holders) == 0 {
		return 0, fmt.Errorf("%w: a multi-party rotation needs the new holders' public keys: --root-key PUB (repeat)", ErrUsage)
	}
	if threshold == 0 {
		threshold = min(w.State.RootThreshold[repoName], len(holders))
	}
	if threshold < 1 || threshold > len(holders) {
		return 0, fmt.Errorf("%w: --root-threshold %d of %d --root-key: want 1 <= threshold <= keys", ErrUsage, threshold, len(holders))
	}
	prev, err := w.CurrentRoot(repoName)
	if err != nil {
		return 0, fmt.Errorf("%w: %v (publish the staged first root before rotating)", ErrUsage, err)
	}
	w.State.HolderRootKeys[repoName], w.State.RootThreshold[repoName] = holders, threshold
	root, err := w.newRoot(repoName)
	if err != nil {
		return 0, err
	}
	root.Signed.Version = prev.Signed.Version + 1
	if err := w.stage(repoName+".root.json", root); err != nil {
		return 0, err
	}
	return root.Signed.Version, w.save()
}

func (w *Workspace) rotateTargetsHolders(threshold int, holders []*metadata.Key) (int64, int64, error) {
	if len(holders) == 0 {
		return 0, 0, fmt.Errorf("%w: a multi-party rotation needs the new holders' public keys: --targets-key PUB (repeat)", ErrUsage)
	}
	if threshold == 0 {
		threshold = min(w.State.TargetsThreshold, len(holders))
	}
	if threshold < 1 || threshold > len(holders) {
		return 0, 0, fmt.Errorf("%w: --targets-threshold %d of %d --targets-key: want 1 <= threshold <= keys", ErrUsage, threshold, len(holders))
	}
	prev, err := w.CurrentRoot(Image)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %v (publish the staged first root before rotating)", ErrUsage, err)
	}
	t, err := w.workingTargets()
	if err != nil {
		return 0, 0, err
	}
	w.State.HolderTargetsKeys, w.State.TargetsThreshold = holders, threshold
	root, err := w.newRoot(Image)
	if err != nil {
		return 0, 0, err
	}
	root.Signed.Version = prev.Signed.Version + 1
	if err := w.stage(Image+".root.json", root); err != nil {
		return 0, 0, err
	}
	w.bumpTargets(t)
	if err := w.stage("targets.json", t); err != nil {
		return 0, 0, err
	}
	return root.Signed.Version, t.Signed.Version, w.save()
}

// Extend re-signs a role with a fresh expiry (root of either repository,
// or the image repository's targets) at the next version, keys unchanged.
// A multi-party workspace stages it for the holders to sign.
func (w *Workspace) Extend(role, repoName string) (int64, error) {
	switch role {
	case metadata.ROOT:
		if repoName != Image && repoName != Director {
			return 0, fmt.Errorf("%w: --repository %q: want image or director", ErrUsage, repoName)
		}
		prev, err := w.CurrentRoot(repoName)
		if err != nil {
			return 0, fmt.Errorf("%w: %v (publish the staged first root before extending it)", ErrUsage, err)
		}
		root, err := w.newRoot(repoName)
		if err != nil {
			return 0, err
		}
		root.Signed.Version = prev.Signed.Version + 1
		if err := w.signAndStoreRoot(repoName, root, prev); err != nil {
			return 0, err
		}
		return root.Signed.Version, nil
	case metadata.TARGETS:
		if repoName != Image {
			return 0, fmt.Errorf("%w: --role targets applies to the image repository; the server re-signs the director's online metadata itself", ErrUsage)
		}
		t, err := w.workingTargets()
		if err != nil {
			return 0, err
		}
		w.bumpTargets(t)
		if err := w.signAndStoreTargets(t); err != nil {
			return 0, err
		}
		return t.Signed.Version, nil
	}
	return 0, fmt.Errorf("%w: --role %q: want root or targets", ErrUsage, role)
}

// AdoptOnlineKeys takes in the server's current online-keys.json for the
// next roots this workspace makes: a server that gained a key since the
// workspace was made (the director's time key, which signs time
// attestations) is named by the next director root (RotateRoot). It
// changes nothing until then.
func (w *Workspace) AdoptOnlineKeys(ok meta.OnlineKeys) error {
	if err := ok.Validate(); err != nil {
		return fmt.Errorf("%w: --online-keys: %v", ErrUsage, err)
	}
	w.State.OnlineKeys = ok
	return nil
}
