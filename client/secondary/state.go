// Package secondary is one secondary ECU (the DCM in the demo) as its own
// process: it keeps its own slots, its own key and its own pinned roots,
// verifies for itself what a primary offers it over the vehicle network
// (client/ecunet), installs only an image the director signed for its
// serial, and signs its own version report. A primary it cannot trust
// (compromised, or a test double) can make it refuse, never install.
//
// Full verification checks both repositories from their pinned roots, as
// the primary does. Partial verification pins the director root only and
// checks the director targets' signatures, expiry and version, its own
// entry (hardware ID, serial) and the image bytes against that entry.
package secondary

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/bootctl"
	"github.com/roadsign/roadsign/client/tufclient"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/atomicfile"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/vin"
)

// Verification modes.
const (
	Full    = "full"
	Partial = "partial"
)

// Config is STATE/secondary.json.
type Config struct {
	VIN          string            `json:"vin"`
	ECU          vehicle.ECUConfig `json:"ecu"`
	Verification string            `json:"verification"`
	CreatedAt    time.Time         `json:"createdAt"`
}

// State is an opened secondary state directory.
type State struct {
	Dir string
	Config
	key *keys.Key
	now func() time.Time
}

const configFile = "secondary.json"

// Init creates a secondary's state in dir: its slots with the factory
// firmware in slot A, its pinned roots and its own key pair.
func Init(dir string, c Config, firmware string, directorRoot, imageRoot []byte, now func() time.Time) (*State, error) {
	if err := vin.Validate(c.VIN); err != nil {
		return nil, fmt.Errorf("%w: --vin: %v", client.ErrUsage, err)
	}
	if err := (vehicle.Config{VIN: c.VIN, Server: "-", ECUs: []vehicle.ECUConfig{c.ECU}}).Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", client.ErrUsage, err)
	}
	switch {
	case c.Verification != Full && c.Verification != Partial:
		return nil, fmt.Errorf("%w: --verification %q: want full or partial", client.ErrUsage, c.Verification)
	case c.Verification == Full && len(imageRoot) == 0:
		return nil, fmt.Errorf("%w: full verification checks the image repository too: give --image-root", client.ErrUsage)
	}
	if err := vehicle.CheckFree(dir); err != nil {
		return nil, err
	}
	s := &State{Dir: dir, Config: c, now: now}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	if err := tufclient.Pin(s.DirectorDir(), directorRoot); err != nil {
		return nil, fmt.Errorf("%w: --director-root: %v", client.ErrUsage, err)
	}
	if c.Verification == Full {
		if err := tufclient.Pin(s.ImageDir(), imageRoot); err != nil {
			return nil, fmt.Errorf("%w: --image-root: %v", client.ErrUsage, err)
		}
	}
	if _, err := s.ECU().Provision(firmware); err != nil {
		return nil, fmt.Errorf("%w: ECU %s: %v", client.ErrUsage, c.ECU.Serial, err)
	}
	k, err := keys.Generate(s.KeyPath())
	if err != nil {
		return nil, err
	}
	s.key = k
	s.CreatedAt = now().UTC()
	b, _ := json.MarshalIndent(s.Config, "", "  ")
	if err := atomicfile.Write(filepath.Join(dir, configFile), b, 0o600); err != nil { // last: a half-made directory is no ECU
		return nil, err
	}
	return s, nil
}

// Open opens a secondary's state.
func Open(dir string, now func() time.Time) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, configFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s holds no secondary ECU (create one with roadsign-agent init-secondary)", client.ErrUsage, dir)
	}
	if err != nil {
		return nil, err
	}
	s := &State{Dir: dir, now: now}
	if err := json.Unmarshal(b, &s.Config); err != nil {
		return nil, fmt.Errorf("%s: %w", configFile, err)
	}
	if s.key, err = keys.Load(s.KeyPath()); err != nil {
		return nil, err
	}
	return s, nil
}

// KeyPath is the ECU's own signing key.
func (s *State) KeyPath() string { return filepath.Join(s.Dir, "ecu.key") }

// DirectorDir and ImageDir are the metadata caches (pinned roots first).
func (s *State) DirectorDir() string { return filepath.Join(s.Dir, "tuf", "director") }
func (s *State) ImageDir() string    { return filepath.Join(s.Dir, "tuf", "image") }

// ECU is the secondary's slots and boot control.
func (s *State) ECU() *bootctl.ECU {
	return bootctl.New(filepath.Join(s.Dir, "slots"), s.Config.ECU.Type, s.Config.ECU.HardwareID, s.now)
}

// PublicKey is the ECU's public key, registered with the server.
func (s *State) PublicKey() ed25519.PublicKey { return s.key.Private.Public().(ed25519.PublicKey) }

// attack is the refusal the ECU reports until it installs again.
type attack struct {
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

func (s *State) attackPath() string { return filepath.Join(s.Dir, "attack.json") }

func (s *State) noteAttack(reason string) error {
	b, _ := json.Marshal(attack{Reason: reason, At: s.now().UTC()})
	return atomicfile.Write(s.attackPath(), b, 0o600)
}

func (s *State) lastAttack() string {
	var a attack
	if b, err := os.ReadFile(s.attackPath()); err == nil && json.Unmarshal(b, &a) == nil {
		return a.Reason
	}
	return ""
}

func (s *State) clearAttack() error {
	if err := os.Remove(s.attackPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
