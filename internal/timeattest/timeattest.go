// Package timeattest is the server's signed word on the time, given to one
// vehicle for one nonce it sent: the vehicle's secure source of time
// (Uptane: ECUs "SHALL have a secure source of time"). The key that signs
// it is an online key of the server listed in the director's root under
// the role "time", so it rotates with that root and a vehicle trusts only
// what its verified director root names.
package timeattest

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Role is the director root's role for the time key.
const Role = "time"

// Statement is what the server attests: the time at which it answered
// VIN's nonce, and how long the vehicle may count on from it with its own
// monotonic clock before it asks again.
type Statement struct {
	VIN   string    `json:"vin"`
	Nonce string    `json:"nonce"`
	Time  time.Time `json:"time"`
	// ValidSeconds bounds how long the vehicle counts on from Time.
	ValidSeconds int64 `json:"validSeconds"`
}

// Attestation is a signed Statement: Signed is its JSON, exactly as
// signed (base64 in JSON).
type Attestation struct {
	Signed []byte `json:"signed"`
	KeyID  string `json:"keyid"`
	Sig    []byte `json:"sig"`
}

// Validity is how long a vehicle counts on from one attestation.
const Validity = 24 * time.Hour

var nonceRE = regexp.MustCompile(`^[0-9a-f]{32,64}$`)

// Errors of Verify, for the agent's refusal reasons.
var (
	ErrSignature = errors.New("time attestation not signed by the director root's time key")
	ErrNonce     = errors.New("time attestation answers another nonce (replayed)")
	ErrVIN       = errors.New("time attestation is for another vehicle")
	ErrNoKey     = errors.New("the director root lists no time key")
)

// Sign signs s with the time key (ed25519).
func Sign(priv ed25519.PrivateKey, keyID string, s Statement) (Attestation, error) {
	if !nonceRE.MatchString(s.Nonce) {
		return Attestation{}, fmt.Errorf("nonce must be 32 to 64 hex digits")
	}
	b, err := json.Marshal(s)
	if err != nil {
		return Attestation{}, err
	}
	return Attestation{Signed: b, KeyID: keyID, Sig: ed25519.Sign(priv, b)}, nil
}

// Verify checks that a is signed by a key the root lists for Role, for
// this VIN and nonce, and returns what it says.
func Verify(root *metadata.Metadata[metadata.RootType], a Attestation, vin, nonce string) (Statement, error) {
	role, ok := root.Signed.Roles[Role]
	if !ok || len(role.KeyIDs) == 0 {
		return Statement{}, ErrNoKey
	}
	signedBy := false
	for _, id := range role.KeyIDs {
		k, ok := root.Signed.Keys[id]
		if !ok || id != a.KeyID || k.Type != metadata.KeyTypeEd25519 {
			continue
		}
		pub, err := hex.DecodeString(k.Value.PublicKey)
		if err == nil && len(pub) == ed25519.PublicKeySize && ed25519.Verify(pub, a.Signed, a.Sig) {
			signedBy = true
		}
	}
	if !signedBy {
		return Statement{}, ErrSignature
	}
	var s Statement
	if err := json.Unmarshal(a.Signed, &s); err != nil {
		return Statement{}, fmt.Errorf("time attestation: %w", err)
	}
	switch {
	case s.VIN != vin:
		return Statement{}, ErrVIN
	case s.Nonce != nonce:
		return Statement{}, ErrNonce
	case s.ValidSeconds <= 0 || s.Time.IsZero():
		return Statement{}, errors.New("time attestation without a time or a validity")
	}
	return s, nil
}
