package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestWebDealerDiagnosisOneClickReflash: the dealer finds a car whose DCM
// slot went bad; the diagnosis panel names B15A8 with its evidence and a
// Reflash button; one click queues the job, the car runs it to succeeded
// while the dealer watches, and the panel then says the car works.
func TestWebDealerDiagnosisOneClickReflash(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	if r := agent(t, "update", "--state", v.dir, "--simulate", "corrupt-active"); r.code > 1 {
		t.Fatalf("update: %s", r)
	}
	token := w.account("dealer", "dealer-berlin")
	ctx := browserCtx(t)
	var first, summary string
	err := chromedp.Run(ctx,
		dealerLogin(w.url, "dealer-berlin", token),
		chromedp.SendKeys(`#q`, v.vin, chromedp.ByQuery),
		chromedp.Submit(`#q`, chromedp.ByQuery),
		chromedp.WaitVisible(`#diag-h`, chromedp.ByQuery),
		chromedp.AttributeValue(`.finding`, "data-code", &first, nil, chromedp.ByQuery),
		chromedp.Text(`#diag-summary`, &summary, chromedp.ByQuery),
	)
	if err != nil || first != "dcm_fault" || !strings.Contains(summary, "problem") {
		t.Fatalf("diagnosis panel: first %q, summary %q, %v", first, summary, err)
	}
	screenshot(t, ctx, "dealer-diagnosis-b15a8")
	var flash string
	err = chromedp.Run(ctx,
		chromedp.Click(`.finding[data-code="dcm_fault"] button[data-action="reflash"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`.flash`, chromedp.ByQuery),
		chromedp.Text(`.flash`, &flash, chromedp.ByQuery),
		chromedp.WaitVisible(`tr.job`, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(flash, "queued") {
		t.Fatalf("one-click reflash: %q, %v", flash, err)
	}
	go agent(t, "update", "--state", v.dir)
	var state string
	err = chromedp.Run(ctx, chromedp.Poll(`document.querySelector("tr.job .state").textContent === "succeeded"`, nil, chromedp.WithPollingTimeout(30*time.Second)),
		chromedp.Text(`tr.job .state`, &state, chromedp.ByQuery))
	if err != nil || state != "succeeded" {
		t.Fatalf("reflash job on the page: %q, %v", state, err)
	}
	screenshot(t, ctx, "dealer-diagnosis-reflash-succeeded")
	waitFor(t, "the car to reauthorize", func() bool { return w.diagnose(t, v.vin).Healthy })
	err = chromedp.Run(ctx,
		chromedp.Navigate(w.url+"/dealer?vin="+v.vin),
		chromedp.WaitVisible(`#diag-summary`, chromedp.ByQuery),
		chromedp.Text(`#diag-summary`, &summary, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(summary, "Connected services work") {
		t.Fatalf("after the reflash: %q, %v", summary, err)
	}
	screenshot(t, ctx, "dealer-diagnosis-healthy")
	var row string
	err = chromedp.Run(ctx,
		chromedp.Click(`a[href="/dealer/diagnoses"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr.cause[data-code="dcm_fault"]`, chromedp.ByQuery),
		chromedp.Text(`tr.cause[data-code="dcm_fault"]`, &row, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(row, "0") || !strings.Contains(row, "1") {
		t.Fatalf("fleet causes: %q, %v", row, err)
	}
	screenshot(t, ctx, "dealer-diagnoses-fleet")
}

// TestWebOwnerHelpPage: an owner whose subscription ended opens
// "Connected services not working?" and reads what to do; once renewed,
// the page says the car works.
func TestWebOwnerHelpPage(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	w.endSubscription(t, v, "owner-1")
	ctx := browserCtx(t)
	var title, page string
	err := chromedp.Run(ctx,
		chromedp.Navigate(w.url+"/"),
		chromedp.WaitVisible(`#name`, chromedp.ByQuery),
		chromedp.SendKeys(`#name`, "owner-1", chromedp.ByQuery),
		chromedp.SendKeys(`#secret`, "correct horse battery", chromedp.ByQuery),
		chromedp.Submit(`#secret`, chromedp.ByQuery),
		chromedp.WaitVisible(`a.help-link`, chromedp.ByQuery),
		chromedp.Click(`a.help-link`, chromedp.ByQuery),
		chromedp.WaitVisible(`#help-h`, chromedp.ByQuery),
		chromedp.Text(`.step h3`, &title, chromedp.ByQuery),
		chromedp.Text(`main`, &page, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(title, "subscription has ended") || strings.Contains(page, "subscription_expired") || strings.Contains(page, "sha256") {
		t.Fatalf("owner help: title %q, %v\n%s", title, err, page)
	}
	screenshot(t, ctx, "owner-help-subscription")
	dealer := w.account("dealer", "dealer-1")
	var renewed string
	if code := w.api("POST", "/api/v1/vehicles/"+v.vin+"/owner", dealer, map[string]string{"owner": "owner-1"}, nil); code != 200 {
		t.Fatalf("renew: %d", code)
	}
	if r := agent(t, "reauthorize", "--state", v.dir); r.code != 0 {
		t.Fatalf("reauthorize after renewal: %s", r)
	}
	err = chromedp.Run(ctx,
		chromedp.Navigate(w.url+"/vehicles/"+v.vin+"/help"),
		chromedp.WaitVisible(`#help-summary`, chromedp.ByQuery),
		chromedp.Text(`#help-summary`, &renewed, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(renewed, "nothing wrong") {
		t.Fatalf("after renewal: %q, %v", renewed, err)
	}
	screenshot(t, ctx, "owner-help-healthy")
}

// TestWebDealerRenewsAndTransfers: the diagnosis's one-click fixes for
// account causes: Renew for an ended subscription, Transfer for a car
// still linked to its previous owner.
func TestWebDealerRenewsAndTransfers(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v, _ := healthyCar(t, w, 1)
	w.endSubscription(t, v, "owner-1")
	token := w.account("dealer", "dealer-berlin")
	ctx := browserCtx(t)
	var flash string
	err := chromedp.Run(ctx,
		dealerLogin(w.url, "dealer-berlin", token),
		chromedp.Navigate(w.url+"/dealer?vin="+v.vin),
		chromedp.WaitVisible(`.finding[data-code="subscription_expired"] button[data-action="renew"]`, chromedp.ByQuery),
		chromedp.Click(`.finding[data-code="subscription_expired"] button[data-action="renew"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`.flash`, chromedp.ByQuery),
		chromedp.Text(`.flash`, &flash, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(flash, "renewed") {
		t.Fatalf("renew: %q, %v", flash, err)
	}
	w.fixed(t, v, "subscription_expired")

	bob := w.account("owner", "bob")
	w.linkOwner(t, v, bob) // a claim: the car is still owner-1's
	err = chromedp.Run(ctx,
		chromedp.Navigate(w.url+"/dealer?vin="+v.vin),
		chromedp.WaitVisible(`.finding[data-code="linked_to_previous_owner"] button[data-action="transfer"]`, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, "dealer-diagnosis-transfer")
	err = chromedp.Run(ctx,
		chromedp.Click(`.finding[data-code="linked_to_previous_owner"] button[data-action="transfer"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`.flash`, chromedp.ByQuery),
		chromedp.Text(`.flash`, &flash, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(flash, "now belongs") {
		t.Fatalf("transfer: %q, %v", flash, err)
	}
	var mine struct {
		Vehicles []struct{ Vehicle struct{ VIN string } } `json:"vehicles"`
	}
	if w.api("GET", "/api/v1/owners/me/vehicles", bob, nil, &mine); len(mine.Vehicles) != 1 || mine.Vehicles[0].Vehicle.VIN != v.vin {
		t.Fatalf("bob's vehicles after the transfer: %+v", mine)
	}
	w.fixed(t, v, "linked_to_previous_owner")
}
