// Package registry keeps the fleet: it registers vehicles (VIN, ECUs,
// vehicle key), answers who a vehicle is for signed requests, and takes
// the vehicles' signed check-in manifests.
package registry

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/fwimage"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/vehicleauth"
	"github.com/roadsign/roadsign/internal/vin"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/auditlog"
)

// Images lists the published image targets: which hardware IDs each ECU
// type has images for.
type Images interface {
	CurrentTargets(ctx context.Context) (map[string]*metadata.TargetFiles, int64, error)
}

// Store is what the registry needs of the state store: the vehicles,
// the USB installs they report for their record, and the audit log.
type Store interface {
	server.Vehicles
	AddUSBRecords(ctx context.Context, vin string, recs []server.SoftwareRecord, perDay int, since time.Time) ([]server.SoftwareRecord, error)
	auditlog.Appender
}

// Service is the vehicle registry.
type Service struct {
	store  Store
	images Images
	now    func() time.Time
	log    *slog.Logger
	// faults bounds the refused-request writes in flight.
	faults chan struct{}
	cfg    Config
}

// Config is what the registry is built from.
type Config struct {
	Store  Store
	Images Images
	// Owns, if set, tells whether an owner is linked to a VIN.
	Owns func(ctx context.Context, p server.Principal, vin string) (bool, error)
	// Registered, if set, hears of each new vehicle (campaigns that
	// include new vehicles take it in).
	Registered func(ctx context.Context, v server.Vehicle) error
	Now        func() time.Time
	Log        *slog.Logger
	// Notify hears of re-provisioned ECUs (vehicle.reprovisioned).
	Notify server.Notify
}

// New returns a registry, or an error naming what cfg lacks.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.Images == nil || cfg.Now == nil || cfg.Log == nil {
		return nil, errors.New("registry: store, image repository, clock and logger are required")
	}
	return &Service{store: cfg.Store, images: cfg.Images, now: cfg.Now, log: cfg.Log, faults: make(chan struct{}, 4), cfg: cfg}, nil
}

// NoteRequestFault records that a request for vin was refused: kind
// server.FaultBadSignature (the signature does not verify with the
// registered key) or server.FaultClockSkew (it does, with the vehicle's
// clock off by skew). It is evidence for the diagnosis. The write is the
// same one-row update for a registered VIN and an unknown one (which
// changes nothing), so a refusal costs both the same; beyond a few at
// once, writes are skipped, so a flood of forged requests costs the
// database little.
func (s *Service) NoteRequestFault(ctx context.Context, vin string, f server.RequestFault) {
	select {
	case s.faults <- struct{}{}:
		defer func() { <-s.faults }()
	default:
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s.store.RecordRequestFault(ctx, vin, f, s.now())
}

// ECURequest is one ECU in a registration.
type ECURequest struct {
	Type       string `json:"type"`
	Serial     string `json:"serial"`
	HardwareID string `json:"hardwareId"`
	// PublicKey is the ECU's own ed25519 key (base64), which signs its
	// version reports: given for every ECU or for none, and the primary's
	// is the vehicle's publicKey.
	PublicKey string `json:"publicKey,omitempty"`
	// EncryptionKey is the ECU's X25519 encryption key (base64), to which
	// encrypted images are wrapped; optional (a first check-in reports it).
	EncryptionKey string `json:"encryptionKey,omitempty"`
}

// RegisterRequest is the body of POST /api/v1/vehicles.
type RegisterRequest struct {
	VIN       string       `json:"vin"`
	Model     string       `json:"model"`
	Year      int          `json:"year"`
	Region    string       `json:"region"`
	PublicKey string       `json:"publicKey"`
	ECUs      []ECURequest `json:"ecus"`
}

// Register validates and stores a vehicle.
func (s *Service) Register(ctx context.Context, by server.Principal, r RegisterRequest) (server.Vehicle, error) {
	if err := vin.Validate(r.VIN); err != nil {
		return server.Vehicle{}, server.CodedErrorf(server.KindInvalid, errcode.InvalidVIN, "%v", err)
	}
	if strings.TrimSpace(r.Model) == "" {
		return server.Vehicle{}, server.Errorf(server.KindInvalid, "model is required")
	}
	if r.Year < 1980 || r.Year > 2100 {
		return server.Vehicle{}, server.Errorf(server.KindInvalid, "year %d: want a model year between 1980 and 2100", r.Year)
	}
	if r.Region == "" || len(r.Region) > 16 {
		return server.Vehicle{}, server.Errorf(server.KindInvalid, "region: give a region code such as NA or EU")
	}
	if err := by.Reach(server.Vehicle{VIN: r.VIN, Region: r.Region}); err != nil {
		return server.Vehicle{}, err // a dealer registers vehicles of its regions
	}
	key, err := base64.StdEncoding.DecodeString(r.PublicKey)
	if err != nil || len(key) != ed25519.PublicKeySize {
		return server.Vehicle{}, server.CodedErrorf(server.KindInvalid, errcode.InvalidPublicKey, "publicKey: want a base64 ed25519 public key (32 bytes)")
	}
	if len(r.ECUs) == 0 {
		return server.Vehicle{}, server.Errorf(server.KindInvalid, "ecus: register at least one ECU")
	}
	v := server.Vehicle{VIN: r.VIN, Model: r.Model, Year: r.Year, Region: r.Region, PublicKey: key, CreatedAt: s.now().UTC()}
	seen := map[string]bool{}
	for i, e := range r.ECUs {
		switch {
		case !fwimage.ValidECU(e.Type):
			return server.Vehicle{}, server.Errorf(server.KindInvalid, "ecus[%d].type %q: want head-unit or dcm", i, e.Type)
		case e.Serial == "" || len(e.Serial) > 64 || strings.ContainsAny(e.Serial, "/\\ "):
			return server.Vehicle{}, server.Errorf(server.KindInvalid, "ecus[%d].serial %q: want 1 to 64 characters, no slashes or spaces", i, e.Serial)
		case e.HardwareID == "":
			return server.Vehicle{}, server.Errorf(server.KindInvalid, "ecus[%d].hardwareId is required", i)
		case seen[e.Serial]:
			return server.Vehicle{}, server.Errorf(server.KindInvalid, "ecus: serial %s appears twice", e.Serial)
		}
		seen[e.Serial] = true
		ek, err := encryptionKey(e.EncryptionKey, fmt.Sprintf("ecus[%d].encryptionKey", i))
		if err != nil {
			return server.Vehicle{}, err
		}
		v.ECUs = append(v.ECUs, server.ECU{Serial: e.Serial, Type: e.Type, HardwareID: e.HardwareID, EncryptionKey: ek})
	}
	if err := ecuKeys(r, &v); err != nil {
		return server.Vehicle{}, err
	}
	if err := s.store.CreateVehicle(ctx, v); err != nil {
		if errors.Is(err, server.ErrConflict) {
			return server.Vehicle{}, server.Errorf(server.KindConflict, "VIN %s or one of its ECU serials is already registered; a replaced ECU is re-provisioned, not registered again", v.VIN)
		}
		return server.Vehicle{}, err
	}
	detail, _ := json.Marshal(r.ECUs)
	if err := auditlog.Record(ctx, s.store, s.now(), by, "vehicle.register", v.VIN, string(detail)); err != nil {
		return server.Vehicle{}, err
	}
	if s.cfg.Registered != nil {
		if err := s.cfg.Registered(ctx, v); err != nil {
			return server.Vehicle{}, err
		}
	}
	return v, nil
}

// encryptionKey decodes an ECU's X25519 encryption key ("" for none).
func encryptionKey(b64, field string) ([]byte, error) {
	if b64 == "" {
		return nil, nil
	}
	k, err := base64.StdEncoding.DecodeString(b64)
	if err == nil {
		_, err = ecdh.X25519().NewPublicKey(k)
	}
	if err != nil {
		return nil, server.CodedErrorf(server.KindInvalid, errcode.InvalidPublicKey, "%s: want a base64 X25519 public key (32 bytes)", field)
	}
	return k, nil
}

// ecuKeys decodes the ECUs' own keys of a registration into v: every
// ECU has one or none does, no two share one, and exactly one (the
// primary) has the vehicle's.
func ecuKeys(r RegisterRequest, v *server.Vehicle) error {
	n := 0
	for _, e := range r.ECUs {
		if e.PublicKey != "" {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	if n != len(r.ECUs) {
		return server.CodedErrorf(server.KindInvalid, errcode.InvalidPublicKey, "ecus: %d of %d ECUs have a publicKey; give every ECU its own key, or none", n, len(r.ECUs))
	}
	seen, primaries := map[string]string{}, 0
	for i, e := range r.ECUs {
		key, err := base64.StdEncoding.DecodeString(e.PublicKey)
		if err != nil || len(key) != ed25519.PublicKeySize {
			return server.CodedErrorf(server.KindInvalid, errcode.InvalidPublicKey, "ecus[%d].publicKey: want a base64 ed25519 public key (32 bytes)", i)
		}
		if other, dup := seen[string(key)]; dup {
			return server.CodedErrorf(server.KindInvalid, errcode.InvalidPublicKey, "ecus[%d].publicKey: %s and %s have the same key; each ECU signs with its own", i, other, e.Serial)
		}
		seen[string(key)] = e.Serial
		if bytes.Equal(key, v.PublicKey) {
			primaries++
		}
		v.ECUs[i].PublicKey = key
	}
	if primaries != 1 {
		return server.CodedErrorf(server.KindInvalid, errcode.InvalidPublicKey, "ecus: the primary ECU's publicKey must be the vehicle's publicKey (it signs the vehicle's manifests)")
	}
	return nil
}

// Primary is the ECU of v whose key is the vehicle's (it signs the
// manifests), if its ECUs have keys of their own.
func Primary(v server.Vehicle) (server.ECU, bool) {
	for _, e := range v.ECUs {
		if len(e.PublicKey) > 0 && bytes.Equal(e.PublicKey, v.PublicKey) {
			return e, true
		}
	}
	return server.ECU{}, false
}

// Get returns a vehicle; staff see any, dealers those of their regions,
// owners only their own.
func (s *Service) Get(ctx context.Context, by server.Principal, vinStr string) (server.Vehicle, error) {
	if by.Is(server.RoleOwner) {
		ok, err := false, error(nil)
		if s.cfg.Owns != nil {
			ok, err = s.cfg.Owns(ctx, by, vinStr)
		}
		if err != nil {
			return server.Vehicle{}, err
		}
		if !ok {
			// 404, not 403: an owner learns nothing about a stranger's VIN.
			return server.Vehicle{}, server.Errorf(server.KindNotFound, "vehicle %s is not linked to your account", vinStr)
		}
	}
	v, err := s.store.Vehicle(ctx, vinStr)
	if err == nil {
		err = by.Reach(v)
	}
	return v, err
}

// List pages through vehicles, optionally by hardware ID.
func (s *Service) List(ctx context.Context, f server.VehicleFilter) ([]server.Vehicle, error) {
	return s.store.ListVehicles(ctx, f)
}

// VehicleKey returns the registered public key of a VIN.
func (s *Service) VehicleKey(ctx context.Context, vinStr string) (ed25519.PublicKey, error) {
	key, err := s.store.VehicleKey(ctx, vinStr)
	if err != nil {
		return nil, fmt.Errorf("key of %s: %w", vinStr, err) // server.ErrNotFound for an unregistered VIN
	}
	return ed25519.PublicKey(key), nil
}

// CheckIn records what the vehicle runs, from the manifest in a check-in
// request the HTTP layer has already verified: signed by the VIN's key
// over these exact bytes, with a nonce never seen before. That signature
// is the one check-in verification; the manifest must still be fresh,
// name the VIN it is posted for, and list only the vehicle's ECU serials.
// A refused check-in is itself evidence for the diagnosis: the car's own
// key signed it, so what it reports is what the car is.
func (s *Service) CheckIn(ctx context.Context, vinStr string, sm vehicleauth.SignedManifest) error {
	err := s.checkIn(ctx, vinStr, sm)
	if e := server.ErrorOf(err); err != nil && e.Kind == server.KindInvalid {
		detail := e.Message
		if ECUReportCodes[e.Code] {
			detail = e.Code + ": " + detail // the diagnosis names the ECU and why
		}
		s.NoteRequestFault(ctx, vinStr, server.RequestFault{Kind: server.FaultCheckInRefused, Detail: detail})
	}
	return err
}

func (s *Service) checkIn(ctx context.Context, vinStr string, sm vehicleauth.SignedManifest) error {
	if len(sm.Signed) == 0 || len(sm.Signature) == 0 {
		return server.Errorf(server.KindInvalid, "manifest needs signed (the manifest JSON, base64) and signature")
	}
	var m vehicleauth.Manifest
	if err := json.Unmarshal(sm.Signed, &m); err != nil {
		return server.Errorf(server.KindInvalid, "manifest: %v", err)
	}
	now := s.now()
	switch {
	case m.VIN != vinStr:
		return server.Errorf(server.KindInvalid, "manifest is for VIN %s, posted for %s", m.VIN, vinStr)
	case !nonceRE.MatchString(m.Nonce):
		return server.Errorf(server.KindInvalid, "manifest nonce must be 32 to 64 hex digits")
	case now.Sub(m.Time) > 24*time.Hour || m.Time.Sub(now) > vehicleauth.MaxSkew:
		return server.CodedErrorf(server.KindInvalid, errcode.StaleManifest, "manifest time %s is too far from now; check the vehicle clock", m.Time.Format(time.RFC3339))
	}
	if err := checkManifestSizes(m); err != nil {
		return err
	}
	var ecus []server.ECU
	for _, e := range m.ECUs {
		ecus = append(ecus, server.ECU{Serial: e.Serial, InstalledTarget: e.InstalledTarget, InstalledVersion: e.Version, InstalledSHA256: e.SHA256})
	}
	h := server.Health{Active: strings.Join(m.DTCs, ","), TimeUntrusted: m.TimeUntrusted}
	if m.Signal != nil {
		h.SignalBars, h.SignalAt = m.Signal.Bars, m.Signal.At
	}
	for _, d := range m.DTCDetails {
		d.Description, d.ReportedAt = "", time.Time{} // the vehicle's words stay the vehicle's; the store stamps receipt
		h.Episodes = append(h.Episodes, d)
	}
	// A check-in with ECU-signed reports is checked against the
	// vehicle's ECU keys; one without is refused in the write itself if
	// the vehicle's ECUs have keys (a plain check-in stays one statement).
	var before server.Vehicle
	signed := len(m.ECUReports) > 0 || m.PrimarySerial != ""
	if signed || len(m.Offline) > 0 {
		var err error
		if before, err = s.store.Vehicle(ctx, vinStr); err != nil { // what ran before the USB installs, the ECU keys
			return err
		}
	}
	if signed {
		if _, keyed := Primary(before); !keyed {
			return server.CodedErrorf(server.KindInvalid, errcode.ECUReportSignature, "%s was registered without ECU keys, so its ECUs' signed reports cannot be checked; re-register it with each ECU's key", vinStr)
		}
		var err error
		if ecus, err = verifyECUReports(before, m); err != nil {
			return err
		}
		if err := s.signedVersions(ctx, ecus); err != nil {
			return err
		}
	}
	h.Unsigned = !signed
	err := s.store.ReportECUs(ctx, vinStr, ecus, h, now)
	if e := server.ErrorOf(err); err != nil && (e.Code == errcode.ECUReportReplayed || e.Code == errcode.ECUMissing) {
		return server.CodedErrorf(server.KindInvalid, e.Code, "%s", e.Message)
	}
	if errors.Is(err, server.ErrNotFound) {
		return server.CodedErrorf(server.KindInvalid, errcode.UnregisteredECU, "the car reports units %s, and %s has %s registered: a unit was replaced and not re-provisioned, or re-provisioned in place of the wrong one",
			serials(m.ECUs), vinStr, registeredSerials(ctx, s.store, vinStr))
	} else if err != nil {
		return fmt.Errorf("check-in %s: %w", vinStr, err)
	}
	for _, e := range m.ECUs {
		if len(e.EncryptionKey) == 0 {
			continue
		}
		if _, err := ecdh.X25519().NewPublicKey(e.EncryptionKey); err != nil {
			return server.CodedErrorf(server.KindInvalid, errcode.InvalidPublicKey, "ecus: %s reports an encryption key that is not an X25519 public key", e.Serial)
		}
		set, err := s.store.SetEncryptionKey(ctx, vinStr, e.Serial, e.EncryptionKey)
		if err != nil {
			return err
		}
		if set {
			if err := auditlog.Record(ctx, s.store, now, server.Principal{VIN: vinStr}, "ecu.encryption_key", vinStr, e.Serial+": first reported"); err != nil {
				return err
			}
		}
	}
	if len(m.Offline) > 0 {
		added, err := s.recordOffline(ctx, before, m, now)
		if err != nil {
			return err
		}
		if len(added) > 0 {
			if err := auditlog.Record(ctx, s.store, now, server.Principal{VIN: vinStr}, "vehicle.offline_install", vinStr, strings.Join(added, "; ")); err != nil {
				return err
			}
		}
	}
	return nil
}

// ECUReportCodes are the refusals of an ECU's signed version report.
var ECUReportCodes = map[string]bool{errcode.ECUReportSignature: true, errcode.ECUReportReplayed: true, errcode.ECUUnknown: true, errcode.ECUMissing: true}

// verifyECUReports holds a vehicle version manifest of v, whose ECUs have
// keys of their own, to Uptane: the primary it names is v's; every
// report is signed by the registered key of the ECU it names, an ECU of
// v's inventory, with a counter above its last accepted one; every ECU of
// the inventory sent one, unless the primary says it cannot reach it.
// What each ECU runs is taken from its own signed report, never from the
// primary's word. It returns the ECUs' updates.
func verifyECUReports(v server.Vehicle, m vehicleauth.Manifest) ([]server.ECU, error) {
	refuse := func(code, format string, args ...any) ([]server.ECU, error) {
		return nil, server.CodedErrorf(server.KindInvalid, code, format, args...)
	}
	primary, _ := Primary(v)
	if m.PrimarySerial == "" && len(m.ECUReports) == 0 {
		return refuse(errcode.ECUMissing, "the manifest carries no signed ECU reports, and %s's ECUs have keys of their own: each signs its report (%s)", v.VIN, inventory(v))
	}
	if m.PrimarySerial != primary.Serial {
		return refuse(errcode.ECUUnknown, "the manifest names primary %q; %s's primary is %s (its key signs the manifests)", m.PrimarySerial, v.VIN, primary.Serial)
	}
	reported := map[string]bool{}
	var out []server.ECU
	for _, sr := range m.ECUReports {
		r, err := sr.Peek()
		if err != nil {
			return refuse(errcode.ECUReportSignature, "%v", err)
		}
		e, ok := v.ECUBySerial(r.ECUSerial)
		switch {
		case !ok:
			return refuse(errcode.ECUUnknown, "a report comes from ECU %s, which is not in %s's inventory (%s): a replaced unit that was not re-provisioned?", r.ECUSerial, v.VIN, inventory(v))
		case reported[e.Serial]:
			return refuse(errcode.ECUReportReplayed, "ECU %s reports twice in one manifest", e.Serial)
		}
		if _, err := sr.Open(e.PublicKey); err != nil {
			return refuse(errcode.ECUReportSignature, "the report of %s %s is not signed by its registered key: a forged report, or a unit replaced without re-provisioning", e.Type, e.Serial)
		}
		if r.Counter <= e.ReportCounter {
			return refuse(errcode.ECUReportReplayed, "the report of %s %s has counter %d, not above %d, its last accepted one: a report played back from an earlier cycle", e.Type, e.Serial, r.Counter, e.ReportCounter)
		}
		reported[e.Serial] = true
		out = append(out, server.ECU{Serial: e.Serial, InstalledTarget: r.InstalledImage.Filename, InstalledSHA256: r.InstalledImage.Hashes["sha256"],
			ReportCounter: r.Counter, Attack: r.AttackDetected})
	}
	for _, serial := range m.Unreachable {
		if _, ok := v.ECUBySerial(serial); !ok {
			return refuse(errcode.ECUUnknown, "the manifest says ECU %s is unreachable, and it is not in %s's inventory (%s)", serial, v.VIN, inventory(v))
		}
		reported[serial] = true
	}
	for _, e := range v.ECUs {
		if !reported[e.Serial] {
			return refuse(errcode.ECUMissing, "%s %s of %s's inventory sent no signed report: the unit is missing, replaced, or its report was dropped", e.Type, e.Serial, v.VIN)
		}
	}
	return out, nil
}

// signedVersions sets each ECU's version from the image repository: the
// version signed for the image its own report names (filename and
// sha256), never the primary's word; "" for an image the repository does
// not have.
func (s *Service) signedVersions(ctx context.Context, ecus []server.ECU) error {
	if s.images == nil {
		return nil
	}
	targets, _, err := s.images.CurrentTargets(ctx)
	if err != nil {
		return fmt.Errorf("published images: %w", err)
	}
	for i, e := range ecus {
		ecus[i].InstalledVersion = ""
		tf, ok := targets[e.InstalledTarget]
		if !ok || hex.EncodeToString(tf.Hashes["sha256"]) != e.InstalledSHA256 {
			continue
		}
		if c, err := meta.TargetCustom(tf); err == nil {
			ecus[i].InstalledVersion = c.Version
		}
	}
	return nil
}

// inventory lists v's units, "TYPE SERIAL".
func inventory(v server.Vehicle) string {
	var out []string
	for _, e := range v.ECUs {
		out = append(out, e.Type+" "+e.Serial)
	}
	return strings.Join(out, ", ")
}

// MaxUSBRecordsPerDay is how many USB installs per vehicle the software
// record takes in 24 hours. A car installs from a stick a few times a year;
// a vehicle key that reports more is broken or hostile, and the record must
// not grow with it.
const MaxUSBRecordsPerDay = 16

// serials lists the units a manifest reports.
func serials(es []vehicleauth.ECUReport) string {
	var out []string
	for _, e := range es {
		out = append(out, e.Serial)
	}
	return strings.Join(out, ", ")
}

// registeredSerials lists the units registered for vin, "TYPE SERIAL".
func registeredSerials(ctx context.Context, st Store, vinStr string) string {
	v, err := st.Vehicle(ctx, vinStr)
	if err != nil {
		return "no units"
	}
	var out []string
	for _, e := range v.ECUs {
		out = append(out, e.Type+" "+e.Serial)
	}
	return strings.Join(out, ", ")
}

// nonceRE is a manifest nonce: 128 to 256 random bits, hex.
var nonceRE = regexp.MustCompile(`^[0-9a-f]{32,64}$`)

// dtcRE is a diagnostic trouble code such as B15C4 or U1100.
var dtcRE = regexp.MustCompile(`^[PBCU][0-9A-F]{4}$`)

// checkManifestSizes bounds what a vehicle may report, field by field.
func checkManifestSizes(m vehicleauth.Manifest) error {
	if len(m.ECUs) > 16 || len(m.ECUReports) > 16 || len(m.Unreachable) > 16 || len(m.Offline) > 32 || len(m.DTCs) > 32 {
		return server.Errorf(server.KindInvalid, "manifest lists too much: at most 16 ECUs (and ECU reports), 32 offline installs and 32 trouble codes")
	}
	seen := map[string]bool{}
	for _, e := range m.ECUs {
		if seen[e.Serial] {
			return server.Errorf(server.KindInvalid, "manifest names ECU %s twice", e.Serial)
		}
		seen[e.Serial] = true
		if len(e.InstalledTarget) > 512 || len(e.Version) > 64 || len(e.LastResult) > 512 || (e.SHA256 != "" && !sha256RE.MatchString(e.SHA256)) || e.Length < 0 {
			return server.Errorf(server.KindInvalid, "manifest entry for ECU %s is malformed or too long", e.Serial)
		}
	}
	for _, o := range m.Offline {
		if len(o) > 512 {
			return server.Errorf(server.KindInvalid, "an offline-install note is over 512 bytes")
		}
	}
	for _, d := range m.DTCs {
		if !dtcRE.MatchString(d) {
			return server.Errorf(server.KindInvalid, "trouble code %.20q is not a DTC such as B15C4", d)
		}
	}
	if len(m.DTCDetails) > 32 {
		return server.Errorf(server.KindInvalid, "manifest lists %d trouble code episodes; at most 32", len(m.DTCDetails))
	}
	valid := func(t time.Time) bool { return !t.IsZero() && t.Year() >= 2000 && t.Year() < 3000 }
	for _, d := range m.DTCDetails {
		switch {
		case !dtcRE.MatchString(d.Code):
			return server.Errorf(server.KindInvalid, "trouble code %.20q is not a DTC such as B15C4", d.Code)
		case !valid(d.FirstSeen) || !valid(d.LastSeen) || d.LastSeen.Before(d.FirstSeen) || (!d.ClearedAt.IsZero() && !valid(d.ClearedAt)):
			return server.Errorf(server.KindInvalid, "trouble code %s: firstSeen, lastSeen and clearedAt must be times in order", d.Code)
		case d.Count < 1 || len(d.Detail) > 512 || (d.SignalBars != nil && (*d.SignalBars < 0 || *d.SignalBars > 5)):
			return server.Errorf(server.KindInvalid, "trouble code %s: count must be positive, detail at most 512 bytes, signalBars 0 to 5", d.Code)
		}
	}
	if m.Signal != nil && (m.Signal.Bars < 0 || m.Signal.Bars > 5 || !valid(m.Signal.At)) {
		return server.Errorf(server.KindInvalid, "signal: bars must be 0 to 5, with the time of the reading")
	}
	return nil
}

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ReplaceRequest is the body of POST /api/v1/vehicles/{vin}/ecus/{serial}/replace.
type ReplaceRequest struct {
	// Type, if given, must be the removed unit's: a head unit is not
	// replaced by a DCM.
	Type       string `json:"type,omitempty"`
	Serial     string `json:"serial"`
	HardwareID string `json:"hardwareId"`
	PublicKey  string `json:"publicKey"`
	// EncryptionKey is the new unit's X25519 key (base64); without it
	// the unit's first check-in reports it.
	EncryptionKey string `json:"encryptionKey,omitempty"`
	Reason        string `json:"reason"`
}

// ReplaceECU re-provisions a replaced ECU: the new serial and hardware ID
// take the old one's place on the VIN, and the vehicle key becomes the new
// one (the old key is refused from now on). The director assigns for the
// new serial on the vehicle's next refresh.
func (s *Service) ReplaceECU(ctx context.Context, by server.Principal, vinStr, oldSerial string, r ReplaceRequest) (server.Vehicle, error) {
	v, err := s.store.Vehicle(ctx, vinStr)
	if err == nil {
		err = by.Reach(v)
	}
	if err != nil {
		return v, err
	}
	old, ok := v.ECUBySerial(oldSerial)
	if !ok {
		return v, server.Errorf(server.KindNotFound, "%s has no ECU with serial %s", vinStr, oldSerial)
	}
	key, err := base64.StdEncoding.DecodeString(r.PublicKey)
	switch {
	case err != nil || len(key) != ed25519.PublicKeySize:
		return v, server.CodedErrorf(server.KindInvalid, errcode.InvalidPublicKey, "publicKey: want the new unit's base64 ed25519 public key (32 bytes)")
	case r.Serial == "" || strings.ContainsAny(r.Serial, "/\\ "):
		return v, server.Errorf(server.KindInvalid, "serial: give the new ECU's serial")
	case r.HardwareID == "":
		return v, server.Errorf(server.KindInvalid, "hardwareId: give the new ECU's hardware ID")
	case strings.TrimSpace(r.Reason) == "":
		return v, server.Errorf(server.KindInvalid, "reason is required (it is audited)")
	case r.Type != "" && r.Type != old.Type:
		return v, server.CodedErrorf(server.KindInvalid, errcode.ECUTypeMismatch, "%s is a %s; a %s cannot take its place: choose the unit that was removed", oldSerial, old.Type, r.Type)
	}
	if err := s.checkHardware(ctx, old, r.HardwareID); err != nil {
		return v, err
	}
	// With keys of their own, a replaced unit brings its own key, and
	// the vehicle's changes only when the primary was replaced; without,
	// the vehicle's key is the one the new unit brings.
	ek, err := encryptionKey(r.EncryptionKey, "encryptionKey")
	if err != nil {
		return v, err
	}
	// The removed unit's encryption key goes with it: it is no longer a
	// recipient of any image.
	n := server.ECU{Serial: r.Serial, Type: old.Type, HardwareID: r.HardwareID, EncryptionKey: ek}
	vehicleKey, what := key, "vehicle key replaced, old key revoked"
	if primary, keyed := Primary(v); keyed {
		n.PublicKey = key
		if primary.Serial != oldSerial {
			vehicleKey, what = nil, "the unit's own key replaced, the vehicle key unchanged"
		}
	}
	err = s.store.ReplaceECU(ctx, vinStr, oldSerial, n, vehicleKey)
	if errors.Is(err, server.ErrConflict) {
		return v, server.Errorf(server.KindConflict, "ECU serial %s is already registered to a vehicle", r.Serial)
	}
	if err != nil {
		return v, err
	}
	if err := auditlog.Record(ctx, s.store, s.now(), by, "ecu.replace", vinStr,
		fmt.Sprintf("%s %s (%s) -> %s (%s); %s; reason=%q", old.Type, oldSerial, old.HardwareID, r.Serial, r.HardwareID, what, r.Reason)); err != nil {
		return v, err
	}
	s.cfg.Notify.Emit(ctx, "vehicle.reprovisioned", Reprovisioned{VIN: vinStr, ECUType: old.Type, OldSerial: oldSerial, NewSerial: r.Serial,
		HardwareID: r.HardwareID, By: by.Name, Reason: r.Reason})
	return s.store.Vehicle(ctx, vinStr)
}

// Reprovisioned is the data of a vehicle.reprovisioned event.
type Reprovisioned struct {
	VIN        string `json:"vin"`
	ECUType    string `json:"ecuType"`
	OldSerial  string `json:"oldSerial"`
	NewSerial  string `json:"newSerial"`
	HardwareID string `json:"hardwareId"`
	By         string `json:"by"`
	Reason     string `json:"reason"`
}

// checkHardware refuses a replacement's hardware ID that belongs to
// another ECU type, or, where images for the removed unit's type are
// published, one none of them is built for: either way the car would
// report a unit the registration does not describe, and every check-in
// would be refused.
func (s *Service) checkHardware(ctx context.Context, old server.ECU, hw string) error {
	byType := map[string][]string{old.Type: {old.HardwareID}}
	published := false
	if s.images != nil {
		targets, _, err := s.images.CurrentTargets(ctx)
		if err != nil {
			return fmt.Errorf("published images: %w", err)
		}
		for _, tf := range targets {
			c, err := meta.TargetCustom(tf)
			if err != nil {
				continue
			}
			published = published || c.ECU == old.Type
			for _, id := range c.HardwareIDs {
				if !slices.Contains(byType[c.ECU], id) {
					byType[c.ECU] = append(byType[c.ECU], id)
				}
			}
		}
	}
	known := byType[old.Type]
	slices.Sort(known)
	for typ, ids := range byType {
		if typ != old.Type && slices.Contains(ids, hw) && !slices.Contains(known, hw) {
			return server.CodedErrorf(server.KindInvalid, errcode.ECUTypeMismatch,
				"hardware ID %s is a %s's; %s is a %s (its hardware: %s): choose the unit that was removed, or give the new %s's hardware ID",
				hw, typ, old.Serial, old.Type, strings.Join(known, ", "), old.Type)
		}
	}
	if published && !slices.Contains(known, hw) {
		return server.CodedErrorf(server.KindInvalid, errcode.UnknownHardwareID,
			"no %s image is published for hardware ID %s (known: %s): check the label on the new unit", old.Type, hw, strings.Join(known, ", "))
	}
	return nil
}

// recordOffline adds USB installs the vehicle reports (notes "TYPE SERIAL:
// FROM -> TO from USB bundle ...") to its software record: each note once,
// and at most MaxUSBRecordsPerDay a day. It returns the notes it added.
func (s *Service) recordOffline(ctx context.Context, before server.Vehicle, m vehicleauth.Manifest, now time.Time) ([]string, error) {
	var recs []server.SoftwareRecord
	for _, e := range m.ECUs {
		for _, note := range m.Offline {
			if !strings.Contains(note, " "+e.Serial+": ") {
				continue
			}
			rec := server.SoftwareRecord{VIN: m.VIN, ECUSerial: e.Serial, At: now, ToVersion: e.Version, ToSHA256: e.SHA256,
				Via: "usb", Outcome: "installed", Detail: note}
			for _, b := range before.ECUs {
				if b.Serial == e.Serial {
					rec.ECUType, rec.FromVersion, rec.FromSHA256 = b.Type, b.InstalledVersion, b.InstalledSHA256
				}
			}
			recs = append(recs, rec)
		}
	}
	if len(recs) == 0 {
		return nil, nil
	}
	added, err := s.store.AddUSBRecords(ctx, m.VIN, recs, MaxUSBRecordsPerDay, now.Add(-24*time.Hour))
	if err != nil {
		return nil, fmt.Errorf("software record of %s: %w", m.VIN, err)
	}
	var notes []string
	seen := map[string]bool{}
	for _, r := range added {
		if !seen[r.Detail] {
			seen[r.Detail] = true
			notes = append(notes, r.Detail)
		}
	}
	if len(added) < len(recs) {
		s.log.DebugContext(ctx, "USB installs reported before, or past the daily cap, not recorded again", "vin", m.VIN, "reported", len(recs), "recorded", len(added))
	}
	return notes, nil
}
