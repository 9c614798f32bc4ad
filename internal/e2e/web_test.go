package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"
)

// browserCtx starts headless Chromium (Debian's package) for a test.
// `make test` installs it and sets ROADSIGN_REQUIRE_BROWSER=1, so there a
// missing browser fails instead of skipping.
func browserCtx(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("ROADSIGN_REQUIRE_BROWSER") == "1" {
			t.Fatal("chromium not found: make test installs it with apt-get")
		}
		t.Skip("chromium not installed")
	}
	// Not t.TempDir: Chromium's helper processes can still write to the
	// profile for a moment after the browser is gone, and t.TempDir's
	// removal then fails the test (seen in make test).
	profile, err := os.MkdirTemp("", "roadsign-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeWhenQuiet(t, profile) }) // after the browser's cancel, below
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("no-first-run", true), chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(profile), chromedp.WindowSize(1100, 900),
	}
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	ctx, cancel3 := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(cancel3)
	return ctx
}

// removeWhenQuiet removes dir, trying again for a few seconds while
// processes that are exiting still write to it.
func removeWhenQuiet(t *testing.T, dir string) {
	var err error
	for range 50 {
		if err = os.RemoveAll(dir); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("remove the browser's profile %s: %v", dir, err)
}

// screenshot saves a full-page PNG under screenshots/ at the module root.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	var png []byte
	if err := chromedp.Run(ctx, chromedp.FullScreenshot(&png, 100)); err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	dir := filepath.Join("..", "..", "screenshots")
	os.MkdirAll(dir, 0o755)
	p := filepath.Join(dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(p)
	t.Logf("screenshot: %s", abs)
}

func TestWebOwnerLinksAndDownloadsUSBBundle(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	w.account("owner", "alice")
	v := w.vehicle(1)
	r := agent(t, "link-code", "--state", v.dir)
	m := codeRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("link-code: %s", r)
	}
	ctx := browserCtx(t)
	downloads := t.TempDir()
	var body string
	err := chromedp.Run(ctx,
		browser.SetDownloadBehavior(browser.SetDownloadBehaviorBehaviorAllowAndName).WithDownloadPath(downloads).WithEventsEnabled(true),
		chromedp.Navigate(w.url+"/"),
		chromedp.WaitVisible(`#name`, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, "owner-login")
	err = chromedp.Run(ctx,
		chromedp.SendKeys(`#name`, "alice", chromedp.ByQuery),
		chromedp.SendKeys(`#secret`, "correct horse battery", chromedp.ByQuery),
		chromedp.Submit(`#secret`, chromedp.ByQuery),
		chromedp.WaitVisible(`#vin`, chromedp.ByQuery),
		chromedp.SendKeys(`#vin`, v.vin, chromedp.ByQuery),
		chromedp.SendKeys(`#code`, m[1], chromedp.ByQuery),
		chromedp.Submit(`#code`, chromedp.ByQuery),
		chromedp.WaitVisible(`div.card[data-vin="`+v.vin+`"]`, chromedp.ByQuery),
		chromedp.Text(`main`, &body, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, "is linked to your account") || !strings.Contains(body, "active") {
		t.Fatalf("page after linking:\n%s", body)
	}
	screenshot(t, ctx, "owner-portal")

	done := make(chan string, 1)
	var once sync.Once
	chromedp.ListenTarget(ctx, func(ev any) {
		if e, ok := ev.(*browser.EventDownloadProgress); ok && e.State == browser.DownloadProgressStateCompleted {
			once.Do(func() { done <- e.GUID })
		}
	})
	if err := chromedp.Run(ctx, chromedp.Click(`a.button[href="/vehicles/`+v.vin+`/usb"]`, chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	var guid string
	select {
	case guid = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the USB bundle download did not complete")
	}
	b, err := os.ReadFile(filepath.Join(downloads, guid))
	if err != nil {
		t.Fatal(err)
	}
	if names := tarNames(t, b); !strings.Contains(names, "bundle.json") || strings.Count(names, "targets/") != 2 {
		t.Fatalf("downloaded bundle:\n%s", names)
	}
	// The downloaded bundle installs.
	f := filepath.Join(w.dir, "from-browser.tar")
	os.WriteFile(f, b, 0o644)
	if r := agent(t, "install-usb", "--state", v.dir, f); r.code != 0 {
		t.Fatalf("install the downloaded bundle: %s", r)
	}
	// Reported at the next check-in, the USB install is in the software
	// record the owner sees.
	update(t, v.dir, 0)
	var record string
	if err := chromedp.Run(ctx, chromedp.Navigate(w.url+"/"),
		chromedp.Text(`div.card[data-vin="`+v.vin+`"] table.record`, &record, chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(record, "usb") || !strings.Contains(record, "installed") {
		t.Fatalf("the owner portal's software record lacks the USB install:\n%s", record)
	}
	screenshot(t, ctx, "owner-software-record")
}

// dealerLogin logs into the dealer console with a name and token.
func dealerLogin(base, name, token string) chromedp.Tasks {
	return chromedp.Tasks{
		chromedp.Navigate(base + "/dealer"),
		chromedp.WaitVisible(`#name`, chromedp.ByQuery),
		chromedp.SendKeys(`#name`, name, chromedp.ByQuery),
		chromedp.SendKeys(`#secret`, token, chromedp.ByQuery),
		chromedp.Submit(`#secret`, chromedp.ByQuery),
		chromedp.WaitVisible(`#q`, chromedp.ByQuery),
	}
}

func TestWebDealerPushesJobAndWatchesItSucceed(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.setup(nil)
	token := w.account("dealer", "dealer-berlin")
	v := w.vehicle(1)
	ctx := browserCtx(t)
	err := chromedp.Run(ctx,
		dealerLogin(w.url, "dealer-berlin", token),
		chromedp.SendKeys(`#q`, v.vin, chromedp.ByQuery),
		chromedp.Submit(`#q`, chromedp.ByQuery),
		chromedp.WaitVisible(`#reason`, chromedp.ByQuery),
		chromedp.SetValue(`#ecu`, "DCM000001", chromedp.ByQuery),
		chromedp.SetValue(`#version`, "2.0.0", chromedp.ByQuery),
		chromedp.SendKeys(`#reason`, "DCM authorization failures", chromedp.ByQuery),
		chromedp.Submit(`#reason`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr.job`, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, "dealer-job-queued")
	// The vehicle updates while the dealer watches the page.
	go agent(t, "update", "--state", v.dir)
	var state string
	err = chromedp.Run(ctx, chromedp.Poll(`document.querySelector("tr.job .state").textContent === "succeeded"`, nil, chromedp.WithPollingTimeout(30*time.Second)),
		chromedp.Text(`tr.job .state`, &state, chromedp.ByQuery))
	if err != nil || state != "succeeded" {
		t.Fatalf("job state on the page: %q, %v", state, err)
	}
	screenshot(t, ctx, "dealer-job-succeeded")
	if versions(t, v)["dcm"] != "2.0.0" {
		t.Fatal("the job did not install 2.0.0")
	}
	// The page refreshed from the server shows the new version.
	var table string
	if err := chromedp.Run(ctx, chromedp.Navigate(w.url+"/dealer?vin="+v.vin), chromedp.Text(`main`, &table, chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table, "2.0.0") {
		t.Fatalf("dealer console does not show the new version:\n%s", table)
	}
	var record string
	if err := chromedp.Run(ctx, chromedp.Text(`table.record`, &record, chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(record, "dcm DCM000001") || !strings.Contains(record, "dealer") || !strings.Contains(record, "installed") {
		t.Fatalf("dealer console's software record lacks the job's install:\n%s", record)
	}
	if err := chromedp.Run(ctx, chromedp.Navigate(w.url+"/status"), chromedp.WaitVisible(`#st-h`, chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, "status")
}

// TestWebDealerCancelsJob: a queued job has a Cancel button; pressing it
// cancels the job, and the vehicle installs nothing.
func TestWebDealerCancelsJob(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.setup(nil)
	token := w.account("dealer", "dealer-berlin")
	v := w.vehicle(1)
	j := w.job(token, map[string]any{"vin": v.vin, "ecu": "dcm", "version": "2.0.0", "reason": "customer asked"})
	ctx := browserCtx(t)
	var flash, state string
	err := chromedp.Run(ctx,
		dealerLogin(w.url, "dealer-berlin", token),
		chromedp.Navigate(w.url+"/dealer?vin="+v.vin),
		chromedp.WaitVisible(`tr.job form.cancel button`, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, "dealer-job-cancel")
	err = chromedp.Run(ctx,
		chromedp.Click(`tr.job form.cancel button`, chromedp.ByQuery),
		chromedp.WaitVisible(`.flash`, chromedp.ByQuery),
		chromedp.Text(`.flash`, &flash, chromedp.ByQuery),
		chromedp.Poll(`document.querySelector("tr.job .state").textContent === "canceled"`, nil, chromedp.WithPollingTimeout(10*time.Second)),
		chromedp.Text(`tr.job .state`, &state, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(flash, "canceled") || state != "canceled" {
		t.Fatalf("after Cancel: flash %q, state %q, %v", flash, state, err)
	}
	screenshot(t, ctx, "dealer-job-canceled")
	if got := w.getJob(token, j.ID); got.State != "canceled" {
		t.Fatalf("job on the server: %s", got.State)
	}
	if r := agent(t, "update", "--state", v.dir); r.code != 0 || versions(t, v)["dcm"] != "1.0.0" {
		t.Fatalf("a canceled job installed something: %s %v", r, versions(t, v))
	}
}
