// Package meta holds what signer, server and agent share about TUF
// metadata: the custom fields of a Roadsign target, expiry rounding,
// signing and root-chain verification.
package meta

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/keys"
)

// Custom is the custom metadata the signer puts on every image target.
// Versions are strings and counters integers: canonical JSON has no floats.
type Custom struct {
	ECU            string   `json:"ecuType"`
	HardwareIDs    []string `json:"hardwareIds"`
	Version        string   `json:"version"`
	ReleaseCounter int64    `json:"releaseCounter"`
	ReleaseNotes   string   `json:"releaseNotes,omitempty"`
	// AllowDowngrade lets a forced dealer job install this image over a
	// newer one (the signer must opt in with --allow-downgrade).
	AllowDowngrade bool `json:"allowDowngrade,omitempty"`
	// Requires are the versions other ECUs of the vehicle must run with
	// this image installed: the director never issues it otherwise.
	Requires []Requirement `json:"requires,omitempty"`
}

// TargetCustom decodes a target's custom metadata.
func TargetCustom(tf *metadata.TargetFiles) (Custom, error) {
	var c Custom
	if tf == nil || tf.Custom == nil {
		return c, errors.New("target has no custom metadata")
	}
	if err := json.Unmarshal(*tf.Custom, &c); err != nil {
		return c, fmt.Errorf("decode target custom metadata: %w", err)
	}
	return c, nil
}

// Supports reports whether the target is built for this ECU type and hardware ID.
func (c Custom) Supports(ecu, hardwareID string) bool {
	return c.ECU == ecu && slices.Contains(c.HardwareIDs, hardwareID)
}

// Latest returns the image with the highest release counter built for an
// ECU type and hardware ID (ties: the greatest path).
func Latest(targets map[string]*metadata.TargetFiles, ecuType, hw string) (string, *metadata.TargetFiles, Custom, bool) {
	var best string
	var bc Custom
	for p, tf := range targets {
		c, err := TargetCustom(tf)
		if err != nil || !c.Supports(ecuType, hw) {
			continue
		}
		if best == "" || c.ReleaseCounter > bc.ReleaseCounter || (c.ReleaseCounter == bc.ReleaseCounter && p > best) {
			best, bc = p, c
		}
	}
	if best == "" {
		return "", nil, bc, false
	}
	return best, targets[best], bc, true
}

// ConsistentPath is where a target is stored under consistent snapshots:
// DIR/SHA256.NAME for target path DIR/NAME. With escape, each segment is
// URL-path-escaped, ready to append to a base URL.
func ConsistentPath(targetPath, sha256hex string, escape bool) string {
	dir, name := path.Split(targetPath)
	p := dir + sha256hex + "." + name
	if !escape {
		return p
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}

// Expires returns now+d in UTC truncated to the second: other TUF clients
// reject expiry timestamps with fractional seconds.
func Expires(now time.Time, d time.Duration) time.Time {
	return now.Add(d).UTC().Truncate(time.Second)
}

// Sign replaces the signatures on m with signatures by ks (go-tuf's Sign
// appends, so stale signatures would otherwise pile up).
func Sign[T metadata.Roles](m *metadata.Metadata[T], ks ...*keys.Key) error {
	m.ClearSignatures()
	for _, k := range ks {
		if _, err := m.Sign(k.Signer); err != nil {
			return fmt.Errorf("sign with key %s: %w", k.ID, err)
		}
	}
	return nil
}

// VerifyNextRoot checks that next is a valid successor of trusted: version
// exactly one higher, signed by a threshold of the trusted root's keys and
// by a threshold of its own keys.
func VerifyNextRoot(trusted, next *metadata.Metadata[metadata.RootType]) error {
	if next.Signed.Type != metadata.ROOT {
		return fmt.Errorf("root version %d: wrong type %q", next.Signed.Version, next.Signed.Type)
	}
	if next.Signed.Version != trusted.Signed.Version+1 {
		return fmt.Errorf("root version %d does not follow version %d", next.Signed.Version, trusted.Signed.Version)
	}
	if err := trusted.VerifyDelegate(metadata.ROOT, next); err != nil {
		return fmt.Errorf("root version %d is not signed by a threshold of root version %d's keys: %w", next.Signed.Version, trusted.Signed.Version, err)
	}
	if err := next.VerifyDelegate(metadata.ROOT, next); err != nil {
		return fmt.Errorf("root version %d is not signed by a threshold of its own keys: %w", next.Signed.Version, err)
	}
	return nil
}

// RoleKeyIDs returns the key IDs and threshold root assigns to role.
func RoleKeyIDs(root *metadata.RootType, role string) ([]string, int) {
	r, ok := root.Roles[role]
	if !ok {
		return nil, 0
	}
	return r.KeyIDs, r.Threshold
}

// OnlineKeys is online-keys.json: the public halves of the keys the server
// signs with, written by `roadsign-server init` and read by `roadsign-signer
// init` to build roots that delegate to them.
type OnlineKeys struct {
	Image struct {
		Snapshot  *metadata.Key `json:"snapshot"`
		Timestamp *metadata.Key `json:"timestamp"`
		// Deltas signs the delegated role for deltas (DeltaRole); servers
		// before deltas had none.
		Deltas *metadata.Key `json:"deltas,omitempty"`
	} `json:"image"`
	Director struct {
		Targets   *metadata.Key `json:"targets"`
		Snapshot  *metadata.Key `json:"snapshot"`
		Timestamp *metadata.Key `json:"timestamp"`
		// Time signs time attestations (role "time" of the director
		// root); servers before secure time had none.
		Time *metadata.Key `json:"time,omitempty"`
	} `json:"director"`
}

// Validate checks that every key is present and ed25519.
func (o *OnlineKeys) Validate() error {
	for name, k := range map[string]*metadata.Key{
		"image.snapshot": o.Image.Snapshot, "image.timestamp": o.Image.Timestamp,
		"director.targets": o.Director.Targets, "director.snapshot": o.Director.Snapshot, "director.timestamp": o.Director.Timestamp,
	} {
		if k == nil {
			return fmt.Errorf("online keys: %s is missing", name)
		}
		if _, err := k.ToPublicKey(); err != nil {
			return fmt.Errorf("online keys: %s: %w", name, err)
		}
	}
	return nil
}

// KeyID returns k's TUF key ID, or "" for a nil or malformed key.
func KeyID(k *metadata.Key) string {
	if k == nil {
		return ""
	}
	id, err := k.ID()
	if err != nil {
		return ""
	}
	return id
}

// SignSnapshot returns a signed snapshot naming targets version targetsV,
// with custom (if not nil) as its signed "custom" object.
func SignSnapshot(version, targetsV int64, expires time.Time, custom map[string]any, k *keys.Key) ([]byte, error) {
	return SignSnapshotRoles(version, map[string]int64{metadata.TARGETS: targetsV}, expires, custom, k)
}

// SignSnapshotRoles is SignSnapshot naming the versions of several
// targets roles (top-level "targets" and delegated ones).
func SignSnapshotRoles(version int64, roles map[string]int64, expires time.Time, custom map[string]any, k *keys.Key) ([]byte, error) {
	snap := metadata.Snapshot(expires)
	snap.Signed.Version = version
	for role, v := range roles {
		snap.Signed.Meta[role+".json"] = metadata.MetaFile(v)
	}
	if custom != nil {
		snap.Signed.UnrecognizedFields = map[string]any{"custom": custom}
	}
	if err := Sign(snap, k); err != nil {
		return nil, err
	}
	raw, err := snap.ToBytes(false)
	if err != nil {
		return nil, fmt.Errorf("encode snapshot v%d: %w", version, err)
	}
	return raw, nil
}

// SignTimestamp returns a signed timestamp naming snapshot version snapV
// with its length and sha256 (so a swapped snapshot file is caught), with
// custom (if not nil) as its signed "custom" object.
func SignTimestamp(version, snapV int64, snapRaw []byte, expires time.Time, custom map[string]any, k *keys.Key) ([]byte, error) {
	ts := metadata.Timestamp(expires)
	ts.Signed.Version = version
	if custom != nil {
		ts.Signed.UnrecognizedFields = map[string]any{"custom": custom}
	}
	sum := sha256.Sum256(snapRaw)
	mf := metadata.MetaFile(snapV)
	mf.Length, mf.Hashes = int64(len(snapRaw)), metadata.Hashes{"sha256": sum[:]}
	ts.Signed.Meta["snapshot.json"] = mf
	if err := Sign(ts, k); err != nil {
		return nil, err
	}
	raw, err := ts.ToBytes(false)
	if err != nil {
		return nil, fmt.Errorf("encode timestamp v%d: %w", version, err)
	}
	return raw, nil
}

// HashesEqual reports whether two targets' hashes are the same set, each
// equal (a target with none equals nothing).
func HashesEqual(a, b metadata.Hashes) bool {
	if len(a) == 0 || len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}
