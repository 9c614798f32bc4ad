// Package web serves the owner portal (/), the dealer console (/dealer)
// and the service status page (/status): server-rendered html/template
// pages with embedded assets, nothing loaded from other hosts. Sessions
// are HMAC-signed cookies (HttpOnly, SameSite=Strict, Secure over HTTPS),
// so any replica can serve any request; every form carries a CSRF token
// bound to the session.
package web

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/accounts"
	"github.com/roadsign/roadsign/server/bundle"
	"github.com/roadsign/roadsign/server/connect"
	"github.com/roadsign/roadsign/server/jobs"
	"github.com/roadsign/roadsign/server/owners"
	"github.com/roadsign/roadsign/server/registry"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Check is one line of the status page.
type Check struct {
	Name   string
	OK     bool
	Detail string
}

// Deps are the services the pages use.
type Deps struct {
	Accounts *accounts.Service
	Owners   *owners.Service
	Registry *registry.Service
	Jobs     *jobs.Service
	Bundles  *bundle.Service
	Store    server.Store
	Status   func(ctx context.Context) []Check
	Secret   []byte
	Now      func() time.Time
	Log      *slog.Logger
}

// Web renders the pages.
type Web struct {
	Deps
	tmpl   *template.Template
	static http.Handler
}

// Route is a page route, for the server's route table.
type Route struct {
	Method, Path, Summary string
	Handler               gin.HandlerFunc
}

// New parses the embedded templates.
func New(d Deps) (*Web, error) {
	t, err := template.ParseFS(templateFS, "templates/*.html")
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
		{"GET", "/", "Owner portal: my vehicles, link a vehicle, USB update (HTML)", w.ownerPage},
		{"POST", "/login", "Owner log-in form", w.login(false)},
		{"POST", "/logout", "Log out", w.logout},
		{"POST", "/link", "Owner: link a vehicle with its code", w.link},
		{"GET", "/vehicles/:vin/usb", "Owner or dealer: download the USB update", w.usb},
		{"GET", "/dealer", "Dealer console: find a VIN, jobs, re-provisioning (HTML)", w.dealerPage},
		{"POST", "/dealer/login", "Dealer log-in form", w.login(true)},
		{"POST", "/dealer/jobs", "Dealer: push a reflash job", w.pushJob},
		{"GET", "/dealer/jobs/:id", "Dealer: one job as JSON, for live progress (ID.json)", w.jobJSON},
		{"POST", "/dealer/jobs/:id/cancel", "Dealer: cancel a job", w.cancelJob},
		{"POST", "/dealer/replace", "Dealer: re-provision a replaced unit", w.replace},
		{"GET", "/status", "Service status: repository, director, stores, re-signing (HTML)", w.statusPage},
		{"GET", "/static/*file", "Embedded style sheet and script", func(c *gin.Context) {
			c.Header("Cache-Control", "public, max-age=3600")
			w.static.ServeHTTP(c.Writer, c.Request)
		}},
	}
}

// --- sessions ---

const cookieName = "rs_session"

type session struct {
	AccountID string `json:"a"`
	Name      string `json:"n"`
	Role      string `json:"r"`
	ID        string `json:"s"`
	Expires   int64  `json:"e"`
}

func (w *Web) sign(label, payload string) string {
	m := hmac.New(sha256.New, w.Secret)
	m.Write([]byte(label + "\n" + payload))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (w *Web) setSession(c *gin.Context, p accounts.Principal) {
	id := make([]byte, 16)
	rand.Read(id)
	s := session{AccountID: p.ID, Name: p.Name, Role: string(p.Role), ID: hex.EncodeToString(id), Expires: w.Now().Add(12 * time.Hour).Unix()}
	b, _ := json.Marshal(s)
	payload := base64.RawURLEncoding.EncodeToString(b)
	http.SetCookie(c.Writer, &http.Cookie{
		Name: cookieName, Value: payload + "." + w.sign("session", payload), Path: "/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secure(c.Request), MaxAge: 12 * 3600,
	})
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
	payload, sig, ok := strings.Cut(ck.Value, ".")
	if !ok || !hmac.Equal([]byte(sig), []byte(w.sign("session", payload))) {
		return session{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(payload)
	var s session
	if err != nil || json.Unmarshal(b, &s) != nil || w.Now().Unix() > s.Expires {
		return session{}, false
	}
	return s, true
}

func (s session) principal() accounts.Principal {
	return accounts.Principal{ID: s.AccountID, Name: s.Name, Role: server.Role(s.Role)}
}

func (w *Web) csrf(s session) string { return w.sign("csrf", s.ID) }

// form checks the session has one of the roles and the form's CSRF token.
func (w *Web) form(c *gin.Context, roles ...server.Role) (session, bool) {
	s, ok := w.session(c)
	if !ok || !hasRole(s, roles) {
		c.String(http.StatusUnauthorized, "log in first")
		return s, false
	}
	if !hmac.Equal([]byte(c.PostForm("csrf")), []byte(w.csrf(s))) {
		c.String(http.StatusForbidden, "this form expired or came from another site; reload the page and try again")
		return s, false
	}
	return s, true
}

func hasRole(s session, roles []server.Role) bool {
	for _, r := range roles {
		if server.Role(s.Role) == r {
			return true
		}
	}
	return false
}

// --- pages ---

type page struct {
	Title, User, CSRF, Flash, Error string
	Action                          string
	Dealer                          bool
	Vehicles                        any
	Vehicle                         *server.Vehicle
	Auth                            connect.State
	VIN                             string
	Jobs                            []server.Job
	// USBValidUntil is until when a USB bundle downloaded now installs.
	USBValidUntil time.Time
}

func (w *Web) render(c *gin.Context, status int, name string, p page) {
	c.Header("Content-Type", "text/html; charset=utf-8")
	c.Header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
	c.Header("X-Content-Type-Options", "nosniff")
	c.Status(status)
	if err := w.tmpl.ExecuteTemplate(c.Writer, name, p); err != nil {
		w.Log.Error("render page", "page", name, "err", err)
	}
}

func (w *Web) base(c *gin.Context, s session, title string) page {
	return page{Title: title, User: s.Name, CSRF: w.csrf(s), Flash: c.Query("msg"), Error: c.Query("err")}
}

func redirect(c *gin.Context, path string, kv ...string) {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	if len(q) > 0 {
		path += "?" + q.Encode()
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
	if !ok || s.Role != string(server.RoleOwner) {
		w.render(c, http.StatusOK, "login", page{Title: "Owner portal", Action: "/login", Error: c.Query("err")})
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
	}
	var vs []owned
	for _, l := range links {
		if v, err := w.Store.Vehicle(ctx, l.VIN); err == nil {
			vs = append(vs, owned{Vehicle: v, Link: l, Subscription: w.Owners.SubscriptionState(l)})
		}
	}
	p := w.base(c, s, "My vehicles")
	p.Vehicles = vs
	p.USBValidUntil = w.Now().Add(bundle.DefaultValidity)
	w.render(c, http.StatusOK, "owner", p)
}

func (w *Web) login(dealer bool) gin.HandlerFunc {
	back := "/"
	if dealer {
		back = "/dealer"
	}
	return func(c *gin.Context) {
		ctx := c.Request.Context()
		name, secret := strings.TrimSpace(c.PostForm("name")), c.PostForm("secret")
		var p accounts.Principal
		ok := false
		if dealer {
			got, err := w.Accounts.Authenticate(ctx, secret)
			ok = err == nil && got.Name == name && (got.Role == server.RoleDealer || got.Role == server.RoleAdmin)
			p = got
		} else {
			a, err := w.Store.AccountByName(ctx, name)
			ok = err == nil && a.Role == server.RoleOwner && accounts.CheckPassword(a.PasswordHash, secret)
			p = accounts.Principal{ID: a.ID, Name: a.Name, Role: a.Role}
		}
		if !ok {
			redirect(c, back, "err", "That name and password do not match an account.")
			return
		}
		w.setSession(c, p)
		redirect(c, back)
	}
}

func (w *Web) logout(c *gin.Context) {
	if _, ok := w.form(c, server.RoleOwner, server.RoleDealer, server.RoleAdmin); !ok {
		return
	}
	http.SetCookie(c.Writer, &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secure(c.Request)})
	redirect(c, "/")
}

func (w *Web) link(c *gin.Context) {
	s, ok := w.form(c, server.RoleOwner)
	if !ok {
		return
	}
	req := owners.LinkRequest{VIN: strings.ToUpper(strings.TrimSpace(c.PostForm("vin"))), Code: strings.ToUpper(strings.TrimSpace(c.PostForm("code")))}
	if _, err := w.Owners.LinkWithCode(c.Request.Context(), s.principal(), req); err != nil {
		redirect(c, "/", "err", message(err))
		return
	}
	redirect(c, "/", "msg", "Vehicle "+req.VIN+" is linked to your account.")
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
	plan, err := w.Bundles.Prepare(ctx, v, bundle.DefaultValidity)
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
	if !ok || !hasRole(s, []server.Role{server.RoleDealer, server.RoleAdmin}) {
		w.render(c, http.StatusOK, "login", page{Title: "Dealer console", Action: "/dealer/login", Dealer: true, Error: c.Query("err")})
		return
	}
	p := w.base(c, s, "Dealer console")
	p.VIN = strings.ToUpper(strings.TrimSpace(c.Query("vin")))
	if p.VIN != "" {
		ctx := c.Request.Context()
		v, err := w.Registry.Get(ctx, s.principal(), p.VIN)
		if err != nil {
			p.Error = message(err)
		} else {
			p.Vehicle = &v
			p.Auth = connect.StateOf(v, w.Now())
			js, _ := w.Jobs.ByVIN(ctx, v.VIN)
			for i := len(js) - 1; i >= 0; i-- { // newest first
				p.Jobs = append(p.Jobs, js[i])
			}
		}
	}
	w.render(c, http.StatusOK, "dealer", p)
}

func (w *Web) pushJob(c *gin.Context) {
	s, ok := w.form(c, server.RoleDealer, server.RoleAdmin)
	if !ok {
		return
	}
	vin := c.PostForm("vin")
	j, err := w.Jobs.Create(c.Request.Context(), s.principal(), jobs.CreateRequest{VIN: vin, ECU: c.PostForm("ecu"), Version: c.PostForm("version"), Reason: c.PostForm("reason")})
	if err != nil {
		redirect(c, "/dealer", "vin", vin, "err", message(err))
		return
	}
	redirect(c, "/dealer", "vin", vin, "msg", fmt.Sprintf("Job %s queued: %s on %s.", j.ID[:8], j.Version, j.ECUSerial))
}

func (w *Web) cancelJob(c *gin.Context) {
	s, ok := w.form(c, server.RoleDealer, server.RoleAdmin)
	if !ok {
		return
	}
	vin := c.PostForm("vin")
	j, err := w.Jobs.Cancel(c.Request.Context(), s.principal(), c.Param("id"))
	if err != nil {
		redirect(c, "/dealer", "vin", vin, "err", message(err))
		return
	}
	msg := fmt.Sprintf("Job %s canceled.", j.ID[:8])
	if !server.JobTerminal(j.State) {
		msg = fmt.Sprintf("Job %s is flashing: the install finishes or rolls back, and the job says which.", j.ID[:8])
	}
	redirect(c, "/dealer", "vin", vin, "msg", msg)
}

func (w *Web) jobJSON(c *gin.Context) {
	s, ok := w.session(c)
	if !ok || !hasRole(s, []server.Role{server.RoleDealer, server.RoleAdmin}) {
		c.JSON(http.StatusUnauthorized, gin.H{"error": gin.H{"code": "unauthorized", "message": "log in first"}})
		return
	}
	j, err := w.Jobs.Get(c.Request.Context(), strings.TrimSuffix(c.Param("id"), ".json"))
	if err != nil {
		c.JSON(http.StatusNotFound, gin.H{"error": gin.H{"code": "not_found", "message": message(err)}})
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
		redirect(c, "/dealer", "vin", vin, "err", message(err))
		return
	}
	redirect(c, "/dealer", "vin", vin, "msg", "Unit re-provisioned; the car reauthorizes with its new key.")
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
	c.Header("Content-Type", "text/html; charset=utf-8")
	c.Header("Cache-Control", "no-store")
	status := http.StatusOK
	if !all {
		status = http.StatusServiceUnavailable
	}
	c.Status(status)
	if err := w.tmpl.ExecuteTemplate(c.Writer, "status", data); err != nil {
		w.Log.Error("render status", "err", err)
	}
}
