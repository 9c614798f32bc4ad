package bootctl

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/delta"
	"github.com/roadsign/roadsign/internal/fwimage"
)

// deltaECU provisions an ECU with a 3 MiB image and returns it with a
// target image that differs in one place and the delta between them.
func deltaECU(t *testing.T) (*ECU, []byte, []byte, DeltaProgress) {
	t.Helper()
	var b bytes.Buffer
	if err := fwimage.Write(&b, fwimage.Spec{ECU: "dcm", HardwareID: "HW", Version: "1.0.0", Size: 3 << 20}); err != nil {
		t.Fatal(err)
	}
	base := b.Bytes()
	dir := t.TempDir()
	fw := filepath.Join(dir, "factory.img")
	if err := os.WriteFile(fw, base, 0o600); err != nil {
		t.Fatal(err)
	}
	e := New(filepath.Join(dir, "ecu"), "dcm", "HW", time.Now)
	info, err := e.Provision(fw)
	if err != nil {
		t.Fatal(err)
	}
	target := bytes.Clone(base)
	copy(target[3<<19:], "a new release changes a few bytes here")
	var d bytes.Buffer
	if _, err := delta.Diff(context.Background(), bytes.NewReader(base), int64(len(base)), bytes.NewReader(target), int64(len(target)), &d, delta.Options{}); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(d.Bytes())
	return e, target, d.Bytes(), DeltaProgress{Target: "deltas/HW/x.rsdelta", Length: int64(d.Len()), SHA256: hex.EncodeToString(sum[:]), BaseSHA256: info.SHA256}
}

// TestDeltaResumes: a delta install paused after some operations (as a
// dropped connection or a checkpoint before a power loss leaves it)
// resumes from the journal's hash states and rebuilds the exact image.
func TestDeltaResumes(t *testing.T) {
	e, target, d, dp := deltaECU(t)
	j := journalFor(target, "2.0.0")
	w, err := e.BeginDelta(j, dp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(d[:len(d)-40]); err != nil {
		t.Fatal(err)
	}
	if err := w.Pause(); err != nil {
		t.Fatal(err)
	}
	w, err = e.BeginDelta(j, dp)
	if err != nil {
		t.Fatal(err)
	}
	off := w.Offset()
	if off <= int64(delta.HeaderSize) || off > int64(len(d)-40) {
		t.Fatalf("resumes at %d of %d", off, len(d))
	}
	if _, err := w.Write(d[off:]); err != nil {
		t.Fatal(err)
	}
	if err := w.Finish(Hooks{}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(e.SlotPath(B))
	if err != nil || !bytes.Equal(got, target) {
		t.Fatalf("slot b does not hold the target (%v)", err)
	}
	if jj, _ := e.LoadJournal(); jj == nil || jj.Phase != PhaseVerified {
		t.Fatalf("journal %+v, want verified", jj)
	}
}

// TestDeltaRefusals: another base, a damaged operation and a short delta
// are each refused as ErrDelta, and Discard leaves no install behind.
func TestDeltaRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(d []byte, dp *DeltaProgress) []byte
	}{
		{"other base", func(d []byte, dp *DeltaProgress) []byte {
			dp.BaseSHA256 = hex.EncodeToString(make([]byte, 32))
			return d
		}},
		{"damaged", func(d []byte, dp *DeltaProgress) []byte {
			d = bytes.Clone(d)
			d[len(d)-60] ^= 1
			return d
		}},
		{"short", func(d []byte, dp *DeltaProgress) []byte { return d[:len(d)-1] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, target, d, dp := deltaECU(t)
			d = tc.mod(d, &dp)
			w, err := e.BeginDelta(journalFor(target, "2.0.0"), dp)
			if err == nil {
				if _, err = w.Write(d); err == nil {
					err = w.Finish(Hooks{})
				}
				w.Discard()
			}
			if !errors.Is(err, ErrDelta) {
				t.Fatalf("got %v, want ErrDelta", err)
			}
			if j, _ := e.LoadJournal(); j != nil {
				t.Fatalf("journal left: %+v", j)
			}
		})
	}
}
