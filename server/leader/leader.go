// Package leader elects one replica at a time for the server's singleton
// work (campaign waves, job timeouts, re-signing). The elected replica
// holds a lease in the state store and renews it at a third of its
// lifetime; each change of holder raises the lease's epoch. Work that
// writes passes the Fence it ran under to the store, which refuses the
// write once the lease has moved on, so a replica that stalls past its
// lease (paused, swapped out, partitioned) cannot act on stale leadership
// when it wakes up.
package leader

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roadsign/roadsign/server"
)

// Store keeps the lease.
type Store interface {
	AcquireLeadership(ctx context.Context, name, holder string, ttl time.Duration, now time.Time) (epoch int64, ok bool, err error)
	ReleaseLease(ctx context.Context, name, holder string) error
}

// Elector takes part in one named election.
type Elector struct {
	store  Store
	name   string
	holder string
	ttl    time.Duration
	log    *slog.Logger

	mu    sync.Mutex
	epoch int64
	// until is when this replica must stop trusting its lease without a
	// renewal, by the monotonic clock (a stalled process sees it passed).
	until time.Time

	leading prometheus.Gauge
}

// New returns an elector; reg (may be nil) gets roadsign_leader{lease}.
func New(store Store, name, holder string, ttl time.Duration, log *slog.Logger, reg prometheus.Registerer) *Elector {
	e := &Elector{store: store, name: name, holder: holder, ttl: ttl, log: log,
		leading: prometheus.NewGauge(prometheus.GaugeOpts{Name: "roadsign_leader", Help: "1 while this replica holds the lease and runs the singleton work.",
			ConstLabels: prometheus.Labels{"lease": name}})}
	if reg != nil {
		reg.MustRegister(e.leading)
	}
	return e
}

// Run takes and renews the lease until ctx ends, then gives it up.
func (e *Elector) Run(ctx context.Context) {
	t := time.NewTicker(e.ttl / 3)
	defer t.Stop()
	for {
		e.try(ctx)
		select {
		case <-ctx.Done():
			if _, ok := e.Fence(); ok {
				// Bounded: a shutdown must not hang on a database that
				// does not answer (the lease then simply runs out).
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
				e.store.ReleaseLease(rctx, e.name, e.holder)
				cancel()
				e.log.Info("gave up leadership", "lease", e.name)
			}
			e.set(0, time.Time{})
			return
		case <-t.C:
		}
	}
}

func (e *Elector) try(ctx context.Context) {
	start := time.Now()
	epoch, ok, err := e.store.AcquireLeadership(ctx, e.name, e.holder, e.ttl, start)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			e.log.Warn("lease renewal failed", "lease", e.name, "err", err)
		}
		// Keep what we had until it runs out; once it has, say so (the
		// gauge, and whoever watches it for a hand-over, must not see
		// two leaders while the database is away).
		if _, still := e.Fence(); !still {
			e.set(0, time.Time{})
		}
		return
	case !ok:
		if _, was := e.Fence(); was {
			e.log.Warn("lost leadership", "lease", e.name)
		}
		e.set(0, time.Time{})
		return
	}
	if prev, was := e.Fence(); !was || prev.Epoch != epoch {
		e.log.Info("leading", "lease", e.name, "epoch", epoch)
	}
	// Counted from before the request: the database's expiry is later.
	e.set(epoch, start.Add(e.ttl))
}

func (e *Elector) set(epoch int64, until time.Time) {
	e.mu.Lock()
	e.epoch, e.until = epoch, until
	e.mu.Unlock()
	if epoch > 0 {
		e.leading.Set(1)
	} else {
		e.leading.Set(0)
	}
}

// Fence returns what this replica's writes are fenced by, and whether it
// leads (holds an unexpired lease) now.
func (e *Elector) Fence() (server.Fence, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.epoch == 0 || !time.Now().Before(e.until) {
		return server.Fence{}, false
	}
	return server.Fence{Name: e.name, Holder: e.holder, Epoch: e.epoch}, true
}

// Every runs task every interval while this replica leads, until ctx ends.
func (e *Elector) Every(ctx context.Context, interval time.Duration, what string, task func(ctx context.Context, f server.Fence) error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if f, ok := e.Fence(); ok {
			if err := task(ctx, f); err != nil && ctx.Err() == nil {
				e.log.Warn(what+" failed; retrying", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
