package registry

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/vehicleauth"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/sqlite"
	"github.com/roadsign/roadsign/server/sqlstore"
)

// TestOfflineInstallsRecordedOnceAndCapped: a USB install note is
// recorded once however often it is reported, and a vehicle's software
// record takes at most MaxUSBRecordsPerDay USB installs a day.
func TestOfflineInstallsRecordedOnceAndCapped(t *testing.T) {
	const vin = "JTMBFREV0N0000001"
	ctx := context.Background()
	note := func(i int) string {
		return fmt.Sprintf("dcm DCM1: 1.0.0 -> 1.%d.0 from USB bundle issued 2026-11-30T12:00:00Z", i)
	}
	notes := func(from, to int) []string {
		var out []string
		for i := from; i < to; i++ {
			out = append(out, note(i))
		}
		return out
	}
	tests := []struct {
		name    string
		reports [][]string // one check-in each
		nextDay [][]string // check-ins 25 hours later
		want    int        // USB entries recorded in all
	}{
		{"one note", [][]string{{note(1)}}, nil, 1},
		{"the same note reported again", [][]string{{note(1)}, {note(1)}, {note(1), note(1)}}, nil, 1},
		{"new notes past the daily cap", [][]string{notes(0, 10), notes(10, 20), notes(20, 30)}, nil, MaxUSBRecordsPerDay},
		{"the cap opens again the next day", [][]string{notes(0, 20)}, [][]string{notes(20, 25)}, MaxUSBRecordsPerDay + 5},
		{"a note for another unit is not this one's", [][]string{{"head-unit HU9: 1.0.0 -> 2.0.0 from USB bundle"}}, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
			st := storeWith(t, vin, now, server.ECU{Serial: "DCM1", Type: "dcm", HardwareID: "DCM-4G-24MM"})
			s, err := New(Config{Store: st, Images: fakeImages{}, Now: func() time.Time { return now }, Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			checkIn := func(offline []string) {
				t.Helper()
				b, _ := json.Marshal(vehicleauth.Manifest{VIN: vin, Nonce: strings.Repeat("ab", 16), Time: now, Offline: offline,
					ECUs: []vehicleauth.ECUReport{{Serial: "DCM1", Version: "1.1.0", SHA256: strings.Repeat("0", 64), Length: 10}}})
				if err := s.CheckIn(ctx, vin, vehicleauth.SignedManifest{Signed: b, Signature: []byte("s")}); err != nil {
					t.Fatal(err)
				}
			}
			for _, r := range tt.reports {
				checkIn(r)
			}
			now = now.Add(25 * time.Hour)
			for _, r := range tt.nextDay {
				checkIn(r)
			}
			recs, err := st.SoftwareRecords(ctx, vin, server.RecordQuery{Limit: server.MaxRecordPage})
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != tt.want {
				t.Fatalf("%d entries recorded, want %d", len(recs), tt.want)
			}
			audits, _ := st.ListAudit(ctx, 0, 1000)
			n := 0
			for _, a := range audits {
				if a.Action == "vehicle.offline_install" {
					n++
				}
			}
			if tt.want == 0 && n != 0 || tt.want > 0 && n == 0 {
				t.Fatalf("%d offline-install audit entries for %d recorded installs", n, tt.want)
			}
		})
	}
}

// fakeImages publishes one image per (ECU type, hardware IDs).
type fakeImages map[string][]string

func (f fakeImages) CurrentTargets(context.Context) (map[string]*metadata.TargetFiles, int64, error) {
	out := map[string]*metadata.TargetFiles{}
	for typ, hws := range f {
		raw, _ := json.Marshal(map[string]any{"ecuType": typ, "hardwareIds": hws, "version": "1.0.0", "releaseCounter": 1})
		msg := json.RawMessage(raw)
		out[typ+"/x.img"] = &metadata.TargetFiles{Custom: &msg}
	}
	return out, 1, nil
}

// TestReplaceChecksTheUnit: a re-provision keeps the removed unit's type
// and takes a hardware ID its type has images for; anything else is
// refused with a code that says which.
func TestReplaceChecksTheUnit(t *testing.T) {
	const vin = "JTMBFREV0N0000001"
	ctx := context.Background()
	images := fakeImages{"head-unit": {"HU-GEN5-NA"}, "dcm": {"DCM-4G-24MM", "DCM-5G-25MM"}}
	tests := []struct {
		name     string
		images   Images
		old      string
		req      ReplaceRequest
		wantCode string
	}{
		{"a DCM by a DCM", images, "DCM1", ReplaceRequest{HardwareID: "DCM-5G-25MM"}, ""},
		{"the head unit by a DCM's hardware", images, "HU1", ReplaceRequest{HardwareID: "DCM-4G-24MM"}, "ecu_type_mismatch"},
		{"a type that is not the removed unit's", images, "HU1", ReplaceRequest{Type: "dcm", HardwareID: "HU-GEN5-NA"}, "ecu_type_mismatch"},
		{"hardware no image is built for", images, "DCM1", ReplaceRequest{HardwareID: "DCM-9X"}, "unknown_hardware_id"},
		{"nothing published: the removed unit's type decides", fakeImages{}, "DCM1", ReplaceRequest{HardwareID: "DCM-9X"}, ""},
		{"nothing published for the type yet", fakeImages{"head-unit": {"HU-GEN5-NA"}}, "DCM1", ReplaceRequest{HardwareID: "DCM-9X"}, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
			st := storeWith(t, vin, now, server.ECU{Serial: "HU1", Type: "head-unit", HardwareID: "HU-GEN5-NA"}, server.ECU{Serial: "DCM1", Type: "dcm", HardwareID: "DCM-4G-24MM"})
			s, err := New(Config{Store: st, Images: tt.images, Now: func() time.Time { return now }, Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			tt.req.Serial, tt.req.Reason = fmt.Sprintf("NEW%d", i), "test"
			tt.req.PublicKey = base64.StdEncoding.EncodeToString(make([]byte, 32))
			_, err = s.ReplaceECU(ctx, server.Principal{Name: "dealer"}, vin, tt.old, tt.req)
			if got := server.ErrorOf(err).Code; err != nil && got != tt.wantCode || err == nil && tt.wantCode != "" {
				t.Fatalf("err %v (code %s), want code %q", err, got, tt.wantCode)
			}
		})
	}
}

// storeWith is a new SQLite store holding one vehicle with ecus.
func storeWith(t *testing.T, vin string, now time.Time, ecus ...server.ECU) *sqlstore.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "roadsign.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.CreateVehicle(context.Background(), server.Vehicle{VIN: vin, Model: "Corolla", Year: 2024, Region: "NA", PublicKey: make([]byte, 32), CreatedAt: now, ECUs: ecus}); err != nil {
		t.Fatal(err)
	}
	return st
}
