package vehicleauth

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Push wake-ups: a vehicle logs in to the MQTT broker with its VIN as the
// user name and, as the password, a short-lived credential signed with its
// vehicle key ("v1:UNIXTIME:SIGNATURE"), so no password is shared and a
// captured one expires.

// WakeTopic is the one topic a vehicle may read.
func WakeTopic(vin string) string { return "roadsign/v1/vehicles/" + vin + "/wake" }

func mqttMessage(vin string, unix int64) []byte {
	return []byte("roadsign-mqtt:" + vin + ":" + strconv.FormatInt(unix, 10))
}

// MQTTPassword makes the vehicle's broker password at now.
func MQTTPassword(vin string, key ed25519.PrivateKey, now time.Time) string {
	t := now.Unix()
	return "v1:" + strconv.FormatInt(t, 10) + ":" + base64.RawStdEncoding.EncodeToString(ed25519.Sign(key, mqttMessage(vin, t)))
}

// VerifyMQTTPassword checks a broker password against the VIN's
// registered key and the clock (within MaxSkew).
func VerifyMQTTPassword(vin, password string, pub ed25519.PublicKey, now time.Time) error {
	parts := strings.Split(password, ":")
	if len(parts) != 3 || parts[0] != "v1" {
		return errors.New("not a Roadsign vehicle credential")
	}
	t, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return errors.New("credential time is not a number")
	}
	if d := now.Sub(time.Unix(t, 0)); d > MaxSkew || d < -MaxSkew {
		return fmt.Errorf("credential made %s from the server's time; check the vehicle clock", d.Round(time.Second))
	}
	sig, err := base64.RawStdEncoding.DecodeString(parts[2])
	if err != nil || len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, mqttMessage(vin, t), sig) {
		return errors.New("credential is not signed by the vehicle's registered key")
	}
	return nil
}
