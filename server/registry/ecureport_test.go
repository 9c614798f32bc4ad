package registry

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/vehicleauth"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/sqlite"
)

// keyedCar is a vehicle whose head unit (the primary, holding the vehicle
// key) and DCM have keys of their own.
type keyedCar struct {
	t        *testing.T
	s        *Service
	st       server.Store
	now      time.Time
	hu, dcm  ed25519.PrivateKey
	counters map[string]int64
}

const keyedVIN = "JTMBFREV3N0000002"

func newKey(t *testing.T) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pub64(k ed25519.PrivateKey) string {
	return base64.StdEncoding.EncodeToString(k.Public().(ed25519.PublicKey))
}

func newKeyedCar(t *testing.T) *keyedCar {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "roadsign.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := &keyedCar{t: t, st: st, now: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC), hu: newKey(t), dcm: newKey(t), counters: map[string]int64{}}
	c.s, err = New(Config{Store: st, Images: reportedImages{}, Now: func() time.Time { return c.now }, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.s.Register(context.Background(), server.Principal{Name: "admin"}, c.registration(pub64(c.hu), pub64(c.dcm)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *keyedCar) registration(huKey, dcmKey string) RegisterRequest {
	return RegisterRequest{VIN: keyedVIN, Model: "Corolla", Year: 2026, Region: "EU", PublicKey: pub64(c.hu), ECUs: []ECURequest{
		{Type: "head-unit", Serial: "HU1", HardwareID: "HU-GEN5-NA", PublicKey: huKey},
		{Type: "dcm", Serial: "DCM1", HardwareID: "DCM-4G-24MM", PublicKey: dcmKey}}}
}

// reportedImages publishes the images the keyed car's reports name: the
// DCM's as 1.0.0 (the head unit's is not published).
type reportedImages struct{}

func (reportedImages) CurrentTargets(context.Context) (map[string]*metadata.TargetFiles, int64, error) {
	raw := json.RawMessage(`{"ecuType": "dcm", "hardwareIds": ["DCM-4G-24MM"], "version": "1.0.0", "releaseCounter": 1}`)
	sum, _ := hex.DecodeString(strings.Repeat("ab", 32))
	return map[string]*metadata.TargetFiles{"dcm1-1.0.0.img": {Length: 10, Hashes: metadata.Hashes{"sha256": sum}, Custom: &raw}}, 1, nil
}

// report is serial's next signed report, signed with key.
func (c *keyedCar) report(serial string, key ed25519.PrivateKey, edit ...func(*vehicleauth.ECUVersionReport)) vehicleauth.SignedECUReport {
	c.t.Helper()
	c.counters[serial]++
	r := vehicleauth.ECUVersionReport{ECUSerial: serial, LatestTime: c.now, Counter: c.counters[serial],
		InstalledImage: vehicleauth.InstalledImage{Filename: strings.ToLower(serial) + "-1.0.0.img", Length: 10, Hashes: map[string]string{"sha256": strings.Repeat("ab", 32)}}}
	for _, f := range edit {
		f(&r)
	}
	sr, err := vehicleauth.SignECUReport(key, r)
	if err != nil {
		c.t.Fatal(err)
	}
	return sr
}

// checkIn posts a vehicle version manifest (the HTTP layer has checked
// the primary's signature over it) and returns the refusal code, "" if
// accepted.
func (c *keyedCar) checkIn(m vehicleauth.Manifest) string {
	c.t.Helper()
	m.VIN, m.Time = keyedVIN, c.now
	nonce := make([]byte, 16)
	rand.Read(nonce)
	m.Nonce = hex.EncodeToString(nonce)
	b, _ := json.Marshal(m)
	err := c.s.CheckIn(context.Background(), keyedVIN, vehicleauth.SignedManifest{Signed: b, Signature: []byte("checked by the HTTP layer")})
	if err == nil {
		return ""
	}
	if e := server.ErrorOf(err); e.Code != "" {
		return e.Code
	}
	return err.Error()
}

func (c *keyedCar) vehicle() server.Vehicle {
	c.t.Helper()
	v, err := c.st.Vehicle(context.Background(), keyedVIN)
	if err != nil {
		c.t.Fatal(err)
	}
	return v
}

// TestECUReportsAreEachECUsOwn: with keys of their own, every ECU of the
// inventory signs its own report each cycle; the server refuses a report
// signed with another ECU's key, a counter played back, an ECU not in the
// inventory and an inventory ECU that sent none, each with its own code,
// and keeps the refusal as evidence naming the ECU.
func TestECUReportsAreEachECUsOwn(t *testing.T) {
	c := newKeyedCar(t)
	// The primary's list says the DCM runs 9.9.9: the server takes the
	// version signed for the image the DCM's own report names.
	if got := c.checkIn(vehicleauth.Manifest{PrimarySerial: "HU1", ECUReports: []vehicleauth.SignedECUReport{c.report("HU1", c.hu), c.report("DCM1", c.dcm)},
		ECUs: []vehicleauth.ECUReport{{Serial: "DCM1", Version: "9.9.9", SHA256: strings.Repeat("cd", 32)}}}); got != "" {
		t.Fatalf("a good manifest was refused: %s", got)
	}
	if v := c.vehicle(); v.ECUs[1].InstalledTarget != "dcm1-1.0.0.img" || v.ECUs[1].ReportCounter != 1 || v.ECUs[1].InstalledVersion != "1.0.0" ||
		v.ECUs[1].InstalledSHA256 != strings.Repeat("ab", 32) || v.ECUs[0].InstalledVersion != "" {
		t.Fatalf("the ECUs' own reports were not what was recorded: %+v", v.ECUs)
	}
	stranger := newKey(t)
	var played vehicleauth.SignedECUReport
	tests := []struct {
		name string
		m    func() vehicleauth.Manifest
		want string
	}{
		{"the DCM's report signed with the head unit's key", func() vehicleauth.Manifest {
			return vehicleauth.Manifest{PrimarySerial: "HU1", ECUReports: []vehicleauth.SignedECUReport{c.report("HU1", c.hu), c.report("DCM1", c.hu)}}
		}, errcode.ECUReportSignature},
		{"a good cycle", func() vehicleauth.Manifest {
			played = c.report("DCM1", c.dcm)
			return vehicleauth.Manifest{PrimarySerial: "HU1", ECUReports: []vehicleauth.SignedECUReport{c.report("HU1", c.hu), played}}
		}, ""},
		{"the DCM's report of the last cycle played back", func() vehicleauth.Manifest {
			return vehicleauth.Manifest{PrimarySerial: "HU1", ECUReports: []vehicleauth.SignedECUReport{c.report("HU1", c.hu), played}}
		}, errcode.ECUReportReplayed},
		{"a report from an ECU not in the inventory", func() vehicleauth.Manifest {
			return vehicleauth.Manifest{PrimarySerial: "HU1", ECUReports: []vehicleauth.SignedECUReport{c.report("HU1", c.hu), c.report("DCM9", stranger)}}
		}, errcode.ECUUnknown},
		{"the DCM sent no report", func() vehicleauth.Manifest {
			return vehicleauth.Manifest{PrimarySerial: "HU1", ECUReports: []vehicleauth.SignedECUReport{c.report("HU1", c.hu)}}
		}, errcode.ECUMissing},
		{"another ECU named as the primary", func() vehicleauth.Manifest {
			return vehicleauth.Manifest{PrimarySerial: "DCM1", ECUReports: []vehicleauth.SignedECUReport{c.report("HU1", c.hu), c.report("DCM1", c.dcm)}}
		}, errcode.ECUUnknown},
		{"one ECU reporting twice", func() vehicleauth.Manifest {
			return vehicleauth.Manifest{PrimarySerial: "HU1", ECUReports: []vehicleauth.SignedECUReport{c.report("HU1", c.hu), c.report("DCM1", c.dcm), c.report("DCM1", c.dcm)}}
		}, errcode.ECUReportReplayed},
		{"an old-style manifest without reports", func() vehicleauth.Manifest {
			return vehicleauth.Manifest{ECUs: []vehicleauth.ECUReport{{Serial: "HU1"}, {Serial: "DCM1"}}}
		}, errcode.ECUMissing},
		{"the DCM unreachable on the vehicle bus, said so", func() vehicleauth.Manifest {
			return vehicleauth.Manifest{PrimarySerial: "HU1", ECUReports: []vehicleauth.SignedECUReport{c.report("HU1", c.hu)}, Unreachable: []string{"DCM1"}}
		}, ""},
	}
	for _, tt := range tests {
		c.now = c.now.Add(time.Minute)
		if got := c.checkIn(tt.m()); got != tt.want {
			t.Fatalf("%s: got %q, want %q", tt.name, got, tt.want)
		}
		if tt.want == "" {
			continue
		}
		v := c.vehicle()
		if !strings.HasPrefix(v.RequestFaults.CheckInRefused, tt.want+": ") || !v.RequestFaults.CheckInRefusedAt.Equal(c.now) {
			t.Fatalf("%s: the refusal kept as evidence is %q at %s", tt.name, v.RequestFaults.CheckInRefused, v.RequestFaults.CheckInRefusedAt)
		}
	}

	// A refusal the DCM reports in its signed report is recorded.
	c.now = c.now.Add(time.Minute)
	attack := "refused dcm/evil.img: the director did not sign it for DCM1"
	if got := c.checkIn(vehicleauth.Manifest{PrimarySerial: "HU1", ECUReports: []vehicleauth.SignedECUReport{c.report("HU1", c.hu),
		c.report("DCM1", c.dcm, func(r *vehicleauth.ECUVersionReport) { r.AttackDetected = attack })}}); got != "" {
		t.Fatal(got)
	}
	if e := c.vehicle().ECUs[1]; e.Attack != attack || !e.AttackAt.Equal(c.now) {
		t.Fatalf("the DCM's reported attack was not kept: %+v", e)
	}

	// The store holds the counter too, should two check-ins race.
	err := c.st.ReportECUs(context.Background(), keyedVIN, []server.ECU{{Serial: "DCM1", ReportCounter: 1}}, server.Health{}, c.now)
	if server.ErrorOf(err).Code != errcode.ECUReportReplayed {
		t.Fatalf("a stale counter written straight to the store: %v", err)
	}
}

// TestRegistrationAndReplacementOfECUKeys: keys are given for every ECU
// or none, each its own, the primary's the vehicle's; re-provisioning the
// DCM changes only its key, the head unit (the primary) the vehicle's too.
func TestRegistrationAndReplacementOfECUKeys(t *testing.T) {
	c := newKeyedCar(t)
	other := newKey(t)
	for _, tt := range []struct {
		name        string
		huKey, dcmK string
	}{
		{"a key for one ECU only", pub64(c.hu), ""},
		{"the same key for both", pub64(c.hu), pub64(c.hu)},
		{"no ECU holds the vehicle key", pub64(other), pub64(c.dcm)},
		{"not a key", pub64(c.hu), "bm90IGEga2V5"},
	} {
		r := c.registration(tt.huKey, tt.dcmK)
		r.VIN = "JTMBFREV5N0000003"
		_, err := c.s.Register(context.Background(), server.Principal{Name: "admin"}, r)
		if server.ErrorOf(err).Code != errcode.InvalidPublicKey {
			t.Fatalf("%s: registered (%v)", tt.name, err)
		}
	}

	newDCM := newKey(t)
	if _, err := c.s.ReplaceECU(context.Background(), server.Principal{Name: "dealer"}, keyedVIN, "DCM1",
		ReplaceRequest{Serial: "DCM2", HardwareID: "DCM-4G-24MM", PublicKey: pub64(newDCM), Reason: "DCM replaced"}); err != nil {
		t.Fatal(err)
	}
	v := c.vehicle()
	if !bytes.Equal(v.PublicKey, c.hu.Public().(ed25519.PublicKey)) || !bytes.Equal(v.ECUs[1].PublicKey, newDCM.Public().(ed25519.PublicKey)) {
		t.Fatalf("after the DCM's re-provisioning: vehicle key changed or DCM key not the new one: %+v", v)
	}
	if got := c.checkIn(vehicleauth.Manifest{PrimarySerial: "HU1", ECUReports: []vehicleauth.SignedECUReport{c.report("HU1", c.hu), c.report("DCM2", c.dcm)}}); got != errcode.ECUReportSignature {
		t.Fatalf("a report signed with the removed DCM's key: %q", got)
	}
	if got := c.checkIn(vehicleauth.Manifest{PrimarySerial: "HU1", ECUReports: []vehicleauth.SignedECUReport{c.report("HU1", c.hu), c.report("DCM2", newDCM)}}); got != "" {
		t.Fatalf("the new DCM's report: %q", got)
	}
	newHU := newKey(t)
	if _, err := c.s.ReplaceECU(context.Background(), server.Principal{Name: "dealer"}, keyedVIN, "HU1",
		ReplaceRequest{Serial: "HU2", HardwareID: "HU-GEN5-NA", PublicKey: pub64(newHU), Reason: "head unit replaced"}); err != nil {
		t.Fatal(err)
	}
	if v := c.vehicle(); !bytes.Equal(v.PublicKey, newHU.Public().(ed25519.PublicKey)) {
		t.Fatal("replacing the primary did not make its key the vehicle's")
	}
}

// TestUnkeyedVehicleRefusesECUReports: a vehicle registered without ECU
// keys cannot have its ECUs' reports checked, so it is not sent any.
func TestUnkeyedVehicleRefusesECUReports(t *testing.T) {
	const vin = "JTMBFREV0N0000001"
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	st := storeWith(t, vin, now, server.ECU{Serial: "DCM1", Type: "dcm", HardwareID: "DCM-4G-24MM"})
	s, err := New(Config{Store: st, Images: fakeImages{}, Now: func() time.Time { return now }, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	sr, _ := vehicleauth.SignECUReport(newKey(t), vehicleauth.ECUVersionReport{ECUSerial: "DCM1", Counter: 1})
	b, _ := json.Marshal(vehicleauth.Manifest{VIN: vin, Nonce: strings.Repeat("cd", 16), Time: now, PrimarySerial: "DCM1", ECUReports: []vehicleauth.SignedECUReport{sr}})
	err = s.CheckIn(context.Background(), vin, vehicleauth.SignedManifest{Signed: b, Signature: []byte("s")})
	if server.ErrorOf(err).Code != errcode.ECUReportSignature {
		t.Fatalf("reports for a vehicle without ECU keys: %v", err)
	}
}
