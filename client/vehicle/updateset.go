package vehicle

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// An update set is the ECUs one cycle switches to new images: they
// switch together or not at all. Its journal, written before the first
// ECU switches and removed after the last one committed or went back,
// says what a power loss in between must do.
const updateSetFile = "update-set.json"

// Phases of an update set.
const (
	// SetSwitching: ECUs are switching and trial-booting one by one;
	// after a power loss every one of them goes back to its old image.
	SetSwitching = "switching"
	// SetCommitting: every ECU passed its boot check and the set was
	// decided; after a power loss the rest are committed too.
	SetCommitting = "committing"
)

// UpdateSet is the journal of an update set.
type UpdateSet struct {
	Phase   string   `json:"phase"`
	Serials []string `json:"serials"`
	// Versions is what each serial switches to, for messages.
	Versions map[string]string `json:"versions"`
}

// UpdateSet returns the update set in progress, or nil. A journal that
// no longer parses is a set still switching, of every ECU: going back
// is always safe, committing a half-known set is not.
func (v *Vehicle) UpdateSet() (*UpdateSet, error) {
	b, err := os.ReadFile(filepath.Join(v.Dir, updateSetFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", updateSetFile, err)
	}
	var s UpdateSet
	if json.Unmarshal(b, &s) != nil || (s.Phase != SetSwitching && s.Phase != SetCommitting) || len(s.Serials) == 0 {
		s = UpdateSet{Phase: SetSwitching}
		for _, e := range v.ECUs {
			s.Serials = append(s.Serials, e.Serial)
		}
	}
	return &s, nil
}

// SaveUpdateSet records the update set durably (before the step it
// names is taken).
func (v *Vehicle) SaveUpdateSet(s UpdateSet) error { return v.writeJSON(updateSetFile, s) }

// ClearUpdateSet removes the journal once every ECU of the set is
// committed or back on its old image.
func (v *Vehicle) ClearUpdateSet() error {
	if err := os.Remove(filepath.Join(v.Dir, updateSetFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
