package hostile

import (
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestParallelWrongLogins: 100 parallel wrong-password log-ins (the
// address throttle opened wide, so every one reaches the password check)
// keep the server under 256 MiB and /healthz answering within 200 ms
// meanwhile; password checks beyond the concurrency limit wait, then get
// 503, rather than piling up 64 MiB each.
func TestParallelWrongLogins(t *testing.T) {
	s := start(t, "--login-attempts-per-minute", "100000")
	s.account(t, "owner", "alice")
	before := s.rss(t)

	stop := make(chan struct{})
	var maxHealth atomic.Int64
	var maxRSS atomic.Int64
	var watch sync.WaitGroup
	watch.Go(func() {
		c := &http.Client{Timeout: 5 * time.Second}
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			t0 := time.Now()
			resp, err := c.Get(s.url + "/healthz")
			d := time.Since(t0)
			if err != nil {
				t.Errorf("/healthz during the flood: %v", err)
				d = time.Hour
			} else {
				resp.Body.Close()
			}
			if int64(d) > maxHealth.Load() {
				maxHealth.Store(int64(d))
			}
			if r := s.rss(t); r > maxRSS.Load() {
				maxRSS.Store(r)
			}
		}
	})

	statuses := map[int]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			c := browser()
			_, token := page(t, c, s.url+"/")
			name := "alice"
			if i%2 == 1 {
				name = "nobody" // unknown names cost and answer the same
			}
			resp, _ := postForm(t, c, s.url+"/login", url.Values{"name": {name}, "secret": {"wrong password"}, "csrf": {token}})
			mu.Lock()
			statuses[resp.StatusCode]++
			mu.Unlock()
		})
	}
	wg.Wait()
	close(stop)
	watch.Wait()

	t.Logf("answers %v; RSS %d MiB before, %d MiB at most; /healthz at most %s",
		statuses, before>>20, maxRSS.Load()>>20, time.Duration(maxHealth.Load()))
	if statuses[http.StatusSeeOther]+statuses[http.StatusServiceUnavailable] != 100 {
		t.Errorf("every wrong log-in should fail (303 back to the form) or be turned away (503): %v", statuses)
	}
	if maxRSS.Load() > 256<<20 {
		t.Errorf("server RSS reached %d MiB, over 256 MiB", maxRSS.Load()>>20)
	}
	if d := time.Duration(maxHealth.Load()); d > 200*time.Millisecond {
		t.Errorf("/healthz took up to %s during the flood, over 200 ms", d)
	}
	// One hash made alice's password; every answered log-in made one more.
	m := s.metrics(t)
	if got := m["roadsign_password_hashes_total"]; got != float64(1+statuses[http.StatusSeeOther]) {
		t.Errorf("%v password hashes for %d answered log-ins: unknown names must be hashed too", got, statuses[http.StatusSeeOther])
	}
	if strings.Contains(s.log.String(), `"level":"ERROR"`) {
		t.Errorf("the flood logged errors:\n%s", s.log.String())
	}
}

// TestLoginThrottle: one address gets its per-minute allowance and then
// 429 with Retry-After, whatever X-Forwarded-For it claims; five failures
// lock a name (known or not) for everyone except a browser that logged in
// to that account before, so an attacker cannot keep the owner out.
func TestLoginThrottle(t *testing.T) {
	t.Run("per address", func(t *testing.T) {
		s := start(t) // 10 attempts a minute
		c := browser()
		_, token := page(t, c, s.url+"/")
		codes := []int{}
		t0 := time.Now()
		for i := range 14 {
			name := "guess-" + string(rune('a'+i)) // a new name each time: only the address is throttled
			req, _ := http.NewRequest("POST", s.url+"/login", strings.NewReader(url.Values{"name": {name}, "secret": {"y"}, "csrf": {token}}.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("X-Forwarded-For", "203.0.113."+string(rune('0'+i%10))) // not a trusted proxy: ignored
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			codes = append(codes, resp.StatusCode)
			if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
		}
		// The bucket holds 10 and refills one every 6 s: on a slow run
		// (each attempt hashes a password) a token or two comes back.
		refilled := int(time.Since(t0) / (6 * time.Second))
		passed := 0
		for _, c := range codes {
			if c == http.StatusSeeOther {
				passed++
			}
		}
		if codes[9] != http.StatusSeeOther || passed > 10+refilled || passed == len(codes) {
			t.Fatalf("answers: %v; want 10 × 303 (and %d refilled) then 429", codes, refilled)
		}
	})
	t.Run("per name, with the owner's device let through", func(t *testing.T) {
		s := start(t, "--login-attempts-per-minute", "1000")
		s.account(t, "owner", "alice")
		owner, resp := s.login(t, "alice", "correct horse battery") // the owner's own browser, earlier
		if !s.loggedIn(t, owner) {
			t.Fatalf("the owner cannot log in: %d", resp.StatusCode)
		}
		attacker := browser()
		_, token := page(t, attacker, s.url+"/")
		for _, name := range []string{"alice", "nobody"} {
			for range 5 {
				postForm(t, attacker, s.url+"/login", url.Values{"name": {name}, "secret": {"guess"}, "csrf": {token}})
			}
			resp, body := postForm(t, attacker, s.url+"/login", url.Values{"name": {name}, "secret": {"correct horse battery"}, "csrf": {token}})
			if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(body, "Too many failed log-ins for this account") {
				t.Fatalf("%s after 5 failures: %d", name, resp.StatusCode)
			}
		}
		// The owner's browser, which logged in before, still gets in.
		_, token = page(t, owner, s.url+"/")
		postForm(t, owner, s.url+"/logout", url.Values{"csrf": {token}})
		_, token = page(t, owner, s.url+"/")
		postForm(t, owner, s.url+"/login", url.Values{"name": {"alice"}, "secret": {"correct horse battery"}, "csrf": {token}})
		if !s.loggedIn(t, owner) {
			t.Fatal("the lockout kept the owner out of their own browser")
		}
	})
}

// TestLoginForms: a log-in needs the form's CSRF token and must come from
// this origin; the portal shows no text taken from the URL.
func TestLoginForms(t *testing.T) {
	s := start(t)
	s.account(t, "owner", "alice")
	c := browser()
	_, token := page(t, c, s.url+"/")
	good := url.Values{"name": {"alice"}, "secret": {"correct horse battery"}, "csrf": {token}}
	noToken := url.Values{"name": {"alice"}, "secret": {"correct horse battery"}}
	postForm(t, c, s.url+"/login", noToken)
	if s.loggedIn(t, c) {
		t.Fatal("a log-in without the form's token succeeded")
	}
	req, _ := http.NewRequest("POST", s.url+"/login", strings.NewReader(good.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
	}
	if s.loggedIn(t, c) {
		t.Fatal("a log-in posted from another site succeeded")
	}
	postForm(t, c, s.url+"/login", good)
	if !s.loggedIn(t, c) {
		t.Fatal("the real log-in failed")
	}
	body, _ := page(t, c, s.url+"/?msg=Your+account+is+suspended.+Call+0900-SCAM&err=Call+us")
	if strings.Contains(body, "0900-SCAM") || strings.Contains(body, "Call us") {
		t.Fatal("the portal shows text from its URL")
	}
}
