// Package vehicleauth is how a vehicle proves who it is to the server:
// every request carries an ed25519 signature, by the key registered for
// its VIN, over the method, host, path, query, the sha256 of the body (sent
// in the header, so the server checks the signature before reading any
// body), the time and a fresh nonce the server remembers (so a captured
// request cannot be replayed). Check-in manifests are signed documents
// with a nonce of their own. Agent and server both use it.
package vehicleauth

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Scheme is the Authorization scheme of a signed vehicle request.
const Scheme = "RoadsignVehicle"

// MaxSkew is how far a request's time may be from the server's; a nonce
// must be remembered at least twice as long.
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

// Claim is a parsed, not yet verified, vehicle Authorization header.
type Claim struct {
	VIN        string
	TS         int64
	Nonce      string // 32 hex digits
	BodySHA256 string // 64 hex digits
	Sig        []byte
}

// BodySHA256 is the hex sha256 of a request body (empty for none).
func BodySHA256(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

func (c Claim) stringToSign(r *http.Request, host string) []byte {
	return []byte(strings.Join([]string{"roadsign-vehicle-request-v2", r.Method, host, r.URL.EscapedPath(), r.URL.RawQuery,
		c.VIN, strconv.FormatInt(c.TS, 10), c.Nonce, c.BodySHA256}, "\n"))
}

// requestHost is the host a client addressed r to.
func requestHost(r *http.Request) string {
	if r.Host == "" && r.URL != nil {
		return r.URL.Host
	}
	return r.Host
}

// Nonce returns a fresh random nonce: 32 hex digits.
func Nonce() string {
	n := make([]byte, 16)
	rand.Read(n)
	return hex.EncodeToString(n)
}

// Sign sets req's Authorization header for a request with body, signed by
// key for vin at now with a fresh nonce.
func Sign(req *http.Request, key ed25519.PrivateKey, vin string, body []byte, now time.Time) {
	c := Claim{VIN: vin, TS: now.Unix(), Nonce: Nonce(), BodySHA256: BodySHA256(body)}
	c.Sig = ed25519.Sign(key, c.stringToSign(req, requestHost(req)))
	req.Header.Set("Authorization", fmt.Sprintf("%s vin=%s,ts=%d,nonce=%s,body=%s,sig=%s", Scheme, c.VIN, c.TS, c.Nonce, c.BodySHA256,
		base64.RawURLEncoding.EncodeToString(c.Sig)))
}

// Parse reads an Authorization header; ok is false if it is not ours.
// It checks only the form of each field, nothing cryptographic.
func Parse(h string) (Claim, bool, error) {
	rest, ok := strings.CutPrefix(h, Scheme+" ")
	if !ok {
		return Claim{}, false, nil
	}
	if len(rest) > 512 {
		return Claim{}, true, errors.New("vehicle auth: header too long")
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
		case "nonce":
			c.Nonce = v
		case "body":
			c.BodySHA256 = v
		case "sig":
			b, err := base64.RawURLEncoding.DecodeString(v)
			if err != nil {
				return c, true, errors.New("vehicle auth: bad sig")
			}
			c.Sig = b
		}
	}
	switch {
	case c.VIN == "" || len(c.VIN) > 32 || c.TS <= 0 || len(c.Sig) != ed25519.SignatureSize:
		return c, true, errors.New("vehicle auth: want vin=, ts=, nonce=, body= and sig=")
	case !isHex(c.Nonce, 32):
		return c, true, errors.New("vehicle auth: nonce= must be 32 hex digits")
	case !isHex(c.BodySHA256, 64):
		return c, true, errors.New("vehicle auth: body= must be the body's sha256, 64 hex digits")
	}
	return c, true, nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// Verify checks the claim's signature over r (method, host, path, query),
// with the key registered for the VIN, then its time. The host signed may
// be r's Host or one of publicHosts: the addresses vehicles are given,
// which a reverse proxy in front may have rewritten to its upstream's.
// The signature comes first: only the key's holder learns that its clock
// is off (*ClockSkewError); anyone else gets ErrBadSignature. The body is
// not read: the caller checks it against BodySHA256, and the nonce against
// the ones it has seen.
func (c Claim) Verify(pub ed25519.PublicKey, r *http.Request, now time.Time, publicHosts ...string) error {
	if len(pub) != ed25519.PublicKeySize {
		return ErrBadSignature
	}
	ok := ed25519.Verify(pub, c.stringToSign(r, requestHost(r)), c.Sig)
	for _, h := range publicHosts {
		if ok {
			break
		}
		ok = ed25519.Verify(pub, c.stringToSign(r, h), c.Sig)
	}
	if !ok {
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
	// EncryptionKey is the ECU's X25519 encryption key, reported until a
	// check-in succeeds after provisioning or replacement (the server
	// records it when it has none for the ECU).
	EncryptionKey []byte `json:"encryptionKey,omitempty"`
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
	// DTCDetails are the codes' episodes, active and recently cleared.
	DTCDetails []DTCEpisode `json:"dtcDetails,omitempty"`
	// Signal is the DCM's cellular signal when the manifest was made.
	Signal *SignalReport `json:"signal,omitempty"`
	// PrimarySerial, ECUReports and Unreachable make the manifest an
	// Uptane vehicle version manifest, for a vehicle whose ECUs have keys
	// of their own: the primary (the ECU whose key signs the manifest)
	// gathers one signed report from every ECU, its own included; an ECU
	// it cannot reach on the vehicle bus is listed in Unreachable instead.
	PrimarySerial string            `json:"primarySerial,omitempty"`
	ECUReports    []SignedECUReport `json:"ecuReports,omitempty"`
	Unreachable   []string          `json:"unreachable,omitempty"`
	// AttestTime asks for the server's signed time for Nonce in the
	// answer (internal/timeattest).
	AttestTime bool `json:"attestTime,omitempty"`
	// TimeUntrusted, when set, is why the vehicle holds no trusted time
	// (it installs nothing until it does): evidence for the diagnosis.
	TimeUntrusted string `json:"timeUntrusted,omitempty"`
}

// DTCEpisode is one diagnostic trouble code episode, the one type for it
// everywhere: the vehicle keeps its episodes (STATE/dtcs.json), reports
// them at check-in, and the server stores them as evidence. An episode
// runs from first seen to cleared (zero while active).
type DTCEpisode struct {
	Code string `json:"code"`
	// Description is the code's meaning in words (the vehicle's own list).
	Description string    `json:"description,omitempty"`
	FirstSeen   time.Time `json:"firstSeen"`
	LastSeen    time.Time `json:"lastSeen"`
	Count       int       `json:"count"`
	Detail      string    `json:"detail,omitempty"`
	ClearedAt   time.Time `json:"clearedAt,omitzero"`
	// SignalBars is the weakest cellular signal during the episode, 0 to
	// 5 (nil: unknown).
	SignalBars *int `json:"signalBars,omitempty"`
	// ReportedAt is when the server received it (the server's record).
	ReportedAt time.Time `json:"reportedAt,omitzero"`
}

// Active reports whether the code was still set when last seen.
func (e DTCEpisode) Active() bool { return e.ClearedAt.IsZero() }

// UnmarshalJSON also reads "since", the name vehicles provisioned before
// this type was shared stored FirstSeen under.
func (e *DTCEpisode) UnmarshalJSON(b []byte) error {
	type plain DTCEpisode
	var v struct {
		plain
		Since time.Time `json:"since"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*e = DTCEpisode(v.plain)
	if e.FirstSeen.IsZero() {
		e.FirstSeen = v.Since
	}
	return nil
}

// SignalReport is a cellular signal reading, 0 to 5 bars.
type SignalReport struct {
	Bars int       `json:"bars"`
	At   time.Time `json:"at"`
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
