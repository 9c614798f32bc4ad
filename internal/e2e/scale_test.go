package e2e

import (
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"testing"
	"time"

	"github.com/roadsign/roadsign/server/postgres/pgtest"
)

// TestTwoReplicasOnPostgres runs the fleet-scale shape: two server
// replicas sharing one PostgreSQL database, one blob store and the online
// keys. The signer publishes and the dealer creates a job through one
// replica; the vehicle talks to the other; both see the same state.
func TestTwoReplicasOnPostgres(t *testing.T) {
	db := pgtest.Schema(t)
	a := newWorld(t, "--database", db, "--auto-assign", "none")
	b := &world{t: t, dir: a.dir, data: a.data, ws: a.ws, extra: a.extra, env: a.env}
	b.start()

	a.setup(nil)
	want := servedTimestamp(t, a.url)
	waitFor(t, "replica b to serve the publish", func() bool { return servedTimestamp(t, b.url) == want })
	dealer := a.account("dealer", "dealer-1")
	// The vehicle is provisioned against replica b.
	saved := a.url
	a.url = b.url
	v := a.vehicle(1)
	a.url = saved

	j := a.job(dealer, map[string]any{"vin": v.vin, "ecu": "dcm", "version": "2.0.0", "reason": "replica test"})
	r := update(t, v.dir, 0)
	if got := versions(t, v); got["dcm"] != "2.0.0" || got["head-unit"] != "1.0.0" {
		_, snap := httpGet(t, b.url+"/repo/timestamp.json", nil)
		t.Fatalf("after the job: %v; the agent said %s\nreplica b logged: %s\nreplica b serves %s (a: %d)", got, r, b.logBuf.String(), snap, servedTimestamp(t, a.url))
	}
	if got := a.getJob(dealer, j.ID); got.State != "succeeded" {
		t.Fatalf("replica a sees job %s", got.State)
	}
}

// TestLoginThrottleAcrossReplicas: behind a load balancer one address's
// log-in attempts land on every replica in turn; together the replicas
// allow what one would (10 a minute), not 10 each.
func TestLoginThrottleAcrossReplicas(t *testing.T) {
	db := pgtest.Schema(t)
	a := newWorld(t, "--database", db)
	b := &world{t: t, dir: a.dir, data: a.data, ws: a.ws, extra: a.extra, env: a.env}
	b.start()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	csrf := formCSRF(t, c, a.url+"/")
	var codes []int
	t0 := time.Now()
	for i := range 14 {
		replica := []string{a.url, b.url}[i%2]
		// A new name each time: only the address is throttled.
		resp, err := c.PostForm(replica+"/login", url.Values{"name": {fmt.Sprintf("guess-%d", i)}, "secret": {"y"}, "csrf": {csrf}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
	// The bucket refills one attempt every 6 s.
	refilled := int(time.Since(t0) / (6 * time.Second))
	passed := 0
	for _, code := range codes {
		if code == http.StatusSeeOther {
			passed++
		}
	}
	if codes[9] != http.StatusSeeOther || passed > 10+refilled || passed == len(codes) {
		t.Fatalf("answers of two replicas taking turns: %v; want 10 × 303 (and %d refilled) then 429", codes, refilled)
	}
}
