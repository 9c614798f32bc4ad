// Package api is the agent's client for the server's REST API: vehicle
// registration, signed job events and signed check-in manifests.
package api

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/internal/timeattest"
	"github.com/roadsign/roadsign/internal/tlsconf"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// Client talks to one server as one vehicle.
type Client struct {
	Base string
	HTTP *http.Client
	VIN  string
	Key  ed25519.PrivateKey
	// Now is the clock requests are signed with, until UseClock.
	Now func() time.Time

	clockMu sync.Mutex
	clock   func() time.Time
}

// UseClock makes requests signed with clock from now on (a trusted time
// replacing the vehicle's RTC). Other goroutines may be signing with the
// client meanwhile (the wake listener).
func (c *Client) UseClock(clock func() time.Time) {
	c.clockMu.Lock()
	defer c.clockMu.Unlock()
	c.clock = clock
}

// now is the time a request is signed with.
func (c *Client) now() time.Time {
	c.clockMu.Lock()
	clock := c.clock
	c.clockMu.Unlock()
	if clock != nil {
		return clock()
	}
	return c.Now()
}

// Error is an error answer from the server.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("server answered %d %s: %s", e.Status, e.Code, e.Message)
}

// Sign adds the vehicle's signature to a request with the given body.
func (c *Client) Sign(req *http.Request, body []byte) {
	vehicleauth.Sign(req, c.Key, c.VIN, body, c.now())
}

// SignGet signs a body-less request (for the TUF fetcher).
func (c *Client) SignGet(req *http.Request) { c.Sign(req, nil) }

// do sends a JSON request; auth is "vehicle", a bearer token, or "".
func (c *Client) do(ctx context.Context, method, path, bearer string, in, out any) error {
	return c.send(ctx, method, path, bearer, true, in, out)
}

// send is do; sign says whether a request without a bearer token is
// signed with the vehicle key.
func (c *Client) send(ctx context.Context, method, path, bearer string, sign bool, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	} else if sign {
		c.Sign(req, body)
	}
	resp, err := c.HTTP.Do(req)
	if tlsconf.IsVerifyError(err) {
		return fmt.Errorf("%w: %s %s: %s", client.ErrRefused, method, path, download.TLSRefusal(err))
	}
	if err != nil {
		return fmt.Errorf("%w: %s %s: %v", client.ErrUnreachable, method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if tlsconf.IsPlainToTLS(resp.StatusCode, raw) {
		return fmt.Errorf("%w: %s %s: the server speaks HTTPS on this port: use https:// in the server URL", client.ErrUsage, method, path)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		json.Unmarshal(raw, &e)
		apiErr := &Error{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message}
		if resp.StatusCode >= 500 {
			return fmt.Errorf("%w: %w", client.ErrUnreachable, apiErr)
		}
		return apiErr
	}
	if out != nil && len(raw) > 0 {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// ECU is one ECU in a registration.
type ECU struct {
	Type       string `json:"type"`
	Serial     string `json:"serial"`
	HardwareID string `json:"hardwareId"`
	// PublicKey is the ECU's own key (base64 in JSON), for a vehicle
	// whose ECUs have keys of their own.
	PublicKey []byte `json:"publicKey,omitempty"`
	// EncryptionKey is the ECU's X25519 encryption key (base64 in JSON).
	EncryptionKey []byte `json:"encryptionKey,omitempty"`
}

// Registration is the body of POST /api/v1/vehicles.
type Registration struct {
	VIN       string `json:"vin"`
	Model     string `json:"model"`
	Year      int    `json:"year"`
	Region    string `json:"region"`
	PublicKey []byte `json:"publicKey"` // base64 in JSON
	ECUs      []ECU  `json:"ecus"`
}

// Register registers the vehicle with an admin or dealer token.
func (c *Client) Register(ctx context.Context, token string, r Registration) error {
	return c.do(ctx, http.MethodPost, "/api/v1/vehicles", token, r, nil)
}

// JobEvent is one progress report on a job.
type JobEvent struct {
	Kind    string `json:"kind"`
	Percent int    `json:"percent"`
	Message string `json:"message,omitempty"`
	// SHA256 is the installed image's, with succeeded.
	SHA256 string `json:"sha256,omitempty"`
	// Installed, with succeeded for an update set, is each of its ECU
	// serials' installed image sha256.
	Installed map[string]string `json:"installed,omitempty"`
}

// MaxEventMessage is the longest message the server takes.
const MaxEventMessage = 1024

// JobEvent reports progress on a job.
func (c *Client) JobEvent(ctx context.Context, jobID string, e JobEvent) error {
	return c.do(ctx, http.MethodPost, "/api/v1/jobs/"+url.PathEscape(jobID)+"/events", "", e, nil)
}

// CheckIn posts a signed manifest with a fresh nonce.
func (c *Client) CheckIn(ctx context.Context, ecus []vehicleauth.ECUReport, offline []string, h CheckInInfo) (CheckInResult, error) {
	nonce := vehicleauth.Nonce()
	m := vehicleauth.Manifest{VIN: c.VIN, Nonce: nonce, Time: c.now().UTC(), ECUs: ecus, Offline: offline,
		DTCDetails: h.DTCs, Signal: h.Signal, PrimarySerial: h.PrimarySerial, ECUReports: h.ECUReports, Unreachable: h.Unreachable,
		AttestTime: h.AttestTime, TimeUntrusted: h.TimeUntrusted}
	for _, d := range h.DTCs {
		if d.ClearedAt.IsZero() {
			m.DTCs = append(m.DTCs, d.Code)
		}
	}
	signed, err := json.Marshal(m)
	if err != nil {
		return CheckInResult{}, err
	}
	sm := vehicleauth.SignedManifest{Signed: signed, Signature: ed25519.Sign(c.Key, signed)}
	res := CheckInResult{Nonce: nonce}
	err = c.do(ctx, http.MethodPost, "/api/v1/vehicles/"+url.PathEscape(c.VIN)+"/manifest", "", sm, &res)
	res.Nonce = nonce
	return res, err
}

// CheckInResult is the server's answer to a check-in: with AttestTime,
// its time for the manifest's nonce.
type CheckInResult struct {
	Nonce string                  `json:"-"`
	Time  *timeattest.Attestation `json:"time"`
}

// TimeAttestation asks the server for its time, signed, for nonce.
// The request is not signed: a vehicle whose clock is wrong could not
// sign one the server takes, and the answer is worth nothing to anyone
// but the holder of the nonce.
func (c *Client) TimeAttestation(ctx context.Context, nonce string) (timeattest.Attestation, error) {
	var a timeattest.Attestation
	err := c.send(ctx, http.MethodPost, "/api/v1/vehicles/"+url.PathEscape(c.VIN)+"/time", "", false, map[string]string{"nonce": nonce}, &a)
	return a, err
}

// CheckInInfo is what the vehicle reports at check-in besides what each
// ECU runs: its trouble codes (active and recently cleared), its cellular
// signal and, for a vehicle whose ECUs have keys of their own, what makes
// the manifest a vehicle version manifest: the primary's serial, every
// ECU's signed version report, and the ECUs the primary cannot reach.
type CheckInInfo struct {
	DTCs          []vehicleauth.DTCEpisode
	Signal        *vehicleauth.SignalReport
	PrimarySerial string
	ECUReports    []vehicleauth.SignedECUReport
	Unreachable   []string
	// AttestTime asks the server for its signed time for the manifest's
	// nonce; TimeUntrusted reports why the vehicle has no trusted time.
	AttestTime    bool
	TimeUntrusted string
}

// Firmware is what one ECU runs, for the authorization handshake.
type Firmware struct {
	Serial string `json:"serial"`
	SHA256 string `json:"sha256"`
}

// Authorization is a connected-services token.
type Authorization struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// Authorize runs the challenge/response handshake: ask for a challenge,
// then answer it (the request is signed with the vehicle key) with the
// firmware every ECU runs.
func (c *Client) Authorize(ctx context.Context, fw []Firmware) (Authorization, error) {
	path := "/api/v1/vehicles/" + url.PathEscape(c.VIN) + "/auth"
	var ch struct {
		Challenge string `json:"challenge"`
	}
	if err := c.do(ctx, http.MethodPost, path, "", map[string]any{}, &ch); err != nil {
		return Authorization{}, err
	}
	var a Authorization
	err := c.do(ctx, http.MethodPost, path, "", map[string]any{"challenge": ch.Challenge, "firmware": fw}, &a)
	return a, err
}

// Push is where the vehicle hears wake-ups: the broker URL ("" when the
// server runs none) and its own topic.
type Push struct {
	Broker string `json:"broker"`
	Topic  string `json:"topic"`
}

// Push asks the server for its push settings.
func (c *Client) Push(ctx context.Context) (Push, error) {
	var p Push
	err := c.do(ctx, http.MethodGet, "/api/v1/vehicles/"+c.VIN+"/push", "", nil, &p)
	return p, err
}

// LinkCode asks the server for a one-time code the owner types in.
func (c *Client) LinkCode(ctx context.Context) (string, time.Time, error) {
	var out struct {
		Code      string    `json:"code"`
		ExpiresAt time.Time `json:"expiresAt"`
	}
	err := c.do(ctx, http.MethodPost, "/api/v1/vehicles/"+url.PathEscape(c.VIN)+"/link-code", "", map[string]any{}, &out)
	return out.Code, out.ExpiresAt, err
}
