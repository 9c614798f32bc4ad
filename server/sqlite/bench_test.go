package sqlite_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/sqlite"
)

// BenchmarkFleetQueries measures the queries that must stay fast at fleet
// scale, on a database of ROADSIGN_BENCH_VEHICLES vehicles (default
// 1,000,000) with two ECUs each: a page deep in the VIN order, a page of
// vehicles by hardware ID, and one vehicle with its ECUs.
func BenchmarkFleetQueries(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("ROADSIGN_BENCH_VEHICLES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "fleet.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	db := st.DB()
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	vs, _ := tx.Prepare(`INSERT INTO vehicles (vin, model, year, region, public_key, created_at, last_seen) VALUES (?, 'm', 2024, 'EU', x'00', 0, 0)`)
	es, _ := tx.Prepare(`INSERT INTO ecus (serial, vin, type, hardware_id, position) VALUES (?, ?, ?, ?, ?)`)
	for i := range n {
		vin := fmt.Sprintf("VIN%014d", i)
		vs.Exec(vin)
		es.Exec("HU"+vin, vin, "head-unit", "HU-"+strconv.Itoa(i%4), 0)
		es.Exec("DCM"+vin, vin, "dcm", "DCM-"+strconv.Itoa(i%7), 1)
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	mid := fmt.Sprintf("VIN%014d", n/2)
	b.Run("page-after-VIN", func(b *testing.B) {
		for range b.N {
			if page, err := st.ListVehicles(ctx, server.VehicleFilter{After: mid, Limit: 100}); err != nil || len(page) != 100 {
				b.Fatalf("%d %v", len(page), err)
			}
		}
	})
	b.Run("page-by-hardware", func(b *testing.B) {
		for range b.N {
			if page, err := st.ListVehicles(ctx, server.VehicleFilter{HardwareID: "DCM-3", After: mid, Limit: 100}); err != nil || len(page) != 100 {
				b.Fatalf("%d %v", len(page), err)
			}
		}
	})
	b.Run("one-vehicle", func(b *testing.B) {
		for range b.N {
			if _, err := st.Vehicle(ctx, mid); err != nil {
				b.Fatal(err)
			}
		}
	})
}
