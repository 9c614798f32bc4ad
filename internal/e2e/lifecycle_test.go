package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	agentcli "github.com/roadsign/roadsign/client/cli"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

type authFile struct {
	State     string    `json:"state"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expiresAt"`
}

func readAuth(t *testing.T, v vehicleState) authFile {
	t.Helper()
	var a authFile
	b, err := os.ReadFile(filepath.Join(v.dir, "auth.json"))
	if err == nil {
		json.Unmarshal(b, &a)
	}
	return a
}

// vehicleAuthView is the authorization object of GET /api/v1/vehicles/{vin}.
func (w *world) vehicleAuthView(t *testing.T, vin string) map[string]any {
	t.Helper()
	var view struct {
		Authorization map[string]any `json:"authorization"`
	}
	if code := w.api("GET", "/api/v1/vehicles/"+vin, adminToken, nil, &view); code != 200 {
		t.Fatalf("vehicle view: %d", code)
	}
	return view.Authorization
}

// TestTokenRenewalAndExpiry: status says expired once the token ran out
// (and the server's view says so too); the daemon renews the token before
// it expires, however long its check-in interval.
func TestTokenRenewalAndExpiry(t *testing.T) {
	w := newWorld(t, "--auth-token-ttl", "3s")
	w.setup(nil)
	v := w.vehicle(1)
	if view := w.vehicleAuthView(t, v.vin); view["state"] != "never" {
		t.Fatalf("before any handshake the server should say never: %v", view)
	}
	w.linkOwner(t, v, w.account("owner", "alice"))
	update(t, v.dir, 0)
	a := readAuth(t, v)
	if a.State != "authorized" || time.Until(a.ExpiresAt) > 3*time.Second {
		t.Fatalf("after the update: %+v", a)
	}
	if view := w.vehicleAuthView(t, v.vin); view["state"] != "authorized" || view["expiresAt"] == nil {
		t.Fatalf("server's view after the handshake: %v", view)
	}

	// Once the token has run out, both sides say expired.
	later := a.ExpiresAt.Add(time.Second)
	st := agentAt(t, later, "status", "--state", v.dir, "--json")
	if !strings.Contains(st.stdout, `"state": "expired"`) {
		t.Fatalf("status after the token ran out:\n%s", st.stdout)
	}
	if txt := agentAt(t, later, "status", "--state", v.dir).stdout; !strings.Contains(txt, "authorization: expired") {
		t.Fatalf("status text after the token ran out:\n%s", txt)
	}
	time.Sleep(time.Until(later))
	if view := w.vehicleAuthView(t, v.vin); view["state"] != "expired" {
		t.Fatalf("server's view after the token ran out: %v", view)
	}

	// The daemon, checking in hourly, renews the token before it expires.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		var out, errb bytes.Buffer
		p := instantRetry
		code := agentcli.Run(ctx, []string{"run", "--state", v.dir, "--interval", "1h", "--jitter", "0"},
			agentcli.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, Policy: &p})
		if code != 0 {
			t.Errorf("run exited %d: %s", code, errb.String())
		}
	})
	defer func() { cancel(); wg.Wait() }()
	waitFor(t, "the first cycle to reauthorize", func() bool {
		a := readAuth(t, v)
		return a.State == "authorized" && time.Now().Before(a.ExpiresAt)
	})
	tokens := map[string]bool{}
	deadline := time.Now().Add(7 * time.Second)
	for time.Now().Before(deadline) {
		a := readAuth(t, v)
		if a.State != "authorized" || !time.Now().Before(a.ExpiresAt) {
			t.Fatalf("the daemon let the token lapse: %+v", a)
		}
		tokens[a.Token] = true
		time.Sleep(100 * time.Millisecond)
	}
	if len(tokens) < 3 {
		t.Fatalf("in 7 s with 3 s tokens the daemon should have renewed at least twice; saw %d tokens", len(tokens))
	}
}

// signedPost sends a vehicle-signed POST for vin with key at time at.
func signedPost(t *testing.T, base, path, vin string, key ed25519.PrivateKey, at time.Time) (int, string, string) {
	t.Helper()
	body := []byte(`{}`)
	req, _ := http.NewRequest("POST", base+path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	vehicleauth.Sign(req, key, vin, body, at)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	json.Unmarshal(b, &e)
	return resp.StatusCode, e.Error.Code, e.Error.Message
}

// TestClockSkewAndUniformVehicle401s: a vehicle with the right key and a
// wrong clock is told clock_skew and to fix its clock (not to replace
// its DCM) when it signs with its clock, and an update cycle, which gets
// the server's signed time first, works regardless; a wrong key says nothing about the clock, and an unregistered
// VIN answers exactly like a registered one with a bad signature.
func TestClockSkewAndUniformVehicle401s(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v := w.vehicle(1)
	w.linkOwner(t, v, w.account("owner", "alice"))
	for _, off := range []time.Duration{10 * time.Minute, -10 * time.Minute} {
		r := agentAt(t, time.Now().Add(off), "reauthorize", "--state", v.dir)
		if r.code != 1 || !strings.Contains(r.stderr, "clock_skew") || !strings.Contains(r.stderr, "fix the vehicle clock") {
			t.Fatalf("reauthorize with the clock %s off: %s", off, r)
		}
		if st := agentAt(t, time.Now().Add(off), "status", "--state", v.dir, "--json").stdout; !strings.Contains(st, `"state": "clock_skew"`) {
			t.Fatalf("status should show clock_skew:\n%s", st)
		}
	}
	// An update cycle does not go by the car's clock: it gets the
	// server's signed time first, signs with it, and reauthorizes.
	r := agentAt(t, time.Now().Add(10*time.Minute), "update", "--state", v.dir)
	if r.code != 0 {
		t.Fatalf("update with the clock off: %s", r)
	}
	if st := agent(t, "status", "--state", v.dir, "--json").stdout; !strings.Contains(st, `"state": "authorized"`) || !strings.Contains(st, `"state": "trusted"`) {
		t.Fatalf("after an update with the clock off, status should show authorized and a trusted time:\n%s", st)
	}
	if view := w.vehicleAuthView(t, v.vin); view["state"] == "unknown_vehicle_key" {
		t.Fatalf("a clock fault must not be recorded as a key fault: %v", view)
	}

	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	unregistered := testVIN(999)
	path := func(vin string) string { return "/api/v1/vehicles/" + vin + "/auth" }
	s1, c1, m1 := signedPost(t, w.url, path(v.vin), v.vin, stranger, time.Now())
	s2, c2, m2 := signedPost(t, w.url, path(unregistered), unregistered, stranger, time.Now())
	if s1 != 401 || s1 != s2 || c1 != "unknown_vehicle_key" || c1 != c2 || strings.ReplaceAll(m1, v.vin, "VIN") != strings.ReplaceAll(m2, unregistered, "VIN") {
		t.Fatalf("registered VIN, bad signature: %d %s %q\nunregistered VIN: %d %s %q", s1, c1, m1, s2, c2, m2)
	}
	// A bad signature with a skewed time is still just a bad signature.
	if s, c, _ := signedPost(t, w.url, path(v.vin), v.vin, stranger, time.Now().Add(time.Hour)); s != 401 || c != "unknown_vehicle_key" {
		t.Fatalf("bad key and skewed clock: %d %s", s, c)
	}
}

type auditEntry struct {
	ActorID string `json:"actorId"`
	Actor   string `json:"actor"`
	Role    string `json:"role"`
	Action  string `json:"action"`
	Subject string `json:"subject"`
	Detail  string `json:"detail"`
}

func (w *world) auditEntries(t *testing.T) []auditEntry {
	t.Helper()
	var out struct {
		Entries []auditEntry `json:"entries"`
	}
	if code := w.api("GET", "/api/v1/audit?limit=1000", adminToken, nil, &out); code != 200 {
		t.Fatalf("audit: %d", code)
	}
	return out.Entries
}

// TestAuditNamesActorsAndPublishes: publishes and target uploads are in
// the audit log; entries name the actor by ID and role as well as by
// name; names the log uses for others cannot be taken by accounts.
func TestAuditNamesActorsAndPublishes(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	byAction := map[string][]auditEntry{}
	for _, e := range w.auditEntries(t) {
		byAction[e.Action] = append(byAction[e.Action], e)
	}
	if len(byAction["repo.publish"]) != 1 || len(byAction["repo.target_upload"]) != 12 {
		t.Fatalf("want 1 publish and 12 target uploads audited, got %d and %d", len(byAction["repo.publish"]), len(byAction["repo.target_upload"]))
	}
	p := byAction["repo.publish"][0]
	if p.ActorID != "bootstrap-admin" || p.Role != "admin" || !strings.Contains(p.Detail, "targets v") {
		t.Fatalf("publish entry: %+v", p)
	}
	// Publishing the same again changes nothing and adds no entry.
	w.publish()
	for _, e := range w.auditEntries(t) {
		if e.Action == "repo.publish" && e != p {
			t.Fatalf("an unchanged publish was audited: %+v", e)
		}
	}

	var dealer struct{ ID, Token string }
	if code := w.api("POST", "/api/v1/accounts", adminToken, map[string]any{"role": "dealer", "name": "dealer-berlin", "regions": []string{"NA"}}, &dealer); code != 201 {
		t.Fatalf("dealer account: %d", code)
	}
	v := w.vehicle(1)
	w.job(dealer.Token, map[string]any{"vin": v.vin, "ecu": "dcm", "version": "latest", "reason": "test"})
	found := false
	for _, e := range w.auditEntries(t) {
		if e.Action == "job.create" && e.Actor == "dealer-berlin" {
			found = e.ActorID == dealer.ID && e.Role == "dealer"
		}
	}
	if !found {
		t.Fatalf("the dealer's job is not audited with its account ID %s: %+v", dealer.ID, w.auditEntries(t))
	}
	for _, name := range []string{"bootstrap-admin", "Server", "system", "admin", testVIN(5)} {
		var e struct {
			Error struct{ Code string } `json:"error"`
		}
		if code := w.api("POST", "/api/v1/accounts", adminToken, map[string]any{"role": "dealer", "name": name, "regions": []string{"NA"}}, &e); code != 400 || e.Error.Code != "reserved_name" {
			t.Errorf("account named %q: %d %s, want 400 reserved_name", name, code, e.Error.Code)
		}
	}
}

// phases is kinds with repeats (progress reports) folded.
func phases(j jobView) string {
	var out []string
	for _, k := range strings.Split(kinds(j), ",") {
		if len(out) == 0 || out[len(out)-1] != k {
			out = append(out, k)
		}
	}
	return strings.Join(out, ",")
}

// jobsOf lists a vehicle's jobs, oldest first.
func (w *world) jobsOf(t *testing.T, vin string) []jobView {
	t.Helper()
	var out struct {
		Jobs []jobView `json:"jobs"`
	}
	if code := w.api("GET", "/api/v1/jobs?vin="+vin, adminToken, nil, &out); code != 200 {
		t.Fatalf("jobs of %s: %d", vin, code)
	}
	return out.Jobs
}

// TestAutoAssignedInstallsHaveHistory: installs no dealer job covers are
// recorded as jobs (origin auto-assign) with progress and outcome; a
// dealer job supersedes one; an image that rolled back is not pushed again.
func TestAutoAssignedInstallsHaveHistory(t *testing.T) {
	w := newWorld(t)
	w.setup(func(s sample) bool { return s.Version != "2.0.0" })
	dealer := w.account("dealer", "dealer-1")
	v := w.vehicle(1)
	update(t, v.dir, 0)
	js := w.jobsOf(t, v.vin)
	if len(js) != 2 {
		t.Fatalf("want one auto-assign job per ECU, got %+v", js)
	}
	for _, j := range js {
		if j.Origin != "auto-assign" || j.State != "succeeded" || phases(j) != "queued,downloading,installing,rebooting,succeeded" {
			t.Fatalf("auto-assign job: origin %s, state %s, events %s", j.Origin, j.State, kinds(j))
		}
	}
	// Nothing new to do: no new job.
	if r := agent(t, "update", "--state", v.dir); r.code != 0 || len(w.jobsOf(t, v.vin)) != 2 {
		t.Fatalf("an up-to-date vehicle got new jobs: %s %+v", r, w.jobsOf(t, v.vin))
	}

	// 2.0.0 is published; the download breaks off mid-way, so both
	// auto-assigned installs are open when a dealer pushes one for the DCM.
	w.add(findSample(t, huHW, "2.0.0"))
	w.add(findSample(t, dcmHW, "2.0.0"))
	w.publish()
	update(t, v.dir, 1, "--simulate", "network-drop:50")
	dj := w.job(dealer, map[string]any{"vin": v.vin, "ecu": "dcm", "version": "2.0.0", "reason": "customer waiting"})
	var superseded jobView
	for _, j := range w.jobsOf(t, v.vin) {
		if j.Origin == "auto-assign" && j.ECUType == "dcm" && j.Version == "2.0.0" {
			superseded = j
		}
	}
	if superseded.State != "canceled" || !strings.Contains(fmt.Sprint(superseded.Events), "superseded by dealer job "+dj.ID) {
		t.Fatalf("the open auto-assign DCM job should be superseded by the dealer's: %+v", superseded)
	}
	update(t, v.dir, 0)
	if got := w.getJob(dealer, dj.ID); got.State != "succeeded" {
		t.Fatalf("dealer job: %s", got.State)
	}
	open := 0
	for _, j := range w.jobsOf(t, v.vin) {
		if j.State == "queued" || j.State == "in_progress" {
			open++
		}
	}
	if open != 0 || versions(t, v)["head-unit"] != "2.0.0" {
		t.Fatalf("after the update: %d open jobs, versions %v", open, versions(t, v))
	}
}

// TestRolledBackAutoAssignIsNotPushedAgain: an auto-assigned image that
// fails its boot check on an ECU is not assigned to it again, and the car
// still authorizes on the image it runs.
func TestRolledBackAutoAssignIsNotPushedAgain(t *testing.T) {
	w := newWorld(t)
	w.signerInit()
	for _, s := range loadSamples(t) {
		if s.HardwareID == dcmHW && (s.Version == "1.0.0" || !s.Bootable) || s.HardwareID == huHW && s.Version == "1.0.0" {
			w.add(s)
		}
	}
	w.publish()
	v := w.vehicle(1)
	w.linkOwner(t, v, w.account("owner", "alice"))
	update(t, v.dir, 4)
	js := w.jobsOf(t, v.vin)
	if len(js) != 1 || js[0].State != "rolled_back" || js[0].Origin != "auto-assign" {
		t.Fatalf("jobs: %+v", js)
	}
	update(t, v.dir, 0)
	if n := len(w.jobsOf(t, v.vin)); n != 1 {
		t.Fatalf("the rolled-back image was pushed again (%d jobs)", n)
	}
	if r := agent(t, "reauthorize", "--state", v.dir); r.code != 0 {
		t.Fatalf("the car should authorize on its signed 1.0.0: %s", r)
	}
}

// TestSupersededMidFlashDoesNotBlock: power is lost while an
// auto-assigned install is flashing, and a newer image is published
// before the car is back. The open job is asked to end as its install
// does, the car gets the newer image, and polling adds no events to it.
func TestSupersededMidFlashDoesNotBlock(t *testing.T) {
	w := newWorld(t)
	w.setup(func(s sample) bool { return s.Version != "2.0.0" })
	v := w.vehicle(1)
	if r := runAgent(t, 0, "update", "--state", v.dir, "--simulate", "power-loss:switch"); !r.killed {
		t.Fatalf("want the simulated power loss: %+v", r)
	}
	var flashing jobView
	for _, j := range w.jobsOf(t, v.vin) {
		if j.ECUType == "head-unit" {
			flashing = j
		}
	}
	if flashing.State != "in_progress" || !strings.Contains(kinds(flashing), "rebooting") {
		t.Fatalf("the head unit's job should be mid-flash: %s %s", flashing.State, kinds(flashing))
	}
	w.add(findSample(t, huHW, "2.0.0"))
	w.add(findSample(t, dcmHW, "2.0.0"))
	w.publish()
	for i := range 2 {
		if r := runAgent(t, 0, "update", "--state", v.dir); r.code != 0 {
			t.Fatalf("update %d after the power loss: %s", i+1, r.out)
		}
	}
	if got := versions(t, v); got["head-unit"] != "2.0.0" || got["dcm"] != "2.0.0" {
		t.Fatalf("versions: %v", got)
	}
	after := w.getJob(adminToken, flashing.ID)
	if n := strings.Count(kinds(after), "cancel_requested"); n != 1 || !strings.Contains(fmt.Sprint(after.Events), "superseded by head-unit/") {
		t.Fatalf("the superseded job should carry exactly one cancel request: %s", kinds(after))
	}
}
