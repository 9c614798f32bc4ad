// Package softwarerecord exports a vehicle's software record (every
// install attempt per ECU, UN R156 / ISO 24089) as JSON, as CSV, and as a
// signed document a third party can check offline with the server's
// published online key (the image timestamp key in online-keys.json).
//
// The signed form is {"payload": BASE64, "keyId": ID, "signature": HEX}:
// the signature is ed25519 over the payload's bytes exactly, and the
// payload is the JSON document {"vin", "generatedAt", "entries"}.
package softwarerecord

import (
	"crypto/ed25519"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/signer/keys"
)

// Document is a vehicle's record as exported.
type Document struct {
	VIN         string                  `json:"vin"`
	GeneratedAt time.Time               `json:"generatedAt"`
	Entries     []server.SoftwareRecord `json:"entries"`
}

// Signed is the signed export.
type Signed struct {
	Payload   []byte `json:"payload"`
	KeyID     string `json:"keyId"`
	Signature string `json:"signature"`
}

// Sign signs the document with the server's key.
func Sign(d Document, key *keys.Key) ([]byte, error) {
	payload, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	return json.MarshalIndent(Signed{Payload: payload, KeyID: key.ID, Signature: hex.EncodeToString(ed25519.Sign(key.Private, payload))}, "", "  ")
}

// Verify checks a signed export against the server's public key and
// returns the document it vouches for.
func Verify(b []byte, pub ed25519.PublicKey) (Document, error) {
	var s Signed
	if err := json.Unmarshal(b, &s); err != nil {
		return Document{}, fmt.Errorf("not a signed software record: %w", err)
	}
	sig, err := hex.DecodeString(s.Signature)
	if err != nil || !ed25519.Verify(pub, s.Payload, sig) {
		return Document{}, errors.New("the signature does not verify with the server's key: the record was altered or signed by someone else")
	}
	var d Document
	if err := json.Unmarshal(s.Payload, &d); err != nil {
		return Document{}, fmt.Errorf("signed payload: %w", err)
	}
	return d, nil
}

// Header is the CSV's first row.
var Header = []string{"at", "vin", "ecu_serial", "ecu_type", "from_version", "from_sha256", "to_version", "to_sha256", "via", "job_id", "campaign_id", "outcome", "detail"}

// WriteCSV writes the record as CSV, oldest first.
func WriteCSV(w io.Writer, recs []server.SoftwareRecord) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(Header); err != nil {
		return err
	}
	for _, r := range recs {
		row := []string{r.At.UTC().Format(time.RFC3339Nano), r.VIN, r.ECUSerial, r.ECUType, r.FromVersion, r.FromSHA256,
			r.ToVersion, r.ToSHA256, r.Via, r.JobID, r.CampaignID, r.Outcome, r.Detail}
		if err := cw.Write(row); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}
