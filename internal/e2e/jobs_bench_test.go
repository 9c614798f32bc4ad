package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/client/fleetsim"
)

// BenchmarkJobEvents: 32 vehicles report progress on their jobs at once,
// through the real server on SQLite (signed requests, HTTP, the jobs
// service): job events/s. Each vehicle posts b.N/32 progress events.
func BenchmarkJobEvents(b *testing.B) {
	b.StopTimer()
	w := newWorld(b, "--auto-assign", "none")
	w.setup(func(s sample) bool { return s.Version == "1.0.0" || s.Version == "2.0.0" })
	ctx := context.Background()
	const vehicles = 32
	f, err := fleetsim.New(fleetsim.Config{Server: w.url, Token: adminToken, Vehicles: vehicles, Concurrency: vehicles, Seed: 3,
		ECUs: factorySpecs(b), Model: "Roadster", Year: 2025, Region: "EU", StateDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Register(ctx, nil); err != nil {
		b.Fatal(err)
	}
	hc := download.NewHTTPClient()
	// Each round: a new job per vehicle, then eventsPerJob progress
	// reports from every vehicle at once (make bench runs one round).
	const eventsPerJob = 150
	var total int
	var took time.Duration
	for range b.N {
		var cs []*api.Client
		var ids []string
		for _, v := range f.Vehicles() {
			j := w.job(adminToken, map[string]any{"vin": v.VIN, "ecu": "dcm", "version": "2.0.0", "reason": "bench", "forced": true})
			cs = append(cs, &api.Client{Base: w.url, HTTP: hc, VIN: v.VIN, Key: v.Key, Now: time.Now})
			ids = append(ids, j.ID)
		}
		b.StartTimer()
		start := time.Now()
		var wg sync.WaitGroup
		for i := range cs {
			wg.Go(func() {
				for k := range eventsPerJob {
					if err := cs[i].JobEvent(ctx, ids[i], api.JobEvent{Kind: "downloading", Percent: k * 100 / eventsPerJob}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		took += time.Since(start)
		b.StopTimer()
		total += vehicles * eventsPerJob
		// The next round's jobs replace these (a forced dealer job).
		for i := range cs {
			if err := cs[i].JobEvent(ctx, ids[i], api.JobEvent{Kind: "failed", Message: "bench round over"}); err != nil {
				b.Fatal(err)
			}
		}
	}
	rate := float64(total) / took.Seconds()
	b.ReportMetric(rate, "events/s")
	fmt.Printf("job events: %d from %d vehicles at once, %.0f/s\n", total, vehicles, rate)
}
