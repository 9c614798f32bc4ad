package e2e

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/roadsign/roadsign/internal/testoidc"
)

// TestWebSingleSignOn: a support engineer logs in to the console through
// a real OpenID Connect provider (authorization code with PKCE); the role
// comes from the ID token's roles claim; logging out ends the session on
// the server, so the old cookie no longer opens the console. A user
// whose claim holds no Roadsign role is turned away.
func TestWebSingleSignOn(t *testing.T) {
	const clientID, secret = "roadsign-console", "console-secret-at-the-provider"
	idp := testoidc.Listen(t)
	w := newWorld(t, "--oidc-issuer", idp.Issuer, "--oidc-client-id", clientID, "--oidc-client-secret", secret, "--oidc-roles-claim", "roles")
	idp.Serve(t, clientID, secret, w.url+"/dealer/sso/callback",
		testoidc.User{Username: "sam", Password: "sam-password", Roles: []string{"support", "catering"}},
		testoidc.User{Username: "olga", Password: "olga-password", Roles: []string{"owner"}})
	w.setup(nil)

	ctx := browserCtx(t)
	loginAt := func(user, password string) chromedp.Tasks {
		return chromedp.Tasks{
			chromedp.Navigate(w.url + "/dealer"),
			chromedp.WaitVisible(`#sso`, chromedp.ByQuery),
			chromedp.Click(`#sso`, chromedp.ByQuery),
			chromedp.WaitVisible(`#username`, chromedp.ByQuery), // the provider's own log-in page
			chromedp.SendKeys(`#username`, user, chromedp.ByQuery),
			chromedp.SendKeys(`#password`, password, chromedp.ByQuery),
			chromedp.Submit(`#password`, chromedp.ByQuery),
		}
	}
	var loc, who string
	err := chromedp.Run(ctx,
		loginAt("sam", "sam-password"),
		chromedp.WaitVisible(`#q`, chromedp.ByQuery),
		chromedp.Location(&loc),
		chromedp.Text(`header nav span`, &who, chromedp.ByQuery),
	)
	if err != nil || !strings.HasPrefix(loc, w.url+"/dealer") || who != "sam" {
		t.Fatalf("after single sign-on: at %q as %q, %v", loc, who, err)
	}
	screenshot(t, ctx, "sso-console")

	// The account holds the role from the claim, and only it.
	var list struct {
		Accounts []struct {
			Name  string
			Roles []string
		}
	}
	w.api("GET", "/api/v1/accounts", adminToken, nil, &list)
	var roles []string
	for _, a := range list.Accounts {
		if a.Name == "sam" {
			roles = a.Roles
		}
	}
	if strings.Join(roles, ",") != "support" {
		t.Fatalf("sam's roles: %v, want [support] (from the claim)", roles)
	}
	// Support looks, and is offered nothing to change.
	var forms int
	if err := chromedp.Run(ctx, chromedp.Navigate(w.url+"/dealer/approvals"), chromedp.WaitVisible(`#pending-h`, chromedp.ByQuery),
		chromedp.Evaluate(`document.querySelectorAll("form.decide").length`, &forms)); err != nil || forms != 0 {
		t.Fatalf("support's approvals page offers %d forms (%v)", forms, err)
	}

	// Logging out ends the session on the server: the old cookie is refused.
	var session string
	err = chromedp.Run(ctx, chromedp.ActionFunc(func(ctx context.Context) error {
		cs, err := network.GetCookies().Do(ctx)
		for _, c := range cs {
			if c.Name == "rs_session" {
				session = c.Value
			}
		}
		return err
	}))
	if err != nil || session == "" {
		t.Fatalf("no session cookie after single sign-on: %v", err)
	}
	if !consoleOpens(t, w.url, session) {
		t.Fatal("the session cookie does not open the console before logout")
	}
	err = chromedp.Run(ctx,
		chromedp.Navigate(w.url+"/dealer"),
		chromedp.Click(`form[action="/logout"] button`, chromedp.ByQuery),
		chromedp.WaitVisible(`#name`, chromedp.ByQuery), // a log-in form again
	)
	if err != nil {
		t.Fatal(err)
	}
	if consoleOpens(t, w.url, session) {
		t.Fatal("the old session cookie still opens the console after logout")
	}

	// A user the provider vouches for but with no Roadsign role.
	var flash string
	err = chromedp.Run(ctx,
		loginAt("olga", "olga-password"),
		chromedp.WaitVisible(`p.flash.error`, chromedp.ByQuery),
		chromedp.Text(`p.flash.error`, &flash, chromedp.ByQuery),
	)
	if err != nil || !strings.Contains(flash, "no Roadsign role") {
		t.Fatalf("a user without a role: %q, %v", flash, err)
	}
	actions := strings.Join(w.auditActions(t), " ")
	if !strings.Contains(actions, "account.sso_create") || !strings.Contains(actions, "session.sso") {
		t.Errorf("single sign-on is not audited: %s", actions)
	}
}

// consoleOpens reports whether a session cookie opens the dealer console.
func consoleOpens(t *testing.T, base, session string) bool {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/dealer", nil)
	req.AddCookie(&http.Cookie{Name: "rs_session", Value: session})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b := make([]byte, 1<<16)
	n, _ := resp.Body.Read(b)
	return resp.StatusCode == 200 && strings.Contains(string(b[:n]), `id="q"`)
}
