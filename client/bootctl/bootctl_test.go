package bootctl

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/internal/fwimage"
)

func image(t *testing.T, version string, bootable bool) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := fwimage.Write(&b, fwimage.Spec{ECU: "dcm", HardwareID: "HW", Version: version, Size: 64 << 10, Unbootable: !bootable}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func newECU(t *testing.T) *ECU {
	t.Helper()
	dir := t.TempDir()
	fw := filepath.Join(dir, "factory.img")
	if err := os.WriteFile(fw, image(t, "1.0.0", true), 0o600); err != nil {
		t.Fatal(err)
	}
	e := New(filepath.Join(dir, "ecu"), "dcm", "HW", time.Now)
	if _, err := e.Provision(fw); err != nil {
		t.Fatal(err)
	}
	return e
}

func journalFor(img []byte, version string) Journal {
	s := sha256.Sum256(img)
	return Journal{Target: "dcm/x-" + version, Length: int64(len(img)), SHA256: hex.EncodeToString(s[:]), Version: version, ReleaseCounter: 2}
}

func install(t *testing.T, e *ECU, img []byte, version string) error {
	t.Helper()
	w, err := e.Begin(journalFor(img, version))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(img); err != nil {
		t.Fatal(err)
	}
	if err := w.Finish(Hooks{}); err != nil {
		return err
	}
	return e.Switch(Hooks{})
}

func active(t *testing.T, e *ECU) (Slot, string) {
	t.Helper()
	rec, err := e.LoadRecord()
	if err != nil {
		t.Fatal(err)
	}
	return rec.Active, rec.Slots[rec.Active].Version
}

func TestInstallCommitsAndRollsBack(t *testing.T) {
	e := newECU(t)
	if err := install(t, e, image(t, "2.0.0", true), "2.0.0"); err != nil {
		t.Fatal(err)
	}
	if s, v := active(t, e); s != B || v != "2.0.0" {
		t.Fatalf("after install: %s %s", s, v)
	}
	err := install(t, e, image(t, "3.0.0", false), "3.0.0")
	if !errors.Is(err, client.ErrRolledBack) {
		t.Fatalf("unbootable install: err = %v", err)
	}
	if s, v := active(t, e); s != B || v != "2.0.0" {
		t.Fatalf("after rollback: %s %s", s, v)
	}
	if j, _ := e.LoadJournal(); j != nil {
		t.Fatal("journal left after rollback")
	}
}

func TestFinishRefusesWrongBytes(t *testing.T) {
	e := newECU(t)
	img := image(t, "2.0.0", true)
	w, err := e.Begin(journalFor(img, "2.0.0"))
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(img)
	bad[100] ^= 1
	w.Write(bad)
	if err := w.Finish(Hooks{}); !errors.Is(err, client.ErrRefused) {
		t.Fatalf("err = %v, want refused", err)
	}
	if st, _ := os.Stat(e.SlotPath(B)); st.Size() != 0 {
		t.Fatal("refused bytes left in the inactive slot")
	}
	if _, err := w.Write(append(img, 0)); err == nil {
		t.Fatal("writing past the signed length succeeded")
	}
	if s, v := active(t, e); s != A || v != "1.0.0" {
		t.Fatalf("active changed: %s %s", s, v)
	}
}

func TestRecover(t *testing.T) {
	good, bad := image(t, "2.0.0", true), image(t, "2.0.0", false)
	tests := []struct {
		name       string
		img        []byte
		crashAt    string
		wantSlot   Slot
		wantVer    string
		wantRolled bool
	}{
		{"power loss after switch, image boots", good, "switch", B, "2.0.0", false},
		{"power loss after switch, image fails", bad, "switch", A, "1.0.0", true},
		{"power loss before commit", good, "commit", B, "2.0.0", false},
		{"power loss after write, before verify", good, "write", A, "1.0.0", false},
		{"power loss after verify, before the switch", good, "verified", A, "1.0.0", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newECU(t)
			crash := Hooks{At: func(p string) {
				if p == tt.crashAt {
					panic("power loss")
				}
			}}
			func() {
				defer func() { recover() }()
				w, err := e.Begin(journalFor(tt.img, "2.0.0"))
				if err != nil {
					t.Fatal(err)
				}
				w.Write(tt.img)
				if err := w.Finish(crash); err != nil {
					t.Fatal(err)
				}
				crash.at("verified")
				e.Switch(crash)
			}()
			_, err := e.Recover(Hooks{})
			if tt.wantRolled != errors.Is(err, client.ErrRolledBack) {
				t.Fatalf("recover err = %v", err)
			}
			if tt.crashAt == "write" {
				// Nothing was verified: the download resumes next time.
				if j, _ := e.LoadJournal(); j == nil || j.Phase != PhaseDownload {
					t.Fatalf("journal = %+v, want a download to resume", j)
				}
			}
			if tt.crashAt == "verified" {
				// Never switched alone (it may be one of an update set).
				if j, _ := e.LoadJournal(); j != nil {
					t.Fatalf("journal = %+v, want the unswitched slot discarded", j)
				}
			}
			if s, v := active(t, e); s != tt.wantSlot || v != tt.wantVer {
				t.Fatalf("after recovery: %s %s, want %s %s", s, v, tt.wantSlot, tt.wantVer)
			}
			sum, _, err := e.HashSlot(tt.wantSlot)
			rec, _ := e.LoadRecord()
			if err != nil || sum != rec.Slots[tt.wantSlot].SHA256 {
				t.Fatal("active slot bytes do not match the record")
			}
		})
	}
}

func TestBeginResumesFromCheckpoint(t *testing.T) {
	e := newECU(t)
	img := image(t, "2.0.0", true)
	j := journalFor(img, "2.0.0")
	w, err := e.Begin(j)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(img[:40000])
	if err := w.Pause(); err != nil {
		t.Fatal(err)
	}
	w, err = e.Begin(j)
	if err != nil {
		t.Fatal(err)
	}
	if w.Offset() != 40000 {
		t.Fatalf("resume offset %d, want 40000", w.Offset())
	}
	w.Write(img[40000:])
	if err := w.Finish(Hooks{}); err != nil {
		t.Fatal(err)
	}
	// A different image starts over.
	other := image(t, "2.1.0", true)
	w, err = e.Begin(journalFor(other, "2.1.0"))
	if err != nil || w.Offset() != 0 {
		t.Fatalf("new image: offset %d, err %v", w.Offset(), err)
	}
}

// TestCheckActive: a measurement is reused while the slot file is
// unchanged; corrupting the slot is found at the next check.
func TestCheckActive(t *testing.T) {
	e := newECU(t)
	m, err := e.CheckActive(time.Hour)
	if err != nil || !m.Matches {
		t.Fatalf("fresh slot: %+v %v", m, err)
	}
	if err := e.CorruptActive(); err != nil {
		t.Fatal(err)
	}
	m, err = e.CheckActive(time.Hour)
	if err != nil || m.Matches {
		t.Fatalf("corrupted slot should not match: %+v %v", m, err)
	}
	rec, _ := e.LoadRecord()
	if m.SHA256 == rec.Slots[rec.Active].SHA256 {
		t.Fatal("the measured hash is the recorded one")
	}
}
