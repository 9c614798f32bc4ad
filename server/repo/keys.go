package repo

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/roadsign/roadsign/internal/atomicfile"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/meta"
)

// OnlineKeys are the keys the server signs with while it runs: snapshot and
// timestamp of the image repository, and the director's roles.
type OnlineKeys struct {
	ImageSnapshot  *keys.Key
	ImageTimestamp *keys.Key
	// ImageDeltas signs the image repository's delegated deltas role.
	ImageDeltas       *keys.Key
	DirectorTargets   *keys.Key
	DirectorSnapshot  *keys.Key
	DirectorTimestamp *keys.Key
	// DirectorTime signs time attestations (internal/timeattest); the
	// director root lists it under the role "time".
	DirectorTime *keys.Key
}

// PublicKeysFile is where init writes the public halves for the signer.
const PublicKeysFile = "online-keys.json"

func keyFiles(k *OnlineKeys) map[string]**keys.Key {
	return map[string]**keys.Key{
		"image-snapshot.key":     &k.ImageSnapshot,
		"image-timestamp.key":    &k.ImageTimestamp,
		deltasKeyFile:            &k.ImageDeltas,
		"director-targets.key":   &k.DirectorTargets,
		"director-snapshot.key":  &k.DirectorSnapshot,
		"director-timestamp.key": &k.DirectorTimestamp,
		timeKeyFile:              &k.DirectorTime,
	}
}

// timeKeyFile came after the others too (secure time): a data directory
// from before gets it at its next start.
const timeKeyFile = "director-time.key"

// deltasKeyFile came after the others: a data directory from before
// deltas gets it at its next start.
const deltasKeyFile = "image-deltas.key"

// InitKeys creates the online keys under dataDir/keys and writes
// dataDir/online-keys.json, unless they exist already; it is safe to run
// on every start. It reports whether it created them.
func InitKeys(dataDir string) (*OnlineKeys, bool, error) {
	dir := filepath.Join(dataDir, "keys")
	k, err := LoadKeys(dataDir)
	if err == nil {
		return k, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	if entries, _ := os.ReadDir(dir); len(entries) > 0 {
		return nil, false, fmt.Errorf("online keys in %s are incomplete (%v); restore them from backup, or move the folder away to start a new repository", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("init online keys: %w", err)
	}
	k = &OnlineKeys{}
	for name, dst := range keyFiles(k) {
		if *dst, err = keys.Generate(filepath.Join(dir, name)); err != nil {
			return nil, false, fmt.Errorf("init online keys: %w", err)
		}
	}
	if err := writePublic(dataDir, k); err != nil {
		return nil, false, err
	}
	return k, true, nil
}

// LoadKeys loads the online keys written by InitKeys.
func LoadKeys(dataDir string) (*OnlineKeys, error) {
	k := &OnlineKeys{}
	added := false
	for name, dst := range keyFiles(k) {
		var err error
		p := filepath.Join(dataDir, "keys", name)
		*dst, err = keys.Load(p)
		if errors.Is(err, fs.ErrNotExist) && (name == deltasKeyFile || name == timeKeyFile) {
			if _, serr := os.Stat(filepath.Join(dataDir, "keys", "image-snapshot.key")); serr == nil {
				*dst, err = keys.Generate(p)
				added = true
			}
		}
		if err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(filepath.Join(dataDir, PublicKeysFile)); err != nil || added {
		if err := writePublic(dataDir, k); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// Public returns the online-keys.json document for k.
func (k *OnlineKeys) Public() meta.OnlineKeys {
	var p meta.OnlineKeys
	p.Image.Snapshot = k.ImageSnapshot.Public
	p.Image.Timestamp = k.ImageTimestamp.Public
	p.Image.Deltas = k.ImageDeltas.Public
	p.Director.Targets = k.DirectorTargets.Public
	p.Director.Snapshot = k.DirectorSnapshot.Public
	p.Director.Timestamp = k.DirectorTimestamp.Public
	p.Director.Time = k.DirectorTime.Public
	return p
}

func writePublic(dataDir string, k *OnlineKeys) error {
	b, err := json.MarshalIndent(k.Public(), "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dataDir, PublicKeysFile), append(b, '\n'), 0o644)
}
