package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// TestWebCampaignStartedAndWatchedFromTheConsole: an admin finds a draft
// campaign in the console, starts it with the Start button, and watches
// its waves fill in the chart until it completes.
func TestWebCampaignStartedAndWatchedFromTheConsole(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none", "--campaign-tick", "50ms")
	w.setup(func(s sample) bool { return s.Version != "2.0.0" })
	f := w.simFleet(t, 20, 11, nil, nil)
	token := w.account("admin", "ops-anna")
	var c campaignView
	body := map[string]any{"name": "DCM 1.1.0 Europe", "ecu": "dcm", "version": "1.1.0", "waves": []int{10, 100}, "minSamples": 2, "soak": "0s", "maxPerMinute": 1000}
	if code := w.api("POST", "/api/v1/campaigns", adminToken, body, &c); code != 201 {
		t.Fatalf("create campaign: %d", code)
	}
	ctx := browserCtx(t)
	var list, state string
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
	err = chromedp.Run(ctx,
		chromedp.Click(`tr.campaign a`, chromedp.ByQuery),
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
