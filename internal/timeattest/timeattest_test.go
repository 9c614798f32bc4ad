package timeattest

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

func root(t *testing.T, pub ed25519.PublicKey, withRole bool) *metadata.Metadata[metadata.RootType] {
	t.Helper()
	r := metadata.Root(time.Now().Add(time.Hour))
	k, err := metadata.KeyFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if withRole {
		r.Signed.Roles[Role] = &metadata.Role{KeyIDs: []string{}, Threshold: 1}
		if err := r.Signed.AddKey(k, Role); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func TestVerify(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	k, _ := metadata.KeyFromPublicKey(pub)
	id, _ := k.ID()
	const vin, nonce = "1RSDA0000000000A1", "00112233445566778899aabbccddeeff"
	s := Statement{VIN: vin, Nonce: nonce, Time: time.Now().UTC(), ValidSeconds: 60}
	good, err := Sign(priv, id, s)
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := Sign(other, id, s)
	tampered := good
	tampered.Signed = append([]byte(nil), good.Signed...)
	tampered.Signed[len(tampered.Signed)-3] ^= 1
	for _, tc := range []struct {
		name       string
		a          Attestation
		withRole   bool
		vin, nonce string
		want       error
	}{
		{"good", good, true, vin, nonce, nil},
		{"signed by another key", forged, true, vin, nonce, ErrSignature},
		{"statement changed", tampered, true, vin, nonce, ErrSignature},
		{"another nonce", good, true, vin, "ffeeddccbbaa99887766554433221100", ErrNonce},
		{"another VIN", good, true, "1RSDA0000000000B2", nonce, ErrVIN},
		{"a root without a time key", good, false, vin, nonce, ErrNoKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Verify(root(t, pub, tc.withRole), tc.a, tc.vin, tc.nonce)
			if !errors.Is(err, tc.want) || (err == nil && !got.Time.Equal(s.Time)) {
				t.Fatalf("Verify: %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := Sign(priv, id, Statement{VIN: vin, Nonce: "not hex"}); err == nil {
		t.Fatal("signed a statement with a malformed nonce")
	}
}
