package e2e

import (
	"testing"

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
