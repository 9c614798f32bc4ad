package signer_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/roadsign/roadsign/internal/delta"
	"github.com/roadsign/roadsign/internal/fwimage"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/signer"
)

// release writes a bootable image whose payload is payload.
func release(t *testing.T, ecu, hw, version string, payload []byte) string {
	t.Helper()
	h := fwimage.Header{ECU: ecu, HardwareID: hw, Version: version, PayloadLength: int64(len(payload)), PayloadSHA256: sha256.Sum256(payload)}
	hb, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), ecu+"-"+version+".img")
	if err := os.WriteFile(p, append(hb, payload...), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDelta(t *testing.T) {
	w := initWorkspace(t, signer.InitOptions{RootKeys: 1, RootThreshold: 1})
	p := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{1}).Read(p)
	q := bytes.Clone(p)
	copy(q[300_000:], "the next release changes this")
	other := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{2}).Read(other)
	add := func(file, ecu, version string, hw ...string) string {
		res, err := w.Add(signer.AddOptions{File: file, ECU: ecu, HardwareIDs: hw, Version: version})
		if err != nil {
			t.Fatal(err)
		}
		return res.Path
	}
	from := add(release(t, "dcm", "DCM-A", "1.0.0", p), "dcm", "1.0.0", "DCM-A")
	toFile := release(t, "dcm", "DCM-A", "2.0.0", q)
	to := add(toFile, "dcm", "2.0.0", "DCM-A")
	unrelated := add(release(t, "dcm", "DCM-A", "3.0.0", other), "dcm", "3.0.0", "DCM-A")
	twoHW := add(release(t, "dcm", "DCM-A", "4.0.0", q), "dcm", "4.0.0", "DCM-A", "DCM-B")
	hu := add(release(t, "head-unit", "HU-A", "1.0.0", q), "head-unit", "1.0.0", "HU-A")

	res, err := w.Delta(context.Background(), signer.DeltaOptions{From: from, To: to})
	if err != nil {
		t.Fatal(err)
	}
	if res.Percent > 5 {
		t.Errorf("delta is %.1f %% of the image", res.Percent)
	}
	tg, _, err := w.Targets()
	if err != nil {
		t.Fatal(err)
	}
	d, err := meta.TargetDelta(tg.Signed.Targets[res.Path])
	if err != nil || d.Target != to || d.HardwareID != "DCM-A" || d.BaseVersion != "1.0.0" {
		t.Fatalf("delta target %s: %+v %v", res.Path, d, err)
	}
	// What the workspace keeps is the delta it signed, and it rebuilds
	// the target from the base.
	f, err := os.Open(w.State.TargetFiles[res.Path])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	baseImg, err := os.ReadFile(w.State.TargetFiles[from])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := delta.ApplyAll(f, bytes.NewReader(baseImg), int64(len(baseImg)), &out); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(toFile)
	if !bytes.Equal(out.Bytes(), want) {
		t.Fatal("the signed delta does not rebuild the target")
	}
	// Again: nothing changes.
	if again, err := w.Delta(context.Background(), signer.DeltaOptions{From: from, To: to}); err != nil || again.TargetsVersion != res.TargetsVersion {
		t.Fatalf("second delta: %+v %v", again, err)
	}

	for _, tc := range []struct {
		name string
		o    signer.DeltaOptions
		want error
	}{
		{"unknown base", signer.DeltaOptions{From: "dcm/none.img", To: to}, signer.ErrUsage},
		{"unknown target", signer.DeltaOptions{From: from, To: "dcm/none.img"}, signer.ErrUsage},
		{"another ECU type", signer.DeltaOptions{From: from, To: hu}, signer.ErrUsage},
		{"nothing in common", signer.DeltaOptions{From: from, To: unrelated}, signer.ErrUsage},
		{"hardware ID needed", signer.DeltaOptions{From: from, To: twoHW}, signer.ErrUsage},
		{"hardware the base lacks", signer.DeltaOptions{From: from, To: twoHW, HardwareID: "DCM-B"}, signer.ErrUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := w.Delta(context.Background(), tc.o); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	// An image file changed since it was signed is refused.
	if err := os.WriteFile(toFile, q[:100], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Delta(context.Background(), signer.DeltaOptions{From: from, To: to}); !errors.Is(err, signer.ErrSecurity) {
		t.Fatalf("changed file: %v", err)
	}
}
