package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/vehicleauth"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/sqlite"
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
			st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "roadsign.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
			if err := st.CreateVehicle(ctx, server.Vehicle{VIN: vin, Model: "Corolla", Year: 2024, Region: "NA", PublicKey: make([]byte, 32), CreatedAt: now,
				ECUs: []server.ECU{{Serial: "DCM1", Type: "dcm", HardwareID: "DCM-4G-24MM"}}}); err != nil {
				t.Fatal(err)
			}
			s := New(st, func() time.Time { return now }, slog.New(slog.DiscardHandler))
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
