package bootctl

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Integrity is the last measurement of the active slot's bytes.
type Integrity struct {
	Slot    Slot      `json:"slot"`
	SHA256  string    `json:"sha256"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"modTime"`
	At      time.Time `json:"at"`
	// Matches: the bytes are the image the record says the slot holds.
	Matches bool `json:"matches"`
}

func (e *ECU) integrityPath() string { return filepath.Join(e.Dir, "integrity.json") }

// CheckActive measures the active slot against its record: it hashes the
// slot's recorded length when the slot file changed since the last
// measurement, or that measurement is older than maxAge, and otherwise
// trusts it (a 1 GiB slot takes seconds to hash).
func (e *ECU) CheckActive(maxAge time.Duration) (Integrity, error) {
	rec, err := e.LoadRecord()
	if err != nil {
		return Integrity{}, err
	}
	info := rec.Slots[rec.Active]
	if info == nil {
		return Integrity{}, fmt.Errorf("boot control of %s records nothing in its active slot %s", e.Dir, rec.Active)
	}
	st, err := os.Stat(e.SlotPath(rec.Active))
	if err != nil {
		return Integrity{}, fmt.Errorf("active slot %s: %w", rec.Active, err)
	}
	var last Integrity
	if b, err := os.ReadFile(e.integrityPath()); err == nil {
		json.Unmarshal(b, &last)
	}
	now := e.now().UTC()
	if last.Slot == rec.Active && last.Size == st.Size() && last.ModTime.Equal(st.ModTime().UTC()) && now.Sub(last.At) < maxAge && last.SHA256 != "" {
		last.Matches = last.SHA256 == info.SHA256
		return last, nil
	}
	f, err := os.Open(e.SlotPath(rec.Active))
	if err != nil {
		return Integrity{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, io.LimitReader(readOnce(f), info.Length), make([]byte, chunkSize)); err != nil {
		return Integrity{}, fmt.Errorf("hash active slot %s: %w", rec.Active, err)
	}
	m := Integrity{Slot: rec.Active, SHA256: hex.EncodeToString(h.Sum(nil)), Size: st.Size(), ModTime: st.ModTime().UTC(), At: now}
	m.Matches = m.SHA256 == info.SHA256
	return m, writeJSON(e.integrityPath(), m)
}

// CorruptActive flips bytes in the middle of the active slot, as a flash
// cell failure would (for --simulate corrupt-active).
func (e *ECU) CorruptActive() error {
	rec, err := e.LoadRecord()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(e.SlotPath(rec.Active), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	b := make([]byte, 16)
	off := st.Size() / 2
	if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
		return err
	}
	for i := range b {
		b[i] ^= 0xa5
	}
	if _, err := f.WriteAt(b, off); err != nil {
		return err
	}
	return f.Sync()
}
