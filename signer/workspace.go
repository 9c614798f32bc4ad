// Package signer authors Roadsign's TUF repositories offline: it creates
// the root and targets keys, builds and signs root metadata for the image
// and director repositories, adds firmware targets with their ECU metadata,
// rotates keys, and publishes the result to a server.
package signer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/atomicfile"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/timeattest"
)

// Repository names.
const (
	Image    = "image"
	Director = "director"
)

// ErrUsage marks errors in what the user asked for (exit code 2).
var ErrUsage = errors.New("usage")

// ErrSecurity marks refusals for security reasons (exit code 3).
var ErrSecurity = errors.New("refused")

// Workspace is a signing workspace directory.
type Workspace struct {
	Dir   string
	State State
	now   func() time.Time
}

// State is WORKSPACE/workspace.json: which key files are active for which
// role, and where the added target files are on disk.
type State struct {
	OnlineKeys meta.OnlineKeys `json:"onlineKeys"`
	// RootKeys and RootThreshold per repository ("image", "director").
	RootKeys      map[string][]string `json:"rootKeys"`
	RootThreshold map[string]int      `json:"rootThreshold"`
	// TargetsKeys are the image repository's offline targets keys.
	TargetsKeys      []string `json:"targetsKeys"`
	TargetsThreshold int      `json:"targetsThreshold"`
	// HolderRootKeys and HolderTargetsKeys, in a multi-party workspace,
	// are the public keys of the people (or tokens) holding the root keys
	// of each repository and the image repository's targets keys; the
	// workspace then has no private offline keys (RootKeys and TargetsKeys
	// are empty) and stages every change for them to sign.
	HolderRootKeys    map[string][]*metadata.Key `json:"holderRootKeys,omitempty"`
	HolderTargetsKeys []*metadata.Key            `json:"holderTargetsKeys,omitempty"`
	// TargetFiles maps target paths to the local files they were added from.
	TargetFiles   map[string]string `json:"targetFiles"`
	RootExpiry    Duration          `json:"rootExpiry"`
	TargetsExpiry Duration          `json:"targetsExpiry"`
}

// Duration is a time.Duration that reads and writes as "8760h0m0s".
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

const stateFile = "workspace.json"

// InitOptions configure a new workspace.
type InitOptions struct {
	OnlineKeys    meta.OnlineKeys
	RootKeys      int
	RootThreshold int
	RootExpiry    time.Duration
	TargetsExpiry time.Duration
	// RootHolders and TargetsHolders, when given, make a multi-party
	// workspace: public keys of the key holders (TargetsThreshold applies
	// to TargetsHolders; RootKeys is then ignored).
	RootHolders      []*metadata.Key
	TargetsHolders   []*metadata.Key
	TargetsThreshold int
}

// Init creates a workspace: root keys (M-of-N) and a targets key for the
// image repository, root keys for the director repository, root v1 of each
// delegating snapshot/timestamp (and director targets) to the server's
// online keys, and an empty targets v1.
func Init(dir string, o InitOptions, now func() time.Time) (*Workspace, error) {
	multi := len(o.RootHolders) > 0 || len(o.TargetsHolders) > 0
	if multi {
		if len(o.RootHolders) == 0 || len(o.TargetsHolders) == 0 {
			return nil, fmt.Errorf("%w: a multi-party workspace needs both --root-key PUB (repeat per holder) and --targets-key PUB", ErrUsage)
		}
		if o.TargetsThreshold < 1 || o.TargetsThreshold > len(o.TargetsHolders) {
			return nil, fmt.Errorf("%w: --targets-threshold %d of %d --targets-key: want 1 <= threshold <= keys", ErrUsage, o.TargetsThreshold, len(o.TargetsHolders))
		}
		o.RootKeys = len(o.RootHolders)
	}
	if o.RootKeys < 1 || o.RootThreshold < 1 || o.RootThreshold > o.RootKeys {
		return nil, fmt.Errorf("%w: --root-threshold %d of --root-keys %d: want 1 <= threshold <= keys", ErrUsage, o.RootThreshold, o.RootKeys)
	}
	if err := o.OnlineKeys.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUsage, err)
	}
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return nil, fmt.Errorf("%w: workspace %s exists and is not empty; choose a new directory", ErrUsage, dir)
	}
	for _, d := range []string{"keys", Image, Director} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("create workspace: %w", err)
		}
	}
	w := &Workspace{Dir: dir, now: now, State: State{
		OnlineKeys:    o.OnlineKeys,
		RootKeys:      map[string][]string{},
		RootThreshold: map[string]int{Image: o.RootThreshold, Director: o.RootThreshold},
		TargetFiles:   map[string]string{},
		RootExpiry:    Duration(o.RootExpiry),
		TargetsExpiry: Duration(o.TargetsExpiry),
	}}
	if multi {
		w.State.HolderRootKeys = map[string][]*metadata.Key{Image: o.RootHolders, Director: o.RootHolders}
		w.State.HolderTargetsKeys, w.State.TargetsThreshold = o.TargetsHolders, o.TargetsThreshold
	} else {
		for _, repoName := range []string{Image, Director} {
			names, err := w.generateKeys(repoName+"-root", o.RootKeys)
			if err != nil {
				return nil, err
			}
			w.State.RootKeys[repoName] = names
		}
		tk, err := w.generateKeys("image-targets", 1)
		if err != nil {
			return nil, err
		}
		w.State.TargetsKeys, w.State.TargetsThreshold = tk, 1
	}

	for _, repoName := range []string{Image, Director} {
		root, err := w.newRoot(repoName)
		if err != nil {
			return nil, err
		}
		if err := w.signAndStoreRoot(repoName, root, nil); err != nil {
			return nil, err
		}
	}
	targets := metadata.Targets(meta.Expires(now(), o.TargetsExpiry))
	if err := w.signAndStoreTargets(targets); err != nil {
		return nil, err
	}
	return w, w.save()
}

// Open loads an existing workspace.
func Open(dir string, now func() time.Time) (*Workspace, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s is not a signing workspace (no %s); create one with roadsign-signer init", ErrUsage, dir, stateFile)
	}
	if err != nil {
		return nil, fmt.Errorf("open workspace: %w", err)
	}
	w := &Workspace{Dir: dir, now: now}
	if err := json.Unmarshal(b, &w.State); err != nil {
		return nil, fmt.Errorf("open workspace: %s: %w", stateFile, err)
	}
	if w.State.TargetFiles == nil {
		w.State.TargetFiles = map[string]string{}
	}
	return w, nil
}

func (w *Workspace) save() error {
	b, err := json.MarshalIndent(w.State, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(w.Dir, stateFile), append(b, '\n'), 0o600)
}

// generateKeys makes n new key files named PREFIX-K.key, K continuing after
// any existing (or retired) key of that prefix.
func (w *Workspace) generateKeys(prefix string, n int) ([]string, error) {
	next := 1
	for _, sub := range []string{"keys", "keys/retired"} {
		entries, _ := os.ReadDir(filepath.Join(w.Dir, sub))
		for _, e := range entries {
			if rest, ok := strings.CutPrefix(e.Name(), prefix+"-"); ok {
				if k, err := strconv.Atoi(strings.TrimSuffix(rest, ".key")); err == nil && k >= next {
					next = k + 1
				}
			}
		}
	}
	var names []string
	for i := range n {
		name := fmt.Sprintf("%s-%d.key", prefix, next+i)
		if _, err := keys.Generate(filepath.Join(w.Dir, "keys", name)); err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	return names, nil
}

func (w *Workspace) loadKeys(names []string) ([]*keys.Key, error) {
	var out []*keys.Key
	for _, n := range names {
		p := filepath.Join(w.Dir, "keys", n)
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			p = filepath.Join(w.Dir, "keys", "retired", n)
		}
		k, err := keys.Load(p)
		if errors.Is(err, keys.ErrInsecure) {
			return nil, fmt.Errorf("%w: %v", ErrSecurity, err)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}

// newRoot builds the next root of a repository from the workspace's
// current key assignment. Version and expiry are set by the caller.
func (w *Workspace) newRoot(repoName string) (*metadata.Metadata[metadata.RootType], error) {
	root := metadata.Root(meta.Expires(w.now(), time.Duration(w.State.RootExpiry)))
	rootKeys, err := w.publicKeys(w.State.RootKeys[repoName], w.State.HolderRootKeys[repoName])
	if err != nil {
		return nil, err
	}
	for _, k := range rootKeys {
		if err := root.Signed.AddKey(k, metadata.ROOT); err != nil {
			return nil, err
		}
	}
	root.Signed.Roles[metadata.ROOT].Threshold = w.State.RootThreshold[repoName]
	online := w.State.OnlineKeys
	roles := map[string]*metadata.Key{}
	if repoName == Image {
		tk, err := w.publicKeys(w.State.TargetsKeys, w.State.HolderTargetsKeys)
		if err != nil {
			return nil, err
		}
		for _, k := range tk {
			if err := root.Signed.AddKey(k, metadata.TARGETS); err != nil {
				return nil, err
			}
		}
		root.Signed.Roles[metadata.TARGETS].Threshold = w.State.TargetsThreshold
		roles[metadata.SNAPSHOT], roles[metadata.TIMESTAMP] = online.Image.Snapshot, online.Image.Timestamp
	} else {
		roles[metadata.TARGETS] = online.Director.Targets
		roles[metadata.SNAPSHOT], roles[metadata.TIMESTAMP] = online.Director.Snapshot, online.Director.Timestamp
		if online.Director.Time != nil {
			// The server's time key: vehicles trust its attestations of
			// the time because this root names it.
			root.Signed.Roles[timeattest.Role] = &metadata.Role{KeyIDs: []string{}, Threshold: 1}
			roles[timeattest.Role] = online.Director.Time
		}
	}
	for role, k := range roles {
		if err := root.Signed.AddKey(k, role); err != nil {
			return nil, err
		}
	}
	return root, nil
}

// publicKeys returns the holders' public keys in a multi-party workspace,
// else the public halves of the workspace's own key files.
func (w *Workspace) publicKeys(files []string, holders []*metadata.Key) ([]*metadata.Key, error) {
	if w.MultiParty() {
		return holders, nil
	}
	ks, err := w.loadKeys(files)
	if err != nil {
		return nil, err
	}
	out := make([]*metadata.Key, len(ks))
	for i, k := range ks {
		out[i] = k.Public
	}
	return out, nil
}

// RootVersions lists the versions of a repository's root history, oldest first.
func (w *Workspace) RootVersions(repoName string) ([]int64, error) {
	entries, err := os.ReadDir(filepath.Join(w.Dir, repoName))
	if err != nil {
		return nil, fmt.Errorf("read %s roots: %w", repoName, err)
	}
	var vs []int64
	for _, e := range entries {
		if v, ok := strings.CutSuffix(e.Name(), ".root.json"); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				vs = append(vs, n)
			}
		}
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i] < vs[j] })
	return vs, nil
}

// RootChain returns the raw root metadata files of a repository, oldest first.
func (w *Workspace) RootChain(repoName string) ([][]byte, error) {
	vs, err := w.RootVersions(repoName)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, v := range vs {
		b, err := os.ReadFile(filepath.Join(w.Dir, repoName, fmt.Sprintf("%d.root.json", v)))
		if err != nil {
			return nil, fmt.Errorf("read %s root v%d: %w", repoName, v, err)
		}
		out = append(out, b)
	}
	return out, nil
}

// CurrentRoot loads the newest root of a repository.
func (w *Workspace) CurrentRoot(repoName string) (*metadata.Metadata[metadata.RootType], error) {
	b, err := os.ReadFile(filepath.Join(w.Dir, repoName+".root.json"))
	if err != nil {
		return nil, fmt.Errorf("read current %s root: %w", repoName, err)
	}
	return metadata.Root().FromBytes(b)
}

// signAndStoreRoot signs root with the current root keys (and, on a
// rotation, with a threshold of the previous root's keys too), checks the
// result verifies, and writes N.root.json and REPO.root.json.
// In a multi-party workspace it stages root, unsigned, for the holders.
func (w *Workspace) signAndStoreRoot(repoName string, root *metadata.Metadata[metadata.RootType], prev *metadata.Metadata[metadata.RootType]) error {
	if w.MultiParty() {
		return w.stage(repoName+".root.json", root)
	}
	signers, err := w.loadKeys(w.State.RootKeys[repoName])
	if err != nil {
		return err
	}
	if prev != nil {
		old, err := w.loadKeys(w.prevRootKeyFiles(repoName, prev))
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, k := range signers {
			seen[k.ID] = true
		}
		for _, k := range old {
			if !seen[k.ID] {
				signers = append(signers, k)
			}
		}
	}
	if err := meta.Sign(root, signers...); err != nil {
		return err
	}
	return w.storeRoot(repoName, root, prev)
}

// storeRoot checks that a signed root verifies (as a successor of prev,
// if any) and writes N.root.json and REPO.root.json.
func (w *Workspace) storeRoot(repoName string, root, prev *metadata.Metadata[metadata.RootType]) error {
	if prev != nil {
		if err := meta.VerifyNextRoot(prev, root); err != nil {
			return fmt.Errorf("new %s root does not verify: %w", repoName, err)
		}
	} else if err := root.VerifyDelegate(metadata.ROOT, root); err != nil {
		return fmt.Errorf("new %s root does not verify: %w", repoName, err)
	}
	b, err := root.ToBytes(true)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(w.Dir, repoName, fmt.Sprintf("%d.root.json", root.Signed.Version)), b, 0o644); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(w.Dir, repoName+".root.json"), b, 0o644)
}

// prevRootKeyFiles finds the key files (active or retired) whose IDs the
// previous root lists for its root role.
func (w *Workspace) prevRootKeyFiles(repoName string, prev *metadata.Metadata[metadata.RootType]) []string {
	want := map[string]bool{}
	for _, id := range prev.Signed.Roles[metadata.ROOT].KeyIDs {
		want[id] = true
	}
	var names []string
	for _, sub := range []string{"keys", "keys/retired"} {
		entries, _ := os.ReadDir(filepath.Join(w.Dir, sub))
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), repoName+"-root-") {
				continue
			}
			if k, err := keys.Load(filepath.Join(w.Dir, sub, e.Name())); err == nil && want[k.ID] {
				names = append(names, e.Name())
			}
		}
	}
	return names
}

// Targets loads the workspace's current signed targets metadata.
func (w *Workspace) Targets() (*metadata.Metadata[metadata.TargetsType], []byte, error) {
	b, err := os.ReadFile(filepath.Join(w.Dir, Image, "targets.json"))
	if err != nil {
		return nil, nil, fmt.Errorf("read targets: %w", err)
	}
	t, err := metadata.Targets().FromBytes(b)
	if err != nil {
		return nil, nil, fmt.Errorf("parse targets: %w", err)
	}
	return t, b, nil
}

// signAndStoreTargets signs targets with the workspace's targets keys and
// stores them; a multi-party workspace stages them, unsigned, instead.
func (w *Workspace) signAndStoreTargets(t *metadata.Metadata[metadata.TargetsType]) error {
	if k := w.State.OnlineKeys.Image.Deltas; k != nil {
		// The server signs deltas online, for deltas/ paths only.
		meta.DelegateDeltas(&t.Signed, k)
	}
	if w.MultiParty() {
		return w.stage("targets.json", t)
	}
	tk, err := w.loadKeys(w.State.TargetsKeys)
	if err != nil {
		return err
	}
	if err := meta.Sign(t, tk...); err != nil {
		return err
	}
	return w.storeTargets(t)
}

// storeTargets checks signed targets against the current image root and
// writes them.
func (w *Workspace) storeTargets(t *metadata.Metadata[metadata.TargetsType]) error {
	root, err := w.CurrentRoot(Image)
	if err != nil {
		return err
	}
	if err := root.VerifyDelegate(metadata.TARGETS, t); err != nil {
		return fmt.Errorf("signed targets do not verify against root v%d: %w", root.Signed.Version, err)
	}
	b, err := t.ToBytes(true)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(w.Dir, Image, "targets.json"), b, 0o644)
}
