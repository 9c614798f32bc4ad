package web

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/gin-gonic/gin"
	"golang.org/x/oauth2"

	"github.com/roadsign/roadsign/server/accounts"
	"github.com/roadsign/roadsign/server/auditlog"
)

// SSO is single sign-on to the console with OpenID Connect: the
// authorization code flow with PKCE (S256), a state and a nonce, the ID
// token verified against the provider's keys (go-oidc), and the roles
// read from one of its claims. Sessions are this server's, as for a
// token log-in, so logging out ends them here.
type SSO struct {
	Issuer, ClientID, ClientSecret string
	// RolesClaim names the ID token claim that holds the Roadsign roles
	// (an array of strings, or one string of them separated by spaces or
	// commas); a dealer's regions come from the "regions" claim.
	RolesClaim string
	// RedirectURL is where the provider sends the browser back
	// (default: this server's /dealer/sso/callback as the browser reached it).
	RedirectURL string
	// HTTP reaches the provider (default: 10 s timeout).
	HTTP *http.Client

	mu       sync.Mutex
	provider *oidc.Provider
}

// ssoCookie carries a log-in's state, nonce and PKCE verifier through the
// provider, signed with the server's secret.
const ssoCookie = "rs_sso"

type ssoFlow struct {
	State, Nonce, Verifier string
	Expires                int64
}

// discover reads the provider's configuration once, at the first log-in,
// so the server starts while the provider is away.
func (o *SSO) discover(ctx context.Context) (*oidc.Provider, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.provider != nil {
		return o.provider, nil
	}
	p, err := oidc.NewProvider(oidc.ClientContext(ctx, o.client()), o.Issuer)
	if err != nil {
		return nil, fmt.Errorf("single sign-on provider %s: %w", o.Issuer, err)
	}
	o.provider = p
	return p, nil
}

func (o *SSO) client() *http.Client {
	if o.HTTP != nil {
		return o.HTTP
	}
	return &http.Client{Timeout: 10 * time.Second}
}

func (o *SSO) config(c *gin.Context, p *oidc.Provider) oauth2.Config {
	redirect := o.RedirectURL
	if redirect == "" {
		scheme := "http"
		if secure(c.Request) {
			scheme = "https"
		}
		redirect = scheme + "://" + c.Request.Host + "/dealer/sso/callback"
	}
	return oauth2.Config{ClientID: o.ClientID, ClientSecret: o.ClientSecret, Endpoint: p.Endpoint(), RedirectURL: redirect,
		Scopes: []string{oidc.ScopeOpenID, "profile", "email"}}
}

func random() string {
	b := make([]byte, 24)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// ssoStart sends the browser to the provider.
func (w *Web) ssoStart(c *gin.Context) {
	if w.SSO == nil {
		w.redirect(c, "/dealer", "", "err", "single sign-on is not configured on this server")
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), 15*time.Second)
	defer cancel()
	p, err := w.SSO.discover(ctx)
	if err != nil {
		w.Log.Warn("single sign-on", "err", err)
		w.redirect(c, "/dealer", "", "err", "The single sign-on provider cannot be reached; try again later, or log in with a token.")
		return
	}
	f := ssoFlow{State: random(), Nonce: random(), Verifier: oauth2.GenerateVerifier(), Expires: time.Now().Add(10 * time.Minute).Unix()}
	b, _ := json.Marshal(f)
	payload := base64.RawURLEncoding.EncodeToString(b)
	// Lax, not Strict: the provider's redirect back is a cross-site navigation.
	http.SetCookie(c.Writer, &http.Cookie{Name: ssoCookie, Value: payload + "." + w.sign("sso", payload), Path: "/dealer/sso", MaxAge: 600,
		HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: secure(c.Request)})
	cfg := w.SSO.config(c, p)
	c.Redirect(http.StatusFound, cfg.AuthCodeURL(f.State, oidc.Nonce(f.Nonce), oauth2.S256ChallengeOption(f.Verifier)))
}

// ssoFlowOf reads and checks the flow cookie against the callback's state.
func (w *Web) ssoFlowOf(c *gin.Context) (ssoFlow, error) {
	ck, err := c.Request.Cookie(ssoCookie)
	if err != nil {
		return ssoFlow{}, errors.New("no log-in in progress in this browser (cookies off, or it took over 10 minutes)")
	}
	http.SetCookie(c.Writer, &http.Cookie{Name: ssoCookie, Value: "", Path: "/dealer/sso", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: secure(c.Request)})
	payload, sig, ok := strings.Cut(ck.Value, ".")
	if !ok || !hmac.Equal([]byte(sig), []byte(w.sign("sso", payload))) {
		return ssoFlow{}, errors.New("the log-in cookie is not this server's")
	}
	var f ssoFlow
	b, err := base64.RawURLEncoding.DecodeString(payload)
	if err == nil {
		err = json.Unmarshal(b, &f)
	}
	switch {
	case err != nil:
		return ssoFlow{}, errors.New("the log-in cookie is unreadable")
	case time.Now().Unix() > f.Expires:
		return ssoFlow{}, errors.New("the log-in took over 10 minutes")
	case !hmac.Equal([]byte(c.Query("state")), []byte(f.State)):
		return ssoFlow{}, errors.New("the provider's answer is not for this log-in (state)")
	}
	return f, nil
}

// ssoCallback takes the provider's answer: the code is exchanged with
// the PKCE verifier, the ID token verified (signature, issuer, audience,
// expiry, nonce), the account made or updated from its claims, and a
// session started.
func (w *Web) ssoCallback(c *gin.Context) {
	fail := func(why string, err error) {
		if err != nil {
			w.Log.Warn("single sign-on refused", "why", why, "err", err)
		}
		w.redirect(c, "/dealer", "", "err", "Single sign-on failed: "+why)
	}
	if w.SSO == nil {
		fail("it is not configured on this server", nil)
		return
	}
	f, err := w.ssoFlowOf(c)
	if err != nil {
		fail(err.Error(), nil)
		return
	}
	if e := c.Query("error"); e != "" {
		fail(fmt.Sprintf("the provider said %s: %s", e, c.Query("error_description")), nil)
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), 15*time.Second)
	defer cancel()
	ctx = oidc.ClientContext(ctx, w.SSO.client())
	p, err := w.SSO.discover(ctx)
	if err != nil {
		fail("the provider cannot be reached", err)
		return
	}
	cfg := w.SSO.config(c, p)
	tok, err := cfg.Exchange(ctx, c.Query("code"), oauth2.VerifierOption(f.Verifier))
	if err != nil {
		fail("the provider did not exchange the code", err)
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	idt, err := p.Verifier(&oidc.Config{ClientID: w.SSO.ClientID}).Verify(ctx, raw)
	if err != nil {
		fail("the ID token does not verify", err)
		return
	}
	if !hmac.Equal([]byte(idt.Nonce), []byte(f.Nonce)) {
		fail("the ID token is not for this log-in (nonce)", nil)
		return
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		fail("the ID token's claims are unreadable", err)
		return
	}
	name, _ := claims["preferred_username"].(string)
	if name == "" {
		name, _ = claims["email"].(string)
	}
	claim := w.SSO.RolesClaim
	if claim == "" {
		claim = "roles"
	}
	principal, err := w.Accounts.SSOLogin(c.Request.Context(), accounts.SSOUser{Issuer: idt.Issuer, Subject: idt.Subject, Name: name,
		Roles: claimStrings(claims[claim]), Regions: claimStrings(claims["regions"])})
	if err != nil {
		fail(message(err), nil)
		return
	}
	if err := w.startSession(c, principal); err != nil {
		fail("something went wrong; try again later", err)
		return
	}
	if err := auditlog.Record(c.Request.Context(), w.Store, w.Now(), principal, "session.sso", principal.ID, fmt.Sprintf("from %s, roles=%s", idt.Issuer, principal.Roles)); err != nil {
		w.Log.Warn("audit single sign-on", "err", err)
	}
	// A page, not a redirect: the session cookie is SameSite=Strict, and a
	// redirect chain that began at the provider would not send it.
	c.Header("Content-Type", "text/html; charset=utf-8")
	c.String(http.StatusOK, `<!doctype html><meta http-equiv="refresh" content="0;url=/dealer"><title>Logged in</title><p>Logged in. <a href="/dealer">Continue to the console</a>.</p>`)
}

// claimStrings reads a claim of strings: an array, or one string separated
// by spaces or commas.
func claimStrings(v any) []string {
	switch v := v.(type) {
	case string:
		return strings.FieldsFunc(v, func(r rune) bool { return r == ' ' || r == ',' })
	case []any:
		var out []string
		for _, x := range v {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}
