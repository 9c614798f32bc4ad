package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// TestWebCampaignStartedAndWatchedFromTheConsole: a release manager
// finds a draft campaign in the console and presses Start; it waits for a
// second person. An approver logs in, sees the request with exactly what
// it names, cannot refuse without a reason, refuses with one, and approves
// the next request; then the release manager's Start goes through, and the
// waves fill in the chart until the campaign completes.
func TestWebCampaignStartedAndWatchedFromTheConsole(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none", "--campaign-tick", "50ms")
	w.setup(func(s sample) bool { return s.Version != "2.0.0" })
	f := w.simFleet(t, 20, 11, nil, nil)
	token := w.account("release-manager", "ops-anna")
	approver := w.account("approver", "ops-ben")
	var c campaignView
	body := map[string]any{"name": "DCM 1.1.0 Europe", "ecu": "dcm", "version": "1.1.0", "waves": []int{10, 100}, "minSamples": 2, "soak": "0s", "maxPerMinute": 1000}
	if code := w.api("POST", "/api/v1/campaigns", token, body, &c); code != 201 {
		t.Fatalf("create campaign: %d", code)
	}
	ctx := browserCtx(t)
	var list, state, flash string
	err := chromedp.Run(ctx,
		dealerLogin(w.url, "ops-anna", token),
		chromedp.Click(`a[href="/dealer/campaigns"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr.campaign[data-campaign="`+c.ID+`"]`, chromedp.ByQuery),
		chromedp.Text(`tr.campaign`, &list, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(list, "DCM 1.1.0 Europe") || !strings.Contains(list, "draft") {
		t.Fatalf("campaign list: %q, %v", list, err)
	}
	screenshot(t, ctx, "campaigns")
	pressStart := chromedp.Tasks{
		chromedp.Navigate(w.url + "/dealer/campaigns/" + c.ID),
		chromedp.WaitVisible(`button[value="start"]`, chromedp.ByQuery),
		chromedp.Click(`button[value="start"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`p.flash.error`, chromedp.ByQuery),
		chromedp.Text(`p.flash.error`, &flash, chromedp.ByQuery),
		chromedp.Text(`#campaign-state`, &state, chromedp.ByQuery),
	}
	if err := chromedp.Run(ctx, pressStart); err != nil || state != "draft" || !strings.Contains(flash, "approver") {
		t.Fatalf("Start without an approval: state %q, flash %q, %v", state, flash, err)
	}
	var pendingRow string
	if err := chromedp.Run(ctx, chromedp.Text(`#approvals tr.approval`, &pendingRow, chromedp.ByQuery)); err != nil || !strings.Contains(pendingRow, "pending") || !strings.Contains(pendingRow, "ops-anna") {
		t.Fatalf("the campaign page should show the pending request: %q, %v", pendingRow, err)
	}
	// The release manager sees the request but no way to decide it.
	var decideForms int
	if err := chromedp.Run(ctx, chromedp.Navigate(w.url+"/dealer/approvals"), chromedp.WaitVisible(`article.approval`, chromedp.ByQuery),
		chromedp.Evaluate(`document.querySelectorAll("form.decide").length`, &decideForms)); err != nil || decideForms != 0 {
		t.Fatalf("the proposer is offered %d approval forms (%v)", decideForms, err)
	}
	switchTo := func(name, tok string) chromedp.Tasks {
		return chromedp.Tasks{
			chromedp.Navigate(w.url + "/dealer"),
			chromedp.WaitVisible(`form[action="/logout"] button`, chromedp.ByQuery),
			chromedp.Click(`form[action="/logout"] button`, chromedp.ByQuery),
			chromedp.WaitVisible(`#name`, chromedp.ByQuery),
			dealerLogin(w.url, name, tok),
		}
	}
	var what, reason string
	err = chromedp.Run(ctx,
		switchTo("ops-ben", approver),
		chromedp.Click(`a[href="/dealer/approvals"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`article.approval form.decide`, chromedp.ByQuery),
		chromedp.Text(`article.approval pre.what`, &what, chromedp.ByQuery),
		chromedp.Click(`article.approval button.refuse`, chromedp.ByQuery),
		chromedp.WaitVisible(`p.flash.error`, chromedp.ByQuery),
		chromedp.Text(`p.flash.error`, &flash, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(what, c.ID) || !strings.Contains(what, `"sha256"`) || !strings.Contains(what, `"waves"`) || !strings.Contains(flash, "reason") {
		t.Fatalf("approver's view: what %q, refusing without a reason %q, %v", what, flash, err)
	}
	screenshot(t, ctx, "approvals-pending")
	err = chromedp.Run(ctx,
		chromedp.SendKeys(`article.approval input[name="reason"]`, "wave 1 too large for a Friday", chromedp.ByQuery),
		chromedp.Click(`article.approval button.refuse`, chromedp.ByQuery),
		chromedp.WaitVisible(`#decided tr.decision`, chromedp.ByQuery),
		chromedp.Text(`#decided tr.decision td.reason`, &reason, chromedp.ByQuery),
		chromedp.Text(`#decided tr.decision td.state`, &state, chromedp.ByQuery),
	)
	if err != nil || state != "refused" || reason != "wave 1 too large for a Friday" {
		t.Fatalf("after Refuse: %q %q, %v", state, reason, err)
	}
	// Asked again, approved this time.
	if code := w.api("POST", "/api/v1/campaigns/"+c.ID+"/start", token, nil, nil); code != 409 {
		t.Fatalf("start after a refusal: %d, want 409", code)
	}
	err = chromedp.Run(ctx,
		chromedp.Navigate(w.url+"/dealer/approvals"),
		chromedp.WaitVisible(`article.approval button.approve`, chromedp.ByQuery),
		chromedp.Click(`article.approval button.approve`, chromedp.ByQuery),
		chromedp.WaitVisible(`#no-pending`, chromedp.ByQuery),
		chromedp.Text(`#decided tr.decision td.state`, &state, chromedp.ByQuery),
	)
	if err != nil || state != "approved" {
		t.Fatalf("after Approve: %q, %v", state, err)
	}
	screenshot(t, ctx, "approvals-decided")
	err = chromedp.Run(ctx,
		switchTo("ops-anna", token),
		chromedp.Navigate(w.url+"/dealer/campaigns/"+c.ID),
		chromedp.WaitVisible(`button[value="start"]`, chromedp.ByQuery),
		chromedp.Click(`button[value="start"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`button[value="pause"]`, chromedp.ByQuery),
		chromedp.Text(`#campaign-state`, &state, chromedp.ByQuery),
	)
	if err != nil || state != "running" {
		t.Fatalf("after Start: state %q, %v", state, err)
	}
	runUntil(t, f, "the campaign to complete", func() bool { return w.campaign(t, c.ID).State == "completed" })
	var bars []string
	err = chromedp.Run(ctx,
		chromedp.Navigate(w.url+"/dealer/campaigns/"+c.ID),
		chromedp.WaitVisible(`svg.chart`, chromedp.ByQuery),
		chromedp.Text(`#campaign-state`, &state, chromedp.ByQuery),
		chromedp.Evaluate(`[...document.querySelectorAll("svg.chart rect.succeeded title")].map(e => e.textContent)`, &bars),
	)
	if err != nil || state != "completed" {
		t.Fatalf("finished campaign page: state %q, %v", state, err)
	}
	// Wave 1 is 10% of 20 vehicles, wave 2 the other 18.
	if strings.Join(bars, ",") != "2 succeeded,18 succeeded" {
		t.Fatalf("chart bars: %q", bars)
	}
	var buttons int
	if err := chromedp.Run(ctx, chromedp.Evaluate(`document.querySelectorAll("form.actions button").length`, &buttons)); err != nil || buttons != 0 {
		t.Fatalf("a completed campaign still offers %d controls (%v)", buttons, err)
	}
	screenshot(t, ctx, "campaign-completed")
}

// TestWebOwnerConsentsToCampaignUpdate: with owner consent, the owner
// portal shows the waiting update; Accept lets it install, and only then.
func TestWebOwnerConsentsToCampaignUpdate(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none", "--campaign-tick", "50ms")
	w.setup(func(s sample) bool { return s.Version != "2.0.0" })
	f := w.simFleet(t, 1, 12, nil, nil)
	vin := f.Vehicles()[0].VIN
	w.account("owner", "alice")
	if code := w.api("POST", "/api/v1/vehicles/"+vin+"/owner", adminToken, map[string]string{"owner": "alice"}, nil); code != 200 {
		t.Fatalf("link %s: %d", vin, code)
	}
	id := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "1.1.0", "waves": []int{100}, "consent": "owner"})
	w.waitCampaign(t, id, "the wave to open", func(c campaignView) bool { return c.Waves[0].Targeted == 1 })
	f.Cycle(context.Background())
	if len(received(f, "1.1.0")) != 0 {
		t.Fatal("the update installed before the owner agreed")
	}
	ctx := browserCtx(t)
	var prompt, flash string
	err := chromedp.Run(ctx,
		chromedp.Navigate(w.url+"/"),
		chromedp.WaitVisible(`#name`, chromedp.ByQuery),
		chromedp.SendKeys(`#name`, "alice", chromedp.ByQuery),
		chromedp.SendKeys(`#secret`, "correct horse battery", chromedp.ByQuery),
		chromedp.Submit(`#secret`, chromedp.ByQuery),
		chromedp.WaitVisible(`div.update`, chromedp.ByQuery),
		chromedp.Text(`div.update`, &prompt, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(prompt, "1.1.0") {
		t.Fatalf("update prompt: %q, %v", prompt, err)
	}
	screenshot(t, ctx, "owner-update-consent")
	err = chromedp.Run(ctx,
		chromedp.Click(`div.update button[value="accept"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`.flash`, chromedp.ByQuery),
		chromedp.Text(`.flash`, &flash, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(flash, "installs when your car next checks in") {
		t.Fatalf("after Accept: %q, %v", flash, err)
	}
	var left int
	if err := chromedp.Run(ctx, chromedp.Evaluate(`document.querySelectorAll("div.update").length`, &left)); err != nil || left != 0 {
		t.Fatalf("the prompt is still shown after Accept (%d, %v)", left, err)
	}
	runUntil(t, f, "the campaign to complete", func() bool { return w.campaign(t, id).State == "completed" })
	if !received(f, "1.1.0")[vin] {
		t.Fatal("the accepted update did not install")
	}
}
