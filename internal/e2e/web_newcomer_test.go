package e2e

import (
	"regexp"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// TestWebReprovisioningChecksTheUnit: a dealer trying to replace the head
// unit by a DCM is refused with a reason; a re-provision with the wrong
// serial makes every check-in refused, which the diagnosis names first
// (never "Connected services work"), with a header that agrees and a
// one-click fix that opens the form on the unit to correct; corrected,
// the car works again.
func TestWebReprovisioningChecksTheUnit(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	token := w.account("dealer", "dealer-berlin")
	r := agent(t, "replace-ecu", "--state", v.dir, "--serial", "DCM000001", "--new-serial", "DCM000002",
		"--hardware-id", dcmHW, "--firmware", sampleFile(t, dcmHW, "1.0.0"))
	m := regexp.MustCompile(`publicKey (\S+)`).FindStringSubmatch(r.stdout)
	if r.code != 0 || m == nil {
		t.Fatalf("replace-ecu: %s", r)
	}
	ctx := browserCtx(t)
	replace := func(old, serial, hw string) string {
		var flash string
		err := chromedp.Run(ctx,
			chromedp.Navigate(w.url+"/dealer?vin="+v.vin),
			chromedp.WaitVisible(`#rep-h`, chromedp.ByQuery),
			chromedp.SetValue(`#old`, old, chromedp.ByQuery),
			chromedp.SendKeys(`#serial`, serial, chromedp.ByQuery),
			chromedp.SendKeys(`#hw`, hw, chromedp.ByQuery),
			chromedp.SendKeys(`#pk`, m[1], chromedp.ByQuery),
			chromedp.SendKeys(`#rreason`, "DCM replaced under warranty", chromedp.ByQuery),
			chromedp.Submit(`#rreason`, chromedp.ByQuery),
			chromedp.WaitVisible(`.flash`, chromedp.ByQuery),
			chromedp.Text(`.flash`, &flash, chromedp.ByQuery),
		)
		if err != nil {
			t.Fatalf("replace form: %v", err)
		}
		return flash
	}
	if err := chromedp.Run(ctx, dealerLogin(w.url, "dealer-berlin", token)); err != nil {
		t.Fatal(err)
	}
	// The head unit picked by mistake, with the new DCM's hardware: refused.
	if flash := replace("HU000001", "DCM000002", dcmHW); !strings.Contains(flash, "is a dcm's") {
		t.Fatalf("replacing the head unit by a DCM: %q", flash)
	}
	screenshot(t, ctx, "dealer-replace-wrong-unit-refused")
	var veh struct {
		Vehicle struct {
			ECUs []struct{ Serial, Type string }
		}
	}
	if w.api("GET", "/api/v1/vehicles/"+v.vin, adminToken, nil, &veh); len(veh.Vehicle.ECUs) != 2 || veh.Vehicle.ECUs[0].Serial != "HU000001" || veh.Vehicle.ECUs[1].Serial != "DCM000001" {
		t.Fatalf("the refused replacement changed the registration: %+v", veh)
	}
	// The DCM, but a wrong serial typed: accepted, and the car that
	// reports DCM000002 has every check-in refused.
	if flash := replace("DCM000001", "DCM000009", dcmHW); !strings.Contains(flash, "re-provisioned") {
		t.Fatalf("re-provisioning with a wrong serial: %q", flash)
	}
	if r := agent(t, "update", "--state", v.dir); !strings.Contains(r.stderr, "unregistered_ecu") {
		t.Fatalf("the car's check-in should be refused: %s", r)
	}
	d := w.diagnosedFirst(t, v.vin, "checkin_refused")
	if d.Healthy || !strings.Contains(d.Summary, "1 problem found") {
		t.Fatalf("diagnosis after the refused check-in: %+v", d)
	}
	var header, selected string
	err := chromedp.Run(ctx,
		chromedp.Navigate(w.url+"/dealer?vin="+v.vin),
		chromedp.WaitVisible(`#diag-h`, chromedp.ByQuery),
		chromedp.Text(`#auth-state`, &header, chromedp.ByQuery),
	)
	if err != nil || header != "failing" {
		t.Fatalf("the console's header says %q beside a refused car (%v)", header, err)
	}
	screenshot(t, ctx, "dealer-checkin-refused")
	err = chromedp.Run(ctx,
		chromedp.Click(`.finding[data-code="checkin_refused"] a[data-action="reprovision"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#rep-h`, chromedp.ByQuery),
		chromedp.Value(`#old`, &selected, chromedp.ByQuery),
	)
	if err != nil || selected != "DCM000009" {
		t.Fatalf("the one-click fix opened the form on %q, want DCM000009 (%v)", selected, err)
	}
	screenshot(t, ctx, "dealer-reprovision-preselected")
	if flash := replace("DCM000009", "DCM000002", dcmHW); !strings.Contains(flash, "re-provisioned") {
		t.Fatalf("correcting the registration: %q", flash)
	}
	update(t, v.dir, 0)
	waitFor(t, "the car to diagnose healthy", func() bool { return w.diagnose(t, v.vin).Healthy })
	err = chromedp.Run(ctx,
		chromedp.Navigate(w.url+"/dealer?vin="+v.vin),
		chromedp.WaitVisible(`#auth-state`, chromedp.ByQuery),
		chromedp.Text(`#auth-state`, &header, chromedp.ByQuery),
	)
	if err != nil || header != "authorized" {
		t.Fatalf("after the correction the header says %q (%v)", header, err)
	}
}

// TestWebHaltedCampaignExplainsItself: a campaign halted in its first wave
// shows that wave stopped and the others never opened, lists the vehicles
// that failed with what each reported, and the list names the halt
// reason; a campaign that selects no vehicle does not start.
func TestWebHaltedCampaignExplainsItself(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none", "--campaign-tick", "50ms")
	w.setup(func(s sample) bool { return s.Version != "2.0.0" })
	f := w.simFleet(t, 100, 2, map[string]float64{"1.1.0": 0.5}, nil)
	id := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "1.1.0", "waves": []int{20, 50, 100}, "minSamples": 10, "failureThreshold": 0.05, "seed": 7})
	runUntil(t, f, "the campaign to halt", func() bool { return w.campaign(t, id).State == "halted" })

	token := w.account("dealer", "dealer-berlin")
	ctx := browserCtx(t)
	var state, waves, failures, reason string
	err := chromedp.Run(ctx,
		dealerLogin(w.url, "dealer-berlin", token),
		chromedp.Navigate(w.url+"/dealer/campaigns/"+id),
		chromedp.WaitVisible(`#failures`, chromedp.ByQuery),
		chromedp.Text(`#campaign-state`, &state, chromedp.ByQuery),
		chromedp.Evaluate(`Array.from(document.querySelectorAll("td.wave-state")).map(e => e.textContent).join("|")`, &waves),
		chromedp.Text(`#failures tbody`, &failures, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatal(err)
	}
	if state != "halted" || waves != "stopped: the campaign halted|never opened|never opened" {
		t.Fatalf("halted campaign page: state %q, waves %q", state, waves)
	}
	if !strings.Contains(failures, "failed") || !strings.Contains(failures, "simulated failure") {
		t.Fatalf("failed vehicles: %q", failures)
	}
	screenshot(t, ctx, "dealer-campaign-halted")
	err = chromedp.Run(ctx,
		chromedp.Navigate(w.url+"/dealer/campaigns"),
		chromedp.WaitVisible(`tr.campaign .halt-reason`, chromedp.ByQuery),
		chromedp.Text(`tr.campaign .halt-reason`, &reason, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(reason, "failure rate") {
		t.Fatalf("the campaign list's halt reason: %q, %v", reason, err)
	}
	screenshot(t, ctx, "dealer-campaigns-halt-reason")

	var c campaignView
	body := map[string]any{"name": "nobody", "ecu": "dcm", "version": "1.1.0", "selector": map[string]any{"models": []string{"No such model"}}, "soak": "0s"}
	if code := w.api("POST", "/api/v1/campaigns", adminToken, body, &c); code != 201 {
		t.Fatalf("create: %d", code)
	}
	var e struct {
		Error struct{ Code, Message string }
	}
	w.approveStart(t, c.ID)
	if code := w.api("POST", "/api/v1/campaigns/"+c.ID+"/start", adminToken, nil, &e); code != 409 || e.Error.Code != "campaign_empty" {
		t.Fatalf("starting a campaign that selects no vehicle: %d %+v", code, e)
	}
}

// TestWebOwnerIsToldWhatToDo: an owner whose car's services fail sees it
// on the portal's card, beside a subscription that is still active, with
// a link to what to do; an ended subscription says who renews it; the
// status page speaks plainly and says whether cars are woken for updates.
func TestWebOwnerIsToldWhatToDo(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	const owner = "owner-1"
	if r := agent(t, "update", "--state", v.dir, "--simulate", "corrupt-active"); r.code > 1 {
		t.Fatalf("update: %s", r)
	}
	ctx := browserCtx(t)
	var warning, subscription string
	err := chromedp.Run(ctx,
		chromedp.Navigate(w.url+"/"),
		chromedp.WaitVisible(`#name`, chromedp.ByQuery),
		chromedp.SendKeys(`#name`, owner, chromedp.ByQuery),
		chromedp.SendKeys(`#secret`, "correct horse battery", chromedp.ByQuery),
		chromedp.Submit(`#secret`, chromedp.ByQuery),
		chromedp.WaitVisible(`.services-failing`, chromedp.ByQuery),
		chromedp.Text(`.services-failing`, &warning, chromedp.ByQuery),
		chromedp.Text(`div.card p.subscription`, &subscription, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(warning, "not working") || !strings.Contains(warning, "What to do") || !strings.Contains(subscription, "active") {
		t.Fatalf("owner portal: warning %q, subscription %q, %v", warning, subscription, err)
	}
	screenshot(t, ctx, "owner-services-failing")
	w.endSubscription(t, v, owner)
	err = chromedp.Run(ctx,
		chromedp.Navigate(w.url+"/"),
		chromedp.WaitVisible(`div.card p.subscription`, chromedp.ByQuery),
		chromedp.Text(`div.card p.subscription`, &subscription, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(subscription, "any dealer renews it") {
		t.Fatalf("an ended subscription: %q, %v", subscription, err)
	}
	var status string
	err = chromedp.Run(ctx,
		chromedp.Navigate(w.url+"/status"),
		chromedp.WaitVisible(`#st-h`, chromedp.ByQuery),
		chromedp.Text(`main`, &status, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(status, "Instant update notices (push)") || !strings.Contains(status, "Software updates") || strings.Contains(status, "Timestamp re-signing") {
		t.Fatalf("status page: %v\n%s", err, status)
	}
	screenshot(t, ctx, "status-plain-words")
}
