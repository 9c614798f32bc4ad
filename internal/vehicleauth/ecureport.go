package vehicleauth

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ECUVersionReport is what one ECU signs about itself every cycle, with
// its own key (Uptane 2.1, "ECU version report"): the image it runs, an
// attack or refusal it detected, the latest time it can vouch for, and a
// counter that rises with every report, so the server refuses a report
// played back from an earlier cycle.
type ECUVersionReport struct {
	ECUSerial      string         `json:"ecuSerial"`
	InstalledImage InstalledImage `json:"installedImage"`
	// AttackDetected, when set, says why the ECU refused what it was
	// sent (metadata or an image the director did not sign for it).
	AttackDetected string    `json:"attackDetected,omitempty"`
	LatestTime     time.Time `json:"latestTime"`
	Counter        int64     `json:"reportCounter"`
}

// InstalledImage names the image an ECU runs: its target filename, length
// and hashes (hex).
type InstalledImage struct {
	Filename string            `json:"filename"`
	Length   int64             `json:"length"`
	Hashes   map[string]string `json:"hashes"`
}

// SignedECUReport is an ECUVersionReport's exact JSON bytes and the ECU's
// ed25519 signature over them (with ecuReportContext before them, so no
// other document signed by the same key verifies as a report).
type SignedECUReport struct {
	Signed    []byte `json:"signed"`
	Signature []byte `json:"signature"`
}

// ecuReportContext separates report signatures from every other
// signature by the same key (a primary's key also signs requests and
// manifests).
const ecuReportContext = "roadsign-ecu-version-report-v1\n"

// MaxECUReport bounds one signed report's JSON.
const MaxECUReport = 4 << 10

// ErrECUReportSignature is returned when a report's signature does not
// verify with the key it is checked against.
var ErrECUReportSignature = errors.New("ECU version report signature does not verify")

// SignECUReport signs r with the ECU's key.
func SignECUReport(key ed25519.PrivateKey, r ECUVersionReport) (SignedECUReport, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return SignedECUReport{}, err
	}
	return SignedECUReport{Signed: b, Signature: ed25519.Sign(key, append([]byte(ecuReportContext), b...))}, nil
}

// Peek decodes the report without checking its signature: which ECU it
// claims to be from, to find the key to check it with.
func (s SignedECUReport) Peek() (ECUVersionReport, error) {
	var r ECUVersionReport
	if len(s.Signed) > MaxECUReport {
		return r, fmt.Errorf("ECU version report is %d bytes; at most %d", len(s.Signed), MaxECUReport)
	}
	if err := json.Unmarshal(s.Signed, &r); err != nil {
		return r, fmt.Errorf("ECU version report: %v", err)
	}
	if r.ECUSerial == "" {
		return r, errors.New("ECU version report names no ECU serial")
	}
	return r, nil
}

// Open checks the report's signature with pub and decodes it.
func (s SignedECUReport) Open(pub ed25519.PublicKey) (ECUVersionReport, error) {
	r, err := s.Peek()
	if err != nil {
		return r, err
	}
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, append([]byte(ecuReportContext), s.Signed...), s.Signature) {
		return r, ErrECUReportSignature
	}
	return r, nil
}
