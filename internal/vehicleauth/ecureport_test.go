package vehicleauth

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"
)

// FuzzECUReport: a signed ECU report from the vehicle network, whatever
// its bytes, never panics and never opens with a key that did not sign
// it; one that was signed opens only with its signer's key.
func FuzzECUReport(f *testing.F) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	good, _ := SignECUReport(priv, ECUVersionReport{ECUSerial: "DCM1", Counter: 1, LatestTime: time.Unix(0, 0)})
	f.Add(good.Signed, good.Signature)
	f.Add([]byte(`{"ecuSerial":""}`), []byte{})
	f.Add([]byte(`not json`), make([]byte, 64))
	f.Fuzz(func(t *testing.T, signed, sig []byte) {
		s := SignedECUReport{Signed: signed, Signature: sig}
		s.Peek()
		if _, err := s.Open(other); err == nil {
			t.Fatal("a report opened with a key that never signed anything")
		}
		if _, err := s.Open(pub); err == nil && string(signed) != string(good.Signed) {
			t.Fatal("a report the key never signed opened with it")
		}
		resigned, err := SignECUReport(priv, ECUVersionReport{ECUSerial: string(signed)})
		if err != nil {
			return
		}
		_, perr := resigned.Peek()
		if _, err := resigned.Open(pub); err != nil && perr == nil {
			t.Fatalf("a report signed by the key did not open with it: %v", err)
		}
	})
}
