package e2e

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/server/s3blob/s3test"
)

// diagView is GET /api/v1/vehicles/{vin}/diagnosis as a dealer sees it.
type diagView struct {
	Healthy  bool   `json:"healthy"`
	Summary  string `json:"summary"`
	Findings []struct {
		Code, Severity, Title, Fix string
		Evidence                   []struct{ Record, Detail string }
		Actions                    []struct{ Kind, ECU, Label string }
	} `json:"findings"`
	History []struct {
		Code       string
		ResolvedAt time.Time
	} `json:"history"`
}

func (d diagView) problems() []string {
	var out []string
	for _, f := range d.Findings {
		if f.Severity == "problem" {
			out = append(out, f.Code)
		}
	}
	return out
}

func (w *world) diagnose(t *testing.T, vin string) diagView {
	t.Helper()
	var d diagView
	if code := w.api("GET", "/api/v1/vehicles/"+vin+"/diagnosis", adminToken, nil, &d); code != 200 {
		t.Fatalf("diagnosis of %s: %d", vin, code)
	}
	return d
}

// diagnosedFirst checks that the diagnosis names code first, with a fix
// and evidence, and returns it.
func (w *world) diagnosedFirst(t *testing.T, vin, code string) diagView {
	t.Helper()
	d := w.diagnose(t, vin)
	if p := d.problems(); len(p) == 0 || p[0] != code {
		t.Fatalf("diagnosis should name %s first: %+v", code, d)
	}
	if f := d.Findings[0]; d.Healthy || f.Fix == "" || len(f.Evidence) == 0 {
		t.Fatalf("%s: no fix or evidence: %+v", code, d)
	}
	return d
}

// healthyCar is a car linked to alice, updated to the newest images and
// authorized: the diagnosis finds nothing.
func healthyCar(t *testing.T, w *world, n int) (vehicleState, string) {
	t.Helper()
	v := w.vehicle(n)
	owner := w.account("owner", fmt.Sprintf("owner-%d", n))
	w.linkOwner(t, v, owner)
	update(t, v.dir, 0)
	if d := w.diagnose(t, v.vin); !d.Healthy || len(d.problems()) != 0 {
		t.Fatalf("a working car should diagnose healthy: %+v", d)
	}
	return v, owner
}

// fixed checks the end of a cause: the car reauthorizes, the diagnosis is
// healthy again and the finding is recorded as resolved.
func (w *world) fixed(t *testing.T, v vehicleState, code string) {
	t.Helper()
	if r := agent(t, "reauthorize", "--state", v.dir); r.code != 0 {
		t.Fatalf("after fixing %s the car should reauthorize: %s", code, r)
	}
	d := w.diagnose(t, v.vin)
	if !d.Healthy {
		t.Fatalf("after fixing %s: %+v", code, d)
	}
	for _, h := range d.History {
		if h.Code == code && !h.ResolvedAt.IsZero() {
			return
		}
	}
	t.Fatalf("%s should be recorded as resolved: %+v", code, d.History)
}

// endSubscription ends the car's subscription (a second from now, then
// waits), and the car's next handshake fails subscription_expired.
func (w *world) endSubscription(t *testing.T, v vehicleState, owner string) {
	t.Helper()
	if code := w.api("POST", "/api/v1/vehicles/"+v.vin+"/owner", adminToken, map[string]string{"owner": owner, "subscriptionEnds": time.Now().Add(time.Second).Format(time.RFC3339)}, nil); code != 200 {
		t.Fatalf("shorten the subscription: %d", code)
	}
	time.Sleep(1500 * time.Millisecond)
	if r := agent(t, "reauthorize", "--state", v.dir); r.code == 0 || !strings.Contains(r.stderr, "subscription_expired") {
		t.Fatalf("reauthorize after the end: %s", r)
	}
}

func actionOf(d diagView, kind string) bool {
	for _, a := range d.Findings[0].Actions {
		if a.Kind == kind {
			return true
		}
	}
	return false
}

// TestDiagnosisHealthyCar: a working car is healthy, with a summary and
// nothing alarming, for the dealer and in the owner's words.
func TestDiagnosisHealthyCar(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v, owner := healthyCar(t, w, 1)
	d := w.diagnose(t, v.vin)
	if !strings.Contains(d.Summary, "Connected services work") || !strings.Contains(d.Summary, "signal 4 bars") {
		t.Fatalf("summary: %q", d.Summary)
	}
	for _, f := range d.Findings {
		if f.Severity != "info" {
			t.Fatalf("alarming finding on a healthy car: %+v", f)
		}
	}
	var o struct {
		Healthy bool
		Summary string
		Steps   []any
	}
	if code := w.api("GET", "/api/v1/vehicles/"+v.vin+"/diagnosis", owner, nil, &o); code != 200 || !o.Healthy || len(o.Steps) != 0 || !strings.Contains(o.Summary, "nothing wrong") {
		t.Fatalf("owner's diagnosis: %d %+v", code, o)
	}
	other := w.account("owner", "mallory")
	if code := w.api("GET", "/api/v1/vehicles/"+v.vin+"/diagnosis", other, nil, nil); code != 404 {
		t.Fatalf("another owner's car: %d, want 404", code)
	}
}

// TestDiagnosisSubscriptionExpired: the subscription ends; renewing it
// (the finding's action) brings the car back.
func TestDiagnosisSubscriptionExpired(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	owner := "owner-1"
	w.endSubscription(t, v, owner)
	d := w.diagnosedFirst(t, v.vin, "subscription_expired")
	if !actionOf(d, "renew") {
		t.Fatalf("no renew action: %+v", d.Findings[0])
	}
	if code := w.api("POST", "/api/v1/vehicles/"+v.vin+"/owner", adminToken, map[string]string{"owner": owner, "subscriptionEnds": time.Now().AddDate(1, 0, 0).Format(time.RFC3339)}, nil); code != 200 {
		t.Fatalf("renew: %d", code)
	}
	w.fixed(t, v, "subscription_expired")
}

// TestDiagnosisNotLinked: a car no owner linked; the owner links it.
func TestDiagnosisNotLinked(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v := w.vehicle(1)
	update(t, v.dir, 0)
	w.diagnosedFirst(t, v.vin, "vehicle_not_linked")
	w.linkOwner(t, v, w.account("owner", "alice"))
	w.fixed(t, v, "vehicle_not_linked")
}

// TestDiagnosisLinkedToPreviousOwner: the car was sold; the new owner's
// link is a claim the dealer transfers.
func TestDiagnosisLinkedToPreviousOwner(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	bob := w.account("owner", "bob")
	if code := w.linkOwner(t, v, bob); code != 409 {
		t.Fatalf("bob's link while the car is still linked: %d, want 409 (a claim)", code)
	}
	d := w.diagnosedFirst(t, v.vin, "linked_to_previous_owner")
	if !actionOf(d, "transfer") || !strings.Contains(d.Findings[0].Evidence[0].Detail, "bob") {
		t.Fatalf("transfer action naming bob: %+v", d.Findings[0])
	}
	dealer := w.account("dealer", "dealer-1")
	if code := w.api("POST", "/api/v1/vehicles/"+v.vin+"/claim", dealer, map[string]string{"decision": "accept", "reason": "sale checked"}, nil); code != 200 {
		t.Fatalf("transfer: %d", code)
	}
	w.fixed(t, v, "linked_to_previous_owner")
}

// TestDiagnosisReplacedDCM: a new DCM signs with a key the server does
// not know; re-provisioning it fixes the car.
func TestDiagnosisReplacedDCM(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	r := agent(t, "replace-ecu", "--state", v.dir, "--serial", "DCM000001", "--new-serial", "DCM777777",
		"--hardware-id", dcmHW, "--firmware", sampleFile(t, dcmHW, "1.0.0"))
	m := regexp.MustCompile(`publicKey (\S+)`).FindStringSubmatch(r.stdout)
	if r.code != 0 || m == nil {
		t.Fatalf("replace-ecu: %s", r)
	}
	agent(t, "update", "--state", v.dir) // refused: unknown_vehicle_key
	d := w.diagnosedFirst(t, v.vin, "unknown_vehicle_key")
	if !actionOf(d, "reprovision") {
		t.Fatalf("no re-provision action: %+v", d.Findings[0])
	}
	body := map[string]string{"serial": "DCM777777", "hardwareId": dcmHW, "publicKey": m[1], "reason": "diagnosis: unknown_vehicle_key"}
	if code := w.api("POST", "/api/v1/vehicles/"+v.vin+"/ecus/DCM000001/replace", w.account("dealer", "dealer-1"), body, nil); code != 200 {
		t.Fatalf("re-provision: %d", code)
	}
	update(t, v.dir, 0)
	w.fixed(t, v, "unknown_vehicle_key")
}

// TestDiagnosisWrongRTCStillUpdates: the agent's own rtc= fault sets the
// car's clock 20 minutes behind; an update cycle goes by the server's
// signed time (secure time), so the car updates and reauthorizes, and the
// diagnosis finds nothing wrong. (A request signed with the wrong clock
// alone, as TestDiagnosisClockSkew makes, is still diagnosed.)
func TestDiagnosisWrongRTCStillUpdates(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	update(t, v.dir, 0, "--simulate", "rtc=-20m")
	if d := w.diagnose(t, v.vin); !d.Healthy {
		t.Fatalf("a car whose RTC is wrong but whose time is attested: %+v", d)
	}
}

// TestDiagnosisClockSkew: the car's clock is 20 minutes off; set right,
// it works again. The DCM is not blamed.
func TestDiagnosisClockSkew(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	if r := agentAt(t, time.Now().Add(20*time.Minute), "reauthorize", "--state", v.dir); r.code == 0 {
		t.Fatalf("reauthorize with the clock off should fail: %s", r)
	}
	d := w.diagnosedFirst(t, v.vin, "clock_skew")
	if slices.Contains(d.problems(), "unknown_vehicle_key") || !strings.Contains(d.Findings[0].Evidence[0].Detail, "20m0s ahead") {
		t.Fatalf("clock skew: %+v", d.Findings)
	}
	update(t, v.dir, 0)
	w.fixed(t, v, "clock_skew")
}

// TestDiagnosisOutdatedFirmware: the director assigns a DCM image the car
// does not run, so the handshake refuses it; a one-click reflash (a job)
// and the update fix it.
func TestDiagnosisOutdatedFirmware(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.setup(nil)
	v, _ := healthyCar(t, w, 1) // nothing assigned: factory 1.0.0 is fine
	dealer := w.account("dealer", "dealer-1")
	w.job(dealer, map[string]any{"vin": v.vin, "ecu": "dcm", "version": "2.0.0", "reason": "DCM firmware too old"})
	if r := agent(t, "reauthorize", "--state", v.dir); r.code == 0 || !strings.Contains(r.stderr, "firmware_not_authorized") {
		t.Fatalf("reauthorize on old firmware: %s", r)
	}
	d := w.diagnosedFirst(t, v.vin, "firmware_outdated")
	if !actionOf(d, "reflash") || !strings.Contains(d.Findings[0].Title, "not the assigned 2.0.0") {
		t.Fatalf("outdated: %+v", d.Findings[0])
	}
	update(t, v.dir, 0)
	w.fixed(t, v, "firmware_outdated")
}

// TestDiagnosisCorruptDCM: a DCM slot goes bad (B15A8, firmware that is
// no signed image); a reflash job fixes it, and B15A8 clears.
func TestDiagnosisCorruptDCM(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none") // no OTA repairs it on its own
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	if r := agent(t, "update", "--state", v.dir, "--simulate", "corrupt-active"); r.code != 0 && r.code != 1 {
		t.Fatalf("update with a corrupt DCM slot: %s", r)
	}
	if !strings.Contains(dtcs(t, v), "B15A8") {
		t.Fatalf("B15A8 not set: %s", dtcs(t, v))
	}
	d := w.diagnosedFirst(t, v.vin, "dcm_fault")
	if !actionOf(d, "reflash") || !slices.Contains(d.problems(), "firmware_unsigned") {
		t.Fatalf("corrupt DCM: %+v", d.Findings)
	}
	w.job(w.account("dealer", "dealer-1"), map[string]any{"vin": v.vin, "ecu": "dcm", "version": "latest", "reason": "diagnosis: B15A8"})
	update(t, v.dir, 0)
	if strings.Contains(dtcs(t, v), "B15A8") {
		t.Fatalf("B15A8 still set after the reflash: %s", dtcs(t, v))
	}
	w.fixed(t, v, "dcm_fault")
}

// TestDiagnosisBootFailRecurs: a DCM image fails its boot check (B15A8);
// after a good reflash it clears; when it comes back, the fix is to
// replace the DCM.
func TestDiagnosisBootFailRecurs(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	dealer := w.account("dealer", "dealer-1")
	w.job(dealer, map[string]any{"vin": v.vin, "ecu": "dcm", "version": "1.1.0", "reason": "DCM update"})
	update(t, v.dir, 4, "--simulate", "boot-fail")
	w.diagnosedFirst(t, v.vin, "dcm_fault")
	w.job(dealer, map[string]any{"vin": v.vin, "ecu": "dcm", "version": "2.0.0", "reason": "reflash after B15A8"})
	update(t, v.dir, 0)
	w.fixed(t, v, "dcm_fault")
	if r := agent(t, "update", "--state", v.dir, "--simulate", "corrupt-active"); r.code > 1 {
		t.Fatalf("update: %s", r)
	}
	d := w.diagnosedFirst(t, v.vin, "dcm_fault")
	if !strings.Contains(d.Findings[0].Fix, "replace the DCM") || !actionOf(d, "reprovision") {
		t.Fatalf("B15A8 again after a reflash should say replace: %+v", d.Findings[0])
	}
}

// TestDiagnosisLostCommunication: the head unit drops off the vehicle
// bus (U1100); the connection repaired, the car reauthorizes.
func TestDiagnosisLostCommunication(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	if r := agent(t, "update", "--state", v.dir, "--simulate", "can-loss"); !strings.Contains(r.stdout, "U1100") {
		t.Fatalf("update without the head unit: %s", r)
	}
	d := w.diagnosedFirst(t, v.vin, "lost_communication")
	if !strings.Contains(d.Findings[0].Fix, "wiring") {
		t.Fatalf("U1100 fix: %+v", d.Findings[0])
	}
	update(t, v.dir, 0)
	w.fixed(t, v, "lost_communication")
}

// TestDiagnosisNoSignal: three cycles without signal set B15C4 with 0
// bars; when the car reaches the server again the diagnosis blames
// coverage or the antenna, and the finding clears after.
func TestDiagnosisNoSignal(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	for range 3 {
		update(t, v.dir, 1, "--simulate", "signal:0")
	}
	if !strings.Contains(dtcs(t, v), "B15C4") {
		t.Fatalf("B15C4 not set after 3 cycles without signal: %s", dtcs(t, v))
	}
	update(t, v.dir, 0, "--simulate", "signal:1")
	d := w.diagnosedFirst(t, v.vin, "no_signal")
	if !strings.Contains(d.Findings[0].Fix, "Antenna or coverage") || !strings.Contains(d.Findings[0].Evidence[0].Detail, "weakest signal 0 bars") {
		t.Fatalf("no signal: %+v", d.Findings[0])
	}
	if r := agent(t, "update", "--state", v.dir); r.code != 0 { // antenna fixed: 4 bars
		t.Fatalf("update: %s", r)
	}
	w.fixed(t, v, "no_signal")
}

// TestDiagnosisServerWasDown: the server is down for three cycles while
// the car has good signal (B15C4, 4 bars): the DCM is suspected only if
// the service was fine; the next cycle clears it.
func TestDiagnosisServerWasDown(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	addr := strings.TrimPrefix(w.url, "http://")
	w.shutdown()
	for range 3 {
		update(t, v.dir, 1)
	}
	w.extra = append(w.extra, "--listen", addr)
	w.start()
	update(t, v.dir, 0)
	d := w.diagnosedFirst(t, v.vin, "telematics_connection")
	if !strings.Contains(d.Findings[0].Fix, "service down") || !strings.Contains(d.Findings[0].Evidence[0].Detail, "weakest signal 4 bars") {
		t.Fatalf("server down: %+v", d.Findings[0])
	}
	update(t, v.dir, 0)
	w.fixed(t, v, "telematics_connection")
}

// TestDiagnosisOffline: a car silent for longer than --offline-after is
// offline; its next contact ends that.
func TestDiagnosisOffline(t *testing.T) {
	w := newWorld(t, "--offline-after", "2s")
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	time.Sleep(2500 * time.Millisecond)
	w.diagnosedFirst(t, v.vin, "vehicle_offline")
	update(t, v.dir, 0)
	w.fixed(t, v, "vehicle_offline")
}

// TestDiagnosisFleetCounts: the commonest causes across the fleet.
func TestDiagnosisFleetCounts(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	for n := 1; n <= 2; n++ {
		v := w.vehicle(n)
		agent(t, "update", "--state", v.dir)
		w.diagnosedFirst(t, v.vin, "vehicle_not_linked")
	}
	var counts struct {
		Counts []struct {
			Code           string
			Open, Resolved int
		}
	}
	if code := w.api("GET", "/api/v1/diagnoses", adminToken, nil, &counts); code != 200 || len(counts.Counts) != 1 ||
		counts.Counts[0].Code != "vehicle_not_linked" || counts.Counts[0].Open != 2 {
		t.Fatalf("fleet counts: %d %+v", code, counts)
	}
	if _, body := httpGet(t, w.url+"/metrics", nil); !strings.Contains(string(body), `roadsign_diagnosis_findings_opened_total{code="vehicle_not_linked"} 2`) {
		t.Fatalf("metrics:\n%s", body)
	}
}

// TestDiagnosisServiceUnhealthy: the blob store goes down; every car's
// diagnosis puts the service first (nothing to do on the car); when the
// store is back, the car updates and reauthorizes.
func TestDiagnosisServiceUnhealthy(t *testing.T) {
	gw := s3test.Start(t)
	w := newS3World(t, gw)
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	gw.Stop()
	// The diagnosis reads the service's health at most every 5 s.
	waitFor(t, "the diagnosis to see the store down", func() bool {
		p := w.diagnose(t, v.vin).problems()
		return len(p) > 0 && p[0] == "service_unhealthy"
	})
	d := w.diagnosedFirst(t, v.vin, "service_unhealthy")
	if ev := fmt.Sprint(d.Findings[0].Evidence); !strings.Contains(ev, "Update files (blob store): unreachable") || strings.Contains(ev, "state store") ||
		!strings.Contains(d.Findings[0].Fix, "nothing needs doing on the car") {
		t.Fatalf("service finding: %+v", d.Findings[0])
	}
	gw.Restart(t)
	waitFor(t, "the diagnosis to see the store back", func() bool { return w.diagnose(t, v.vin).Healthy })
	update(t, v.dir, 0)
	w.fixed(t, v, "service_unhealthy")
}
