package vehicle

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/roadsign/roadsign/internal/atomicfile"
	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/sealed"
)

// Authorization states besides the server's failure codes.
const (
	Authorized = errcode.Authorized
	// Expired: authorized once, and the token has run out since.
	Expired = errcode.Expired
	// NotAuthorized: no handshake has been run yet.
	NotAuthorized = "not_authorized"
	// PendingReauthorization: the firmware changed offline (USB); the
	// next online contact runs the handshake.
	PendingReauthorization = "pending_reauthorization"
)

// Auth is the connected-services authorization state (STATE/auth.json).
type Auth struct {
	State     string    `json:"state"` // one of the states above, or a failure code
	Message   string    `json:"message,omitempty"`
	Token     string    `json:"token,omitempty"`
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
	At        time.Time `json:"at"`
}

// RenewAt is when an authorized vehicle renews its token: with a third
// of its lifetime left, so a daemon that wakes a little late still
// renews in time. Zero if there is no token to renew.
func (a Auth) RenewAt() time.Time {
	if a.State != Authorized || a.ExpiresAt.IsZero() || a.At.IsZero() || !a.ExpiresAt.After(a.At) {
		return time.Time{}
	}
	return a.ExpiresAt.Add(-a.ExpiresAt.Sub(a.At) / 3)
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
	return atomicfile.Write(filepath.Join(v.Dir, name), append(b, '\n'), 0o600)
}

// Auth returns the authorization state now: NotAuthorized if no
// handshake ran yet, Expired once an authorized token has run out.
func (v *Vehicle) Auth() (Auth, error) {
	a := Auth{State: NotAuthorized}
	err := v.readJSON("auth.json", &a)
	if a.State == Authorized && !a.ExpiresAt.IsZero() && !v.now().Before(a.ExpiresAt) {
		a.State, a.Message = Expired, "the connected-services token expired at "+a.ExpiresAt.Format(time.RFC3339)+"; the agent renews it at its next contact with the server (or run roadsign-agent reauthorize)"
	}
	return a, err
}

// SaveAuth records the authorization state.
func (v *Vehicle) SaveAuth(a Auth) error { return v.writeJSON("auth.json", a) }

// LastCheckIn is when the server last took a check-in (zero: never).
func (v *Vehicle) LastCheckIn() (time.Time, error) {
	var c struct {
		At time.Time `json:"at"`
	}
	err := v.readJSON("checkin.json", &c)
	return c.At, err
}

// SaveCheckIn records a check-in the server took.
func (v *Vehicle) SaveCheckIn(at time.Time) error {
	return v.writeJSON("checkin.json", map[string]time.Time{"at": at.UTC()})
}

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

// ClearOfflineInstalls marks the USB installs reported: they move to the
// last reported batch (a job the server made before it heard of them
// still learns how its image got there).
func (v *Vehicle) ClearOfflineInstalls() error {
	err := os.Rename(filepath.Join(v.Dir, "offline.json"), filepath.Join(v.Dir, "offline-reported.json"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// ReportedOfflineInstalls is the last batch of USB installs reported.
func (v *Vehicle) ReportedOfflineInstalls() ([]string, error) {
	var list []string
	return list, v.readJSON("offline-reported.json", &list)
}

// ReplaceECU swaps a replaced ECU (a new DCM, say) in the vehicle: the new
// unit boots its factory firmware from slot A, and the vehicle gets a new
// key pair (the telematics unit holds it); the old key is kept aside,
// revoked. It returns the new public key for the dealer to register.
//
// In a vehicle whose ECUs have keys of their own, only the new unit's key
// is new: a secondary (n.Addr) brings its own, a local ECU gets one, and
// the vehicle key changes only when the primary itself was replaced.
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
	if n.Type != "" && n.Type != v.ECUs[idx].Type {
		return nil, fmt.Errorf("%s is a %s; a %s cannot take its place", oldSerial, v.ECUs[idx].Type, n.Type)
	}
	n.Type = v.ECUs[idx].Type
	cfg := v.Config
	cfg.ECUs = append([]ECUConfig(nil), v.ECUs...)
	cfg.ECUs[idx] = n
	if v.Keyed() && oldSerial != v.Primary {
		return v.replaceOwnKeyed(cfg, idx, oldSerial, firmware)
	}
	if v.Keyed() {
		cfg.Primary = n.Serial
		if n.Addr != "" {
			return nil, fmt.Errorf("%s is the primary (this agent's own ECU); it cannot be replaced by a secondary", oldSerial)
		}
	}
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
	if cfg.Keyed() {
		cfg.ECUs[idx].PublicKey = k.Private.Public().(ed25519.PublicKey)
	}
	v.Config = cfg
	if err := v.writeJSON(configFile, v.Config); err != nil {
		return nil, err
	}
	os.RemoveAll(filepath.Join(v.Dir, "ecus", oldSerial))
	// The server has not heard of the new unit: check in first next time.
	if err := os.Remove(filepath.Join(v.Dir, "checkin.json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return []byte(k.Private.Public().(ed25519.PublicKey)), nil
}

// replaceOwnKeyed is ReplaceECU for a unit other than the primary of a
// keyed vehicle: the new unit's own key, nothing else.
func (v *Vehicle) replaceOwnKeyed(cfg Config, idx int, oldSerial, firmware string) ([]byte, error) {
	n := &cfg.ECUs[idx]
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if n.Addr == "" {
		if _, err := v.ECU(*n).Provision(firmware); err != nil {
			return nil, err
		}
		k, err := keys.Generate(filepath.Join(v.Dir, "ecus", n.Serial, "ecu.key"))
		if err != nil {
			return nil, err
		}
		n.PublicKey = k.Private.Public().(ed25519.PublicKey)
	} else if len(n.PublicKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("secondary %s has no valid key", n.Serial)
	}
	v.Config = cfg
	if err := v.writeJSON(configFile, v.Config); err != nil {
		return nil, err
	}
	os.RemoveAll(filepath.Join(v.Dir, "ecus", oldSerial))
	if err := os.Remove(filepath.Join(v.Dir, "checkin.json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return n.PublicKey, nil
}

// NextReportCounter is the next counter of a local ECU's signed version
// reports: it only rises, across restarts.
func (v *Vehicle) NextReportCounter(serial string) (int64, error) {
	return NextCounter(filepath.Join(v.Dir, "ecus", serial, "report-counter"))
}

// NextCounter raises the counter kept in the file at path and returns it
// (1 the first time); written atomically, so it only rises.
func NextCounter(path string) (int64, error) {
	var n int64
	if b, err := os.ReadFile(path); err == nil {
		n, _ = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	}
	n++
	return n, atomicfile.Write(path, []byte(strconv.FormatInt(n, 10)), 0o600)
}

// EncryptionKeyPath is a local ECU's X25519 encryption key: separate from
// any signing key, the key encrypted images' file keys are wrapped to.
func (v *Vehicle) EncryptionKeyPath(serial string) string {
	return filepath.Join(v.Dir, "ecus", serial, "encryption.key")
}

// EncryptionKey loads a local ECU's encryption key, making it on first
// use (a vehicle provisioned before encryption, a replaced unit).
func (v *Vehicle) EncryptionKey(serial string) (*ecdh.PrivateKey, error) {
	p := v.EncryptionKeyPath(serial)
	k, err := sealed.LoadECUKey(p)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return nil, err
		}
		return sealed.GenerateECUKey(p)
	}
	return k, err
}

// EncryptionKeyReported says whether a check-in the server took carried
// the ECU's encryption key; MarkEncryptionKeyReported records that one did.
func (v *Vehicle) EncryptionKeyReported(serial string) bool {
	_, err := os.Stat(filepath.Join(v.Dir, "ecus", serial, "encryption.reported"))
	return err == nil
}

// MarkEncryptionKeyReported: see EncryptionKeyReported.
func (v *Vehicle) MarkEncryptionKeyReported(serial string) error {
	return atomicfile.Write(filepath.Join(v.Dir, "ecus", serial, "encryption.reported"), []byte("reported\n"), 0o600)
}

// TimeState is what the vehicle knows of the time (STATE/time.json):
// the floor (the latest time it ever trusted, never lowered), and the
// last attestation it accepted with the boot clock's reading then, from
// which it counts on (internal/boottime).
type TimeState struct {
	Floor      time.Time `json:"floor,omitzero"`
	AttestedAt time.Time `json:"attestedAt,omitzero"`
	Boot       string    `json:"boot,omitempty"`
	// BootNanos is CLOCK_BOOTTIME at AttestedAt; ValidSeconds how long
	// the vehicle counts on from it.
	BootNanos    int64 `json:"bootNanos,omitempty"`
	ValidSeconds int64 `json:"validSeconds,omitempty"`
	// RootVersion is the director root version the last attestation was
	// verified with: a far larger jump past the floor is taken only with
	// a newer root.
	RootVersion int64 `json:"rootVersion,omitempty"`
	// Untrusted is why the last attempt to get a trusted time failed
	// ("" after a success): reported at the next check-in.
	Untrusted string `json:"untrusted,omitempty"`
}

// LoadTimeState reads STATE/time.json (zero when none).
func (v *Vehicle) LoadTimeState() (TimeState, error) {
	var st TimeState
	b, err := os.ReadFile(filepath.Join(v.Dir, "time.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return TimeState{}, fmt.Errorf("time.json: %w", err)
	}
	return st, nil
}

// SaveTimeState writes STATE/time.json; the floor never goes down.
func (v *Vehicle) SaveTimeState(st TimeState) error {
	if old, err := v.LoadTimeState(); err == nil && old.Floor.After(st.Floor) {
		st.Floor = old.Floor
	}
	return v.writeJSON("time.json", st)
}
