package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

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

func longLived(extra ...string) []string {
	return append([]string{"--timestamp-expiry", "1000h", "--snapshot-expiry", "1000h"}, extra...)
}

// TestUSBBundleOfflineInstall: an owner links the car with its code,
// downloads the bundle for their VIN through the API, the agent installs
// it with the server down, then reauthorizes, and the next online
// check-in reports the offline install.
func TestUSBBundleOfflineInstall(t *testing.T) {
	w := newWorld(t, longLived()...)
	w.setup(nil)
	owner := w.account("owner", "alice")
	v := w.vehicle(1)
	if code := w.linkOwner(t, v, owner); code != 201 {
		t.Fatalf("link: %d", code)
	}
	code, bundle := w.download(t, v.vin, owner, "")
	if code != 200 {
		t.Fatalf("bundle: %d %s", code, bundle)
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
	file := filepath.Join(w.dir, "usb.tar")
	os.WriteFile(file, bundle, 0o644)

	w.shutdown() // offline from here
	r := agent(t, "install-usb", "--state", v.dir, file)
	if r.code != 0 {
		t.Fatalf("install-usb: %s", r)
	}
	if got := versions(t, v); got["head-unit"] != "2.0.0" || got["dcm"] != "2.0.0" {
		t.Fatalf("after USB install: %v", got)
	}
	w.extra = append(w.extra, "--listen", strings.TrimPrefix(w.url, "http://"))
	w.start()
	if r := agent(t, "reauthorize", "--state", v.dir); r.code != 0 || !strings.Contains(r.stdout, "authorized") {
		t.Fatalf("reauthorize: %s", r)
	}
	if !strings.Contains(agent(t, "status", "--state", v.dir).stdout, "authorization: authorized") {
		t.Error("status does not show the authorization")
	}
	if r := agent(t, "update", "--state", v.dir); r.code != 0 {
		t.Fatalf("online check-in: %s", r)
	}
	var audit struct {
		Entries []struct{ Action, Detail string } `json:"entries"`
	}
	w.api("GET", "/api/v1/audit", adminToken, nil, &audit)
	found := false
	for _, e := range audit.Entries {
		if e.Action == "vehicle.offline_install" && strings.Contains(e.Detail, "from USB bundle") {
			found = true
		}
	}
	if !found {
		t.Fatalf("the offline install was not reported: %+v", audit.Entries)
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
	w := newWorld(t, longLived()...)
	w.setup(nil)
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
	t.Run("an expired bundle", func(t *testing.T) {
		r := agentAt(t, time.Now().Add(72*time.Hour), "install-usb", "--state", v1.dir, f1)
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
	t.Run("metadata expiring before the promised validity", func(t *testing.T) {
		code, body := w.download(t, v1.vin, dealer, "?valid_days=100")
		if code != 409 || !strings.Contains(string(body), "metadata_expires_too_soon") {
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
	if r := agent(t, "update", "--state", v.dir); r.code != 0 {
		t.Fatalf("update: %s", r)
	}
	reauth("") // update reauthorized already; once more by hand
	if code := w.linkOwner(t, v, bob); code != 409 {
		t.Fatalf("bob linking alice's car: %d, want 409", code)
	}
	reauth("linked_to_previous_owner")
	if code := w.api("DELETE", "/api/v1/owners/me/vehicles/"+v.vin, alice, nil, nil); code != 200 {
		t.Fatalf("alice releases: %d", code)
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
	if r := agent(t, "update", "--state", v.dir); r.code != 0 {
		t.Fatalf("update: %s", r)
	}
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
	if r := agent(t, "update", "--state", v.dir); r.code != 0 {
		t.Fatalf("update after re-provisioning: %s", r)
	}
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
