package accounts

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/sqlite"
)

func TestPasswords(t *testing.T) {
	p := NewPasswords(2, nil)
	ctx := context.Background()
	h, err := p.Hash(ctx, "correct horse")
	if err != nil || !strings.HasPrefix(h, "$argon2id$") {
		t.Fatalf("hash %q, %v", h, err)
	}
	for _, tt := range []struct {
		hash, password string
		want           bool
	}{
		{h, "correct horse", true},
		{h, "wrong horse", false},
		{"", "correct horse", false}, // no such account: the dummy is checked
		{"garbage", "x", false},
		{"$argon2id$v=19$m=4194304,t=3,p=2$c2FsdA$a2V5", "x", false}, // asks for 4 GiB: refused, not computed
	} {
		if ok, err := p.Check(ctx, tt.hash, tt.password); ok != tt.want || err != nil {
			t.Errorf("Check(%.20q, %q) = %v, %v; want %v", tt.hash, tt.password, ok, err, tt.want)
		}
	}
	if h2, _ := p.Hash(ctx, "correct horse"); h2 == h {
		t.Fatal("hashes are not salted")
	}
}

func TestPasswordsAreBounded(t *testing.T) {
	p := NewPasswords(1, nil)
	p.wait = 50 * time.Millisecond
	p.slots <- struct{}{} // the only slot is taken
	_, err := p.Check(context.Background(), "", "x")
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("with every slot taken: %v, want ErrBusy", err)
	}
	<-p.slots
	if _, err := p.Check(context.Background(), "", "x"); err != nil {
		t.Fatalf("with a free slot: %v", err)
	}
}

func TestTokensAreRandom(t *testing.T) {
	a, _ := NewToken()
	b, _ := NewToken()
	if a == b || len(a) < 40 {
		t.Fatalf("tokens %q %q", a, b)
	}
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }

// throttleStore is a fresh SQLite database for a throttle's state.
func throttleStore(t *testing.T) server.Throttles {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newThrottle(t *testing.T, c *fakeClock) *Throttle {
	return NewThrottle(DefaultThrottle, throttleStore(t), c.now)
}

func allow(t *testing.T, th *Throttle, ip string) time.Duration {
	t.Helper()
	d, err := th.AllowIP(context.Background(), ip)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func locked(t *testing.T, th *Throttle, name string) string {
	t.Helper()
	d, err := th.LockedFor(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func fail(t *testing.T, th *Throttle, name string) {
	t.Helper()
	if err := th.Fail(context.Background(), name); err != nil {
		t.Fatal(err)
	}
}

func TestThrottlePerIP(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)}
	th := newThrottle(t, c)
	for i := range 10 {
		if d := allow(t, th, "192.0.2.1"); d != 0 {
			t.Fatalf("attempt %d refused", i+1)
		}
	}
	if d := allow(t, th, "192.0.2.1"); d <= 0 || d > 6*time.Second {
		t.Fatalf("the 11th attempt in a minute: wait %s, want about 6s", d)
	}
	if d := allow(t, th, "192.0.2.2"); d != 0 {
		t.Fatal("another address is throttled too")
	}
	c.add(6 * time.Second)
	if d := allow(t, th, "192.0.2.1"); d != 0 {
		t.Fatalf("after 6 s one more attempt is due, got wait %s", d)
	}
}

func TestThrottleLockout(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)}
	th := newThrottle(t, c)
	for range 4 {
		fail(t, th, "Alice")
	}
	if locked(t, th, "alice") != "0s" {
		t.Fatal("locked before 5 failures")
	}
	tests := []string{"30s", "1m0s", "2m0s", "4m0s", "8m0s", "15m0s", "15m0s"}
	for i, want := range tests {
		fail(t, th, "alice ")
		if got := locked(t, th, "ALICE"); got != want {
			t.Fatalf("after %d failures locked for %s, want %s", 5+i, got, want)
		}
	}
	c.add(15 * time.Minute)
	if locked(t, th, "alice") != "0s" {
		t.Fatal("a lock outlasted LockMax")
	}
	if err := th.Succeed(context.Background(), "alice"); err != nil {
		t.Fatal(err)
	}
	fail(t, th, "alice")
	if locked(t, th, "alice") != "0s" {
		t.Fatal("a success did not reset the count")
	}
	// Unknown names lock exactly like known ones: the throttle knows no accounts.
	for range 5 {
		fail(t, th, "nobody-has-this-name")
	}
	if locked(t, th, "nobody-has-this-name") != "30s" {
		t.Fatal("unknown names are throttled differently")
	}
}

func TestThrottleTableIsBounded(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)}
	cfg := DefaultThrottle
	cfg.MaxEntries = 100
	st := throttleStore(t)
	th := NewThrottle(cfg, st, c.now)
	for i := range 1_000 {
		allow(t, th, fmt.Sprintf("192.0.2.%d", i))
		fail(t, th, fmt.Sprintf("name-%d", i))
		c.add(time.Second)
	}
	// The table is pruned once a minute: at most a minute's worth of
	// entries beyond the bound, never the 2 000 an attacker made.
	n := 0
	for i := range 1_000 {
		for _, k := range []string{ipKey(fmt.Sprintf("192.0.2.%d", i)), nameKey(fmt.Sprintf("name-%d", i))} {
			e, err := st.ThrottleEntry(context.Background(), k)
			if err != nil {
				t.Fatal(err)
			}
			if e != (server.ThrottleEntry{}) {
				n++
			}
		}
	}
	if n > cfg.MaxEntries+2*60 {
		t.Fatalf("throttle holds %d entries, over its bound of %d (plus a minute's)", n, cfg.MaxEntries)
	}
}

// TestThrottleIsShared: two replicas' throttles on one database allow
// together what one would.
func TestThrottleIsShared(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)}
	st := throttleStore(t)
	a, b := NewThrottle(DefaultThrottle, st, c.now), NewThrottle(DefaultThrottle, st, c.now)
	var mu sync.Mutex
	allowed := 0
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			th := a
			if i%2 == 1 {
				th = b
			}
			d, err := th.AllowIP(context.Background(), "192.0.2.9")
			if err != nil {
				t.Error(err)
				return
			}
			if d == 0 {
				mu.Lock()
				allowed++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if allowed != DefaultThrottle.PerIP {
		t.Fatalf("two replicas allowed %d attempts from one address, want %d", allowed, DefaultThrottle.PerIP)
	}
	for range DefaultThrottle.LockAfter {
		fail(t, a, "bob")
	}
	if got := locked(t, b, "bob"); got != "30s" {
		t.Fatalf("replica b sees bob locked for %s after replica a saw %d failures, want 30s", got, DefaultThrottle.LockAfter)
	}
}
