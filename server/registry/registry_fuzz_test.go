package registry

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/vehicleauth"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/sqlite"
)

// FuzzCheckInManifest decodes vehicle manifests as a check-in does, on a
// real store: whatever the bytes, the answer is recorded or a 400-class
// refusal, never a panic or an internal error, and nothing recorded names
// an ECU the vehicle does not have or breaks the manifest's bounds.
func FuzzCheckInManifest(f *testing.F) {
	const vin = "JTMBFREV0N0000001"
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	good, _ := json.Marshal(vehicleauth.Manifest{VIN: vin, Nonce: strings.Repeat("ab", 16), Time: now,
		ECUs: []vehicleauth.ECUReport{{Serial: "HU1", Version: "1.0.0", SHA256: strings.Repeat("0", 64), Length: 10}},
		DTCs: []string{"U1100"}, Signal: &vehicleauth.SignalReport{Bars: 2, At: now}})
	f.Add(good)
	f.Add([]byte(`{"vin":"` + vin + `","nonce":"00","time":"2026-11-30T12:00:00Z"}`))
	f.Add([]byte(`{"vin":"` + vin + `","nonce":"` + strings.Repeat("ab", 16) + `","time":"2026-11-30T12:00:00Z","ecus":[{"serial":"HU1"},{"serial":"HU1"}]}`))
	f.Add([]byte(`{"vin":"` + vin + `","nonce":"` + strings.Repeat("ab", 16) + `","time":"2026-11-30T12:00:00Z","ecus":[{"serial":"NOPE"}],"dtcDetails":[{"code":"B15C4","firstSeen":"2026-11-30T11:00:00Z","lastSeen":"2026-11-30T12:00:00Z","count":2}]}`))
	f.Add([]byte(`[]`))
	f.Add([]byte{})

	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(f.TempDir(), "roadsign.db"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	if err := st.CreateVehicle(ctx, server.Vehicle{VIN: vin, Model: "Corolla", Year: 2024, Region: "NA", PublicKey: make([]byte, 32), CreatedAt: now,
		ECUs: []server.ECU{{Serial: "HU1", Type: "head-unit", HardwareID: "HU-GEN5-NA"}, {Serial: "DCM1", Type: "dcm", HardwareID: "DCM-4G-24MM"}}}); err != nil {
		f.Fatal(err)
	}
	s, err := New(Config{Store: st, Images: fakeImages{}, Now: func() time.Time { return now }, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, signed []byte) {
		err := s.CheckIn(ctx, vin, vehicleauth.SignedManifest{Signed: signed, Signature: []byte("s")})
		if err != nil {
			if e := server.ErrorOf(err); e.Kind != server.KindInvalid {
				t.Fatalf("manifest %q: %v (kind %d), want a refusal as invalid", signed, err, e.Kind)
			}
			return
		}
		v, err := st.Vehicle(ctx, vin)
		if err != nil {
			t.Fatal(err)
		}
		if len(v.ECUs) != 2 || v.ECUs[0].Serial != "HU1" || v.ECUs[1].Serial != "DCM1" {
			t.Fatalf("manifest %q changed the vehicle's ECUs: %+v", signed, v.ECUs)
		}
		for _, e := range v.ECUs {
			if len(e.InstalledVersion) > 64 || len(e.InstalledTarget) > 512 {
				t.Fatalf("manifest %q recorded an oversized field: %+v", signed, e)
			}
		}
	})
}
