// Package vehicleauth is how a vehicle proves who it is to the server:
// every request carries an ed25519 signature, by the key registered for
// its VIN, over the method, path, time and body hash; check-in manifests
// are signed documents with a nonce. Agent and server both use it.
package vehicleauth

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Scheme is the Authorization scheme of a signed vehicle request.
const Scheme = "RoadsignVehicle"

// MaxSkew is how far a request's time may be from the server's.
const MaxSkew = 5 * time.Minute

// ErrBadSignature is returned when a signature does not verify.
var ErrBadSignature = errors.New("vehicle signature does not verify")

// ClockSkewError is returned for a request whose signature verifies but
// whose time is more than MaxSkew from the verifier's clock: the vehicle's
// key is fine, its clock is not.
type ClockSkewError struct {
	// Skew is the verifier's time minus the request's.
	Skew time.Duration
}

func (e *ClockSkewError) Error() string {
	dir := "behind"
	if e.Skew < 0 {
		dir = "ahead of"
	}
	return fmt.Sprintf("the vehicle clock is %s %s the server's (more than %s): fix the vehicle clock (GNSS or network time) and retry",
		e.Skew.Abs().Round(time.Second), dir, MaxSkew)
}

func stringToSign(method, path, vin string, ts int64, body []byte) []byte {
	sum := sha256.Sum256(body)
	return []byte("roadsign-vehicle-request-v1\n" + method + "\n" + path + "\n" + vin + "\n" + strconv.FormatInt(ts, 10) + "\n" + hex.EncodeToString(sum[:]))
}

// Header returns the Authorization header value for a request.
func Header(key ed25519.PrivateKey, vin, method, path string, body []byte, now time.Time) string {
	ts := now.Unix()
	sig := ed25519.Sign(key, stringToSign(method, path, vin, ts, body))
	return fmt.Sprintf("%s vin=%s,ts=%d,sig=%s", Scheme, vin, ts, base64.RawURLEncoding.EncodeToString(sig))
}

// Claim is a parsed, not yet verified, vehicle Authorization header.
type Claim struct {
	VIN string
	TS  int64
	Sig []byte
}

// Parse reads an Authorization header; ok is false if it is not ours.
func Parse(h string) (Claim, bool, error) {
	rest, ok := strings.CutPrefix(h, Scheme+" ")
	if !ok {
		return Claim{}, false, nil
	}
	var c Claim
	for _, kv := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(kv), "=")
		switch k {
		case "vin":
			c.VIN = v
		case "ts":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return c, true, errors.New("vehicle auth: bad ts")
			}
			c.TS = n
		case "sig":
			b, err := base64.RawURLEncoding.DecodeString(v)
			if err != nil {
				return c, true, errors.New("vehicle auth: bad sig")
			}
			c.Sig = b
		}
	}
	if c.VIN == "" || c.TS == 0 || len(c.Sig) != ed25519.SignatureSize {
		return c, true, errors.New("vehicle auth: want vin=, ts= and sig=")
	}
	return c, true, nil
}

// Verify checks a claim against the VIN's registered key, then its time.
// The signature comes first: only the key's holder learns that its clock
// is off (*ClockSkewError); anyone else gets ErrBadSignature.
func (c Claim) Verify(pub ed25519.PublicKey, method, path string, body []byte, now time.Time) error {
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, stringToSign(method, path, c.VIN, c.TS, body), c.Sig) {
		return ErrBadSignature
	}
	if d := now.Sub(time.Unix(c.TS, 0)); d > MaxSkew || d < -MaxSkew {
		return &ClockSkewError{Skew: d}
	}
	return nil
}

// ECUReport is one ECU's entry in a manifest.
type ECUReport struct {
	Serial          string `json:"serial"`
	InstalledTarget string `json:"installedTarget"`
	Version         string `json:"version"`
	SHA256          string `json:"sha256"`
	Length          int64  `json:"length"`
	LastResult      string `json:"lastResult,omitempty"`
}

// Manifest is what a vehicle reports at check-in.
type Manifest struct {
	VIN   string      `json:"vin"`
	Nonce string      `json:"nonce"`
	Time  time.Time   `json:"time"`
	ECUs  []ECUReport `json:"ecus"`
	// Offline lists installs done without the server (USB), for the record.
	Offline []string `json:"offline,omitempty"`
	// DTCs are the active diagnostic trouble codes.
	DTCs []string `json:"dtcs,omitempty"`
}

// SignedManifest is the body of POST /api/v1/vehicles/{vin}/manifest:
// Signed is the manifest's exact JSON bytes, Signature their ed25519
// signature (base64).
type SignedManifest struct {
	Signed    []byte `json:"signed"`
	Signature []byte `json:"signature"`
}

// VerifyManifest checks the signature over the exact signed bytes.
func (m SignedManifest) Verify(pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, m.Signed, m.Signature) {
		return ErrBadSignature
	}
	return nil
}
