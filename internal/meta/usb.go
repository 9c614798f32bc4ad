package meta

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// USBBundleField names the signed custom object that marks director
// metadata made for one USB bundle. Such metadata is long-lived (it must
// outlast the bundle's promised validity), so it is only ever trusted
// offline: the agent refuses it online, and installs from a bundle only
// with it.
const USBBundleField = "usbBundle"

// USBBundle is what the director signs into a bundle's metadata.
type USBBundle struct {
	VIN        string
	IssuedAt   time.Time
	ValidUntil time.Time
	// ImageTimestamp pins the image repository's timestamp the bundle
	// carries (it was current at IssuedAt): the agent checks the image
	// repository as of IssuedAt, with the director vouching for that time.
	ImageTimestampVersion int64
	ImageTimestampSHA256  string
}

// Custom is the signed "custom" object of the bundle's director
// timestamp, snapshot and targets. Canonical JSON has no floats and
// go-tuf signs maps as given, so times are RFC 3339 strings.
func (b USBBundle) Custom() map[string]any {
	return map[string]any{
		"vin": b.VIN,
		USBBundleField: map[string]any{
			"issuedAt":   b.IssuedAt.UTC().Format(time.RFC3339),
			"validUntil": b.ValidUntil.UTC().Format(time.RFC3339),
			"imageTimestamp": map[string]any{
				"version": b.ImageTimestampVersion,
				"sha256":  b.ImageTimestampSHA256,
			},
		},
	}
}

// USBBundleOf reads the bundle marker from signed custom metadata; it
// fails if there is none or it is malformed.
func USBBundleOf(custom map[string]any) (USBBundle, error) {
	raw, ok := custom[USBBundleField]
	if !ok {
		return USBBundle{}, errors.New("the director metadata is not marked as made for a USB bundle")
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return USBBundle{}, err
	}
	var m struct {
		IssuedAt       time.Time `json:"issuedAt"`
		ValidUntil     time.Time `json:"validUntil"`
		ImageTimestamp struct {
			Version int64  `json:"version"`
			SHA256  string `json:"sha256"`
		} `json:"imageTimestamp"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return USBBundle{}, fmt.Errorf("malformed %s marker: %w", USBBundleField, err)
	}
	if m.IssuedAt.IsZero() || !m.ValidUntil.After(m.IssuedAt) || m.ImageTimestamp.Version < 1 || len(m.ImageTimestamp.SHA256) != 64 {
		return USBBundle{}, fmt.Errorf("incomplete %s marker", USBBundleField)
	}
	vin, _ := custom["vin"].(string)
	return USBBundle{VIN: vin, IssuedAt: m.IssuedAt, ValidUntil: m.ValidUntil,
		ImageTimestampVersion: m.ImageTimestamp.Version, ImageTimestampSHA256: m.ImageTimestamp.SHA256}, nil
}

// IsUSBBundleMetadata reports whether raw, a metadata file, carries the
// USB bundle marker in its signed custom object.
func IsUSBBundleMetadata(raw []byte) bool {
	if !bytes.Contains(raw, []byte(`"`+USBBundleField+`"`)) {
		return false // the common case costs one scan, no parse
	}
	var m struct {
		Signed struct {
			Custom map[string]json.RawMessage `json:"custom"`
		} `json:"signed"`
	}
	if json.Unmarshal(raw, &m) != nil {
		return false // not metadata at all; go-tuf refuses it
	}
	_, ok := m.Signed.Custom[USBBundleField]
	return ok
}
