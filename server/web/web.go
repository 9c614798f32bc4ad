// Package web serves the owner portal (/), the dealer console (/dealer)
// and the service status page (/status): server-rendered html/template
// pages with embedded assets, nothing loaded from other hosts. Sessions
// live in the state store (the cookie holds a random ID: HttpOnly,
// SameSite=Strict, Secure over HTTPS), so any replica serves any request
// and logging out, a password change or disabling the account ends them.
// Every form carries a CSRF token (bound to the session, or before
// logging in to a cookie of its own) and must come from this origin.
// Log-ins are throttled per address and per name.
package web

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/accounts"
	"github.com/roadsign/roadsign/server/approvals"
	"github.com/roadsign/roadsign/server/auditlog"
	"github.com/roadsign/roadsign/server/bundle"
	"github.com/roadsign/roadsign/server/campaigns"
	"github.com/roadsign/roadsign/server/connect"
	"github.com/roadsign/roadsign/server/diagnosis"
	"github.com/roadsign/roadsign/server/jobs"
	"github.com/roadsign/roadsign/server/owners"
	"github.com/roadsign/roadsign/server/registry"
	"github.com/roadsign/roadsign/server/webhooks"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Check is one line of the status page.
type Check = server.HealthCheck

// Deps are the services the pages use.
type Deps struct {
	Accounts  *accounts.Service
	Throttle  *accounts.Throttle
	Owners    *owners.Service
	Registry  *registry.Service
	Jobs      *jobs.Service
	Bundles   *bundle.Service
	Campaigns *campaigns.Service
	Diagnosis *diagnosis.Service
	Approvals *approvals.Service
	Webhooks  *webhooks.Service
	// SSO, if set, offers single sign-on (OpenID Connect) on the console.
	SSO    *SSO
	Store  Store
	Status func(ctx context.Context) []Check
	Secret []byte
	Now    func() time.Time
	Log    *slog.Logger
}

// Store is what the pages read of the state store directly (the rest
// through the services): vehicles, their software records, and the
// audit log (USB bundles are audited as they are issued).
type Store interface {
	Vehicle(ctx context.Context, vin string) (server.Vehicle, error)
	SoftwareRecords(ctx context.Context, vin string, q server.RecordQuery) ([]server.SoftwareRecord, error)
	auditlog.Appender
}

// Web renders the pages.
type Web struct {
	Deps
	tmpl   *template.Template
	static http.Handler
}

// Route is a page route, for the server's route table. POST routes are
// forms (urlencoded, a few KiB); Download routes stream their answer.
type Route struct {
	Method, Path, Summary string
	Handler               gin.HandlerFunc
	Download              bool
}

// New parses the embedded templates.
func New(d Deps) (*Web, error) {
	t, err := template.New("pages").Funcs(template.FuncMap{
		"pct":   func(f float64) float64 { return f * 100 },
		"add":   func(a float64, b int) float64 { return a + float64(b) },
		"add2":  func(a, b int) int { return a + b },
		"inc":   func(i int) int { return i + 1 },
		"title": func(s string) string { return strings.ToUpper(s[:1]) + s[1:] },
		// A halted or aborted campaign's waves: the API keeps pending,
		// open, done; people read what happened to each.
		"waveState": waveState,
		"outcome":   func(s string) string { return strings.ReplaceAll(s, "_", " ") },
		"approvalTitle": func(action string) string {
			return map[string]string{approvals.ActionCampaignStart: "Start campaign", approvals.ActionCampaignWaves: "Raise a campaign's waves",
				approvals.ActionJobs: "Jobs for many vehicles"}[action]
		},
		"json": func(raw json.RawMessage) string {
			var b bytes.Buffer
			if json.Indent(&b, raw, "", "  ") != nil {
				return string(raw)
			}
			return b.String()
		},
	}).ParseFS(templateFS, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("web templates: %w", err)
	}
	sub, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	return &Web{Deps: d, tmpl: t, static: http.StripPrefix("/static/", http.FileServerFS(sub))}, nil
}

// Routes lists the pages.
func (w *Web) Routes() []Route {
	return []Route{
		{"GET", "/", "Owner portal: my vehicles, link a vehicle, USB update (HTML)", w.ownerPage, false},
		{"POST", "/login", "Owner log-in form", w.login(false), false},
		{"POST", "/logout", "Log out", w.logout, false},
		{"POST", "/link", "Owner: link a vehicle with its code", w.link, false},
		{"POST", "/password", "Owner: change the password (ends every session)", w.password, false},
		{"POST", "/claim", "Owner: accept or reject a claim on their vehicle", w.claim, false},
		{"GET", "/vehicles/:vin/usb", "Owner or dealer: download the USB update", w.usb, true},
		{"GET", "/dealer", "Dealer console: find a VIN, jobs, re-provisioning (HTML)", w.dealerPage, false},
		{"POST", "/dealer/login", "Dealer log-in form", w.login(true), false},
		{"GET", "/dealer/sso", "Single sign-on: to the OpenID Connect provider (authorization code with PKCE)", w.ssoStart, false},
		{"GET", "/dealer/sso/callback", "Single sign-on: the provider's answer; starts a console session", w.ssoCallback, false},
		{"POST", "/dealer/jobs", "Dealer: push a reflash job", w.pushJob, false},
		{"GET", "/dealer/jobs/:id", "Dealer: one job as JSON, for live progress (ID.json)", w.jobJSON, false},
		{"POST", "/dealer/jobs/:id/cancel", "Dealer: cancel a job", w.cancelJob, false},
		{"POST", "/dealer/replace", "Dealer: re-provision a replaced unit", w.replace, false},
		{"POST", "/dealer/renew", "Dealer: renew a vehicle's connected-services subscription for a year", w.renew, false},
		{"POST", "/dealer/claim", "Dealer: transfer a vehicle to the owner who claims it", w.transfer, false},
		{"GET", "/dealer/diagnoses", "Causes of failing connected services across the fleet (HTML)", w.diagnosesPage, false},
		{"GET", "/vehicles/:vin/help", "Owner: \"Connected services not working?\" for one car (HTML)", w.helpPage, false},
		{"GET", "/vehicles/:vin/record", "Owner, dealer or admin: a vehicle's software record, 50 entries a page, newest first (?before=ID) (HTML)", w.recordPage, false},
		{"GET", "/dealer/campaigns", "Campaigns: state and progress (HTML)", w.campaignsPage, false},
		{"GET", "/dealer/campaigns/:id", "A campaign: waves, progress chart, halt reason, controls (HTML)", w.campaignPage, false},
		{"POST", "/dealer/campaigns/:id", "Release manager: start, pause, resume or abort a campaign", w.campaignAction, false},
		{"GET", "/dealer/approvals", "Approvals: requests waiting for a second person, and decisions (HTML)", w.approvalsPage, false},
		{"POST", "/dealer/approvals/:id", "Approver: approve or refuse a request (with a reason)", w.decide, false},
		{"GET", "/dealer/tokens", "My API tokens: scope, expiry, last use (HTML)", w.tokensPage, false},
		{"POST", "/dealer/tokens/:id/revoke", "Revoke one of my API tokens", w.revokeToken, false},
		{"GET", "/dealer/webhooks", "Webhook subscriptions and their delivery log (HTML)", w.webhooksPage, false},
		{"POST", "/consent", "Owner: accept or decline a campaign's update", w.consent, false},
		{"GET", "/status", "Service status: repository, director, stores, re-signing (HTML)", w.statusPage, false},
		{"GET", "/static/*file", "Embedded style sheet and script", func(c *gin.Context) {
			c.Header("Cache-Control", "public, max-age=3600")
			w.static.ServeHTTP(c.Writer, c.Request)
		}, false},
	}
}

// --- sessions ---

// Cookies.
const (
	cookieName   = "rs_session" // the session's random ID
	loginCookie  = "rs_login"   // a random value the log-in form's CSRF token is bound to
	deviceCookie = "rs_device"  // marks a browser that logged in to an account before
	flashCookie  = "rs_flash"   // the next page's one message
)

// session is a logged-in browser.
type session struct {
	ID string
	server.Principal
}

func (w *Web) sign(label, payload string) string {
	m := hmac.New(sha256.New, w.Secret)
	m.Write([]byte(label + "\n" + payload))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (w *Web) setCookie(c *gin.Context, name, value string, maxAge int) {
	http.SetCookie(c.Writer, &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secure(c.Request)})
}

func (w *Web) startSession(c *gin.Context, p server.Principal) error {
	id, err := w.Accounts.StartSession(c.Request.Context(), p)
	if err != nil {
		return err
	}
	w.setCookie(c, cookieName, id, int(w.Accounts.SessionTTL/time.Second))
	return nil
}

// secure: mark cookies Secure whenever the browser reached us over HTTPS
// (directly or through a TLS-terminating load balancer).
func secure(r *http.Request) bool {
	return r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"
}

func (w *Web) session(c *gin.Context) (session, bool) {
	ck, err := c.Request.Cookie(cookieName)
	if err != nil {
		return session{}, false
	}
	p, ok := w.Accounts.Session(c.Request.Context(), ck.Value)
	return session{ID: ck.Value, Principal: p}, ok
}

func (s session) principal() server.Principal { return s.Principal }

func (w *Web) csrf(s session) string { return w.sign("csrf", s.ID) }

// sameOrigin refuses a form posted from another site: browsers send
// Origin with every POST; a missing one (old clients) is let through to
// the CSRF check.
func sameOrigin(c *gin.Context) bool {
	o := c.GetHeader("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == c.Request.Host
}

// form checks the session has one of the roles, the form's origin and its
// CSRF token.
func (w *Web) form(c *gin.Context, roles ...server.Role) (session, bool) {
	s, ok := w.session(c)
	if !ok || !hasRole(s, roles) {
		c.String(http.StatusUnauthorized, "log in first")
		return s, false
	}
	if !sameOrigin(c) || !hmac.Equal([]byte(c.PostForm("csrf")), []byte(w.csrf(s))) {
		c.String(http.StatusForbidden, "this form expired or came from another site; reload the page and try again")
		return s, false
	}
	return s, true
}

func hasRole(s session, roles []server.Role) bool { return s.Roles.Any(roles...) }

// actors are the console's roles that change vehicles (jobs, claims,
// renewals); the other staff roles only look.
var actors = []server.Role{server.RoleAdmin, server.RoleReleaseManager, server.RoleDealer}

// staff are the roles the console is for.
var staff = []server.Role{server.RoleAdmin, server.RoleReleaseManager, server.RoleApprover, server.RoleSupport, server.RoleDealer}

// loginCSRF returns the log-in form's CSRF token, setting the cookie it
// is bound to when the browser has none yet.
func (w *Web) loginCSRF(c *gin.Context) string {
	v := ""
	if ck, err := c.Request.Cookie(loginCookie); err == nil && len(ck.Value) == 22 {
		v = ck.Value
	} else {
		b := make([]byte, 16)
		rand.Read(b)
		v = base64.RawURLEncoding.EncodeToString(b)
		w.setCookie(c, loginCookie, v, 3600)
	}
	return w.sign("login", v)
}

func (w *Web) loginCSRFOK(c *gin.Context) bool {
	ck, err := c.Request.Cookie(loginCookie)
	return err == nil && sameOrigin(c) && hmac.Equal([]byte(c.PostForm("csrf")), []byte(w.sign("login", ck.Value)))
}

// deviceOK reports whether the browser logged in to accountID before (a
// signed cookie): such a browser is not held by the account's lockout.
func (w *Web) deviceOK(c *gin.Context, accountID string) bool {
	ck, err := c.Request.Cookie(deviceCookie)
	if err != nil || accountID == "" {
		return false
	}
	id, sig, ok := strings.Cut(ck.Value, ".")
	return ok && id == accountID && hmac.Equal([]byte(sig), []byte(w.sign("device", id)))
}

// flash sets the one message the next page shows (never taken from the
// URL, so nobody can make the portal say their words).
func (w *Web) flash(c *gin.Context, kind, text string) {
	b, _ := json.Marshal(map[string]string{kind: text})
	w.setCookie(c, flashCookie, base64.RawURLEncoding.EncodeToString(b), 60)
}

// takeFlash reads and clears the message.
func (w *Web) takeFlash(c *gin.Context, p *page) {
	ck, err := c.Request.Cookie(flashCookie)
	if err != nil {
		return
	}
	w.setCookie(c, flashCookie, "", -1)
	var m map[string]string
	if b, err := base64.RawURLEncoding.DecodeString(ck.Value); err == nil && json.Unmarshal(b, &m) == nil {
		p.Flash, p.Error = m["msg"], m["err"]
	}
}

// --- pages ---

type page struct {
	Title, User, CSRF, Flash, Error string
	Action                          string
	Dealer                          bool
	// SSO: the console offers single sign-on.
	SSO      bool
	Vehicles any
	Vehicle  *server.Vehicle
	Auth     connect.State
	VIN      string
	Jobs     []server.Job
	// USBValidUntil is until when a USB bundle downloaded now installs.
	USBValidUntil time.Time
	// Diagnosis is the vehicle's, on the dealer console.
	Diagnosis *diagnosis.Report
	// Replace is the unit the replace form starts on (a diagnosis's
	// one-click re-provisioning names it).
	Replace string
	// Record is the vehicle's software record, newest first: the first
	// few entries, or one page of it.
	Record recordView
}

// recordView is the part of a vehicle's software record a page shows.
type recordView struct {
	VIN     string
	Entries []server.SoftwareRecord
	// Older is the before= of the next (older) page; 0: none.
	Older int64
	// Preview: a few entries on a page about something else, with a
	// link to the whole record.
	Preview bool
}

// Software record pages: a few entries on the portal and console, and
// pages of recordPage entries on the record's own page.
const (
	recordPreview = 10
	recordPage    = 50
)

// pageHeaders are every page's security headers.
func pageHeaders(c *gin.Context) {
	c.Header("Content-Type", "text/html; charset=utf-8")
	c.Header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	c.Header("X-Content-Type-Options", "nosniff")
	c.Header("X-Frame-Options", "DENY")
	c.Header("Referrer-Policy", "same-origin")
	c.Header("Cache-Control", "no-store")
}

func (w *Web) render(c *gin.Context, status int, name string, p any) {
	pageHeaders(c)
	c.Status(status)
	if err := w.tmpl.ExecuteTemplate(c.Writer, name, p); err != nil {
		w.Log.Error("render page", "page", name, "err", err)
	}
}

func (w *Web) base(c *gin.Context, s session, title string) page {
	p := page{Title: title, User: s.Name, CSRF: w.csrf(s)}
	w.takeFlash(c, &p)
	return p
}

// loginPage renders a log-in form (owner or dealer) with its CSRF token.
func (w *Web) loginPage(c *gin.Context, title, action string, dealer bool) {
	p := page{Title: title, Action: action, Dealer: dealer, CSRF: w.loginCSRF(c), SSO: dealer && w.SSO != nil}
	w.takeFlash(c, &p)
	w.render(c, http.StatusOK, "login", p)
}

// redirect goes to path (with vin, if given, as ?vin=) showing one
// message: kind "msg" or "err".
func (w *Web) redirect(c *gin.Context, path, vin, kind, text string) {
	if text != "" {
		w.flash(c, kind, text)
	}
	if vin != "" {
		path += "?vin=" + url.QueryEscape(vin)
	}
	c.Redirect(http.StatusSeeOther, path)
}

func message(err error) string {
	var e *server.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "something went wrong; try again later"
}

func (w *Web) ownerPage(c *gin.Context) {
	s, ok := w.session(c)
	if !ok || !s.Is(server.RoleOwner) {
		w.loginPage(c, "Owner portal", "/login", false)
		return
	}
	ctx := c.Request.Context()
	links, err := w.Owners.Mine(ctx, s.principal())
	if err != nil {
		w.Log.Error("owner page", "err", err)
	}
	type owned struct {
		Vehicle      server.Vehicle
		Link         server.Link
		Subscription string
		Updates      []campaigns.Pending
		Record       recordView
		// Help is the owner's diagnosis when services fail (nil: they work).
		Help *diagnosis.OwnerReport
	}
	var vs []owned
	for _, l := range links {
		if v, err := w.Store.Vehicle(ctx, l.VIN); err == nil {
			o := owned{Vehicle: v, Link: l, Subscription: w.Owners.SubscriptionState(l), Record: w.record(ctx, l.VIN, 0, recordPreview)}
			if w.Campaigns != nil {
				o.Updates, _ = w.Campaigns.PendingConsent(ctx, l.VIN)
			}
			if w.Diagnosis != nil {
				if r, err := w.Diagnosis.Diagnose(ctx, l.VIN); err != nil {
					w.Log.Warn("owner page diagnosis", "vin", l.VIN, "err", err)
				} else if !r.Healthy {
					help := r.ForOwner()
					o.Help = &help
				}
			}
			vs = append(vs, o)
		}
	}
	p := w.base(c, s, "My vehicles")
	p.Vehicles = vs
	p.USBValidUntil = w.Now().Add(bundle.DefaultValidity)
	w.render(c, http.StatusOK, "owner", p)
}

// login checks a log-in form: owners with name and password, dealers and
// admins with name and token. Attempts are throttled per client address
// and per name (a browser that logged in to the account before is not
// held by the name's lockout); failures look the same whether or not the
// name exists, and cost the same.
func (w *Web) login(dealer bool) gin.HandlerFunc {
	back := "/"
	if dealer {
		back = "/dealer"
	}
	return func(c *gin.Context) {
		ctx := c.Request.Context()
		if !w.loginCSRFOK(c) {
			w.redirect(c, back, "", "err", "This log-in form expired or came from another site; try again.")
			return
		}
		name, secret := strings.TrimSpace(c.PostForm("name")), c.PostForm("secret")
		if len(name) > 100 || len(secret) > 256 {
			w.redirect(c, back, "", "err", "That name and password do not match an account.")
			return
		}
		wait, err := w.Throttle.AllowIP(ctx, c.ClientIP())
		if err != nil {
			w.loginBusy(c, err)
			return
		}
		if wait > 0 {
			w.tooMany(c, wait, "Too many log-in attempts from your address.")
			return
		}
		if wait, err = w.Throttle.LockedFor(ctx, name); err != nil {
			w.loginBusy(c, err)
			return
		}
		if wait > 0 && !w.deviceOK(c, w.Accounts.AccountID(ctx, name)) {
			w.tooMany(c, wait, "Too many failed log-ins for this account.")
			return
		}
		var p server.Principal
		ok := false
		if dealer {
			got, err := w.Accounts.Authenticate(ctx, secret, c.ClientIP())
			ok = err == nil && got.Name == name && got.Roles.Any(staff...) && got.ID != accounts.Bootstrap.ID && got.TokenID == ""
			p = got
		} else {
			var err error
			p, ok, err = w.Accounts.CheckOwnerPassword(ctx, name, secret)
			if errors.Is(err, accounts.ErrBusy) {
				w.loginBusy(c, err)
				return
			}
			if err != nil {
				w.redirect(c, back, "", "err", message(err))
				return
			}
		}
		if !ok {
			if err := w.Throttle.Fail(ctx, name); err != nil {
				w.loginBusy(c, err)
				return
			}
			w.redirect(c, back, "", "err", "That name and password do not match an account.")
			return
		}
		if err := w.Throttle.Succeed(ctx, name); err != nil {
			w.loginBusy(c, err)
			return
		}
		if err := w.startSession(c, p); err != nil {
			w.Log.Error("start session", "err", err)
			w.redirect(c, back, "", "err", "something went wrong; try again later")
			return
		}
		w.setCookie(c, deviceCookie, p.ID+"."+w.sign("device", p.ID), 365*24*3600)
		c.Redirect(http.StatusSeeOther, back)
	}
}

// loginBusy answers a log-in the server cannot judge now (the password
// hashers are all busy, or the throttle's database failed): 503 with
// Retry-After, and nothing let through.
func (w *Web) loginBusy(c *gin.Context, err error) {
	msg := message(err)
	if !errors.Is(err, accounts.ErrBusy) {
		w.Log.Error("log-in throttle", "err", err)
		msg = "Log-in is unavailable for a moment; try again in a few seconds."
	}
	c.Header("Retry-After", "5")
	w.render(c, http.StatusServiceUnavailable, "login", page{Title: "Log in", Action: c.Request.URL.Path, CSRF: w.loginCSRF(c), Error: msg})
}

// tooMany answers a throttled log-in: 429 with Retry-After.
func (w *Web) tooMany(c *gin.Context, wait time.Duration, why string) {
	secs := int(wait.Round(time.Second)/time.Second) + 1
	c.Header("Retry-After", strconv.Itoa(secs))
	w.render(c, http.StatusTooManyRequests, "login", page{Title: "Log in", Action: c.Request.URL.Path, Dealer: strings.HasPrefix(c.Request.URL.Path, "/dealer"),
		CSRF: w.loginCSRF(c), Error: fmt.Sprintf("%s Try again in %d seconds.", why, secs)})
}

func (w *Web) logout(c *gin.Context) {
	s, ok := w.form(c, append(staff, server.RoleOwner)...)
	if !ok {
		return
	}
	if err := w.Accounts.EndSession(c.Request.Context(), s.ID); err != nil {
		w.Log.Error("end session", "err", err)
	}
	w.setCookie(c, cookieName, "", -1)
	c.Redirect(http.StatusSeeOther, "/")
}

// password changes an owner's password: every session ends, and this
// browser starts a new one.
func (w *Web) password(c *gin.Context) {
	s, ok := w.form(c, server.RoleOwner)
	if !ok {
		return
	}
	ctx := c.Request.Context()
	if err := w.Accounts.ChangePassword(ctx, s.principal(), c.PostForm("current"), c.PostForm("new")); err != nil {
		w.redirect(c, "/", "", "err", message(err))
		return
	}
	w.setCookie(c, cookieName, "", -1)
	if err := w.startSession(c, s.principal()); err != nil {
		w.Log.Error("start session", "err", err)
	}
	w.redirect(c, "/", "", "msg", "Your password is changed; every other session has ended.")
}

// claim lets an owner accept or reject someone's claim on their car.
func (w *Web) claim(c *gin.Context) {
	s, ok := w.form(c, server.RoleOwner)
	if !ok {
		return
	}
	vin, d := c.PostForm("vin"), c.PostForm("decision")
	if _, err := w.Owners.DecideClaim(c.Request.Context(), s.principal(), vin, owners.ClaimDecision{Decision: d}, true); err != nil {
		w.redirect(c, "/", "", "err", message(err))
		return
	}
	msg := "The claim on " + vin + " is rejected; the car stays yours."
	if d == "accept" {
		msg = vin + " now belongs to the account that claimed it."
	}
	w.redirect(c, "/", "", "msg", msg)
}

func (w *Web) link(c *gin.Context) {
	s, ok := w.form(c, server.RoleOwner)
	if !ok {
		return
	}
	req := owners.LinkRequest{VIN: strings.ToUpper(strings.TrimSpace(c.PostForm("vin"))), Code: strings.ToUpper(strings.TrimSpace(c.PostForm("code")))}
	if _, err := w.Owners.LinkWithCode(c.Request.Context(), s.principal(), req); err != nil {
		w.redirect(c, "/", "", "err", message(err))
		return
	}
	w.redirect(c, "/", "", "msg", "Vehicle "+req.VIN+" is linked to your account.")
}

func (w *Web) usb(c *gin.Context) {
	s, ok := w.session(c)
	if !ok || !hasRole(s, []server.Role{server.RoleOwner, server.RoleDealer}) {
		c.String(http.StatusUnauthorized, "log in first")
		return
	}
	ctx := c.Request.Context()
	v, err := w.Registry.Get(ctx, s.principal(), c.Param("vin"))
	if err != nil {
		c.String(http.StatusNotFound, message(err))
		return
	}
	plan, err := w.Bundles.Prepare(ctx, v, bundle.DefaultValidity, false)
	if err != nil {
		c.String(http.StatusConflict, message(err))
		return
	}
	if err := plan.Serve(ctx, c.Writer, w.Store, s.principal(), w.Now()); err != nil {
		w.Log.Error("bundle stream failed", "vin", v.VIN, "err", err)
		panic(http.ErrAbortHandler)
	}
}

func (w *Web) dealerPage(c *gin.Context) {
	s, ok := w.session(c)
	if !ok || !hasRole(s, staff) {
		w.loginPage(c, "Dealer console", "/dealer/login", true)
		return
	}
	p := w.base(c, s, "Dealer console")
	p.VIN = strings.ToUpper(strings.TrimSpace(c.Query("vin")))
	p.Replace = c.Query("replace")
	if p.VIN != "" {
		ctx := c.Request.Context()
		v, err := w.Registry.Get(ctx, s.principal(), p.VIN)
		if err != nil {
			p.Error = message(err)
		} else {
			p.Vehicle = &v
			p.Auth = connect.StateOf(v, w.Now())
			if w.Diagnosis != nil {
				if r, err := w.Diagnosis.Diagnose(ctx, v.VIN); err != nil {
					w.Log.Warn("diagnosis", "vin", v.VIN, "err", err)
				} else {
					p.Diagnosis = &r
				}
			}
			js, _ := w.Jobs.ByVIN(ctx, v.VIN)
			for i := len(js) - 1; i >= 0; i-- { // newest first
				p.Jobs = append(p.Jobs, js[i])
			}
			p.Record = w.record(ctx, v.VIN, 0, recordPreview)
		}
	}
	w.render(c, http.StatusOK, "dealer", p)
}

func (w *Web) pushJob(c *gin.Context) {
	s, ok := w.form(c, actors...)
	if !ok {
		return
	}
	vin := c.PostForm("vin")
	j, err := w.Jobs.Create(c.Request.Context(), s.principal(), jobs.CreateRequest{VIN: vin, ECU: c.PostForm("ecu"), Version: c.PostForm("version"), Reason: c.PostForm("reason")})
	if err != nil {
		w.redirect(c, "/dealer", vin, "err", message(err))
		return
	}
	w.redirect(c, "/dealer", vin, "msg", fmt.Sprintf("Job %s queued: %s on %s.", j.ID[:8], j.Version, j.ECUSerial))
}

func (w *Web) cancelJob(c *gin.Context) {
	s, ok := w.form(c, actors...)
	if !ok {
		return
	}
	vin := c.PostForm("vin")
	j, err := w.Jobs.Cancel(c.Request.Context(), s.principal(), c.Param("id"))
	if err != nil {
		w.redirect(c, "/dealer", vin, "err", message(err))
		return
	}
	msg := fmt.Sprintf("Job %s canceled.", j.ID[:8])
	if !server.JobTerminal(j.State) {
		msg = fmt.Sprintf("Job %s is flashing: the install finishes or rolls back, and the job says which.", j.ID[:8])
	}
	w.redirect(c, "/dealer", vin, "msg", msg)
}

func (w *Web) jobJSON(c *gin.Context) {
	s, ok := w.session(c)
	if !ok || !hasRole(s, staff) {
		c.JSON(http.StatusUnauthorized, gin.H{"error": gin.H{"code": errcode.Unauthorized, "message": "log in first"}})
		return
	}
	j, err := w.Jobs.Get(c.Request.Context(), strings.TrimSuffix(c.Param("id"), ".json"))
	if err != nil {
		c.JSON(http.StatusNotFound, gin.H{"error": gin.H{"code": errcode.NotFound, "message": message(err)}})
		return
	}
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, j)
}

func (w *Web) replace(c *gin.Context) {
	s, ok := w.form(c, server.RoleDealer)
	if !ok {
		return
	}
	vin := c.PostForm("vin")
	_, err := w.Registry.ReplaceECU(c.Request.Context(), s.principal(), vin, c.PostForm("old"), registry.ReplaceRequest{
		Serial: c.PostForm("serial"), HardwareID: c.PostForm("hardwareId"), PublicKey: c.PostForm("publicKey"), Reason: c.PostForm("reason")})
	if err != nil {
		w.redirect(c, "/dealer", vin, "err", message(err))
		return
	}
	w.redirect(c, "/dealer", vin, "msg", "Unit re-provisioned; the car reauthorizes with its new key.")
}

// renew is a dealer's one-click renewal from the diagnosis.
func (w *Web) renew(c *gin.Context) {
	s, ok := w.form(c, actors...)
	if !ok {
		return
	}
	vin := c.PostForm("vin")
	l, err := w.Owners.Renew(c.Request.Context(), s.principal(), vin)
	if err != nil {
		w.redirect(c, "/dealer", vin, "err", message(err))
		return
	}
	w.redirect(c, "/dealer", vin, "msg", "Subscription renewed until "+l.SubscriptionEnds.Format("2 Jan 2006")+"; the car reauthorizes at its next connection.")
}

// transfer is a dealer's one-click acceptance of a claim from the
// diagnosis: the car moves to the owner who claims it.
func (w *Web) transfer(c *gin.Context) {
	s, ok := w.form(c, actors...)
	if !ok {
		return
	}
	vin := c.PostForm("vin")
	d := owners.ClaimDecision{Decision: "accept", Reason: "transferred from the diagnosis after checking the sale"}
	if _, err := w.Owners.DecideClaim(c.Request.Context(), s.principal(), vin, d, false); err != nil {
		w.redirect(c, "/dealer", vin, "err", message(err))
		return
	}
	w.redirect(c, "/dealer", vin, "msg", vin+" now belongs to the owner who claimed it.")
}

// diagnosesPage shows the commonest causes across the fleet.
func (w *Web) diagnosesPage(c *gin.Context) {
	s, ok := w.session(c)
	if !ok || !hasRole(s, staff) {
		w.loginPage(c, "Dealer console", "/dealer/login", true)
		return
	}
	counts, err := w.Diagnosis.Counts(c.Request.Context())
	p := struct {
		page
		Counts []server.FindingCount
	}{page: w.base(c, s, "Why connected services fail, across the fleet"), Counts: counts}
	if err != nil {
		p.Error = message(err)
	}
	w.render(c, http.StatusOK, "diagnoses", p)
}

// helpPage walks an owner through what applies to their car.
func (w *Web) helpPage(c *gin.Context) {
	s, ok := w.session(c)
	if !ok || !hasRole(s, []server.Role{server.RoleOwner}) {
		w.loginPage(c, "Roadsign", "/login", false)
		return
	}
	ctx, vin := c.Request.Context(), c.Param("vin")
	if owns, err := w.Owners.Owns(ctx, s.principal(), vin); err != nil || !owns {
		w.redirect(c, "/", "", "err", "That vehicle is not linked to your account.")
		return
	}
	r, err := w.Diagnosis.Diagnose(ctx, vin)
	p := struct {
		page
		Help diagnosis.OwnerReport
	}{page: w.base(c, s, "Connected services not working?"), Help: r.ForOwner()}
	p.VIN = vin
	if err != nil {
		p.Error = message(err)
	}
	w.render(c, http.StatusOK, "help", p)
}

func (w *Web) statusPage(c *gin.Context) {
	checks := w.Status(c.Request.Context())
	all := true
	for _, ch := range checks {
		all = all && ch.OK
	}
	data := struct {
		page
		Checks []Check
		AllOK  bool
		At     time.Time
	}{page{Title: "Service status"}, checks, all, w.Now()}
	status := http.StatusOK
	if !all {
		status = http.StatusServiceUnavailable
	}
	w.render(c, status, "status", data)
}

// record is up to n entries of a vehicle's software record, newest
// first, before the entry with ID before (0: from the newest).
func (w *Web) record(ctx context.Context, vin string, before int64, n int) recordView {
	v := recordView{VIN: vin, Preview: n == recordPreview}
	recs, err := w.Store.SoftwareRecords(ctx, vin, server.RecordQuery{NewestFirst: true, BeforeID: before, Limit: n + 1})
	if err != nil {
		w.Log.Warn("software record", "vin", vin, "err", err)
		return v
	}
	if len(recs) > n {
		recs = recs[:n]
		v.Older = recs[n-1].ID
	}
	v.Entries = recs
	return v
}

// recordPage is one page of a vehicle's software record, for its owner,
// a dealer or an admin.
func (w *Web) recordPage(c *gin.Context) {
	s, ok := w.session(c)
	if !ok || !hasRole(s, append(staff, server.RoleOwner)) {
		w.loginPage(c, "Roadsign", "/login", false)
		return
	}
	ctx := c.Request.Context()
	v, err := w.Registry.Get(ctx, s.principal(), c.Param("vin"))
	if err != nil {
		w.redirect(c, "/", "", "err", message(err))
		return
	}
	before, _ := strconv.ParseInt(c.Query("before"), 10, 64)
	p := struct {
		page
		Back   string
		Before int64
	}{page: w.base(c, s, "Software record of "+v.VIN), Back: "/", Before: before}
	if !s.Is(server.RoleOwner) {
		p.Back = "/dealer?vin=" + v.VIN
	}
	p.Record = w.record(ctx, v.VIN, before, recordPage)
	w.render(c, http.StatusOK, "recordpage", p)
}
