package vehicleauth

import (
	"bytes"
	"crypto/ed25519"
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
	f.Add("JTMBFREV0N0000001", "v1:1800000000:")
	f.Add("", "v1::::")
	f.Add("JTMBFREV0N0000001", "v2:1:AAAA")
	f.Fuzz(func(t *testing.T, vin, password string) {
		// ed25519 signatures are deterministic: the only valid passwords
		// for this key and VIN are the ones it makes within the window.
		if VerifyMQTTPassword(vin, password, pub, now) == nil && !legit(vin, password, key, now) {
			t.Fatalf("accepted %q for %q", password, vin)
		}
	})
}

// legit reports whether password is the key's credential for vin at some
// second within the accepted window.
func legit(vin, password string, key ed25519.PrivateKey, now time.Time) bool {
	for d := -MaxSkew; d <= MaxSkew; d += time.Second {
		if MQTTPassword(vin, key, now.Add(d)) == password {
			return true
		}
	}
	return false
}
