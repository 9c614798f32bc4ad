package meta

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// DeltaRole is the image repository's delegated role for deltas, signed
// online by the server; DeltaPaths are the only paths it may sign. The
// offline targets key grants the delegation, and keeps authority over
// what a delta may rebuild to: a delta only names a full image of the
// top-level targets, and a vehicle installs the rebuilt bytes only when
// they match that image's offline-signed length and sha256.
const DeltaRole = "deltas"

// DeltaPaths is the delegation's path pattern: deltas/HARDWARE-ID/NAME.
var DeltaPaths = []string{"deltas/*/*"}

// Delta is what a delta target's custom metadata says ("delta" field).
type Delta struct {
	Format     string `json:"format"`
	HardwareID string `json:"hardwareId"`
	// Base is the image the delta applies to, Target the full image it
	// rebuilds (a top-level target).
	BaseSHA256   string `json:"baseSha256"`
	BaseLength   int64  `json:"baseLength"`
	BaseVersion  string `json:"baseVersion,omitempty"`
	Target       string `json:"target"`
	TargetSHA256 string `json:"targetSha256"`
	TargetLength int64  `json:"targetLength"`
}

type deltaCustom struct {
	Delta *Delta `json:"delta"`
}

// DeltaCustom encodes d as a target's custom metadata.
func DeltaCustom(d Delta) *json.RawMessage {
	b, _ := json.Marshal(deltaCustom{Delta: &d})
	raw := json.RawMessage(b)
	return &raw
}

// NewDeltaTarget is the target for a delta of length bytes (sha256 sum)
// in format, which rebuilds target (at targetPath) from base on hardware.
func NewDeltaTarget(format, hardware string, base, target *metadata.TargetFiles, targetPath string, length int64, sum []byte) *metadata.TargetFiles {
	bc, _ := TargetCustom(base)
	return &metadata.TargetFiles{Length: length, Hashes: metadata.Hashes{"sha256": sum}, Custom: DeltaCustom(Delta{
		Format: format, HardwareID: hardware, BaseSHA256: hex.EncodeToString(base.Hashes["sha256"]), BaseLength: base.Length,
		BaseVersion: bc.Version, Target: targetPath, TargetSHA256: hex.EncodeToString(target.Hashes["sha256"]), TargetLength: target.Length,
	})}
}

// TargetDelta decodes a delta target's custom metadata.
func TargetDelta(tf *metadata.TargetFiles) (Delta, error) {
	if tf == nil || tf.Custom == nil {
		return Delta{}, errors.New("target has no custom metadata")
	}
	var c deltaCustom
	if err := json.Unmarshal(*tf.Custom, &c); err != nil {
		return Delta{}, fmt.Errorf("decode delta custom metadata: %w", err)
	}
	if c.Delta == nil {
		return Delta{}, errors.New("target is not a delta")
	}
	return *c.Delta, nil
}

// DeltaPath names the delta from the image with sha256 baseSHA to the
// full target, for one hardware ID.
func DeltaPath(hardwareID, baseSHA, target string) string {
	hw := strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r == '*' || r < ' ' {
			return '_'
		}
		return r
	}, hardwareID)
	return "deltas/" + hw + "/" + path.Base(target) + ".from-" + baseSHA[:min(16, len(baseSHA))] + ".rsdelta"
}

// DelegateDeltas makes t delegate DeltaPaths to key (the server's online
// deltas key), replacing any earlier deltas delegation.
func DelegateDeltas(t *metadata.TargetsType, key *metadata.Key) {
	if t.Delegations == nil {
		t.Delegations = &metadata.Delegations{Keys: map[string]*metadata.Key{}}
	}
	d := t.Delegations
	if d.Keys == nil {
		d.Keys = map[string]*metadata.Key{}
	}
	roles := d.Roles[:0]
	for _, r := range d.Roles {
		if r.Name != DeltaRole {
			roles = append(roles, r)
		}
	}
	id, _ := key.ID()
	d.Keys[id] = key
	d.Roles = append(roles, metadata.DelegatedRole{Name: DeltaRole, KeyIDs: []string{id}, Threshold: 1, Paths: DeltaPaths, Terminating: true})
}

// DeltaDelegation returns the key IDs t delegates deltas to (nil: none).
func DeltaDelegation(t *metadata.TargetsType) []string {
	if t.Delegations == nil {
		return nil
	}
	for _, r := range t.Delegations.Roles {
		if r.Name == DeltaRole {
			return r.KeyIDs
		}
	}
	return nil
}
