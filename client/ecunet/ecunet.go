// Package ecunet is the in-vehicle protocol between a primary ECU and a
// secondary (docs/secondaries.md): length-bounded frames over one TCP
// connection, a JSON message or a chunk of image bytes each.
//
//	frame   = kind (1 byte: 'J' message, 'D' data) · length (4 bytes, big endian) · payload
//	message ≤ MaxMessage bytes of JSON with a "type"; data ≤ MaxChunk bytes
//
// The primary asks, the secondary answers each message with one message.
// A secondary serves one primary connection at a time; a new connection
// replaces the one before (the primary restarted or lost it).
// A secondary never trusts what the primary sends: it verifies the
// metadata against its own pinned roots and the image against the
// metadata before anything reaches its slot.
package ecunet

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// Version is the protocol version both ends state in hello.
const Version = 1

// Limits of one frame's payload.
const (
	MaxMessage = 8 << 20 // metadata of both repositories fits, with room
	MaxChunk   = 1 << 20
)

// Frame kinds.
const (
	KindMessage byte = 'J'
	KindData    byte = 'D'
)

// Message types: the primary's requests and the secondary's answers.
const (
	TypeHello   = "hello"   // → Hello
	TypeReport  = "report"  // → Report: the ECU's signed version report
	TypeOffer   = "offer"   // Offer → Verdict; if accepted, data frames, then End → Result
	TypeEnd     = "end"     // the image's last byte was sent
	TypeTrial   = "trial"   // → Result: switch to the new slot and trial-boot it
	TypeCommit  = "commit"  // → Result
	TypeRevert  = "revert"  // → Result: back to the old slot (its update set failed)
	TypeAbort   = "abort"   // → Result: drop a verified image that never switched
	TypeRecover = "recover" // → Result: finish what a power loss interrupted, once the primary settled its update set
	TypeStatus  = "status"  // → Status
	TypeError   = "error"   // the secondary refuses the request (and may close)
	TypeVerdict = "verdict" // an offer's answer
	TypeResult  = "result"  // an install step's answer
)

// Envelope is what every message has.
type Envelope struct {
	Type     string `json:"type"`
	Protocol int    `json:"protocol,omitempty"`
}

// Hello is a secondary's identity.
type Hello struct {
	Envelope
	VIN          string `json:"vin"`
	Serial       string `json:"serial"`
	ECUType      string `json:"ecuType"`
	HardwareID   string `json:"hardwareId"`
	PublicKey    []byte `json:"publicKey"`
	Verification string `json:"verification"`
	// Root versions it trusts: the primary sends the roots after them.
	DirectorRoot int64 `json:"directorRoot"`
	ImageRoot    int64 `json:"imageRoot,omitempty"`
}

// Report carries the ECU's signed version report.
type Report struct {
	Envelope
	Report vehicleauth.SignedECUReport `json:"report"`
}

// Offer is the metadata the primary fetched, for the secondary to verify
// itself: each repository's files by their names as served
// ("3.root.json", "timestamp.json", "7.snapshot.json", "9.targets.json").
// Image is empty for a partial-verification secondary.
type Offer struct {
	Envelope
	Director map[string][]byte `json:"director"`
	Image    map[string][]byte `json:"image,omitempty"`
	// Downgrade: the director's assignment is a forced dealer job.
	JobID string `json:"jobId,omitempty"`
}

// Verdict answers an offer: Accept with the target the secondary will
// take (then the primary sends exactly Length bytes of it), or why not.
// Nothing assigned is not a refusal: Accept false, Refused empty.
type Verdict struct {
	Envelope
	Accept  bool   `json:"accept"`
	Target  string `json:"target,omitempty"`
	Length  int64  `json:"length,omitempty"`
	SHA256  string `json:"sha256,omitempty"`
	Version string `json:"version,omitempty"`
	// Offset is where the image resumes (bytes already in the slot).
	Offset  int64  `json:"offset,omitempty"`
	Refused string `json:"refused,omitempty"`
	Detail  string `json:"detail,omitempty"`
}

// Result answers an install step.
type Result struct {
	Envelope
	OK bool `json:"ok"`
	// RolledBack: the trial boot failed and the ECU is on its old slot.
	RolledBack bool   `json:"rolledBack,omitempty"`
	Refused    string `json:"refused,omitempty"`
	Detail     string `json:"detail,omitempty"`
}

// Status is what the secondary runs, as the primary's status shows it.
type Status struct {
	Envelope
	Serial     string    `json:"serial"`
	ECUType    string    `json:"ecuType"`
	HardwareID string    `json:"hardwareId"`
	ActiveSlot string    `json:"activeSlot"`
	Version    string    `json:"version"`
	SHA256     string    `json:"sha256"`
	Target     string    `json:"target,omitempty"`
	LastResult string    `json:"lastResult,omitempty"`
	UpdatedAt  time.Time `json:"updatedAt"`
	// Length and ReleaseCounter of the active image; Trial while on trial;
	// Failed lists images that failed their boot check on it.
	Length         int64    `json:"length,omitempty"`
	ReleaseCounter int64    `json:"releaseCounter,omitempty"`
	Trial          bool     `json:"trial,omitempty"`
	Failed         []string `json:"failed,omitempty"`
}

// Revert says why the secondary goes back.
type Revert struct {
	Envelope
	Why string `json:"why"`
}

// Error is a refused request.
type Error struct {
	Envelope
	Message string `json:"message"`
}

// ErrProtocol is a malformed frame or message: the connection ends.
var ErrProtocol = errors.New("ecunet: protocol error")

// Conn is one side of a connection.
type Conn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
	// Timeout bounds each frame's read and write (0: none).
	Timeout time.Duration
}

// NewConn wraps c.
func NewConn(c net.Conn, timeout time.Duration) *Conn {
	return &Conn{c: c, r: bufio.NewReaderSize(c, 64<<10), w: bufio.NewWriterSize(c, 64<<10), Timeout: timeout}
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

func (c *Conn) deadline() {
	if c.Timeout > 0 {
		c.c.SetDeadline(time.Now().Add(c.Timeout))
	}
}

// Send writes one message.
func (c *Conn) Send(m any) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > MaxMessage {
		return fmt.Errorf("%w: message of %d bytes; at most %d", ErrProtocol, len(b), MaxMessage)
	}
	return c.frame(KindMessage, b)
}

// SendData writes one chunk of image bytes.
func (c *Conn) SendData(p []byte) error {
	if len(p) > MaxChunk {
		return fmt.Errorf("%w: chunk of %d bytes; at most %d", ErrProtocol, len(p), MaxChunk)
	}
	return c.frame(KindData, p)
}

func (c *Conn) frame(kind byte, p []byte) error {
	c.deadline()
	var h [5]byte
	h[0] = kind
	binary.BigEndian.PutUint32(h[1:], uint32(len(p)))
	if _, err := c.w.Write(h[:]); err != nil {
		return err
	}
	if _, err := c.w.Write(p); err != nil {
		return err
	}
	return c.w.Flush()
}

// Next reads one frame, refusing an unknown kind or an oversized one
// before reading its payload.
func (c *Conn) Next() (kind byte, payload []byte, err error) {
	c.deadline()
	var h [5]byte
	if _, err := io.ReadFull(c.r, h[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	switch {
	case h[0] == KindMessage && n > MaxMessage:
		return 0, nil, fmt.Errorf("%w: message frame of %d bytes; at most %d", ErrProtocol, n, MaxMessage)
	case h[0] == KindData && n > MaxChunk:
		return 0, nil, fmt.Errorf("%w: data frame of %d bytes; at most %d", ErrProtocol, n, MaxChunk)
	case h[0] != KindMessage && h[0] != KindData:
		return 0, nil, fmt.Errorf("%w: frame kind %q; want 'J' or 'D'", ErrProtocol, h[0])
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(c.r, payload); err != nil {
		return 0, nil, err
	}
	return h[0], payload, nil
}

// Recv reads one message of type want into v; an error message from the
// other side is returned as an error.
func (c *Conn) Recv(want string, v any) error {
	kind, p, err := c.Next()
	if err != nil {
		return err
	}
	if kind != KindMessage {
		return fmt.Errorf("%w: a data frame where a %s message was due", ErrProtocol, want)
	}
	var env Envelope
	if err := json.Unmarshal(p, &env); err != nil {
		return fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	if env.Type == TypeError {
		var e Error
		json.Unmarshal(p, &e)
		return fmt.Errorf("the other ECU refused: %s", e.Message)
	}
	if env.Type != want {
		return fmt.Errorf("%w: a %q message where a %s was due", ErrProtocol, env.Type, want)
	}
	if err := json.Unmarshal(p, v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrProtocol, want, err)
	}
	return nil
}
