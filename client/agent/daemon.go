package agent

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/vehicle"
)

// DaemonConfig paces the daemon.
type DaemonConfig struct {
	// Interval between check-ins while the server answers.
	Interval time.Duration
	// Jitter spreads a fleet's check-ins: each wait is scaled by a random
	// factor in [1-Jitter, 1+Jitter].
	Jitter float64
	// RetryMin is the first wait after the server could not be reached;
	// it doubles per failure up to Interval.
	RetryMin time.Duration
	// Sleep waits (tests make it fast).
	Sleep func(ctx context.Context, d time.Duration) error
	// OnCycle, if set, sees every cycle's outcome.
	OnCycle func(Report, error, time.Duration)
	// Wake, if set, starts the next cycle at once when it delivers (a
	// push wake-up: a hint only; the cycle verifies everything as usual).
	Wake <-chan struct{}
}

// NextWait returns how long to wait after a cycle, given how many cycles
// in a row could not reach the server.
func (c DaemonConfig) NextWait(failures int, rnd func() float64) time.Duration {
	d := c.Interval
	if failures > 0 {
		d = c.RetryMin << min(failures-1, 30)
		if d > c.Interval || d <= 0 {
			d = c.Interval
		}
	}
	if c.Jitter > 0 {
		d = time.Duration(float64(d) * (1 - c.Jitter + 2*c.Jitter*rnd()))
	}
	return d
}

// Run checks in every interval until ctx ends. While the server cannot be
// reached (or answers 5xx) it backs off; after several such cycles in a
// row the cycle sets DTC B15C4, and the first that reaches the server
// clears it. The vehicle lock is held only
// during a cycle, so a manual update can run in between.
func (a *Agent) Run(ctx context.Context, c DaemonConfig) error {
	failures := 0
	for {
		var rep Report
		err := a.V.Lock()
		if err == nil {
			rep, err = a.Update(ctx)
			a.V.Close()
		}
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case errors.Is(err, vehicle.ErrBusy):
			a.Log.Info("another agent is updating; skipping this check-in")
		case errors.Is(err, client.ErrUnreachable):
			failures++
			a.Log.Warn("server unreachable; backing off", "failures", failures, "err", err)
		default:
			if failures > 0 {
				a.Log.Info("server reachable again", "after_failures", failures)
			}
			failures = 0
			if err != nil {
				a.Log.Warn("update cycle failed", "err", err)
			}
		}
		wait := c.NextWait(failures, rand.Float64)
		if c.OnCycle != nil {
			c.OnCycle(rep, err, wait)
		}
		woke := a.waitOrWake(ctx, c, wait)
		if ctx.Err() != nil {
			return nil
		}
		if woke {
			a.Log.Info("woken by the server: checking in now")
		}
	}
}

// waitOrWake waits as waitRenewing does, or until a wake-up arrives; it
// reports whether a wake-up ended the wait.
func (a *Agent) waitOrWake(ctx context.Context, c DaemonConfig, d time.Duration) bool {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	woke := make(chan struct{})
	go func() {
		select {
		case <-c.Wake:
			close(woke)
			cancel()
		case <-wctx.Done():
		}
	}()
	a.waitRenewing(wctx, c, d)
	cancel()
	select {
	case <-woke:
		return true
	default:
		return false
	}
}

// waitRenewing waits d, renewing the connected-services token each time
// it comes due before the next check-in. A failed renewal is left to the
// next cycle (and its backoff).
func (a *Agent) waitRenewing(ctx context.Context, c DaemonConfig, d time.Duration) error {
	next := a.now().Add(d)
	last := time.Time{}
	for {
		auth, err := a.V.Auth()
		if err != nil {
			break
		}
		renew := auth.RenewAt()
		if renew.IsZero() || !renew.Before(next) || !renew.After(last) {
			break
		}
		last = renew
		if err := c.Sleep(ctx, max(renew.Sub(a.now()), 0)); err != nil {
			return err
		}
		if err := a.V.Lock(); err != nil {
			break // an update is running; it reauthorizes as needed
		}
		_, err = a.Reauthorize(ctx)
		a.V.Close()
		if err != nil {
			a.Log.Warn("token renewal failed; the next check-in retries", "err", err)
			break
		}
		a.Log.Info("connected-services token renewed")
	}
	return c.Sleep(ctx, max(next.Sub(a.now()), 0))
}
