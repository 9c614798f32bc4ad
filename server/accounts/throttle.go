package accounts

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/roadsign/roadsign/server"
)

// ThrottleConfig paces log-in attempts.
type ThrottleConfig struct {
	// PerIP is how many attempts one client address may make per minute
	// (a burst of that many, refilled evenly).
	PerIP int
	// LockAfter consecutive failures for one name lock it for LockBase,
	// doubling per further failure up to LockMax. A lock never lasts
	// longer than LockMax, and a device that logged in to the account
	// before is not held by it, so an attacker cannot keep an owner out.
	LockAfter         int
	LockBase, LockMax time.Duration
	// MaxEntries bounds the entries the throttle keeps.
	MaxEntries int
}

// DefaultThrottle is the server's default pacing.
var DefaultThrottle = ThrottleConfig{PerIP: 10, LockAfter: 5, LockBase: 30 * time.Second, LockMax: 15 * time.Minute, MaxEntries: 100_000}

// Throttle limits log-in attempts per client address (a token bucket)
// and per account name (a lockout after repeated failures). Unknown names
// are throttled exactly like known ones. Its state is in the database, so
// several replicas behind a load balancer allow what one would, not a
// multiple of it.
type Throttle struct {
	cfg   ThrottleConfig
	store server.Throttles
	now   func() time.Time

	mu        sync.Mutex
	lastPrune time.Time
}

// NewThrottle returns a throttle keeping its state in store.
func NewThrottle(cfg ThrottleConfig, store server.Throttles, now func() time.Time) *Throttle {
	return &Throttle{cfg: cfg, store: store, now: now}
}

func ipKey(ip string) string { return "ip:" + ip }

func nameKey(name string) string { return "name:" + strings.ToLower(strings.TrimSpace(name)) }

// AllowIP takes one attempt from ip's allowance; if there is none left it
// returns how long until there is.
func (t *Throttle) AllowIP(ctx context.Context, ip string) (time.Duration, error) {
	if t.cfg.PerIP <= 0 {
		return 0, nil
	}
	if err := t.prune(ctx); err != nil {
		return 0, err
	}
	now := t.now()
	rate := float64(t.cfg.PerIP) / float64(time.Minute)
	var wait time.Duration
	_, err := t.store.UpdateThrottle(ctx, ipKey(ip), func(e server.ThrottleEntry) server.ThrottleEntry {
		wait = 0
		tokens := float64(t.cfg.PerIP)
		if !e.Last.IsZero() {
			tokens = min(tokens, e.Tokens+float64(max(now.Sub(e.Last), 0))*rate)
		}
		if tokens < 1 {
			wait = time.Duration((1 - tokens) / rate)
		} else {
			tokens--
		}
		e.Tokens, e.Last = tokens, now
		return e
	})
	return wait, err
}

// LockedFor says how long name is still locked (0: not locked).
func (t *Throttle) LockedFor(ctx context.Context, name string) (time.Duration, error) {
	e, err := t.store.ThrottleEntry(ctx, nameKey(name))
	if err != nil || e.Until.IsZero() {
		return 0, err
	}
	return max(e.Until.Sub(t.now()), 0), nil
}

// Fail records a failed attempt for name.
func (t *Throttle) Fail(ctx context.Context, name string) error {
	if err := t.prune(ctx); err != nil {
		return err
	}
	now := t.now()
	_, err := t.store.UpdateThrottle(ctx, nameKey(name), func(e server.ThrottleEntry) server.ThrottleEntry {
		e.Failures++
		e.Last = now
		if over := e.Failures - t.cfg.LockAfter; t.cfg.LockAfter > 0 && over >= 0 {
			d := t.cfg.LockBase << min(over, 20)
			if d > t.cfg.LockMax || d <= 0 {
				d = t.cfg.LockMax
			}
			e.Until = now.Add(d)
		}
		return e
	})
	return err
}

// Succeed clears name's failures.
func (t *Throttle) Succeed(ctx context.Context, name string) error {
	_, err := t.store.UpdateThrottle(ctx, nameKey(name), func(server.ThrottleEntry) server.ThrottleEntry {
		return server.ThrottleEntry{}
	})
	return err
}

// prune, at most once a minute per replica, drops the entries nobody
// has used for LockMax, and beyond MaxEntries the least recently used:
// the throttle's table stays bounded whatever an attacker sends.
func (t *Throttle) prune(ctx context.Context) error {
	now := t.now()
	t.mu.Lock()
	due := now.Sub(t.lastPrune) >= time.Minute
	if due {
		t.lastPrune = now
	}
	t.mu.Unlock()
	if !due {
		return nil
	}
	idle := max(t.cfg.LockMax, time.Minute)
	return t.store.PruneThrottles(ctx, now.Add(-idle), now, t.cfg.MaxEntries)
}
