package e2e

import (
	"regexp"
	"strconv"
	"testing"
)

// metric reads one series from the server's /metrics; -1 when absent.
func metric(t testing.TB, url, series string) float64 {
	t.Helper()
	_, body := httpGet(t, url+"/metrics", nil)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatalf("%s: %v", series, err)
	}
	return v
}

// TestFleetMetrics: what a fleet operator watches is on /metrics, by
// outcome: check-ins, handshakes by code, repository and director
// requests by file, bundles, jobs by state and the re-signer's lag.
func TestFleetMetrics(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v := w.vehicle(1)
	update(t, v.dir, 0)
	owner := w.account("owner", "metrics-owner")
	if code := w.linkOwner(t, v, owner); code != 200 && code != 201 {
		t.Fatalf("link: %d", code)
	}
	if r := agent(t, "reauthorize", "--state", v.dir); r.code != 0 {
		t.Fatalf("reauthorize: %s", r)
	}
	if code, _ := w.download(t, v.vin, owner, ""); code != 200 {
		t.Fatalf("bundle: %d", code)
	}
	// A check-in nobody signed.
	if code, _ := do(t, "POST", w.url+"/api/v1/vehicles/"+v.vin+"/manifest", "", []byte(`{}`)); code != 401 {
		t.Fatalf("unsigned check-in: %d, want 401", code)
	}

	atLeast := map[string]float64{
		`roadsign_checkins_total{result="recorded"}`:                                      1,
		`roadsign_checkins_total{result="unauthorized"}`:                                  1,
		`roadsign_authorizations_total{outcome="vehicle_not_linked"}`:                     1,
		`roadsign_authorizations_total{outcome="challenge_issued"}`:                       1,
		`roadsign_authorizations_total{outcome="authorized"}`:                             1,
		`roadsign_metadata_requests_total{file="timestamp",repo="image",status="200"}`:    1,
		`roadsign_metadata_requests_total{file="timestamp",repo="director",status="200"}`: 1,
		`roadsign_metadata_requests_total{file="target",repo="image",status="200"}`:       2,
		`roadsign_bundles_issued_total{result="complete"}`:                                1,
		`roadsign_jobs{state="succeeded"}`:                                                2,
		`roadsign_jobs{state="failed"}`:                                                   0,
		`roadsign_repo_resign_lag_seconds`:                                                0,
	}
	for series, min := range atLeast {
		if got := metric(t, w.url, series); got < min {
			t.Errorf("%s = %v, want at least %v", series, got, min)
		}
	}
	if lag := metric(t, w.url, "roadsign_repo_resign_lag_seconds"); lag != 0 {
		t.Errorf("re-sign lag %v s on a fresh repository, want 0", lag)
	}
}
