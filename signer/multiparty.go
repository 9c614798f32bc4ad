package signer

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/atomicfile"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/signer/hsm"
)

// Multi-party workspaces hold no private root or targets keys: only the
// holders' public keys. Every change is staged as metadata in
// WORKSPACE/staged/ (plain files holders can pass around), each holder
// adds a signature with their own key (Sign), Status says who has signed
// and who is missing, and Publish refuses until every staged file meets
// its thresholds; then the staged files become the workspace's current
// metadata and are published.

const stagedDir = "staged"

// MultiParty reports whether the workspace's offline keys are held by
// others (init with --root-key and --targets-key).
func (w *Workspace) MultiParty() bool { return len(w.State.HolderRootKeys) > 0 }

// OpenKey loads a signing key: a key file, or a PKCS#11 URI (pkcs11:...).
// Close the key when done.
func OpenKey(ref string) (*keys.Key, error) {
	if hsm.IsURI(ref) {
		k, err := hsm.Open(ref)
		if err != nil {
			return nil, fmt.Errorf("%w: --key: %v", ErrUsage, err)
		}
		return k, nil
	}
	k, err := keys.Load(ref)
	if errors.Is(err, keys.ErrInsecure) {
		return nil, fmt.Errorf("%w: %v", ErrSecurity, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: --key: %v", ErrUsage, err)
	}
	return k, nil
}

// GenerateKey creates a holder's key: an ed25519 key file (mode 0600), or
// an ECDSA P-256 key pair on a PKCS#11 token. The public key goes to pub.
func GenerateKey(ref, pub string) (*keys.Key, error) {
	var k *keys.Key
	var err error
	if hsm.IsURI(ref) {
		k, err = hsm.Generate(ref)
	} else {
		k, err = keys.Generate(ref)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: keygen: %v", ErrUsage, err)
	}
	if err := keys.WritePublic(pub, k.Public); err != nil {
		k.Close()
		return nil, err
	}
	return k, nil
}

// LoadPublicKeys reads holders' public key files.
func LoadPublicKeys(paths []string) ([]*metadata.Key, error) {
	var out []*metadata.Key
	seen := map[string]bool{}
	for _, p := range paths {
		k, err := keys.LoadPublic(p)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrUsage, err)
		}
		id, err := k.ID()
		if err != nil {
			return nil, fmt.Errorf("%w: public key %s: %v", ErrUsage, p, err)
		}
		if seen[id] {
			return nil, fmt.Errorf("%w: public key %s is given twice (key ID %s); each holder's key counts once", ErrUsage, p, id)
		}
		seen[id] = true
		out = append(out, k)
	}
	return out, nil
}

func (w *Workspace) stagedPath(name string) string { return filepath.Join(w.Dir, stagedDir, name) }

func (w *Workspace) stage(name string, m interface{ ToBytes(bool) ([]byte, error) }) error {
	if err := os.MkdirAll(filepath.Join(w.Dir, stagedDir), 0o700); err != nil {
		return fmt.Errorf("stage %s: %w", name, err)
	}
	b, err := m.ToBytes(true)
	if err != nil {
		return err
	}
	return atomicfile.Write(w.stagedPath(name), b, 0o644)
}

// stagedRoot returns a repository's staged root, or nil.
func (w *Workspace) stagedRoot(repoName string) (*metadata.Metadata[metadata.RootType], error) {
	b, err := os.ReadFile(w.stagedPath(repoName + ".root.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	r, err := metadata.Root().FromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("staged %s root: %w", repoName, err)
	}
	return r, nil
}

// stagedTargets returns the staged targets, or nil.
func (w *Workspace) stagedTargets() (*metadata.Metadata[metadata.TargetsType], error) {
	b, err := os.ReadFile(w.stagedPath("targets.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	t, err := metadata.Targets().FromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("staged targets: %w", err)
	}
	return t, nil
}

// currentRootOrNil is the committed root, or nil before the first one.
func (w *Workspace) currentRootOrNil(repoName string) (*metadata.Metadata[metadata.RootType], error) {
	if _, err := os.Stat(filepath.Join(w.Dir, repoName+".root.json")); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return w.CurrentRoot(repoName)
}

// workingTargets is what the next targets change starts from: the staged
// targets if there are any, else the committed ones.
func (w *Workspace) workingTargets() (*metadata.Metadata[metadata.TargetsType], error) {
	if w.MultiParty() {
		t, err := w.stagedTargets()
		if err != nil || t != nil {
			return t, err
		}
	}
	t, _, err := w.Targets()
	return t, err
}

// Requirement is one threshold a staged file must meet.
type Requirement struct {
	// Of names the key set: "root v1 keys", "targets keys of root v2", ...
	Of        string   `json:"of"`
	Threshold int      `json:"threshold"`
	Signed    []string `json:"signed"`
	Missing   []string `json:"missing"`
}

// Met reports whether the threshold is reached.
func (r Requirement) Met() bool { return len(r.Signed) >= r.Threshold }

// Staged is one staged metadata file awaiting signatures.
type Staged struct {
	File         string        `json:"file"`
	Repository   string        `json:"repository"`
	Role         string        `json:"role"`
	Version      int64         `json:"version"`
	Requirements []Requirement `json:"requirements"`
}

// Complete reports whether every threshold is met.
func (s Staged) Complete() bool {
	for _, r := range s.Requirements {
		if !r.Met() {
			return false
		}
	}
	return true
}

// keySet is the keys a root gives a role, with its threshold.
type keySet struct {
	of        string
	keys      []*metadata.Key
	ids       []string
	threshold int
}

func roleKeys(root *metadata.Metadata[metadata.RootType], role, of string) keySet {
	r := root.Signed.Roles[role]
	ks := keySet{of: of, threshold: r.Threshold}
	for _, id := range r.KeyIDs {
		ks.keys, ks.ids = append(ks.keys, root.Signed.Keys[id]), append(ks.ids, id)
	}
	return ks
}

// signedBy reports whether m carries a valid signature by key k, checked
// by go-tuf's own verification (a one-key, threshold-1 delegation).
func signedBy(k *metadata.Key, id, role string, m any) bool {
	probe := metadata.Root()
	probe.Signed.Keys = map[string]*metadata.Key{id: k}
	probe.Signed.Roles = map[string]*metadata.Role{role: {KeyIDs: []string{id}, Threshold: 1}}
	return probe.VerifyDelegate(role, m) == nil
}

func requirement(ks keySet, role string, m any) Requirement {
	r := Requirement{Of: ks.of, Threshold: ks.threshold, Signed: []string{}, Missing: []string{}}
	for i, k := range ks.keys {
		if k != nil && signedBy(k, ks.ids[i], role, m) {
			r.Signed = append(r.Signed, ks.ids[i])
		} else {
			r.Missing = append(r.Missing, ks.ids[i])
		}
	}
	return r
}

// stagedWork lists each staged file with the key sets that must sign it.
type stagedDoc struct {
	Staged
	sets []keySet
	root *metadata.Metadata[metadata.RootType]
	tgts *metadata.Metadata[metadata.TargetsType]
}

func (w *Workspace) stagedDocs() ([]*stagedDoc, error) {
	var docs []*stagedDoc
	for _, repoName := range []string{Image, Director} {
		r, err := w.stagedRoot(repoName)
		if err != nil {
			return nil, err
		}
		if r == nil {
			continue
		}
		d := &stagedDoc{Staged: Staged{File: filepath.Join(stagedDir, repoName+".root.json"), Repository: repoName,
			Role: metadata.ROOT, Version: r.Signed.Version}, root: r}
		d.sets = append(d.sets, roleKeys(r, metadata.ROOT, fmt.Sprintf("root v%d keys", r.Signed.Version)))
		prev, err := w.currentRootOrNil(repoName)
		if err != nil {
			return nil, err
		}
		if prev != nil {
			d.sets = append(d.sets, roleKeys(prev, metadata.ROOT, fmt.Sprintf("root v%d keys (the previous root)", prev.Signed.Version)))
		}
		docs = append(docs, d)
	}
	t, err := w.stagedTargets()
	if err != nil {
		return nil, err
	}
	if t != nil {
		root, err := w.stagedRoot(Image)
		if err != nil {
			return nil, err
		}
		if root == nil {
			if root, err = w.CurrentRoot(Image); err != nil {
				return nil, err
			}
		}
		d := &stagedDoc{Staged: Staged{File: filepath.Join(stagedDir, "targets.json"), Repository: Image,
			Role: metadata.TARGETS, Version: t.Signed.Version}, tgts: t}
		d.sets = append(d.sets, roleKeys(root, metadata.TARGETS, fmt.Sprintf("targets keys of root v%d", root.Signed.Version)))
		docs = append(docs, d)
	}
	for _, d := range docs {
		for _, ks := range d.sets {
			var m any = d.root
			if d.tgts != nil {
				m = d.tgts
			}
			d.Requirements = append(d.Requirements, requirement(ks, d.Role, m))
		}
	}
	return docs, nil
}

// StagedStatus lists the staged files and their signatures.
func (w *Workspace) StagedStatus() ([]Staged, error) {
	docs, err := w.stagedDocs()
	if err != nil {
		return nil, err
	}
	out := []Staged{}
	for _, d := range docs {
		out = append(out, d.Staged)
	}
	return out, nil
}

// Sign adds k's signature to every staged file k may sign. It returns
// what it signed; signing twice with one key replaces its signature.
func (w *Workspace) Sign(k *keys.Key) ([]string, error) {
	docs, err := w.stagedDocs()
	if err != nil {
		return nil, err
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("%w: nothing is staged in %s; a change (add, rotate) stages metadata to sign", ErrUsage, w.Dir)
	}
	var did []string
	for _, d := range docs {
		eligible := false
		for _, ks := range d.sets {
			for _, id := range ks.ids {
				eligible = eligible || id == k.ID
			}
		}
		if !eligible {
			continue
		}
		var err error
		if d.root != nil {
			err = signOnce(d.root, k)
			if err == nil {
				err = w.stage(d.Repository+".root.json", d.root)
			}
		} else {
			err = signOnce(d.tgts, k)
			if err == nil {
				err = w.stage("targets.json", d.tgts)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("sign %s: %w", d.File, err)
		}
		did = append(did, fmt.Sprintf("%s %s v%d", d.Repository, d.Role, d.Version))
	}
	if len(did) == 0 {
		var want []string
		for _, d := range docs {
			want = append(want, d.File)
		}
		return nil, fmt.Errorf("%w: key %s is not one of the keys that sign the staged %s; check --key", ErrUsage, k.ID, strings.Join(want, ", "))
	}
	return did, nil
}

// signOnce adds k's signature, replacing an earlier one by the same key.
func signOnce[T metadata.Roles](m *metadata.Metadata[T], k *keys.Key) error {
	kept := m.Signatures[:0]
	for _, s := range m.Signatures {
		if s.KeyID != k.ID {
			kept = append(kept, s)
		}
	}
	m.Signatures = kept
	_, err := m.Sign(k.Signer)
	return err
}

// promoteStaged makes fully signed staged metadata current. It refuses,
// changing nothing, when any staged file is below a threshold.
func (w *Workspace) promoteStaged() error {
	docs, err := w.stagedDocs()
	if err != nil || len(docs) == 0 {
		return err
	}
	var short []string
	for _, d := range docs {
		for _, r := range d.Requirements {
			if !r.Met() {
				short = append(short, fmt.Sprintf("%s %s v%d has %d of %d signatures from the %s (missing %s)",
					d.Repository, d.Role, d.Version, len(r.Signed), r.Threshold, r.Of, ShortIDs(r.Missing)))
			}
		}
	}
	if len(short) > 0 {
		return fmt.Errorf("%w: staged metadata is below threshold, nothing published: %s; each holder runs roadsign-signer sign %s --key THEIR-KEY",
			ErrSecurity, strings.Join(short, "; "), w.Dir)
	}
	// Roots first: the targets verify against the new image root.
	sort.SliceStable(docs, func(i, j int) bool { return docs[i].root != nil && docs[j].root == nil })
	for _, d := range docs {
		if d.root != nil {
			prev, err := w.currentRootOrNil(d.Repository)
			if err != nil {
				return err
			}
			if err := w.storeRoot(d.Repository, d.root, prev); err != nil {
				return err
			}
			continue
		}
		if err := w.storeTargets(d.tgts); err != nil {
			return err
		}
	}
	return os.RemoveAll(filepath.Join(w.Dir, stagedDir))
}

// ShortIDs abbreviates key IDs to 12 characters, as status shows them
// ("-" for none).
func ShortIDs(ids []string) string {
	if len(ids) == 0 {
		return "-"
	}
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id[:min(12, len(id))]
	}
	return strings.Join(out, " ")
}
