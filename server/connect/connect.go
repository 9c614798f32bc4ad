// Package connect is the connected-services authorization handshake a
// vehicle runs after every install: it gets a challenge, answers it in a
// request signed with its key and reports its firmware; the server checks
// the owner link, the subscription and that the firmware is what the
// director assigned, and returns a short-lived token bound to the VIN and
// firmware. Every failure has its own code and says what to do.
package connect

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/atomicfile"
	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/director"
)

// Store is what the handshake needs of the state store.
type Store interface {
	Vehicle(ctx context.Context, vin string) (server.Vehicle, error)
	RecordAuth(ctx context.Context, vin string, a server.AuthRecord) error
	Link(ctx context.Context, vin string) (server.Link, error)
}

// Service runs the handshake.
type Service struct {
	store    Store
	director *director.Service
	images   director.Images
	secret   []byte
	now      func() time.Time
	cfg      Config
}

// Config is what the handshake service is built from.
type Config struct {
	Store    Store
	Director *director.Service
	Images   director.Images
	// Secret keys the stateless challenges and tokens (LoadSecret).
	Secret []byte
	// TokenTTL (1 h) is how long a connected-services token is good for.
	TokenTTL time.Duration
	// Handshake, if set, hears of every completed handshake (the
	// diagnosis records what it finds then).
	Handshake func(ctx context.Context, vin string)
	Now       func() time.Time
}

// LoadSecret reads (creating on first use) the HMAC secret shared by all
// replicas in DATA/keys: challenges and tokens are stateless.
func LoadSecret(dataDir string) ([]byte, error) {
	p := filepath.Join(dataDir, "keys", "connected-services.secret")
	b, err := os.ReadFile(p)
	if err == nil && len(b) == 64 {
		return hex.DecodeString(string(b))
	}
	s := make([]byte, 32)
	if _, err := rand.Read(s); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(p, []byte(hex.EncodeToString(s)), 0o600); err != nil {
		return nil, err
	}
	return s, nil
}

// New returns the service, or an error naming what cfg lacks.
func New(cfg Config) (*Service, error) {
	switch {
	case cfg.Store == nil || cfg.Director == nil || cfg.Images == nil || cfg.Now == nil:
		return nil, errors.New("connect: store, director, image repository and clock are required")
	case len(cfg.Secret) < 32:
		return nil, errors.New("connect: the secret must be at least 32 bytes")
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = time.Hour
	}
	return &Service{store: cfg.Store, director: cfg.Director, images: cfg.Images, secret: cfg.Secret, now: cfg.Now, cfg: cfg}, nil
}

func (s *Service) mac(parts ...string) string {
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte(strings.Join(parts, "\n")))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// Firmware is what one ECU runs.
type Firmware struct {
	Serial string `json:"serial"`
	SHA256 string `json:"sha256"`
}

// Request is the body of POST /api/v1/vehicles/{vin}/auth: empty for a
// challenge, then the challenge with the firmware report.
type Request struct {
	Challenge string     `json:"challenge,omitempty"`
	Firmware  []Firmware `json:"firmware,omitempty"`
}

// Answer is the server's answer: a challenge, or the token.
type Answer struct {
	Challenge string    `json:"challenge,omitempty"`
	Token     string    `json:"token,omitempty"`
	ExpiresAt time.Time `json:"expiresAt"`
}

const challengeTTL = 2 * time.Minute

// State is a vehicle's connected-services authorization as the server
// last saw it: the outcome of its last handshake, and whether the token it
// got has run out since.
type State struct {
	// State is "authorized", "expired" (authorized, token since run out),
	// "never" (no handshake yet), or the failure code of the last handshake.
	State     string    `json:"state"`
	At        time.Time `json:"at,omitzero"`
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
	Message   string    `json:"message,omitempty"`
}

// StateOf reads v's last handshake at time now.
func StateOf(v server.Vehicle, now time.Time) State {
	st := State{State: v.AuthState, At: v.AuthAt, ExpiresAt: v.AuthExpires, Message: v.AuthMessage}
	switch {
	case v.AuthState == "":
		st.State, st.Message = "never", "the vehicle has not run the connected-services handshake yet"
	case v.AuthState == errcode.Authorized && !v.AuthExpires.IsZero() && now.After(v.AuthExpires):
		st.State, st.Message = errcode.Expired, "the vehicle's token ran out and it has not renewed it; it renews at its next contact with the server"
	}
	return st
}

// Handle runs one step of the handshake for a vehicle whose request
// signature the HTTP layer has verified.
func (s *Service) Handle(ctx context.Context, vin string, r Request) (Answer, error) {
	now := s.now().UTC()
	if r.Challenge == "" {
		n := make([]byte, 16)
		rand.Read(n)
		exp := now.Add(challengeTTL)
		payload := vin + "." + strconv.FormatInt(exp.Unix(), 10) + "." + hex.EncodeToString(n)
		return Answer{Challenge: payload + "." + s.mac("challenge", payload), ExpiresAt: exp}, nil
	}
	if err := s.checkChallenge(vin, r.Challenge, now); err != nil {
		return Answer{}, err
	}
	ans, err := s.authorize(ctx, vin, r.Firmware, now)
	rec := server.AuthRecord{State: errcode.Authorized, At: now, Expires: ans.ExpiresAt}
	var se *server.Error
	if errors.As(err, &se) {
		rec = server.AuthRecord{State: se.Code, Message: se.Message, At: now}
	}
	if rerr := s.store.RecordAuth(ctx, vin, rec); rerr != nil && err == nil {
		return Answer{}, rerr
	}
	if s.cfg.Handshake != nil {
		s.cfg.Handshake(ctx, vin)
	}
	return ans, err
}

func (s *Service) checkChallenge(vin, c string, now time.Time) error {
	parts := strings.Split(c, ".")
	if len(parts) != 4 || parts[0] != vin {
		return server.CodedErrorf(server.KindInvalid, errcode.InvalidChallenge, "challenge is malformed or for another vehicle; ask for a new one")
	}
	payload := strings.Join(parts[:3], ".")
	if !hmac.Equal([]byte(parts[3]), []byte(s.mac("challenge", payload))) {
		return server.CodedErrorf(server.KindInvalid, errcode.InvalidChallenge, "challenge was not issued by this server; ask for a new one")
	}
	exp, _ := strconv.ParseInt(parts[1], 10, 64)
	if now.Unix() > exp {
		return server.CodedErrorf(server.KindInvalid, errcode.InvalidChallenge, "challenge expired; ask for a new one")
	}
	return nil
}

func (s *Service) authorize(ctx context.Context, vin string, fw []Firmware, now time.Time) (Answer, error) {
	v, err := s.store.Vehicle(ctx, vin)
	if err != nil {
		return Answer{}, err
	}
	l, err := s.store.Link(ctx, vin)
	switch {
	case errors.Is(err, server.ErrNotFound):
		return Answer{}, server.CodedErrorf(server.KindForbidden, errcode.VehicleNotLinked, "%s is not linked to any owner account; the owner links it in the portal with the code the vehicle shows", vin)
	case err != nil:
		return Answer{}, err
	case now.After(l.SubscriptionEnds):
		return Answer{}, server.CodedErrorf(server.KindForbidden, errcode.SubscriptionExpired, "the connected-services subscription of %s ended on %s; renew it to restore service", vin, l.SubscriptionEnds.Format(time.DateOnly))
	}
	if err := s.checkFirmware(ctx, v, fw); err != nil {
		return Answer{}, err
	}
	sort.Slice(fw, func(i, j int) bool { return fw[i].Serial < fw[j].Serial })
	b, _ := json.Marshal(fw)
	sum := sha256.Sum256(b)
	exp := now.Add(s.cfg.TokenTTL)
	payload := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"vin":%q,"firmware":%q,"exp":%d}`, vin, hex.EncodeToString(sum[:]), exp.Unix())))
	return Answer{Token: "cs_" + payload + "." + s.mac("token", payload), ExpiresAt: exp}, nil
}

// checkFirmware: every ECU must report, and run the image the director
// assigns it (or, where nothing is assigned, a signed image for it).
func (s *Service) checkFirmware(ctx context.Context, v server.Vehicle, fw []Firmware) error {
	reported := map[string]string{}
	for _, f := range fw {
		reported[f.Serial] = f.SHA256
	}
	assigned, err := s.director.Assignment(ctx, v)
	if err != nil {
		return err
	}
	want := map[string]*metadata.TargetFiles{}
	for _, a := range assigned {
		want[a.Serial] = a.Target
	}
	targets, _, err := s.images.CurrentTargets(ctx)
	if err != nil {
		return err
	}
	for _, e := range v.ECUs {
		got, ok := reported[e.Serial]
		if !ok {
			return server.CodedErrorf(server.KindForbidden, errcode.FirmwareNotAuthorized, "ECU %s did not report its firmware; a replaced ECU must be re-provisioned by a dealer", e.Serial)
		}
		if tf := want[e.Serial]; tf != nil {
			if hex.EncodeToString(tf.Hashes["sha256"]) != got {
				return server.CodedErrorf(server.KindForbidden, errcode.FirmwareNotAuthorized, "ECU %s runs firmware %.12s…, not the image the director assigned (%s); update the vehicle (OTA, USB or dealer reflash) and reauthorize", e.Serial, got, tf.Path)
			}
			continue
		}
		known := false
		for _, tf := range targets {
			c, err := meta.TargetCustom(tf)
			if err == nil && c.Supports(e.Type, e.HardwareID) && hex.EncodeToString(tf.Hashes["sha256"]) == got {
				known = true
				break
			}
		}
		if !known {
			return server.CodedErrorf(server.KindForbidden, errcode.FirmwareNotAuthorized, "ECU %s runs firmware %.12s… that is not a signed image for %s; reflash it", e.Serial, got, e.HardwareID)
		}
	}
	return nil
}
