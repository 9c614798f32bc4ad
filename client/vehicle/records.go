package vehicle

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/roadsign/roadsign/signer/keys"
)

// Auth is the connected-services authorization state (STATE/auth.json).
type Auth struct {
	State     string    `json:"state"` // authorized, or a failure code
	Message   string    `json:"message,omitempty"`
	Token     string    `json:"token,omitempty"`
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
	At        time.Time `json:"at"`
}

func (v *Vehicle) readJSON(name string, into any) error {
	b, err := os.ReadFile(filepath.Join(v.Dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	if err := json.Unmarshal(b, into); err != nil {
		return nil // a damaged record is as good as none
	}
	return nil
}

func (v *Vehicle) writeJSON(name string, val any) error {
	b, err := json.MarshalIndent(val, "", "  ")
	if err != nil {
		return err
	}
	return keys.WriteFileAtomic(filepath.Join(v.Dir, name), append(b, '\n'), 0o600)
}

// Auth returns the last authorization state ("not_authorized" if none).
func (v *Vehicle) Auth() (Auth, error) {
	a := Auth{State: "not_authorized"}
	err := v.readJSON("auth.json", &a)
	if a.State == "authorized" && !a.ExpiresAt.IsZero() && v.now().After(a.ExpiresAt) {
		a.State, a.Message = "expired", "the connected-services token expired; run roadsign-agent reauthorize"
	}
	return a, err
}

// SaveAuth records the authorization state.
func (v *Vehicle) SaveAuth(a Auth) error { return v.writeJSON("auth.json", a) }

// OfflineInstalls are installs done from USB, not yet reported.
func (v *Vehicle) OfflineInstalls() ([]string, error) {
	var list []string
	return list, v.readJSON("offline.json", &list)
}

// AddOfflineInstall remembers a USB install for the next check-in.
func (v *Vehicle) AddOfflineInstall(note string) error {
	list, err := v.OfflineInstalls()
	if err != nil {
		return err
	}
	return v.writeJSON("offline.json", append(list, note))
}

// ClearOfflineInstalls forgets reported USB installs.
func (v *Vehicle) ClearOfflineInstalls() error {
	if err := os.Remove(filepath.Join(v.Dir, "offline.json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// ReplaceECU swaps a replaced ECU (a new DCM, say) in the vehicle: the new
// unit boots its factory firmware from slot A, and the vehicle gets a new
// key pair (the telematics unit holds it); the old key is kept aside,
// revoked. It returns the new public key for the dealer to register.
func (v *Vehicle) ReplaceECU(oldSerial string, n ECUConfig, firmware string) ([]byte, error) {
	idx := -1
	for i, e := range v.ECUs {
		if e.Serial == oldSerial {
			idx = i
		}
	}
	if idx < 0 {
		return nil, fmt.Errorf("this vehicle has no ECU %s", oldSerial)
	}
	n.Type = v.ECUs[idx].Type
	cfg := v.Config
	cfg.ECUs = append([]ECUConfig(nil), v.ECUs...)
	cfg.ECUs[idx] = n
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if _, err := v.ECU(n).Provision(firmware); err != nil {
		return nil, err
	}
	revoked := v.KeyPath() + ".revoked-" + v.now().UTC().Format("20060102T150405")
	if err := os.Rename(v.KeyPath(), revoked); err != nil {
		return nil, err
	}
	k, err := keys.Generate(v.KeyPath())
	if err != nil {
		return nil, err
	}
	v.Config = cfg
	if err := v.writeJSON(configFile, v.Config); err != nil {
		return nil, err
	}
	os.RemoveAll(filepath.Join(v.Dir, "ecus", oldSerial))
	return []byte(k.Private.Public().(ed25519.PublicKey)), nil
}
