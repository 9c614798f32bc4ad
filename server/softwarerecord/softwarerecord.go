// Package softwarerecord exports a vehicle's software record (every
// install attempt per ECU, UN R156 / ISO 24089) as JSON pages, as CSV, and
// as a signed document a third party can check offline with the server's
// published online key (the image timestamp key in online-keys.json).
//
// The signed form is streamed as JSON lines, so a record of any length is
// written and checked in constant memory:
//
//	{"format":"roadsign-software-record","version":2,"vin":"…","generatedAt":"…","keyId":"…"}
//	{…one server.SoftwareRecord per line…}
//	{"entries":N,"signature":"HEX"}
//
// The signature is Ed25519ph (RFC 8032: ed25519 over the SHA-512 of every
// byte before the last line) with the context string Context. The context
// keeps the record's signatures apart from every other use of the key: a
// TUF metadata signature by the same key (pure ed25519, no context) never
// verifies as a record, nor a record's as metadata. Verification also
// requires the VIN the reader expects, so one car's record is never
// taken for another's.
package softwarerecord

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/server"
)

// Format and Version name the signed form; Context is its signing context.
const (
	Format  = "roadsign-software-record"
	Version = 2
	Context = "roadsign-software-record-v2"
)

// maxLine bounds one line of a signed record when it is read back.
const maxLine = 64 << 10

// Document is a page of a vehicle's record as exported.
type Document struct {
	VIN         string                  `json:"vin"`
	GeneratedAt time.Time               `json:"generatedAt"`
	Entries     []server.SoftwareRecord `json:"entries"`
	// NextAfter, when set, is the after= of the next page.
	NextAfter int64 `json:"nextAfter,omitempty"`
}

// Header is the first line of a signed record.
type Header struct {
	Format      string    `json:"format"`
	Version     int       `json:"version"`
	VIN         string    `json:"vin"`
	GeneratedAt time.Time `json:"generatedAt"`
	KeyID       string    `json:"keyId"`
}

// Trailer is the last line of a signed record.
type Trailer struct {
	Entries   int64  `json:"entries"`
	Signature string `json:"signature"`
}

var signOpts = &ed25519.Options{Hash: crypto.SHA512, Context: Context}

// Writer streams a signed record: NewWriter writes the header, Add each
// entry, Close the signature.
type Writer struct {
	w   io.Writer
	h   hash.Hash
	key *keys.Key
	n   int64
}

// NewWriter starts a signed record of vin on w.
func NewWriter(w io.Writer, vin string, at time.Time, key *keys.Key) (*Writer, error) {
	sw := &Writer{w: w, h: sha512.New(), key: key}
	return sw, sw.line(Header{Format: Format, Version: Version, VIN: vin, GeneratedAt: at.UTC(), KeyID: key.ID})
}

func (sw *Writer) line(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	sw.h.Write(b)
	_, err = sw.w.Write(b)
	return err
}

// Add writes one entry.
func (sw *Writer) Add(r server.SoftwareRecord) error {
	sw.n++
	return sw.line(r)
}

// Close signs what was written and writes the trailer.
func (sw *Writer) Close() error {
	sig, err := sw.key.Private.Sign(nil, sw.h.Sum(nil), signOpts)
	if err != nil {
		return fmt.Errorf("sign software record: %w", err)
	}
	b, _ := json.Marshal(Trailer{Entries: sw.n, Signature: hex.EncodeToString(sig)})
	_, err = sw.w.Write(append(b, '\n'))
	return err
}

// Verify reads a signed record of vin from r, checking it against the
// server's public key, and calls each (if set) with every entry in order.
// Entries are handed out before the signature is checked at the end: a
// caller that acts on them must wait for a nil error.
func Verify(r io.Reader, pub ed25519.PublicKey, vin string, each func(server.SoftwareRecord) error) (Header, int64, error) {
	br := bufio.NewReaderSize(r, 4096)
	h := sha512.New()
	readLine := func() ([]byte, error) {
		var line []byte
		for {
			part, err := br.ReadSlice('\n')
			line = append(line, part...)
			if len(line) > maxLine {
				return nil, fmt.Errorf("a line is over %d bytes: not a signed software record", maxLine)
			}
			if err == bufio.ErrBufferFull {
				continue
			}
			return line, err
		}
	}
	first, err := readLine()
	if err != nil && !(errors.Is(err, io.EOF) && len(first) > 0) {
		return Header{}, 0, fmt.Errorf("not a signed software record: %w", err)
	}
	var hd Header
	if json.Unmarshal(first, &hd) != nil || hd.Format != Format {
		return Header{}, 0, errors.New("not a signed software record (its first line is not a roadsign-software-record header)")
	}
	if hd.Version != Version {
		return hd, 0, fmt.Errorf("software record format version %d; this verifier reads version %d", hd.Version, Version)
	}
	if hd.VIN != vin {
		return hd, 0, fmt.Errorf("this is the software record of %s, not of %s", hd.VIN, vin)
	}
	h.Write(first)
	var n int64
	for {
		line, err := readLine()
		if len(line) == 0 && errors.Is(err, io.EOF) {
			return hd, n, errors.New("the record ends without its signature: it was cut short")
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return hd, n, err
		}
		var t Trailer
		if bytes.HasPrefix(line, []byte(`{"entries":`)) && json.Unmarshal(line, &t) == nil {
			sig, derr := hex.DecodeString(t.Signature)
			if derr != nil || ed25519.VerifyWithOptions(pub, h.Sum(nil), sig, signOpts) != nil {
				return hd, n, errors.New("the signature does not verify with the server's key: the record was altered or signed by someone else")
			}
			if t.Entries != n {
				return hd, n, fmt.Errorf("the record says %d entries and holds %d", t.Entries, n)
			}
			if rest, _ := br.Peek(1); len(rest) > 0 {
				return hd, n, errors.New("there is more after the signature: not one signed record")
			}
			return hd, n, nil
		}
		var e server.SoftwareRecord
		if err := json.Unmarshal(line, &e); err != nil {
			return hd, n, fmt.Errorf("entry %d: %w", n+1, err)
		}
		if e.VIN != vin {
			return hd, n, fmt.Errorf("entry %d is for %s, not %s", n+1, e.VIN, vin)
		}
		h.Write(line)
		n++
		if each != nil {
			if err := each(e); err != nil {
				return hd, n, err
			}
		}
	}
}

// CSVHeader is the CSV's first row.
var CSVHeader = []string{"at", "vin", "ecu_serial", "ecu_type", "from_version", "from_sha256", "to_version", "to_sha256", "via", "job_id", "campaign_id", "outcome", "detail"}

// CSVWriter streams the record as CSV, oldest first.
type CSVWriter struct{ cw *csv.Writer }

// NewCSVWriter writes the header row.
func NewCSVWriter(w io.Writer) (*CSVWriter, error) {
	cw := csv.NewWriter(w)
	return &CSVWriter{cw: cw}, cw.Write(CSVHeader)
}

// Add writes one row.
func (c *CSVWriter) Add(r server.SoftwareRecord) error {
	return c.cw.Write([]string{r.At.UTC().Format(time.RFC3339Nano), r.VIN, r.ECUSerial, r.ECUType, r.FromVersion, r.FromSHA256,
		r.ToVersion, r.ToSHA256, r.Via, r.JobID, r.CampaignID, r.Outcome, r.Detail})
}

// Close flushes.
func (c *CSVWriter) Close() error {
	c.cw.Flush()
	return c.cw.Error()
}
