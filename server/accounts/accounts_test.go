package accounts

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
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

func (c *fakeClock) now() time.Time           { return c.t }
func (c *fakeClock) add(d time.Duration)      { c.t = c.t.Add(d) }
func newThrottle(c *fakeClock) *Throttle      { return NewThrottle(DefaultThrottle, c.now) }
func locked(th *Throttle, name string) string { return th.LockedFor(name).String() }

func TestThrottlePerIP(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)}
	th := newThrottle(c)
	for i := range 10 {
		if d := th.AllowIP("192.0.2.1"); d != 0 {
			t.Fatalf("attempt %d refused", i+1)
		}
	}
	if d := th.AllowIP("192.0.2.1"); d <= 0 || d > 6*time.Second {
		t.Fatalf("the 11th attempt in a minute: wait %s, want about 6s", d)
	}
	if d := th.AllowIP("192.0.2.2"); d != 0 {
		t.Fatal("another address is throttled too")
	}
	c.add(6 * time.Second)
	if d := th.AllowIP("192.0.2.1"); d != 0 {
		t.Fatalf("after 6 s one more attempt is due, got wait %s", d)
	}
}

func TestThrottleLockout(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)}
	th := newThrottle(c)
	for range 4 {
		th.Fail("Alice")
	}
	if locked(th, "alice") != "0s" {
		t.Fatal("locked before 5 failures")
	}
	tests := []string{"30s", "1m0s", "2m0s", "4m0s", "8m0s", "15m0s", "15m0s"}
	for i, want := range tests {
		th.Fail("alice ")
		if got := locked(th, "ALICE"); got != want {
			t.Fatalf("after %d failures locked for %s, want %s", 5+i, got, want)
		}
	}
	c.add(15 * time.Minute)
	if locked(th, "alice") != "0s" {
		t.Fatal("a lock outlasted LockMax")
	}
	th.Succeed("alice")
	th.Fail("alice")
	if locked(th, "alice") != "0s" {
		t.Fatal("a success did not reset the count")
	}
	// Unknown names lock exactly like known ones: the throttle knows no accounts.
	for range 5 {
		th.Fail("nobody-has-this-name")
	}
	if locked(th, "nobody-has-this-name") != "30s" {
		t.Fatal("unknown names are throttled differently")
	}
}

func TestThrottleMemoryIsBounded(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)}
	cfg := DefaultThrottle
	cfg.MaxEntries = 1000
	th := NewThrottle(cfg, c.now)
	for i := range 50_000 {
		th.AllowIP(strings.Repeat("x", i%7) + string(rune(i)))
		th.Fail(string(rune(i)) + "name")
	}
	if n := len(th.ips) + len(th.names); n > cfg.MaxEntries {
		t.Fatalf("throttle holds %d entries, over its bound of %d", n, cfg.MaxEntries)
	}
}
