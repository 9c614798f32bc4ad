package accounts

import (
	"strings"
	"sync"
	"time"
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
	// MaxEntries bounds the memory the throttle keeps.
	MaxEntries int
}

// DefaultThrottle is the server's default pacing.
var DefaultThrottle = ThrottleConfig{PerIP: 10, LockAfter: 5, LockBase: 30 * time.Second, LockMax: 15 * time.Minute, MaxEntries: 100_000}

// Throttle limits log-in attempts per client address (a token bucket)
// and per account name (a lockout after repeated failures). Unknown names
// are throttled exactly like known ones. It is kept in memory: with
// several replicas each throttles what it sees.
type Throttle struct {
	cfg   ThrottleConfig
	now   func() time.Time
	mu    sync.Mutex
	ips   map[string]*bucket
	names map[string]*failures
}

type bucket struct {
	tokens float64
	last   time.Time
}

type failures struct {
	n     int
	until time.Time
	last  time.Time
}

// NewThrottle returns a throttle.
func NewThrottle(cfg ThrottleConfig, now func() time.Time) *Throttle {
	return &Throttle{cfg: cfg, now: now, ips: map[string]*bucket{}, names: map[string]*failures{}}
}

// AllowIP takes one attempt from ip's allowance; if there is none left it
// returns how long until there is.
func (t *Throttle) AllowIP(ip string) time.Duration {
	if t.cfg.PerIP <= 0 {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	b := t.ips[ip]
	if b == nil {
		t.prune(now)
		b = &bucket{tokens: float64(t.cfg.PerIP), last: now}
		t.ips[ip] = b
	}
	rate := float64(t.cfg.PerIP) / float64(time.Minute)
	b.tokens = min(float64(t.cfg.PerIP), b.tokens+float64(now.Sub(b.last))*rate)
	b.last = now
	if b.tokens < 1 {
		return time.Duration((1 - b.tokens) / rate)
	}
	b.tokens--
	return 0
}

func nameKey(name string) string { return strings.ToLower(strings.TrimSpace(name)) }

// LockedFor says how long name is still locked (0: not locked).
func (t *Throttle) LockedFor(name string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f := t.names[nameKey(name)]; f != nil {
		return max(f.until.Sub(t.now()), 0)
	}
	return 0
}

// Fail records a failed attempt for name.
func (t *Throttle) Fail(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	f := t.names[nameKey(name)]
	if f == nil {
		t.prune(now)
		f = &failures{}
		t.names[nameKey(name)] = f
	}
	f.n++
	f.last = now
	if over := f.n - t.cfg.LockAfter; t.cfg.LockAfter > 0 && over >= 0 {
		d := t.cfg.LockBase << min(over, 20)
		if d > t.cfg.LockMax || d <= 0 {
			d = t.cfg.LockMax
		}
		f.until = now.Add(d)
	}
}

// Succeed clears name's failures.
func (t *Throttle) Succeed(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.names, nameKey(name))
}

// prune drops entries nobody has used for LockMax once the maps are
// full, and then, if still full, an arbitrary half: the throttle's
// memory stays bounded whatever an attacker sends.
func (t *Throttle) prune(now time.Time) {
	if len(t.ips)+len(t.names) < t.cfg.MaxEntries {
		return
	}
	idle := max(t.cfg.LockMax, time.Minute)
	for k, b := range t.ips {
		if now.Sub(b.last) > idle {
			delete(t.ips, k)
		}
	}
	for k, f := range t.names {
		if now.Sub(f.last) > idle && now.After(f.until) {
			delete(t.names, k)
		}
	}
	if len(t.ips)+len(t.names) >= t.cfg.MaxEntries {
		n := 0
		for k := range t.ips {
			if n%2 == 0 {
				delete(t.ips, k)
			}
			n++
		}
		for k := range t.names {
			if n%2 == 0 {
				delete(t.names, k)
			}
			n++
		}
	}
}
