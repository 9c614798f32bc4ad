package fwimage

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Sample is one entry of firmware-samples/samples.json.
type Sample struct {
	File           string `json:"file"`
	ECU            string `json:"ecu"`
	HardwareID     string `json:"hardwareId"`
	Version        string `json:"version"`
	ReleaseCounter int    `json:"releaseCounter"`
	Bootable       bool   `json:"bootable"`
	Size           int64  `json:"size"`
}

// Spec returns the generator spec that makes the sample.
func (s Sample) Spec() Spec {
	return Spec{ECU: s.ECU, HardwareID: s.HardwareID, Version: s.Version, Size: s.Size, Unbootable: !s.Bootable}
}

// LoadSamples reads dir/samples.json.
func LoadSamples(dir string) ([]Sample, error) {
	b, err := os.ReadFile(filepath.Join(dir, "samples.json"))
	if err != nil {
		return nil, fmt.Errorf("read samples: %w", err)
	}
	var list []Sample
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("samples.json: %w", err)
	}
	return list, nil
}
