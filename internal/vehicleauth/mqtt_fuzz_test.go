package vehicleauth

import (
	"bytes"
	"crypto/ed25519"
	"strings"
	"testing"
	"time"
)

// FuzzVerifyMQTTPassword: a broker password from anyone is accepted only
// when it is the vehicle's own signature, fresh; never a panic.
func FuzzVerifyMQTTPassword(f *testing.F) {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32))
	pub := key.Public().(ed25519.PublicKey)
	now := time.Unix(1_800_000_000, 0)
	good := MQTTPassword("JTMBFREV0N0000001", key, now)
	f.Add("JTMBFREV0N0000001", good)
	f.Add("JTMBFREV0N0000002", good)
	f.Add("JTMBFREV0N0000001", "v2:1800000000:"+strings.Repeat("ab", 16)+":")
	f.Add("", "v2::::")
	f.Add("JTMBFREV0N0000001", "v1:1:AAAA")
	f.Fuzz(func(t *testing.T, vin, password string) {
		nonce, err := VerifyMQTTPassword(vin, password, pub, now)
		// ed25519 signatures are deterministic: the only valid passwords
		// for this key, VIN and nonce are the ones it makes within the window.
		if err == nil && !legit(vin, password, nonce, key, now) {
			t.Fatalf("accepted %q for %q", password, vin)
		}
	})
}

// legit reports whether password is the key's credential for vin with
// nonce at some second within the accepted window.
func legit(vin, password, nonce string, key ed25519.PrivateKey, now time.Time) bool {
	for d := -MaxSkew; d <= MaxSkew; d += time.Second {
		if mqttPassword(vin, key, now.Add(d), nonce) == password {
			return true
		}
	}
	return false
}

// TestMQTTPasswordsDiffer: two credentials made in the same second differ
// (each has its own nonce), so a single-use broker never refuses the second.
func TestMQTTPasswordsDiffer(t *testing.T) {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	now := time.Unix(1_800_000_000, 0)
	a, b := MQTTPassword("JTMBFREV0N0000001", key, now), MQTTPassword("JTMBFREV0N0000001", key, now)
	if a == b {
		t.Fatal("two credentials made in the same second are equal")
	}
	na, errA := VerifyMQTTPassword("JTMBFREV0N0000001", a, key.Public().(ed25519.PublicKey), now)
	nb, errB := VerifyMQTTPassword("JTMBFREV0N0000001", b, key.Public().(ed25519.PublicKey), now)
	if errA != nil || errB != nil || na == nb {
		t.Fatalf("verify: %v %v, nonces %s %s", errA, errB, na, nb)
	}
}
