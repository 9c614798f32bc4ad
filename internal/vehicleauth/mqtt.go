package vehicleauth

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Push wake-ups: a vehicle logs in to the MQTT broker with its VIN as the
// user name, ClientID(VIN) as the client ID, and, as the password, a
// short-lived single-use credential signed with its vehicle key
// ("v2:UNIXTIME:NONCE:SIGNATURE"): no password is shared, a captured one
// expires, and the broker remembers each nonce, so it works once.

// WakeTopic is the one topic a vehicle may read.
func WakeTopic(vin string) string { return "roadsign/v1/vehicles/" + vin + "/wake" }

// ClientID is the only MQTT client ID a vehicle may use: a session is
// bound to the VIN that authenticated it, so no car can take over
// another's.
func ClientID(vin string) string { return "roadsign-" + vin }

func mqttMessage(vin string, unix int64, nonce string) []byte {
	return []byte("roadsign-mqtt-v2:" + vin + ":" + strconv.FormatInt(unix, 10) + ":" + nonce)
}

// MQTTPassword makes a fresh broker password for vin at now.
func MQTTPassword(vin string, key ed25519.PrivateKey, now time.Time) string {
	n := make([]byte, 16)
	rand.Read(n)
	return mqttPassword(vin, key, now, hex.EncodeToString(n))
}

func mqttPassword(vin string, key ed25519.PrivateKey, now time.Time, nonce string) string {
	t := now.Unix()
	return "v2:" + strconv.FormatInt(t, 10) + ":" + nonce + ":" + base64.RawStdEncoding.EncodeToString(ed25519.Sign(key, mqttMessage(vin, t, nonce)))
}

// VerifyMQTTPassword checks a broker password against the VIN's
// registered key and the clock (within MaxSkew), and returns its nonce:
// the caller must refuse a nonce it has seen before.
func VerifyMQTTPassword(vin, password string, pub ed25519.PublicKey, now time.Time) (string, error) {
	parts := strings.Split(password, ":")
	if len(parts) != 4 || parts[0] != "v2" {
		return "", errors.New("not a Roadsign vehicle credential (v2:TIME:NONCE:SIGNATURE)")
	}
	t, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return "", errors.New("credential time is not a number")
	}
	nonce := parts[2]
	if !isHex(nonce, 32) {
		return "", errors.New("credential nonce must be 32 hex digits")
	}
	if d := now.Sub(time.Unix(t, 0)); d > MaxSkew || d < -MaxSkew {
		return "", fmt.Errorf("credential made %s from the server's time; check the vehicle clock", d.Round(time.Second))
	}
	sig, err := base64.RawStdEncoding.DecodeString(parts[3])
	if err != nil || len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, mqttMessage(vin, t, nonce), sig) {
		return "", errors.New("credential is not signed by the vehicle's registered key")
	}
	return nonce, nil
}
