package jobs_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/jobs"
	"github.com/roadsign/roadsign/server/sqlite"
)

// BenchmarkEventsService is 32 vehicles reporting progress on their jobs at
// once (the service and SQLite, without HTTP): events/s.
func BenchmarkEventsService(b *testing.B) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	imgs := images{"dcm/3.img": image("3.0.0", 4, false)}
	svc, err := jobs.New(jobs.Config{Store: st, Images: imgs, Now: time.Now, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	const vehicles = 32
	ids := make([]string, vehicles)
	for i := range vehicles {
		vin := fmt.Sprintf("VIN%02d", i)
		if err := st.CreateVehicle(ctx, server.Vehicle{VIN: vin, Region: "EU", PublicKey: []byte{byte(i)}, ECUs: []server.ECU{{Serial: "DCM" + vin, Type: "dcm", HardwareID: "DCM-4G"}}}); err != nil {
			b.Fatal(err)
		}
		j, err := svc.Create(ctx, dealer, jobs.CreateRequest{VIN: vin, ECU: "dcm", Version: "3.0.0", Reason: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = j.ID
	}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i := range vehicles {
		wg.Go(func() {
			for k := i; k < b.N; k += vehicles {
				if _, err := svc.Event(ctx, fmt.Sprintf("VIN%02d", i), ids[i], jobs.EventRequest{Kind: "downloading", Percent: k % 100}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}
