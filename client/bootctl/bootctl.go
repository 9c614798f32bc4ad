// Package bootctl is one ECU's A/B slots as the simulated bootloader sees
// them: a boot-control record (active slot, trial flag, what each slot
// holds) and an install journal, both written atomically and fsynced at
// every phase boundary, so that whatever instant power is lost the ECU
// boots a verified image and the next start knows how to go on.
package bootctl

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/roadsign/roadsign/internal/atomicfile"
	"github.com/roadsign/roadsign/internal/fwimage"
)

// Slot names an A/B slot.
type Slot string

// The two slots.
const (
	A Slot = "a"
	B Slot = "b"
)

// Other returns the other slot.
func (s Slot) Other() Slot {
	if s == A {
		return B
	}
	return A
}

// SlotInfo is what a slot holds, recorded only once its bytes were verified.
type SlotInfo struct {
	Version        string `json:"version"`
	SHA256         string `json:"sha256"`
	Length         int64  `json:"length"`
	Target         string `json:"target,omitempty"`
	ReleaseCounter int64  `json:"releaseCounter"`
}

// Record is the boot-control record.
type Record struct {
	Active Slot `json:"active"`
	// Trial is set between the switch to a new slot and its commit: the
	// bootloader will fall back if the trial boot does not commit.
	Trial        bool               `json:"trial"`
	BootAttempts int                `json:"bootAttempts"`
	Slots        map[Slot]*SlotInfo `json:"slots"`
	LastResult   string             `json:"lastResult,omitempty"`
	// Failed lists sha256s of images that failed their boot check on this
	// ECU; they are not tried again.
	Failed    []string  `json:"failed,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// Phases of an install, in order; the journal names the one in progress.
const (
	PhaseDownload = "download" // streaming into the inactive slot
	PhaseVerified = "verified" // slot bytes match the signed length and sha256
	PhaseSwitch   = "switch"   // boot control points at the new slot, on trial
	PhaseTrial    = "trial"    // its boot check passed; committed or reverted with its update set
)

// Journal records an install in progress.
type Journal struct {
	Phase          string `json:"phase"`
	Target         string `json:"target"`
	Slot           Slot   `json:"slot"`
	Length         int64  `json:"length"`
	SHA256         string `json:"sha256"`
	Version        string `json:"version"`
	ReleaseCounter int64  `json:"releaseCounter"`
	// Written is how many bytes of the slot are known to be on disk (fsynced).
	Written   int64     `json:"written"`
	StartedAt time.Time `json:"startedAt"`
	// JobID ties the install to a server job, when there is one.
	JobID string `json:"jobId,omitempty"`
	// Delta is set while the slot is rebuilt from a delta.
	Delta *DeltaProgress `json:"delta,omitempty"`
}

// ECU is one ECU's slots, boot control and journal in a directory.
type ECU struct {
	Dir        string
	Type       string
	HardwareID string
	now        func() time.Time
}

// New returns the ECU kept in dir.
func New(dir, ecuType, hardwareID string, now func() time.Time) *ECU {
	return &ECU{Dir: dir, Type: ecuType, HardwareID: hardwareID, now: now}
}

// SlotPath is the file that stands for a slot's flash partition.
func (e *ECU) SlotPath(s Slot) string { return filepath.Join(e.Dir, "slot-"+string(s)+".img") }

func (e *ECU) recordPath() string  { return filepath.Join(e.Dir, "boot.json") }
func (e *ECU) journalPath() string { return filepath.Join(e.Dir, "journal.json") }

// Provision creates the ECU with factory firmware in slot A. The firmware
// must pass the boot check for this ECU's type and hardware ID.
func (e *ECU) Provision(firmware string) (*SlotInfo, error) {
	if err := os.MkdirAll(e.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create ECU directory: %w", err)
	}
	src, err := os.Open(firmware)
	if err != nil {
		return nil, fmt.Errorf("factory firmware: %w", err)
	}
	defer src.Close()
	h, err := fwimage.BootCheck(src, e.Type, e.HardwareID)
	if err != nil {
		return nil, fmt.Errorf("factory firmware %s does not boot on %s %s: %w", firmware, e.Type, e.HardwareID, err)
	}
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	dst, err := os.OpenFile(e.SlotPath(A), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(dst, sum), src)
	if err == nil {
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("write slot a: %w", err)
	}
	info := &SlotInfo{Version: h.Version, SHA256: hex.EncodeToString(sum.Sum(nil)), Length: n}
	rec := Record{Active: A, Slots: map[Slot]*SlotInfo{A: info, B: nil}, LastResult: "provisioned with " + h.Version}
	return info, e.SaveRecord(&rec)
}

// LoadRecord reads the boot-control record.
func (e *ECU) LoadRecord() (*Record, error) {
	b, err := os.ReadFile(e.recordPath())
	if err != nil {
		return nil, fmt.Errorf("boot control of %s: %w", e.Dir, err)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("boot control of %s is damaged: %w", e.Dir, err)
	}
	if r.Slots == nil {
		r.Slots = map[Slot]*SlotInfo{}
	}
	if r.Active != A && r.Active != B {
		return nil, fmt.Errorf("boot control of %s names no valid active slot", e.Dir)
	}
	return &r, nil
}

// SaveRecord writes the boot-control record atomically and durably.
func (e *ECU) SaveRecord(r *Record) error {
	r.UpdatedAt = e.now().UTC()
	return writeJSON(e.recordPath(), r)
}

// LoadJournal returns the install in progress, or nil.
func (e *ECU) LoadJournal() (*Journal, error) {
	b, err := os.ReadFile(e.journalPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("install journal: %w", err)
	}
	var j Journal
	if err := json.Unmarshal(b, &j); err != nil {
		// An atomic rename never leaves a torn journal; treat a damaged
		// one as no install in progress: the active slot is untouched
		// until the switch, and the switch is in the boot record.
		return nil, nil
	}
	return &j, nil
}

// SaveJournal writes the journal atomically and durably.
func (e *ECU) SaveJournal(j *Journal) error { return writeJSON(e.journalPath(), j) }

// ClearJournal ends the install in progress.
func (e *ECU) ClearJournal() error {
	if err := os.Remove(e.journalPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("clear journal: %w", err)
	}
	return atomicfile.SyncDir(e.Dir)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}

// HashSlot streams a slot file through sha256.
func (e *ECU) HashSlot(s Slot) (string, int64, error) {
	f, err := os.Open(e.SlotPath(s))
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, readOnce(f), make([]byte, chunkSize))
	if err != nil {
		return "", 0, fmt.Errorf("hash slot %s: %w", s, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// BootCheck runs the simulated bootloader's check on a slot.
func (e *ECU) BootCheck(s Slot) (fwimage.Header, error) {
	f, err := os.Open(e.SlotPath(s))
	if err != nil {
		return fwimage.Header{}, fmt.Errorf("%w: slot %s: %v", fwimage.ErrBootCheck, s, err)
	}
	defer f.Close()
	return fwimage.BootCheck(readOnce(f), e.Type, e.HardwareID)
}

// readOnce reads a slot file once, in order, dropping what it has read
// from the page cache as it goes (see dropCache).
func readOnce(f *os.File) io.Reader { return &onceReader{f: f} }

type onceReader struct {
	f             *os.File
	off, released int64
}

func (r *onceReader) Read(p []byte) (int, error) {
	n, err := r.f.Read(p)
	r.off += int64(n)
	if r.off-r.released >= checkpointEvery || err != nil {
		dropCache(r.f, r.released, r.off-r.released)
		r.released = r.off
	}
	return n, err
}
