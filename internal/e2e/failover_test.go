package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/client/fleetsim"
	"github.com/roadsign/roadsign/internal/testsupport"
)

// TestPrimaryFailover: two replicas on a private PostgreSQL primary with
// a synchronous streaming standby, reached through one multi-host
// connection string (target_session_attrs=read-write). Vehicles report
// job progress through both replicas while the primary is killed
// (SIGKILL, backends and all) and, 5 s later, the standby promoted.
// Writes resume within 30 s of the loss, and every event a vehicle saw
// acknowledged is in the promoted database.
func TestPrimaryFailover(t *testing.T) {
	pg := testsupport.StartPGPair(t)
	a := newWorld(t, "--database", pg.URL(), "--auto-assign", "none")
	b := &world{t: t, dir: a.dir, data: a.data, ws: a.ws, extra: a.extra, env: a.env}
	b.start()
	a.setup(func(s sample) bool { return s.Version == "1.0.0" || s.Version == "2.0.0" })

	ctx := context.Background()
	const vehicles = 8
	f, err := fleetsim.New(fleetsim.Config{Server: a.url, Token: adminToken, Vehicles: vehicles, Concurrency: vehicles, Seed: 5,
		ECUs: factorySpecs(t), Model: "Roadster", Year: 2025, Region: "EU", StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Register(ctx, nil); err != nil {
		t.Fatal(err)
	}

	type ack struct {
		job        string
		seq        int
		sent, done time.Time
	}
	var (
		mu       sync.Mutex
		acks     []ack
		failed   int
		statuses = map[int]int{} // the refusals' HTTP statuses
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	hc := download.NewHTTPClient()
	jobs := map[string]bool{}
	for i, v := range f.Vehicles() {
		j := a.job(adminToken, map[string]any{"vin": v.VIN, "ecu": "dcm", "version": "2.0.0", "reason": "failover test", "forced": true})
		jobs[j.ID] = true
		c := &api.Client{Base: []string{a.url, b.url}[i%2], HTTP: hc, VIN: v.VIN, Key: v.Key, Now: time.Now}
		wg.Go(func() {
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				sent := time.Now()
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err := c.JobEvent(rctx, j.ID, api.JobEvent{Kind: "downloading", Percent: seq % 100, Message: fmt.Sprintf("seq %d", seq)})
				cancel()
				mu.Lock()
				if err == nil {
					acks = append(acks, ack{j.ID, seq, sent, time.Now()})
				} else {
					failed++
					var ae *api.Error
					if errors.As(err, &ae) {
						statuses[ae.Status]++
					}
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(200 * time.Millisecond) // a vehicle backs off
				} else {
					time.Sleep(20 * time.Millisecond)
				}
			}
		})
	}
	acked := func() int { mu.Lock(); defer mu.Unlock(); return len(acks) }
	waitFor(t, "the first acknowledged events", func() bool { return acked() >= 4*vehicles })

	pg.KillPrimary()
	killed := time.Now()
	// A replica without a writable database says so on /readyz, so a load
	// balancer stops sending it vehicles.
	ready := func(w *world) int { resp, _ := httpGet(t, w.url+"/readyz", nil); return resp.StatusCode }
	for _, w := range []*world{a, b} {
		for ready(w) != 503 && time.Since(killed) < 4*time.Second {
			time.Sleep(100 * time.Millisecond)
		}
		if code := ready(w); code != 503 {
			t.Errorf("/readyz answers %d with the primary gone, want 503", code)
		}
	}
	time.Sleep(time.Until(killed.Add(5 * time.Second))) // the time a watchdog takes to decide
	pg.Promote()
	resumed := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		for _, k := range acks {
			if k.sent.After(killed) {
				return k.done
			}
		}
		return time.Time{}
	}
	deadline := killed.Add(30 * time.Second)
	for resumed().IsZero() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	back := resumed()
	for _, w := range []*world{a, b} {
		if code := ready(w); code != 200 {
			t.Errorf("/readyz answers %d after the promotion, want 200", code)
		}
	}
	time.Sleep(2 * time.Second) // more writes on the promoted primary
	close(stop)
	wg.Wait()
	if back.IsZero() {
		t.Fatalf("no write accepted within 30 s of the primary's loss (%d refused)\nreplica a: %s\nreplica b: %s", failed, a.logBuf.String(), b.logBuf.String())
	}
	t.Logf("primary killed: writes accepted again after %.1f s (standby promoted after 5 s); %d events acknowledged, %d refused during the failover (HTTP statuses %v)",
		back.Sub(killed).Seconds(), len(acks), failed, statuses)
	if back.Sub(killed) > 30*time.Second {
		t.Errorf("writes resumed %.1f s after the primary's loss; want within 30 s", back.Sub(killed).Seconds())
	}

	// A replica without its database says "retry" (503), never
	// "internal error" (500).
	if statuses[500] > 0 {
		t.Errorf("vehicles got 500 during the failover (%v); want 503 with Retry-After", statuses)
	}

	// Every acknowledged event is in the promoted database.
	for id := range jobs {
		j := b.getJob(adminToken, id)
		var have []string
		for _, e := range j.Events {
			have = append(have, e.Message)
		}
		for _, k := range acks {
			if k.job == id && !slices.Contains(have, fmt.Sprintf("seq %d", k.seq)) {
				t.Errorf("job %s: event seq %d was acknowledged at %s (primary killed at %s) and is gone",
					id, k.seq, k.done.Format("15:04:05.000"), killed.Format("15:04:05.000"))
			}
		}
	}
}
