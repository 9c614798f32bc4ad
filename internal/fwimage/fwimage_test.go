package fwimage_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/roadsign/roadsign/internal/fwimage"
)

// TestCommittedSamples checks every committed sample against samples.json:
// it is byte-for-byte what the generator makes, its header names the listed
// ECU, hardware and version, and it boots exactly when listed as bootable.
func TestCommittedSamples(t *testing.T) {
	dir := filepath.Join("..", "..", "firmware-samples")
	list, err := fwimage.LoadSamples(dir)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	perHW := map[string]int{}
	for _, s := range list {
		t.Run(s.File, func(t *testing.T) {
			img, err := os.ReadFile(filepath.Join(dir, s.File))
			if err != nil {
				t.Fatal(err)
			}
			total += int64(len(img))
			if len(img) > 1<<20 {
				t.Errorf("sample is %d bytes, over 1 MiB", len(img))
			}
			var regen bytes.Buffer
			if s.Size != int64(len(img)) {
				t.Fatalf("file is %d bytes, samples.json says %d", len(img), s.Size)
			}
			if err := fwimage.Write(&regen, s.Spec()); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(regen.Bytes(), img) {
				t.Error("committed sample differs from what the generator makes")
			}
			h, err := fwimage.BootCheck(bytes.NewReader(img), s.ECU, s.HardwareID)
			if s.Bootable && err != nil {
				t.Errorf("bootable sample fails boot check: %v", err)
			}
			if !s.Bootable && !errors.Is(err, fwimage.ErrBootCheck) {
				t.Errorf("unbootable sample: err = %v, want ErrBootCheck", err)
			}
			if h.Version != s.Version || h.HardwareID != s.HardwareID || h.ECU != s.ECU {
				t.Errorf("header %+v does not match samples.json", h)
			}
			if s.Bootable {
				perHW[s.ECU+"/"+s.HardwareID]++
			}
		})
	}
	if total > 8<<20 {
		t.Errorf("samples total %d bytes, over 8 MiB", total)
	}
	if len(perHW) != 4 {
		t.Errorf("want 2 head-unit and 2 DCM hardware IDs, got %v", perHW)
	}
	for hw, n := range perHW {
		if n != 3 {
			t.Errorf("%s has %d bootable versions, want 3", hw, n)
		}
	}
}

func TestBootCheckRejects(t *testing.T) {
	var good bytes.Buffer
	if err := fwimage.Write(&good, fwimage.Spec{ECU: "dcm", HardwareID: "DCM-X", Version: "1.0.0", Size: 4096}); err != nil {
		t.Fatal(err)
	}
	flip := func(off int) []byte {
		b := bytes.Clone(good.Bytes())
		b[off] ^= 1
		return b
	}
	tests := []struct {
		name    string
		img     []byte
		ecu, hw string
	}{
		{"payload byte flipped", flip(2000), "dcm", "DCM-X"},
		{"header byte flipped", flip(10), "dcm", "DCM-X"},
		{"truncated", good.Bytes()[:3000], "dcm", "DCM-X"},
		{"trailing bytes", append(bytes.Clone(good.Bytes()), 0), "dcm", "DCM-X"},
		{"short header", good.Bytes()[:100], "dcm", "DCM-X"},
		{"wrong ECU type", good.Bytes(), "head-unit", "DCM-X"},
		{"wrong hardware", good.Bytes(), "dcm", "DCM-Y"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := fwimage.BootCheck(bytes.NewReader(tt.img), tt.ecu, tt.hw); !errors.Is(err, fwimage.ErrBootCheck) {
				t.Fatalf("err = %v, want ErrBootCheck", err)
			}
		})
	}
	if _, err := fwimage.BootCheck(bytes.NewReader(good.Bytes()), "dcm", "DCM-X"); err != nil {
		t.Fatalf("good image: %v", err)
	}
}
