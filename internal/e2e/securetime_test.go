package e2e

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// timeOf is status --json's "time".
func timeOf(t *testing.T, v vehicleState) (state string, floor time.Time) {
	t.Helper()
	r := agent(t, "status", "--state", v.dir, "--json")
	var st struct {
		Time struct {
			State string    `json:"state"`
			Floor time.Time `json:"floor"`
		} `json:"time"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil {
		t.Fatalf("status: %s", r)
	}
	return st.Time.State, st.Time.Floor
}

// TestSecureTime, against the real server:
//   - a car whose RTC reads 1970, and one five years ahead, each install
//     a valid update after one time attestation, and then hold a trusted
//     time (status --json "time") whose floor is the server's time;
//   - an attestation that fails (signed by another key, replayed from
//     another request, stale) refuses the cycle with time_untrusted; the
//     car's check-in reports it and the diagnosis names it;
//   - a USB bundle's signed issue time raises the floor of a car offline
//     for a month, whatever its RTC says.
func TestSecureTime(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	for i, rtc := range []string{"rtc=1970-01-01", "rtc=+5y"} {
		v := w.vehicle(60 + i)
		r := update(t, v.dir, 0, "--simulate", rtc)
		if vs := versions(t, v); vs["dcm"] != "2.0.0" || vs["head-unit"] != "2.0.0" {
			t.Fatalf("%s: runs %v after the update:\n%s", rtc, vs, r)
		}
		state, floor := timeOf(t, v)
		if state != "trusted" || time.Since(floor).Abs() > time.Minute {
			t.Fatalf("%s: time %s, floor %s", rtc, state, floor)
		}
	}

	v := w.vehicle(62)
	update(t, v.dir, 0)
	w.linkOwner(t, v, w.account("owner", "tess"))
	for _, tc := range []struct{ fault, says string }{
		{"attestation=bad-sig", "not signed by the director root's time key"},
		{"attestation=wrong-nonce", "another nonce"},
		{"attestation=stale", "before"},
	} {
		r := update(t, v.dir, 3, "--simulate", tc.fault)
		if !strings.Contains(r.stderr, "time_untrusted") || !strings.Contains(r.stderr, tc.says) {
			t.Fatalf("%s: want a time_untrusted refusal naming %q:\n%s", tc.fault, tc.says, r)
		}
		d := w.diagnosedFirst(t, v.vin, "time_untrusted")
		if !strings.Contains(d.Findings[0].Evidence[0].Detail, tc.says) {
			t.Fatalf("%s: the diagnosis's evidence: %+v", tc.fault, d.Findings[0])
		}
	}
	update(t, v.dir, 0)
	w.fixed(t, v, "time_untrusted")

	// Offline: a stick's signed issue time is a time the car trusts.
	u := w.vehicle(63)
	dealer := w.account("dealer", "dealer-t")
	w.job(dealer, map[string]any{"vin": u.vin, "ecu": "dcm", "version": "2.0.0", "reason": "USB"})
	code, stick := w.download(t, u.vin, dealer, "")
	if code != 200 {
		t.Fatalf("bundle: %d %s", code, stick)
	}
	var manifest struct {
		IssuedAt time.Time `json:"issuedAt"`
	}
	if err := json.Unmarshal([]byte(tarFile(t, stick, "bundle.json")), &manifest); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(w.dir, "stick.tar")
	if err := os.WriteFile(p, stick, 0o600); err != nil {
		t.Fatal(err)
	}
	// The car last trusted a time a month ago (offline since).
	month := time.Now().Add(-30 * 24 * time.Hour).UTC().Format(time.RFC3339)
	if err := os.WriteFile(filepath.Join(u.dir, "time.json"), []byte(`{"floor": "`+month+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := agentAt(t, time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC), "install-usb", "--state", u.dir, p); r.code != 0 {
		t.Fatalf("install-usb with the RTC in 1970: %s", r)
	}
	if _, floor := timeOf(t, u); !floor.Equal(manifest.IssuedAt) {
		t.Fatalf("after the stick the floor is %s, want its issue time %s", floor, manifest.IssuedAt)
	}
}

// TestSecureTimeFreezeAttack: a network attacker between the car and the
// server keeps serving an image-repository timestamp that has expired
// (still validly signed), and sets the car's RTC back so that by the RTC
// it looks current. The car, which takes its time from the server's
// attestation, refuses it as expired; without the attacker it updates.
func TestSecureTimeFreezeAttack(t *testing.T) {
	w := newWorld(t, "--timestamp-expiry", "3s", "--auto-assign", "none")
	w.setup(nil)
	target, err := url.Parse(w.url)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var frozen []byte
	freeze := false
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		mu.Lock()
		f, body := freeze, frozen
		mu.Unlock()
		if f && r.URL.Path == "/repo/timestamp.json" {
			rw.Write(body)
			return
		}
		rp.ServeHTTP(rw, r)
	}))
	defer proxy.Close()
	resp, ts := httpGet(t, w.url+"/repo/timestamp.json", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("timestamp: %s", resp.Status)
	}
	var m struct {
		Signed struct {
			Expires time.Time `json:"expires"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(ts, &m); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	frozen, freeze = ts, true
	mu.Unlock()

	st := filepath.Join(w.dir, "frozen-car")
	hu, dcm := findSample(t, huHW, "1.0.0"), findSample(t, dcmHW, "1.0.0")
	if r := agent(t, "init", "--state", st, "--server", proxy.URL, "--vin", testVIN(64),
		"--image-root", filepath.Join(w.ws, "image.root.json"), "--director-root", filepath.Join(w.ws, "director.root.json"),
		"--ecu", "head-unit:HU000064:"+huHW+":"+filepath.Join(samplesDir(), hu.File),
		"--ecu", "dcm:DCM000064:"+dcmHW+":"+filepath.Join(samplesDir(), dcm.File), "--token", adminToken); r.code != 0 {
		t.Fatalf("init: %s", r)
	}
	time.Sleep(time.Until(m.Signed.Expires.Add(time.Second)))
	// By the RTC, an hour back, the frozen timestamp is current.
	rtc := m.Signed.Expires.Add(-time.Hour)
	r := agentAt(t, rtc, "update", "--state", st)
	if r.code != 3 || !strings.Contains(r.stderr+r.stdout, "expired") {
		t.Fatalf("frozen metadata with the RTC set back: want a refusal as expired, got %s", r)
	}
	mu.Lock()
	freeze = false
	mu.Unlock()
	if r := agentAt(t, rtc, "update", "--state", st); r.code != 0 {
		t.Fatalf("without the attacker: %s", r)
	}
}
