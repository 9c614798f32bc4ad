package signer

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/fwimage"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/progress"
)

var versionRE = regexp.MustCompile(`^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?$`)

// AddOptions describe a firmware image to add to the image repository.
type AddOptions struct {
	File        string
	ECU         string
	HardwareIDs []string
	Version     string
	// ReleaseCounter orders releases for anti-rollback; 0 picks one above
	// the highest for the ECU type.
	ReleaseCounter int64
	ReleaseNotes   string
	// AllowDowngrade lets a forced dealer job install this image over a newer one.
	AllowDowngrade bool
	// Requires are TYPE>=VERSION compatibilities (custom.requires): the
	// versions other ECUs of the vehicle must run with this image.
	Requires []string
	// Progress receives a progress bar while the file is hashed (if a terminal).
	Progress io.Writer
}

// AddResult says what Add did.
type AddResult struct {
	Path           string
	Length         int64
	SHA256         string
	ReleaseCounter int64
	TargetsVersion int64
	Changed        bool
}

// Add hashes the file (streaming, so any size works), checks its header
// against the options, and signs a new targets version listing it.
func (w *Workspace) Add(o AddOptions) (AddResult, error) {
	if !fwimage.ValidECU(o.ECU) {
		return AddResult{}, fmt.Errorf("%w: --ecu %q: want head-unit or dcm", ErrUsage, o.ECU)
	}
	if len(o.HardwareIDs) == 0 {
		return AddResult{}, fmt.Errorf("%w: give at least one --hardware-id", ErrUsage)
	}
	if !versionRE.MatchString(o.Version) {
		return AddResult{}, fmt.Errorf("%w: --version %q is not a semantic version like 1.2.0", ErrUsage, o.Version)
	}
	requires, err := parseRequires(o.ECU, o.Requires)
	if err != nil {
		return AddResult{}, err
	}
	if o.ReleaseCounter < 0 {
		return AddResult{}, fmt.Errorf("%w: --release-counter %d: want a positive number", ErrUsage, o.ReleaseCounter)
	}
	abs, err := filepath.Abs(o.File)
	if err != nil {
		return AddResult{}, fmt.Errorf("%w: %v", ErrUsage, err)
	}
	length, sum, err := hashFile(abs, o.Progress)
	if err != nil {
		return AddResult{}, err
	}
	if err := checkHeader(abs, o); err != nil {
		return AddResult{}, err
	}

	t, err := w.workingTargets()
	if err != nil {
		return AddResult{}, err
	}
	path := o.ECU + "/" + filepath.Base(abs)
	res := AddResult{Path: path, Length: length, SHA256: fmt.Sprintf("%x", sum), TargetsVersion: t.Signed.Version}
	if old, ok := t.Signed.Targets[path]; ok {
		oc, _ := meta.TargetCustom(old)
		if old.Length == length && slices.Equal(old.Hashes["sha256"], sum) &&
			oc.Version == o.Version && slices.Equal(oc.HardwareIDs, o.HardwareIDs) &&
			(o.ReleaseCounter == 0 || o.ReleaseCounter == oc.ReleaseCounter) && o.ReleaseNotes == oc.ReleaseNotes &&
			o.AllowDowngrade == oc.AllowDowngrade && slices.Equal(requires, oc.Requires) {
			res.ReleaseCounter = oc.ReleaseCounter
			w.State.TargetFiles[path] = abs
			return res, w.save()
		}
		return AddResult{}, fmt.Errorf("%w: target %s is already signed with other content or metadata; give the new image a new file name", ErrUsage, path)
	}

	counter := o.ReleaseCounter
	if counter == 0 {
		for _, tf := range t.Signed.Targets {
			if c, err := meta.TargetCustom(tf); err == nil && c.ECU == o.ECU && c.ReleaseCounter >= counter {
				counter = c.ReleaseCounter + 1
			}
		}
		counter = max(counter, 1)
	}
	for p, tf := range t.Signed.Targets {
		c, err := meta.TargetCustom(tf)
		if err != nil || c.ECU != o.ECU || c.ReleaseCounter != counter {
			continue
		}
		for _, hw := range o.HardwareIDs {
			if slices.Contains(c.HardwareIDs, hw) {
				return AddResult{}, fmt.Errorf("%w: release counter %d is already used by %s for hardware %s; pick another --release-counter", ErrUsage, counter, p, hw)
			}
		}
	}
	custom, err := json.Marshal(meta.Custom{
		ECU: o.ECU, HardwareIDs: o.HardwareIDs, Version: o.Version,
		ReleaseCounter: counter, ReleaseNotes: o.ReleaseNotes, AllowDowngrade: o.AllowDowngrade, Requires: requires,
	})
	if err != nil {
		return AddResult{}, err
	}
	raw := json.RawMessage(custom)
	t.Signed.Targets[path] = &metadata.TargetFiles{
		Length: length,
		Hashes: metadata.Hashes{"sha256": sum},
		Custom: &raw,
		Path:   path,
	}
	w.bumpTargets(t)
	if err := w.signAndStoreTargets(t); err != nil {
		return AddResult{}, err
	}
	w.State.TargetFiles[path] = abs
	if err := w.save(); err != nil {
		return AddResult{}, err
	}
	res.ReleaseCounter, res.TargetsVersion, res.Changed = counter, t.Signed.Version, true
	return res, nil
}

// parseRequires reads --requires flags: each TYPE>=VERSION names another
// ECU type, at most once.
func parseRequires(ecu string, flags []string) ([]meta.Requirement, error) {
	var out []meta.Requirement
	for _, f := range flags {
		r, err := meta.ParseRequirement(f)
		if err != nil {
			return nil, fmt.Errorf("%w: --requires: %v", ErrUsage, err)
		}
		if r.ECU == ecu {
			return nil, fmt.Errorf("%w: --requires %s: an image cannot require its own ECU type %s; name another ECU", ErrUsage, f, ecu)
		}
		for _, o := range out {
			if o.ECU == r.ECU {
				return nil, fmt.Errorf("%w: --requires names %s twice; give one minimum version per ECU type", ErrUsage, r.ECU)
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// bumpTargets gives a changed targets its next version: one above the
// committed version (staged changes before a publish share one version).
func (w *Workspace) bumpTargets(t *metadata.Metadata[metadata.TargetsType]) {
	t.Signed.Version++
	if w.MultiParty() {
		t.Signed.Version = 1
		if cur, _, err := w.Targets(); err == nil {
			t.Signed.Version = cur.Signed.Version + 1
		}
	}
	t.Signed.Expires = meta.Expires(w.now(), time.Duration(w.State.TargetsExpiry))
}

// hashFile streams a file through sha256, drawing progress on a terminal.
func hashFile(path string, out io.Writer) (int64, []byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %v", ErrUsage, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, nil, err
	}
	if !st.Mode().IsRegular() {
		return 0, nil, fmt.Errorf("%w: %s is not a regular file", ErrUsage, path)
	}
	h := sha256.New()
	var bar *progress.Bar
	var r io.Reader = f
	if out != nil {
		bar = progress.New(out, "hashing "+filepath.Base(path), st.Size(), 0)
		r = io.TeeReader(f, bar)
	}
	n, err := io.Copy(h, r)
	bar.Finish()
	if err != nil {
		return 0, nil, fmt.Errorf("hash %s: %w", path, err)
	}
	return n, h.Sum(nil), nil
}

// checkHeader catches a release engineer's slip (wrong ECU, hardware or
// version flag for this file) before it is signed. It checks the header
// only: an image built to fail its boot check may still be signed.
func checkHeader(path string, o AddOptions) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	defer f.Close()
	h, err := fwimage.ReadHeader(f)
	if err != nil {
		return fmt.Errorf("%w: %s is not a Roadsign firmware image: %v", ErrUsage, path, err)
	}
	switch {
	case h.ECU != o.ECU:
		return fmt.Errorf("%w: %s is built for ECU type %s, not --ecu %s", ErrUsage, filepath.Base(path), h.ECU, o.ECU)
	case !slices.Contains(o.HardwareIDs, h.HardwareID):
		return fmt.Errorf("%w: %s is built for hardware %s, which --hardware-id does not list", ErrUsage, filepath.Base(path), h.HardwareID)
	case h.Version != o.Version:
		return fmt.Errorf("%w: %s has version %s in its header, not --version %s", ErrUsage, filepath.Base(path), h.Version, o.Version)
	}
	return nil
}
