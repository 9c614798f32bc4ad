package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	agentcli "github.com/roadsign/roadsign/client/cli"
)

// agentAt runs the agent with its clock at now.
func agentAt(t *testing.T, now time.Time, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	p := instantRetry
	code := agentcli.Run(context.Background(), args, agentcli.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, Now: func() time.Time { return now }, Policy: &p})
	return result{code, out.String(), errb.String()}
}

var codeRE = regexp.MustCompile(`link code for \S+: ([A-Z0-9]{8})`)

// linkOwner links v to the owner with the code the vehicle shows.
func (w *world) linkOwner(t *testing.T, v vehicleState, ownerToken string) int {
	t.Helper()
	r := agent(t, "link-code", "--state", v.dir)
	m := codeRE.FindStringSubmatch(r.stdout)
	if r.code != 0 || m == nil {
		t.Fatalf("link-code: %s", r)
	}
	return w.api("POST", "/api/v1/owners/me/vehicles", ownerToken, map[string]string{"vin": v.vin, "code": m[1]}, nil)
}

// download fetches a bundle as the given caller; it returns the status
// and the bytes received.
func (w *world) download(t *testing.T, vin, token, query string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", w.url+"/api/v1/vehicles/"+vin+"/usb-bundle"+query, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// portalLogin logs an owner into the portal and returns a client that
// carries the session cookie, as a browser would.
func (w *world) portalLogin(t *testing.T, name, password string) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Jar: jar}
	csrf := formCSRF(t, c, w.url+"/")
	resp, err := c.PostForm(w.url+"/login", url.Values{"name": {name}, "secret": {password}, "csrf": {csrf}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	u, _ := url.Parse(w.url)
	if len(jar.Cookies(u)) == 0 {
		t.Fatalf("portal log-in of %s set no session (status %d)", name, resp.StatusCode)
	}
	return c
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// formCSRF loads a page with c and returns its form's CSRF token.
func formCSRF(t *testing.T, c *http.Client, page string) string {
	t.Helper()
	resp, err := c.Get(page)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := csrfRE.FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s has no form with a CSRF token:\n%s", page, b)
	}
	return string(m[1])
}

// TestUSBBundleOnEmbeddedDefaults: on default settings an owner logs in
// to the portal, sees until when a bundle works, downloads it, and the
// agent installs it 14 days later with the server down. When the server
// is back, the agent's next cycle reauthorizes and reports the install
// (its job succeeds), and a later online update still installs.
func TestUSBBundleOnEmbeddedDefaults(t *testing.T) {
	w := newWorld(t)
	w.setup(func(s sample) bool { return s.Version != "2.0.0" }) // 1.1.0 is the newest for now
	owner := w.account("owner", "alice")
	v := w.vehicle(1)
	if code := w.linkOwner(t, v, owner); code != 201 {
		t.Fatalf("link: %d", code)
	}
	portal := w.portalLogin(t, "alice", "correct horse battery")
	resp, err := portal.Get(w.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	until := time.Now().Add(30 * 24 * time.Hour).UTC().Format("2 Jan 2006")
	if !strings.Contains(string(page), "Download USB update") || !strings.Contains(string(page), until) {
		t.Fatalf("the portal should offer the USB update and say it works until %s:\n%s", until, page)
	}
	resp, err = portal.Get(w.url + "/vehicles/" + v.vin + "/usb")
	if err != nil {
		t.Fatal(err)
	}
	bundle, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("portal bundle download: %d %s", resp.StatusCode, bundle)
	}
	names := tarNames(t, bundle)
	for _, want := range []string{"README.txt", "bundle.json", "image/1.root.json", "image/timestamp.json", "director/1.root.json", "director/timestamp.json"} {
		if !strings.Contains(names, want+"\n") {
			t.Errorf("bundle lacks %s:\n%s", want, names)
		}
	}
	if strings.Count(names, "targets/") != 2 {
		t.Errorf("bundle should hold exactly the two assigned images:\n%s", names)
	}
	if readme := tarFile(t, bundle, "README.txt"); !strings.Contains(readme, "Install it before "+until) {
		t.Errorf("the bundle's README should say until when it installs (%s):\n%s", until, readme)
	}
	file := filepath.Join(w.dir, "usb.tar")
	os.WriteFile(file, bundle, 0o644)

	w.shutdown() // offline from here, two weeks later
	r := agentAt(t, time.Now().Add(14*24*time.Hour), "install-usb", "--state", v.dir, file)
	if r.code != 0 {
		t.Fatalf("install-usb 14 days later: %s", r)
	}
	if got := versions(t, v); got["head-unit"] != "1.1.0" || got["dcm"] != "1.1.0" {
		t.Fatalf("after USB install: %v", got)
	}
	if st := agent(t, "status", "--state", v.dir, "--json").stdout; !strings.Contains(st, `"state": "pending_reauthorization"`) {
		t.Fatalf("after a USB install the car should wait to reauthorize:\n%s", st)
	}

	w.restart()
	update(t, v.dir, 0)
	if st := agent(t, "status", "--state", v.dir).stdout; !strings.Contains(st, "authorization: authorized until") {
		t.Fatalf("the first online cycle should reauthorize:\n%s", st)
	}
	var view struct {
		Authorization struct{ State string } `json:"authorization"`
	}
	w.api("GET", "/api/v1/vehicles/"+v.vin, adminToken, nil, &view)
	if view.Authorization.State != "authorized" {
		t.Fatalf("server's vehicle view: %+v", view)
	}
	var jobs struct {
		Jobs []jobView `json:"jobs"`
	}
	w.api("GET", "/api/v1/jobs?vin="+v.vin, adminToken, nil, &jobs)
	if len(jobs.Jobs) != 2 {
		t.Fatalf("want the two auto-assigned installs as jobs, got %+v", jobs.Jobs)
	}
	for _, j := range jobs.Jobs {
		if j.State != "succeeded" || !strings.Contains(fmt.Sprint(j.Events), "USB") {
			t.Errorf("job %s should have succeeded through the USB install: %s %+v", j.ID, j.State, j.Events)
		}
	}
	if !strings.Contains(fmt.Sprint(w.auditActions(t)), "vehicle.offline_install") {
		t.Error("the offline install was not reported")
	}

	// A later release installs online, from the caches the USB install left alone.
	w.add(findSample(t, huHW, "2.0.0"))
	w.add(findSample(t, dcmHW, "2.0.0"))
	w.publish()
	update(t, v.dir, 0)
	if got := versions(t, v); got["head-unit"] != "2.0.0" || got["dcm"] != "2.0.0" {
		t.Fatalf("after the online update: %v", got)
	}
}

// TestUSBBundleMetadataStaysOffline: issuing a bundle leaves the
// vehicle's online metadata short-lived, and a captured bundle served to
// an online vehicle (a freeze attempt) is refused before anything is cached.
func TestUSBBundleMetadataStaysOffline(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	dealer := w.account("dealer", "dealer-1")
	v := w.vehicle(1)
	code, bundle := w.download(t, v.vin, dealer, "?valid_days=60")
	if code != 200 {
		t.Fatalf("bundle: %d %.300s", code, bundle)
	}
	// The captured director metadata lives 60 days...
	bts, err := metadata.Timestamp().FromBytes([]byte(tarFile(t, bundle, "director/timestamp.json")))
	if err != nil {
		t.Fatal(err)
	}
	if bts.Signed.Expires.Before(time.Now().Add(59 * 24 * time.Hour)) {
		t.Fatalf("bundle director timestamp expires %s", bts.Signed.Expires)
	}
	// ...the vehicle's online metadata still lives a day.
	update(t, v.dir, 0)
	online := filepath.Join(v.dir, "tuf", "director", "timestamp.json")
	ots, err := metadata.Timestamp().FromFile(online)
	if err != nil {
		t.Fatal(err)
	}
	if ots.Signed.Expires.After(time.Now().Add(25 * time.Hour)) {
		t.Fatalf("online director timestamp expires %s: issuing a bundle made it long-lived", ots.Signed.Expires)
	}
	before, _ := os.ReadFile(online)

	// An attacker on the network answers with the captured bundle's director metadata.
	real, _ := url.Parse(w.url)
	proxy := httputil.NewSingleHostReverseProxy(real)
	evil := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
		prefix := "/director/" + v.vin + "/"
		if name, ok := strings.CutPrefix(req.URL.Path, prefix); ok && !strings.HasSuffix(name, ".root.json") {
			if body := tarFile(t, bundle, "director/"+name); body != "" {
				rw.Write([]byte(body))
				return
			}
		}
		proxy.ServeHTTP(rw, req)
	}))
	defer evil.Close()
	setServer(t, v, evil.URL)
	r := agent(t, "update", "--state", v.dir)
	if r.code != 3 || !strings.Contains(r.stderr, "made for a USB bundle") {
		t.Fatalf("bundle metadata served online: want exit 3, got %s", r)
	}
	if after, _ := os.ReadFile(online); !bytes.Equal(before, after) {
		t.Fatal("the refused bundle metadata reached the online cache")
	}
	setServer(t, v, w.url)
	update(t, v.dir, 0)
}

// setServer points a provisioned vehicle at another server URL.
func setServer(t *testing.T, v vehicleState, url string) {
	t.Helper()
	p := filepath.Join(v.dir, "vehicle.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	json.Unmarshal(b, &cfg)
	cfg["server"] = url
	b, _ = json.Marshal(cfg)
	os.WriteFile(p, b, 0o600)
}

// restart starts the server again on the address it had.
func (w *world) restart() {
	w.t.Helper()
	w.shutdown()
	_, addr, _ := strings.Cut(w.url, "://")
	w.extra = append(w.extra, "--listen", addr)
	w.start()
}

func (w *world) auditActions(t *testing.T) []string {
	t.Helper()
	var audit struct {
		Entries []struct{ Action string } `json:"entries"`
	}
	w.api("GET", "/api/v1/audit?limit=1000", adminToken, nil, &audit)
	var out []string
	for _, e := range audit.Entries {
		out = append(out, e.Action)
	}
	return out
}

// tarFile returns one file of a tar archive ("" if it is not there).
func tarFile(t *testing.T, b []byte, name string) string {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err != nil {
			return ""
		}
		if h.Name == name {
			data, _ := io.ReadAll(tr)
			return string(data)
		}
	}
}

func tarNames(t *testing.T, b []byte) string {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var names strings.Builder
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("bundle is not a valid tar: %v", err)
		}
		names.WriteString(h.Name + "\n")
	}
	return names.String()
}

func TestUSBBundleRefusals(t *testing.T) {
	w := newWorld(t)
	// Targets signed to live 100 days: a longer bundle cannot be promised.
	w.mustSigner("init", w.ws, "--online-keys", filepath.Join(w.data, "online-keys.json"), "--targets-expiry", "2400h")
	for _, s := range loadSamples(t) {
		if s.Bootable {
			w.add(s)
		}
	}
	w.publish()
	alice, bob := w.account("owner", "alice"), w.account("owner", "bob")
	dealer := w.account("dealer", "dealer-1")
	v1, v2 := w.vehicle(1), w.vehicle(2)
	if code := w.linkOwner(t, v1, alice); code != 201 {
		t.Fatalf("link: %d", code)
	}
	_, b1 := w.download(t, v1.vin, alice, "?valid_days=2")
	f1 := filepath.Join(w.dir, "v1.tar")
	os.WriteFile(f1, b1, 0o644)

	t.Run("an owner asking for a VIN that is not theirs", func(t *testing.T) {
		code, body := w.download(t, v1.vin, bob, "")
		if (code != 403 && code != 404) || bytes.Contains(body, []byte("ustar")) {
			t.Fatalf("got %d and %d bytes: %.200s", code, len(body), body)
		}
	})
	t.Run("another VIN's bundle", func(t *testing.T) {
		before := activeBytes(t, v2)
		r := agent(t, "install-usb", "--state", v2.dir, f1)
		if r.code != 3 || !strings.Contains(r.stderr, "is for VIN") {
			t.Fatalf("want exit 3, got %s", r)
		}
		if fmt.Sprint(before) != fmt.Sprint(activeBytes(t, v2)) {
			t.Fatal("installed something")
		}
	})
	// Partial bundles: an image missing, or cut short. No ECU switches
	// slots: one failed image refuses the whole install.
	for _, tc := range []struct {
		name, wantMsg string
		edit          func(body []byte) ([]byte, bool)
	}{
		{"an image missing from the bundle", "the bundle lacks", func(b []byte) ([]byte, bool) { return nil, false }},
		{"an image cut short in the bundle", "length mismatch", func(b []byte) ([]byte, bool) { return b[:len(b)/2], true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := activeBytes(t, v1)
			partial := filepath.Join(w.dir, strings.ReplaceAll(tc.name, " ", "-")+".tar")
			if err := os.WriteFile(partial, editFirstImage(t, b1, tc.edit), 0o644); err != nil {
				t.Fatal(err)
			}
			r := agent(t, "install-usb", "--state", v1.dir, partial)
			t.Logf("agent said: %s", r)
			if r.code != 3 || !strings.Contains(r.stderr, tc.wantMsg) {
				t.Fatalf("want exit 3 naming %q, got %s", tc.wantMsg, r)
			}
			if fmt.Sprint(before) != fmt.Sprint(activeBytes(t, v1)) {
				t.Fatal("installed something from a partial bundle")
			}
		})
	}
	t.Run("an expired bundle", func(t *testing.T) {
		// The car's clock decides nothing: the bundle is past its life
		// by a time the car already trusts (a later bundle's signed issue
		// time, or an attestation, raised its floor).
		floor := time.Now().Add(400 * 24 * time.Hour).UTC().Format(time.RFC3339)
		if err := os.WriteFile(filepath.Join(v1.dir, "time.json"), []byte(`{"floor": "`+floor+`"}`), 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(filepath.Join(v1.dir, "time.json"))
		r := agent(t, "install-usb", "--state", v1.dir, f1)
		if r.code != 3 || !strings.Contains(r.stderr, "expired") {
			t.Fatalf("want exit 3, got %s", r)
		}
	})
	t.Run("paths that escape the bundle", func(t *testing.T) {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, name := range []string{"bundle.json", "../../escape.txt"} {
			tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: 2, Typeflag: tar.TypeReg})
			tw.Write([]byte("{}"))
		}
		tw.Close()
		evil := filepath.Join(w.dir, "evil.tar")
		os.WriteFile(evil, buf.Bytes(), 0o644)
		r := agent(t, "install-usb", "--state", v1.dir, evil)
		if r.code != 3 || !strings.Contains(r.stderr, "escapes the bundle") {
			t.Fatalf("want exit 3, got %s", r)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(v1.dir), "escape.txt")); err == nil {
			t.Fatal("an entry was written outside the bundle")
		}
	})
	t.Run("a stale bundle", func(t *testing.T) {
		// A dealer issues a newer bundle and the car installs it: the
		// first bundle is now older than metadata the car has seen.
		code, b2 := w.download(t, v1.vin, dealer, "?valid_days=2")
		if code != 200 {
			t.Fatalf("second bundle: %d", code)
		}
		f2 := filepath.Join(w.dir, "v1-newer.tar")
		os.WriteFile(f2, b2, 0o644)
		if r := agent(t, "install-usb", "--state", v1.dir, f2); r.code != 0 {
			t.Fatalf("newer bundle: %s", r)
		}
		r := agent(t, "install-usb", "--state", v1.dir, f1)
		if r.code != 3 || !strings.Contains(r.stderr, "rollback") {
			t.Fatalf("want exit 3 (rollback), got %s", r)
		}
	})
	t.Run("offline-signed metadata expiring before the promised validity", func(t *testing.T) {
		code, body := w.download(t, v1.vin, dealer, "?valid_days=120")
		if code != 409 || !strings.Contains(string(body), "metadata_expires_too_soon") || !strings.Contains(string(body), "image repository's targets expires") {
			t.Fatalf("got %d %s", code, body)
		}
	})
}

// TestReauthorizationFailures: each failure has its own code and message.
func TestReauthorizationFailures(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	alice, bob := w.account("owner", "alice"), w.account("owner", "bob")
	v := w.vehicle(1)
	reauth := func(wantCode string) {
		t.Helper()
		r := agent(t, "reauthorize", "--state", v.dir)
		if wantCode == "" {
			if r.code != 0 {
				t.Fatalf("reauthorize: %s", r)
			}
			return
		}
		if r.code != 1 || !strings.Contains(r.stderr, wantCode) {
			t.Fatalf("want %s, got %s", wantCode, r)
		}
		if st := agent(t, "status", "--state", v.dir, "--json").stdout; !strings.Contains(st, `"state": "`+wantCode+`"`) {
			t.Fatalf("status does not show %s:\n%s", wantCode, st)
		}
	}
	reauth("vehicle_not_linked")
	if code := w.linkOwner(t, v, alice); code != 201 {
		t.Fatalf("link: %d", code)
	}
	reauth("firmware_not_authorized") // the director assigns 2.0.0; the car runs 1.0.0
	update(t, v.dir, 0)
	reauth("") // update reauthorized already; once more by hand
	if code := w.linkOwner(t, v, bob); code != 409 {
		t.Fatalf("bob linking alice's car: %d, want 409", code)
	}
	reauth("") // bob's claim does not touch alice's services
	if code := w.api("DELETE", "/api/v1/owners/me/vehicles/"+v.vin, alice, nil, nil); code != 200 {
		t.Fatalf("alice releases: %d", code)
	}
	reauth("vehicle_not_linked") // released: the claim did not take over
	if code := w.linkOwner(t, v, bob); code != 201 {
		t.Fatalf("bob links the released car: %d", code)
	}
	reauth("") // bob owns it now
	past := time.Now().Add(-24 * time.Hour).UTC().Format(time.RFC3339)
	if code := w.api("POST", "/api/v1/vehicles/"+v.vin+"/owner", adminToken, map[string]string{"owner": "bob", "subscriptionEnds": past}, nil); code != 200 {
		t.Fatalf("transfer: %d", code)
	}
	reauth("subscription_expired")
}

// TestDCMReplacement: a dealer fits a new DCM; until it is re-provisioned
// its key is refused; after, the car reauthorizes with the new key and the
// old key is refused.
func TestDCMReplacement(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	dealer, owner := w.account("dealer", "dealer-1"), w.account("owner", "alice")
	v := w.vehicle(1)
	w.linkOwner(t, v, owner)
	update(t, v.dir, 0)
	oldKey, _ := os.ReadFile(filepath.Join(v.dir, "vehicle.key"))
	r := agent(t, "replace-ecu", "--state", v.dir, "--serial", "DCM000001", "--new-serial", "DCM777777",
		"--hardware-id", dcmHW, "--firmware", sampleFile(t, dcmHW, "1.0.0"))
	m := regexp.MustCompile(`publicKey (\S+)`).FindStringSubmatch(r.stdout)
	if r.code != 0 || m == nil {
		t.Fatalf("replace-ecu: %s", r)
	}
	if r := agent(t, "reauthorize", "--state", v.dir); r.code != 1 || !strings.Contains(r.stderr, "unknown_vehicle_key") {
		t.Fatalf("before re-provisioning: %s", r)
	}
	body := map[string]string{"serial": "DCM777777", "hardwareId": dcmHW, "publicKey": m[1], "reason": "DCM replaced under warranty"}
	if code := w.api("POST", "/api/v1/vehicles/"+v.vin+"/ecus/DCM000001/replace", dealer, body, nil); code != 200 {
		t.Fatalf("replace: %d", code)
	}
	// The new DCM runs factory 1.0.0; the director assigns it 2.0.0.
	update(t, v.dir, 0)
	if got := versions(t, v); got["dcm"] != "2.0.0" {
		t.Fatalf("new DCM runs %s", got["dcm"])
	}
	if r := agent(t, "reauthorize", "--state", v.dir); r.code != 0 {
		t.Fatalf("reauthorize with the new key: %s", r)
	}
	// The old key is refused.
	os.WriteFile(filepath.Join(v.dir, "vehicle.key"), oldKey, 0o600)
	if r := agent(t, "reauthorize", "--state", v.dir); r.code != 1 || !strings.Contains(r.stderr, "unknown_vehicle_key") {
		t.Fatalf("old key: %s", r)
	}
	var audit struct {
		Entries []struct{ Action, Detail string } `json:"entries"`
	}
	w.api("GET", "/api/v1/audit", adminToken, nil, &audit)
	if !strings.Contains(fmt.Sprint(audit.Entries), "ecu.replace") {
		t.Fatal("replacement not audited")
	}
}

// editFirstImage rewrites a bundle archive: the first image entry's body
// goes through edit, which may drop the entry.
func editFirstImage(t *testing.T, bundle []byte, edit func([]byte) ([]byte, bool)) []byte {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(bundle))
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	done := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if !done && h.Typeflag == tar.TypeReg && strings.HasSuffix(h.Name, ".img") {
			done = true
			var keep bool
			if body, keep = edit(body); !keep {
				continue
			}
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	if !done {
		t.Fatal("the bundle has no .img entry")
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}
