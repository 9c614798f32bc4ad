package hostile

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"path/filepath"

	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// world is a server with signed, published samples and one provisioned,
// registered car (the real signer and agent).
type world struct {
	*server
	ws, car, vin string
	key          ed25519.PrivateKey
}

const samples = "../../firmware-samples"

func newWorld(t testing.TB, extra ...string) *world {
	t.Helper()
	return newWorldVia(t, "", extra...)
}

// newWorldVia is newWorld with the car given via (a proxy's URL) as its
// server instead of the server's own address.
func newWorldVia(t testing.TB, via string, extra ...string) *world {
	t.Helper()
	return newWorldWith(t, via, nil, extra...)
}

// newWorldWith is newWorldVia with started called once the server is up
// (to point a proxy at it).
func newWorldWith(t testing.TB, via string, started func(*server), extra ...string) *world {
	t.Helper()
	s := start(t, extra...)
	if started != nil {
		started(s)
	}
	if via == "" {
		via = s.url
	}
	w := &world{server: s, ws: filepath.Join(s.dir, "ws"), car: filepath.Join(s.dir, "car"), vin: "JTMBFREV1N0000001"}
	must := func(name string, args ...string) {
		t.Helper()
		if code, out := run(t, name, args...); code != 0 {
			t.Fatalf("%s %s: exit %d\n%s", name, args[0], code, out)
		}
	}
	must("roadsign-signer", "init", w.ws, "--online-keys", filepath.Join(s.data, "online-keys.json"))
	for _, f := range []struct{ file, ecu, hw, v string }{
		{"head-unit-HU-GEN5-NA-1.0.0.img", "head-unit", "HU-GEN5-NA", "1.0.0"},
		{"dcm-DCM-4G-24MM-1.0.0.img", "dcm", "DCM-4G-24MM", "1.0.0"},
		{"dcm-DCM-4G-24MM-1.1.0.img", "dcm", "DCM-4G-24MM", "1.1.0"},
	} {
		must("roadsign-signer", "add", w.ws, filepath.Join(samples, f.file), "--ecu", f.ecu, "--hardware-id", f.hw, "--version", f.v)
	}
	must("roadsign-signer", "publish", w.ws, "--server", s.url, "--token", adminToken)
	must("roadsign-agent", "init", "--state", w.car, "--server", via, "--vin", w.vin,
		"--image-root", filepath.Join(w.ws, "image.root.json"), "--director-root", filepath.Join(w.ws, "director.root.json"),
		"--ecu", "head-unit:HU000001:HU-GEN5-NA:"+filepath.Join(samples, "head-unit-HU-GEN5-NA-1.0.0.img"),
		"--ecu", "dcm:DCM000001:DCM-4G-24MM:"+filepath.Join(samples, "dcm-DCM-4G-24MM-1.0.0.img"),
		"--token", adminToken)
	k, err := keys.Load(filepath.Join(w.car, "vehicle.key"))
	if err != nil {
		t.Fatal(err)
	}
	w.key = k.Private
	return w
}

// linkCode is the one-time code the car shows.
func (w *world) linkCode(t testing.TB) string {
	t.Helper()
	code, out := run(t, "roadsign-agent", "link-code", "--state", w.car, "--json")
	var c struct{ Code string }
	if code != 0 || json.Unmarshal([]byte(out), &c) != nil {
		t.Fatalf("link-code: %d %s", code, out)
	}
	return c.Code
}

// send sends a request as-is and returns its status and error code.
func send(t testing.TB, req *http.Request) (int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e apiError
	b, _ := io.ReadAll(resp.Body)
	json.Unmarshal(b, &e)
	return resp.StatusCode, e.Error.Code
}

// signed builds a request signed by the car's key.
func (w *world) signed(method, path string, body []byte) *http.Request {
	req, _ := http.NewRequest(method, w.url+path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	vehicleauth.Sign(req, w.key, w.vin, body, time.Now())
	return req
}

// clone copies a request, body and headers (and the signature) included.
func clone(req *http.Request, body []byte) *http.Request {
	c := req.Clone(req.Context())
	c.Body = io.NopCloser(bytes.NewReader(body))
	c.ContentLength = int64(len(body))
	return c
}

// TestReplayedVehicleRequest: a captured signed request (the link-code
// request that used to yield three valid codes) is refused when replayed,
// and so is one whose query, host or body was changed.
func TestReplayedVehicleRequest(t *testing.T) {
	w := newWorld(t)
	path := "/api/v1/vehicles/" + w.vin + "/link-code"
	body := []byte(`{}`)
	captured := w.signed("POST", path, body)
	replay := clone(captured, body)
	if code, _ := send(t, captured); code != 200 {
		t.Fatalf("the original request: %d", code)
	}
	if code, ecode := send(t, replay); code != 401 || ecode != "replayed_request" {
		t.Fatalf("the replay: %d %s, want 401 replayed_request", code, ecode)
	}
	tampered := []struct {
		name   string
		mutate func(*http.Request) []byte
		want   string
	}{
		{"query added", func(r *http.Request) []byte { r.URL.RawQuery = "code=AAAA"; return body }, "unknown_vehicle_key"},
		{"another host", func(r *http.Request) []byte { r.Host = "roadsign.example"; return body }, "unknown_vehicle_key"},
		{"another body", func(r *http.Request) []byte { return []byte(`{"x":1}`) }, "body_mismatch"},
	}
	for _, tt := range tampered {
		req := w.signed("POST", path, body)
		b := tt.mutate(req)
		if code, ecode := send(t, clone(req, b)); code != 401 || ecode != tt.want {
			t.Errorf("%s: %d %s, want 401 %s", tt.name, code, ecode, tt.want)
		}
	}
}

// TestSessionsAndTokensCanBeRevoked: a cookie from before logout is
// refused; a password change ends every session; a disabled dealer's
// token and console session stop working at once; a replaced token
// revokes the old one.
func TestSessionsAndTokensCanBeRevoked(t *testing.T) {
	s := start(t)
	alice := s.account(t, "owner", "alice")
	c, _ := s.login(t, "alice", "correct horse battery")
	u, _ := url.Parse(s.url)
	before := c.Jar.Cookies(u)
	_, token := page(t, c, s.url+"/")
	postForm(t, c, s.url+"/logout", url.Values{"csrf": {token}})
	replayed := browser()
	replayed.Jar.SetCookies(u, before)
	if s.loggedIn(t, replayed) {
		t.Fatal("the session cookie from before logout still works")
	}

	c1, _ := s.login(t, "alice", "correct horse battery")
	c2, _ := s.login(t, "alice", "correct horse battery")
	if code := s.api(t, "POST", "/api/v1/owners/me/password", alice.Token, map[string]string{"current": "correct horse battery", "new": "a new horse battery"}, nil); code != 200 {
		t.Fatalf("password change: %d", code)
	}
	if s.loggedIn(t, c1) || s.loggedIn(t, c2) {
		t.Fatal("sessions survived a password change")
	}

	dealer := s.account(t, "dealer", "dealer-berlin")
	console := browser()
	_, token = page(t, console, s.url+"/dealer")
	postForm(t, console, s.url+"/dealer/login", url.Values{"name": {"dealer-berlin"}, "secret": {dealer.Token}, "csrf": {token}})
	if body, _ := page(t, console, s.url+"/dealer"); !strings.Contains(body, "Find a vehicle") {
		t.Fatal("the dealer cannot log in to the console")
	}
	if code := s.api(t, "GET", "/api/v1/vehicles", dealer.Token, nil, nil); code != 200 {
		t.Fatalf("dealer token: %d", code)
	}
	if code := s.api(t, "POST", "/api/v1/accounts/"+dealer.ID+"/disable", adminToken, nil, nil); code != 200 {
		t.Fatalf("disable: %d", code)
	}
	var e apiError
	if code := s.api(t, "GET", "/api/v1/vehicles", dealer.Token, nil, &e); code != 401 || e.Error.Code != "account_disabled" {
		t.Fatalf("a disabled dealer's token: %d %s, want 401 account_disabled", code, e.Error.Code)
	}
	if body, _ := page(t, console, s.url+"/dealer"); strings.Contains(body, "Find a vehicle") {
		t.Fatal("a disabled dealer's console session still works")
	}
	s.api(t, "POST", "/api/v1/accounts/"+dealer.ID+"/enable", adminToken, nil, nil)
	var fresh account
	if code := s.api(t, "POST", "/api/v1/accounts/"+dealer.ID+"/token", adminToken, nil, &fresh); code != 200 || fresh.Token == "" {
		t.Fatalf("new token: %d", code)
	}
	if code := s.api(t, "GET", "/api/v1/vehicles", dealer.Token, nil, nil); code != 401 {
		t.Fatalf("the replaced token: %d, want 401", code)
	}
	if code := s.api(t, "GET", "/api/v1/vehicles", fresh.Token, nil, nil); code != 200 {
		t.Fatalf("the new token: %d", code)
	}
}

// TestClaimDoesNotBlockTheOwner: someone who enters the car's code while
// it is linked to alice makes a claim; alice's connected services keep
// working, she sees the claim and rejects it, and a dealer resolves the
// next one. All of it is audited.
func TestClaimDoesNotBlockTheOwner(t *testing.T) {
	w := newWorld(t)
	alice, mallory := w.account(t, "owner", "alice"), w.account(t, "owner", "mallory")
	dealer := w.account(t, "dealer", "dealer-1")
	link := func(who account) int {
		return w.api(t, "POST", "/api/v1/owners/me/vehicles", who.Token, map[string]string{"vin": w.vin, "code": w.linkCode(t)}, nil)
	}
	if code := link(alice); code != 201 {
		t.Fatalf("alice links: %d", code)
	}
	if code, out := run(t, "roadsign-agent", "update", "--state", w.car); code != 0 {
		t.Fatalf("update: %s", out)
	}
	if code := link(mallory); code != 409 {
		t.Fatalf("mallory's claim: %d, want 409", code)
	}
	if code, out := run(t, "roadsign-agent", "reauthorize", "--state", w.car); code != 0 {
		t.Fatalf("a pending claim blocked alice's connected services: %s", out)
	}
	var mine struct {
		Vehicles []struct {
			Link struct{ PendingOwnerID string } `json:"link"`
		} `json:"vehicles"`
	}
	w.api(t, "GET", "/api/v1/owners/me/vehicles", alice.Token, nil, &mine)
	if len(mine.Vehicles) != 1 || mine.Vehicles[0].Link.PendingOwnerID != mallory.ID {
		t.Fatalf("alice does not see the claim: %+v", mine)
	}
	c, _ := w.login(t, "alice", "correct horse battery")
	body, token := page(t, c, w.url+"/")
	if !strings.Contains(body, "Someone claims this car") {
		t.Fatal("the portal does not show the claim")
	}
	postForm(t, c, w.url+"/claim", url.Values{"vin": {w.vin}, "decision": {"reject"}, "csrf": {token}})
	mine.Vehicles = nil // json.Unmarshal would keep fields the answer leaves out
	w.api(t, "GET", "/api/v1/owners/me/vehicles", alice.Token, nil, &mine)
	if mine.Vehicles[0].Link.PendingOwnerID != "" {
		t.Fatal("the rejected claim is still pending")
	}
	link(mallory)
	var e apiError
	if code := w.api(t, "POST", "/api/v1/vehicles/"+w.vin+"/claim", dealer.Token, map[string]string{"decision": "reject"}, &e); code != 400 {
		t.Fatalf("a dealer's decision without a reason: %d", code)
	}
	if code := w.api(t, "POST", "/api/v1/vehicles/"+w.vin+"/claim", dealer.Token, map[string]string{"decision": "reject", "reason": "owner called: not sold"}, nil); code != 200 {
		t.Fatalf("the dealer rejects: %d", code)
	}
	var audit struct {
		Entries []struct{ Action string } `json:"entries"`
	}
	w.api(t, "GET", "/api/v1/audit?limit=1000", adminToken, nil, &audit)
	var actions []string
	for _, a := range audit.Entries {
		actions = append(actions, a.Action)
	}
	if got := strings.Count(strings.Join(actions, " "), "owner.claim"); got != 4 {
		t.Fatalf("want two claims and two rejections audited, got %d: %v", got, actions)
	}
}
