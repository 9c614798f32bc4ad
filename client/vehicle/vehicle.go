// Package vehicle is the agent's state directory: the simulated vehicle's
// identity (VIN, ECUs, key pair), its pinned TUF roots and metadata caches,
// and each ECU's slots.
package vehicle

import (
	"crypto"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/bootctl"
	"github.com/roadsign/roadsign/client/tufclient"
	"github.com/roadsign/roadsign/internal/atomicfile"
	"github.com/roadsign/roadsign/internal/fwimage"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/tlsconf"
	"github.com/roadsign/roadsign/internal/vin"
)

// ECUConfig is one ECU of the vehicle.
type ECUConfig struct {
	Type       string `json:"type"`
	Serial     string `json:"serial"`
	HardwareID string `json:"hardwareId"`
	// Addr, for a secondary ECU, is where the primary reaches it on the
	// vehicle network (HOST:PORT); it keeps its own slots and key.
	Addr string `json:"addr,omitempty"`
	// PublicKey is the ECU's own key, when the vehicle's ECUs have keys
	// of their own (a vehicle with secondaries).
	PublicKey []byte `json:"publicKey,omitempty"`
}

// Config is STATE/vehicle.json.
type Config struct {
	VIN       string      `json:"vin"`
	Server    string      `json:"server"`
	ECUs      []ECUConfig `json:"ecus"`
	CreatedAt time.Time   `json:"createdAt"`
	// CACert is the PEM CA certificate the server's TLS certificate must
	// chain to (empty: the system's roots).
	CACert string `json:"caCert,omitempty"`
	// ClientCert is the PEM certificate issued for the vehicle's key, for
	// servers that require mutual TLS.
	ClientCert string `json:"clientCert,omitempty"`
	// Primary, for a vehicle whose ECUs have keys of their own (one with
	// secondaries), is the serial of the ECU this agent runs on: its key
	// is the vehicle key, and it signs the vehicle version manifests.
	Primary string `json:"primary,omitempty"`
}

// Keyed reports whether the vehicle's ECUs have keys of their own.
func (c Config) Keyed() bool { return c.Primary != "" }

// Vehicle is an opened state directory.
type Vehicle struct {
	Dir string
	Config
	now  func() time.Time
	lock *os.File
}

const configFile = "vehicle.json"

// Validate checks the configuration: a valid VIN and server URL, at least
// one ECU, known ECU types, unique serials.
func (c Config) Validate() error {
	if err := vin.Validate(c.VIN); err != nil {
		return err
	}
	if c.Server == "" {
		return errors.New("no server URL")
	}
	if c.CACert != "" {
		if _, err := tlsconf.PoolFromPEM([]byte(c.CACert)); err != nil {
			return fmt.Errorf("--ca-cert: %v", err)
		}
	}
	if len(c.ECUs) == 0 {
		return errors.New("no ECUs: give at least one --ecu TYPE:SERIAL:HWID:FIRMWARE_FILE")
	}
	seen := map[string]bool{}
	for _, e := range c.ECUs {
		if !fwimage.ValidECU(e.Type) {
			return fmt.Errorf("ECU %s: type %q is not head-unit or dcm", e.Serial, e.Type)
		}
		if e.Serial == "" || e.HardwareID == "" {
			return fmt.Errorf("ECU of type %s needs a serial and a hardware ID", e.Type)
		}
		if filepath.Base(e.Serial) != e.Serial || e.Serial == "." || e.Serial == ".." {
			return fmt.Errorf("ECU serial %q may not contain path separators", e.Serial)
		}
		if seen[e.Serial] {
			return fmt.Errorf("ECU serial %s appears twice", e.Serial)
		}
		seen[e.Serial] = true
		if e.Addr != "" && c.Primary == "" {
			return fmt.Errorf("ECU %s is a secondary (%s), and the vehicle names no primary", e.Serial, e.Addr)
		}
	}
	if c.Primary != "" {
		local := false
		for _, e := range c.ECUs {
			local = local || (e.Serial == c.Primary && e.Addr == "")
		}
		if !local {
			return fmt.Errorf("primary %s is not one of the vehicle's own ECUs", c.Primary)
		}
	}
	return nil
}

// Create provisions a new vehicle in dir: each ECU boots its factory
// firmware from slot A, both roots are pinned, and a key pair is made.
func Create(dir string, c Config, imageRoot, directorRoot []byte, firmware map[string]string, now func() time.Time) (*Vehicle, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", client.ErrUsage, err)
	}
	if _, err := os.Stat(filepath.Join(dir, configFile)); err == nil {
		return nil, fmt.Errorf("%w: %s already holds a vehicle; use another --state directory", client.ErrUsage, dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	v := &Vehicle{Dir: dir, Config: c, now: now}
	if err := tufclient.Pin(v.ImageRepoDir(), imageRoot); err != nil {
		return nil, fmt.Errorf("%w: --image-root: %v", client.ErrUsage, err)
	}
	if err := tufclient.Pin(v.DirectorRepoDir(), directorRoot); err != nil {
		return nil, fmt.Errorf("%w: --director-root: %v", client.ErrUsage, err)
	}
	for _, e := range c.ECUs {
		if e.Addr != "" {
			continue // a secondary keeps its own slots
		}
		if _, err := v.ECU(e).Provision(firmware[e.Serial]); err != nil {
			return nil, fmt.Errorf("%w: ECU %s: %v", client.ErrUsage, e.Serial, err)
		}
	}
	if _, err := keys.Generate(v.KeyPath()); err != nil {
		return nil, err
	}
	if c.Keyed() {
		// Each local ECU but the primary signs its reports with a key of
		// its own; the primary's is the vehicle key.
		for i, e := range v.ECUs {
			if e.Addr != "" {
				continue
			}
			path := v.KeyPath()
			if e.Serial != c.Primary {
				path = v.ECUKeyPath(e.Serial)
				if _, err := keys.Generate(path); err != nil {
					return nil, err
				}
			}
			k, err := keys.Load(path)
			if err != nil {
				return nil, err
			}
			v.ECUs[i].PublicKey = k.Private.Public().(ed25519.PublicKey)
		}
	}
	v.CreatedAt = now().UTC()
	// vehicle.json last: a half-provisioned directory is not a vehicle.
	if err := v.writeJSON(configFile, v.Config); err != nil {
		return nil, err
	}
	return v, nil
}

// CheckFree refuses a state directory that holds a vehicle, or anything
// else: init only fills a new or empty one.
func CheckFree(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, configFile)); err == nil {
		return fmt.Errorf("%w: %s already holds a vehicle; use another --state directory", client.ErrUsage, dir)
	}
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return fmt.Errorf("%w: %s is not empty; give init a new or empty --state directory", client.ErrUsage, dir)
	}
	return nil
}

// Stage makes an empty directory beside dir to build a vehicle in, for
// MoveInto to put in dir's place.
func Stage(dir string) (string, error) {
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", parent, err)
	}
	stage, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".init-*")
	if err != nil {
		return "", fmt.Errorf("create a directory beside %s: %w", dir, err)
	}
	return stage, nil
}

// MoveInto puts the vehicle built in stage at dir (absent or empty).
func MoveInto(stage, dir string) error {
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s: %v", client.ErrUsage, dir, err)
	}
	if err := os.Rename(stage, dir); err != nil {
		return fmt.Errorf("put the vehicle in %s: %w", dir, err)
	}
	return atomicfile.SyncDir(filepath.Dir(filepath.Clean(dir)))
}

// SetCACert replaces the CA certificate the vehicle trusts for the
// server ("" for the system's roots); it refuses one that is not PEM.
func (v *Vehicle) SetCACert(pem string) error {
	if pem != "" {
		if _, err := tlsconf.Client([]byte(pem), nil); err != nil {
			return fmt.Errorf("%w: %v", client.ErrUsage, err)
		}
	}
	v.CACert = pem
	return v.writeJSON(configFile, v.Config)
}

// Open opens an existing state directory and takes its lock, so two agent
// processes never install on one vehicle at once. Close releases it.
func Open(dir string, now func() time.Time) (*Vehicle, error) {
	v, err := OpenReadOnly(dir, now)
	if err != nil {
		return nil, err
	}
	if err := v.Lock(); err != nil {
		return nil, err
	}
	return v, nil
}

// ErrBusy means another agent process holds the vehicle's lock.
var ErrBusy = errors.New("another roadsign-agent is working on this vehicle")

// Lock takes the state directory's lock, or fails at once with ErrBusy.
// The kernel releases it if the process dies, so a power loss never
// leaves a vehicle locked.
func (v *Vehicle) Lock() error {
	lock, err := os.OpenFile(filepath.Join(v.Dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open vehicle lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return fmt.Errorf("%w (%s); wait for it to finish", ErrBusy, v.Dir)
	}
	v.lock = lock
	return nil
}

// OpenReadOnly opens the state without taking the lock (for status).
func OpenReadOnly(dir string, now func() time.Time) (*Vehicle, error) {
	b, err := os.ReadFile(filepath.Join(dir, configFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s holds no vehicle; create one with roadsign-agent init", client.ErrUsage, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("open vehicle: %w", err)
	}
	v := &Vehicle{Dir: dir, now: now}
	if err := json.Unmarshal(b, &v.Config); err != nil {
		return nil, fmt.Errorf("open vehicle: %s is damaged: %w", configFile, err)
	}
	return v, nil
}

// Close releases the lock, if held.
func (v *Vehicle) Close() error {
	if v.lock == nil {
		return nil
	}
	err := v.lock.Close()
	v.lock = nil
	return err
}

// SetClientCert stores a certificate for the vehicle's key (mutual TLS).
// It refuses a certificate for any other key.
func (v *Vehicle) SetClientCert(pem []byte) error {
	key, err := keys.Load(v.KeyPath())
	if err != nil {
		return err
	}
	if _, err := tlsconf.ClientCert(pem, key.Private); err != nil {
		return fmt.Errorf("%w: %v", client.ErrUsage, err)
	}
	v.ClientCert = string(pem)
	return v.writeJSON(configFile, v.Config)
}

// TLS returns the TLS client settings: the stored CA and, if stored, the
// client certificate with the vehicle's key.
func (v *Vehicle) TLS(key crypto.Signer) (*tls.Config, error) {
	var cert *tls.Certificate
	if v.ClientCert != "" {
		c, err := tlsconf.ClientCert([]byte(v.ClientCert), key)
		if err != nil {
			return nil, err
		}
		cert = c
	}
	return tlsconf.Client([]byte(v.CACert), cert)
}

// ImageRepoDir is the image repository's metadata cache.
func (v *Vehicle) ImageRepoDir() string { return filepath.Join(v.Dir, "tuf", "image") }

// DirectorRepoDir is the director repository's metadata cache.
func (v *Vehicle) DirectorRepoDir() string { return filepath.Join(v.Dir, "tuf", "director") }

// ImageUSBDir and DirectorUSBDir cache what USB bundles carried. They are
// kept apart from the online caches: bundle metadata is long-lived and
// trusted offline only, and the online caches must never hold it.
func (v *Vehicle) ImageUSBDir() string { return filepath.Join(v.Dir, "tuf", "image-usb") }

// DirectorUSBDir: see ImageUSBDir.
func (v *Vehicle) DirectorUSBDir() string { return filepath.Join(v.Dir, "tuf", "director-usb") }

// KeyPath is the vehicle's private key.
func (v *Vehicle) KeyPath() string { return filepath.Join(v.Dir, "vehicle.key") }

// ECUKeyPath is a local ECU's own key (a keyed vehicle's ECUs but the
// primary, whose key is the vehicle key).
func (v *Vehicle) ECUKeyPath(serial string) string {
	if serial == v.Primary {
		return v.KeyPath()
	}
	return filepath.Join(v.Dir, "ecus", serial, "ecu.key")
}

// ECU returns the slots and boot control of one ECU.
func (v *Vehicle) ECU(e ECUConfig) *bootctl.ECU {
	return bootctl.New(filepath.Join(v.Dir, "ecus", e.Serial), e.Type, e.HardwareID, v.now)
}
