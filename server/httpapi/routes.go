package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/roadsign/roadsign/internal/timeattest"
	"github.com/roadsign/roadsign/internal/vehicleauth"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/accounts"
	"github.com/roadsign/roadsign/server/auditlog"
	"github.com/roadsign/roadsign/server/bundle"
	"github.com/roadsign/roadsign/server/campaigns"
	"github.com/roadsign/roadsign/server/connect"
	"github.com/roadsign/roadsign/server/diagnosis"
	"github.com/roadsign/roadsign/server/jobs"
	"github.com/roadsign/roadsign/server/owners"
	"github.com/roadsign/roadsign/server/registry"
	"github.com/roadsign/roadsign/server/softwarerecord"
)

// route is one entry of the route table: gin registers it and the OpenAPI
// document describes it, so the two cannot drift apart.
type route struct {
	Method  string
	Path    string // gin syntax: :param, *wildcard
	Who     []string
	Summary string
	Schema  string // request schema name in the OpenAPI components, if any
	handler gin.HandlerFunc
	Body    Body // body limit and deadlines (Default by method)
}

func (a *api) routes() []route {
	rs := a.apiRoutes()
	if a.Web != nil {
		// Pages do their own session checks (cookie + CSRF), so the table
		// lists them as public.
		for _, p := range a.Web.Routes() {
			b := Default
			switch {
			case p.Download:
				b = Download
			case p.Method == http.MethodPost:
				b = Form
			}
			rs = append(rs, route{p.Method, p.Path, []string{Public}, p.Summary, "", p.Handler, b})
		}
	}
	return rs
}

func (a *api) apiRoutes() []route {
	// The permission table (docs/roles.md): staff read everything; the
	// fleet's releases are run by release managers (and admins), approved
	// by approvers; dealers act on vehicles of their regions; support
	// changes nothing.
	pub, admin := []string{Public}, []string{Admin}
	read := []string{Admin, ReleaseManager, Approver, Support, Dealer}
	readOwner := append(slices.Clone(read), Owner)
	release := []string{Admin, ReleaseManager}
	actors := []string{Admin, ReleaseManager, Dealer}
	people := []string{Admin, ReleaseManager, Approver, Dealer, Owner}
	return []route{
		{"GET", "/healthz", pub, "Liveness", "", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"status": "ok"}) }, Default},
		{"GET", "/readyz", pub, "Readiness: state and blob stores reachable", "", a.readyz, Default},
		{"GET", "/metrics", pub, "Prometheus metrics", "", gin.WrapH(promhttp.HandlerFor(a.Metrics, promhttp.HandlerOpts{})), Default},
		{"GET", "/api/v1/openapi.json", pub, "This document", "", a.openapi, Default},

		{"GET", "/repo/*file", pub, "Image repository metadata and target files (consistent snapshots; Range, ETag)", "", a.repoFile, Download},
		{"HEAD", "/repo/*file", pub, "Image repository file headers", "", a.repoFile, Download},
		{"GET", "/director/:vin/*file", []string{Vehicle}, "Per-VIN director metadata, for that vehicle only", "", a.directorFile, Default},

		{"POST", "/api/v1/repo/publish", release, "Publish signed root and targets metadata (signer)", "PublishRequest", a.publish, LargeJSON},
		{"PUT", "/api/v1/repo/targets/*file", release, "Upload a target file at DIR/SHA256.NAME (streamed, verified)", "", a.uploadTarget, Upload},

		{"POST", "/api/v1/accounts", []string{Admin, Bootstrap}, "Create an account with its roles (a dealer with its regions); the token is shown only in the answer", "AccountRequest", a.createAccount, Default},
		{"GET", "/api/v1/accounts", []string{Admin, Support}, "List accounts", "", a.listAccounts, Default},
		{"POST", "/api/v1/accounts/:id/disable", admin, "Disable an account: its token and sessions stop working at once", "", a.setDisabled(true), Default},
		{"POST", "/api/v1/accounts/:id/enable", admin, "Enable a disabled account again", "", a.setDisabled(false), Default},
		{"POST", "/api/v1/accounts/:id/token", admin, "Give an account a new token; the old one is revoked", "", a.rotateToken, Default},
		{"POST", "/api/v1/owners/me/password", []string{Owner}, "Change my password; every portal session ends", "PasswordRequest", a.changePassword, Default},

		{"POST", "/api/v1/vehicles", actors, "Register a vehicle", "VehicleRequest", a.registerVehicle, Default},
		{"GET", "/api/v1/vehicles", read, "List vehicles (keyset pages: ?after=VIN&limit=&hardwareId=)", "", a.listVehicles, Default},
		{"GET", "/api/v1/vehicles/:vin", readOwner, "A vehicle: ECUs, installed versions, open jobs", "", a.getVehicle, Default},
		{"POST", "/api/v1/vehicles/:vin/manifest", []string{Vehicle}, "Signed version manifest (check-in)", "SignedManifest", a.manifest, Default},

		{"POST", "/api/v1/jobs", actors, "Create a reflash job (\"vin\"), or jobs for many vehicles (\"vins\"; over the approval threshold, approved first)", "JobRequest", a.createJob, Default},
		{"GET", "/api/v1/jobs", read, "Jobs of a vehicle (?vin=)", "", a.listJobs, Default},
		{"GET", "/api/v1/jobs/:id", read, "A job with its event history", "", a.getJob, Default},
		{"POST", "/api/v1/jobs/:id/cancel", actors, "Cancel a job", "", a.cancelJob, Default},
		{"POST", "/api/v1/jobs/:id/events", []string{Vehicle}, "Progress report from the job's vehicle", "JobEvent", a.jobEvent, Default},

		{"GET", "/api/v1/audit", []string{Admin, Support, Approver}, "Audit log (?after=ID&limit=)", "", a.audit, Default},

		{"POST", "/api/v1/campaigns", release, "Create a campaign (draft): one image for the vehicles a selector picks, in waves", "CampaignRequest", a.createCampaign, Default},
		{"GET", "/api/v1/campaigns", read, "Campaigns with their waves and counts, newest first", "", a.listCampaigns, Default},
		{"GET", "/api/v1/campaigns/:id", read, "A campaign: state, halt reason, waves with counts, totals", "", a.getCampaign, Default},
		{"PATCH", "/api/v1/campaigns/:id", release, "Change a campaign: its image version, selector or waves (a draft), or raise its waves (running or paused, approved first); any change voids its approval", "CampaignChange", a.changeCampaign, Default},
		{"POST", "/api/v1/campaigns/:id/start", release, "Start a draft campaign: its vehicles are fixed now (approved first: else 409 approval_required)", "", a.campaignAction("start"), Default},
		{"POST", "/api/v1/campaigns/:id/approve", []string{Approver}, "Approve what the campaign's proposer asked for (start, or raised waves); not by the proposer", "", a.decideCampaign(true), Default},
		{"POST", "/api/v1/campaigns/:id/refuse", []string{Approver}, "Refuse a campaign's approval request, with a reason", "RefuseRequest", a.decideCampaign(false), Default},
		{"GET", "/api/v1/approvals", read, "Approval requests and decisions, newest first (?state=pending)", "", a.listApprovals, Default},
		{"POST", "/api/v1/approvals/:id/approve", []string{Approver}, "Approve a request (a campaign's, or jobs for many vehicles); not by its proposer", "", a.decideApproval(true), Default},
		{"POST", "/api/v1/approvals/:id/refuse", []string{Approver}, "Refuse a request, with a reason", "RefuseRequest", a.decideApproval(false), Default},
		{"POST", "/api/v1/campaigns/:id/pause", release, "Pause a running campaign: nothing new is assigned", "", a.campaignAction("pause"), Default},
		{"POST", "/api/v1/campaigns/:id/resume", release, "Resume a paused campaign", "", a.campaignAction("resume"), Default},
		{"POST", "/api/v1/campaigns/:id/abort", release, "Abort a campaign: jobs not started are canceled", "", a.campaignAction("abort"), Default},
		{"GET", "/api/v1/owners/me/updates", []string{Owner}, "Campaign updates waiting for my consent, with release notes", "", a.pendingUpdates, Default},
		{"POST", "/api/v1/owners/me/vehicles/:vin/consent", []string{Owner}, "Accept or decline a campaign's update for my vehicle", "ConsentRequest", a.consent, Default},

		{"POST", "/api/v1/vehicles/:vin/link-code", []string{Vehicle}, "A one-time code the vehicle shows, for its owner to link it", "", a.linkCode, Default},
		{"POST", "/api/v1/owners/me/vehicles", []string{Owner}, "Link a vehicle with the code it shows", "LinkRequest", a.linkVehicle, Default},
		{"GET", "/api/v1/owners/me/vehicles", []string{Owner}, "My vehicles with ECU versions and subscription state", "", a.myVehicles, Default},
		{"DELETE", "/api/v1/owners/me/vehicles/:vin", []string{Owner}, "Release a vehicle (sold); a pending claim is dropped", "", a.releaseVehicle, Default},
		{"POST", "/api/v1/owners/me/vehicles/:vin/claim", []string{Owner}, "Accept or reject a claim on my vehicle", "ClaimDecision", a.decideClaim(true), Default},
		{"POST", "/api/v1/vehicles/:vin/claim", actors, "Resolve a claim on a vehicle (audited, with a reason)", "ClaimDecision", a.decideClaim(false), Default},
		{"POST", "/api/v1/vehicles/:vin/owner", actors, "Link or transfer a vehicle to an owner account (audited)", "TransferRequest", a.transferVehicle, Default},
		{"GET", "/api/v1/vehicles/:vin/usb-bundle", []string{Owner, Dealer}, "Streamed USB bundle for that VIN (?valid_days=30, ?full=true to add full images beside deltas)", "", a.usbBundle, Download},
		{"POST", "/api/v1/vehicles/:vin/time", pub, "Time attestation: the server's time, signed by the director root's time key, for the vehicle's fresh nonce (secure time)", "", a.timeAttestation, Default},
		{"POST", "/api/v1/vehicles/:vin/auth", []string{Vehicle}, "Connected-services challenge/response; returns a short-lived token", "AuthRequest", a.auth, Default},
		{"POST", "/api/v1/vehicles/:vin/ecus/:serial/replace", []string{Dealer}, "Re-provision a replaced DCM or head unit", "ReplaceRequest", a.replaceECU, Default},
		{"GET", "/api/v1/vehicles/:vin/push", []string{Vehicle}, "Where the vehicle hears wake-ups: the MQTT broker (empty when none) and its own topic", "", a.pushInfo, Default},
		{"GET", "/api/v1/vehicles/:vin/software-record", readOwner, "The vehicle's software record: every install attempt per ECU (?format=json, csv or signed)", "", a.softwareRecord, Default},
		{"GET", "/api/v1/vehicles/:vin/diagnosis", readOwner, "Why connected services fail: findings, likeliest first, with evidence and fixes (owners get their own wording)", "", a.diagnose, Default},
		{"POST", "/api/v1/tokens", people, "Create an API token: a name, roles (a subset of mine) and a life (expiresIn: \"30d\"); the token is shown only in the answer", "TokenRequest", create(a, a.Accounts.CreateToken), Default},
		{"GET", "/api/v1/tokens", append(slices.Clone(people), Support), "My API tokens (an admin: everyone's), with their last use and address", "", a.listTokens, Default},
		{"POST", "/api/v1/tokens/:id/revoke", people, "Revoke one of my API tokens (an admin: anyone's)", "", a.revokeToken, Default},
		{"POST", "/api/v1/webhooks", admin, "Subscribe a URL to events; deliveries are signed with the secret (HMAC-SHA256)", "WebhookRequest", create(a, a.Webhooks.Create), Default},
		{"GET", "/api/v1/webhooks", []string{Admin, Support}, "Webhook subscriptions, with their newest deliveries", "", a.listWebhooks, Default},
		{"DELETE", "/api/v1/webhooks/:id", admin, "Delete a subscription (deliveries not yet made are dropped)", "", a.deleteWebhook, Default},
		{"GET", "/api/v1/diagnoses", read, "Findings across the fleet by cause: open now, resolved in the last 30 days", "", a.diagnosisCounts, Default},
	}
}

func (a *api) diagnose(c *gin.Context) {
	p, _ := principal(c)
	ctx := c.Request.Context()
	if _, err := a.Registry.Get(ctx, p, c.Param("vin")); err != nil { // an owner sees only their own cars
		a.fail(c, err)
		return
	}
	r, err := a.Diagnosis.Diagnose(ctx, c.Param("vin"))
	if err != nil {
		a.fail(c, err)
		return
	}
	if p.Is(server.RoleOwner) {
		c.JSON(http.StatusOK, r.ForOwner())
		return
	}
	history, err := a.Diagnosis.History(ctx, c.Param("vin"))
	if err != nil {
		a.fail(c, err)
		return
	}
	if history == nil {
		history = []server.Finding{}
	}
	if r.Findings == nil {
		r.Findings = []diagnosis.Finding{}
	}
	c.JSON(http.StatusOK, gin.H{"vin": r.VIN, "healthy": r.Healthy, "summary": r.Summary, "findings": r.Findings, "history": history})
}

func (a *api) diagnosisCounts(c *gin.Context) {
	counts, err := a.Diagnosis.Counts(c.Request.Context())
	if err != nil {
		a.fail(c, err)
		return
	}
	if counts == nil {
		counts = []server.FindingCount{}
	}
	c.JSON(http.StatusOK, gin.H{"counts": counts})
}

func (a *api) createAccount(c *gin.Context) {
	var req accounts.CreateRequest
	if err := decodeJSON(c, &req); err != nil {
		a.fail(c, err)
		return
	}
	p, _ := principal(c)
	created, err := a.Accounts.Create(c.Request.Context(), p, req)
	if err != nil {
		a.fail(c, err)
		return
	}
	if err := auditlog.Record(c.Request.Context(), a.Store, a.Now(), p, "account.create", created.Name, "roles="+created.Roles.String()+accounts.RegionsAudit(created.Regions)); err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusCreated, created)
}

func (a *api) listAccounts(c *gin.Context) {
	as, err := a.Accounts.List(c.Request.Context())
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"accounts": as})
}

func (a *api) setDisabled(disabled bool) gin.HandlerFunc {
	return func(c *gin.Context) {
		p, _ := principal(c)
		v, err := a.Accounts.SetDisabled(c.Request.Context(), p, c.Param("id"), disabled)
		if err != nil {
			a.fail(c, err)
			return
		}
		c.JSON(http.StatusOK, v)
	}
}

func (a *api) rotateToken(c *gin.Context) {
	p, _ := principal(c)
	created, err := a.Accounts.RotateToken(c.Request.Context(), p, c.Param("id"))
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, created)
}

// PasswordRequest is the body of POST /api/v1/owners/me/password.
type PasswordRequest struct {
	Current string `json:"current"`
	New     string `json:"new"`
}

func (a *api) changePassword(c *gin.Context) {
	var req PasswordRequest
	if err := decodeJSON(c, &req); err != nil {
		a.fail(c, err)
		return
	}
	p, _ := principal(c)
	if err := a.Accounts.ChangePassword(c.Request.Context(), p, req.Current, req.New); err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"status": "changed; every session ended"})
}

func (a *api) decideClaim(asOwner bool) gin.HandlerFunc {
	return func(c *gin.Context) {
		var req owners.ClaimDecision
		if err := decodeJSON(c, &req); err != nil {
			a.fail(c, err)
			return
		}
		p, _ := principal(c)
		l, err := a.Owners.DecideClaim(c.Request.Context(), p, c.Param("vin"), req, asOwner)
		if err != nil {
			a.fail(c, err)
			return
		}
		c.JSON(http.StatusOK, l)
	}
}

func (a *api) createCampaign(c *gin.Context) {
	var req campaigns.CreateRequest
	if err := decodeJSON(c, &req); err != nil {
		a.fail(c, err)
		return
	}
	p, _ := principal(c)
	v, err := a.Campaigns.Create(c.Request.Context(), p, req)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusCreated, v)
}

func (a *api) listCampaigns(c *gin.Context) {
	vs, err := a.Campaigns.List(c.Request.Context())
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"campaigns": nonNil(vs)})
}

func (a *api) getCampaign(c *gin.Context) {
	v, err := a.Campaigns.Get(c.Request.Context(), c.Param("id"))
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, v)
}

func (a *api) campaignAction(action string) gin.HandlerFunc {
	return func(c *gin.Context) {
		p, _ := principal(c)
		var v campaigns.View
		var err error
		if action == "start" {
			v, err = a.Campaigns.Start(c.Request.Context(), p, c.Param("id"))
		} else {
			v, err = a.Campaigns.Act(c.Request.Context(), p, c.Param("id"), action)
		}
		if err != nil {
			a.fail(c, err)
			return
		}
		c.JSON(http.StatusOK, v)
	}
}

func (a *api) pendingUpdates(c *gin.Context) {
	p, _ := principal(c)
	links, err := a.Owners.Mine(c.Request.Context(), p)
	if err != nil {
		a.fail(c, err)
		return
	}
	out := []campaigns.Pending{}
	for _, l := range links {
		ps, err := a.Campaigns.PendingConsent(c.Request.Context(), l.VIN)
		if err != nil {
			a.fail(c, err)
			return
		}
		out = append(out, ps...)
	}
	c.JSON(http.StatusOK, gin.H{"updates": out})
}

// ConsentRequest is the body of POST /api/v1/owners/me/vehicles/{vin}/consent.
type ConsentRequest struct {
	Campaign string `json:"campaign"`
	Decision string `json:"decision"` // accept or decline
}

func (a *api) consent(c *gin.Context) {
	var req ConsentRequest
	if err := decodeJSON(c, &req); err != nil {
		a.fail(c, err)
		return
	}
	p, _ := principal(c)
	ctx := c.Request.Context()
	if ok, err := a.Owners.Owns(ctx, p, c.Param("vin")); err != nil {
		a.fail(c, err)
		return
	} else if !ok {
		a.fail(c, server.Errorf(server.KindNotFound, "vehicle %s is not linked to your account", c.Param("vin")))
		return
	}
	if err := a.Campaigns.Consent(ctx, p, c.Param("vin"), req.Campaign, req.Decision); err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"status": req.Decision + "ed"})
}

func (a *api) registerVehicle(c *gin.Context) {
	var req registry.RegisterRequest
	if err := decodeJSON(c, &req); err != nil {
		a.fail(c, err)
		return
	}
	p, _ := principal(c)
	v, err := a.Registry.Register(c.Request.Context(), p, req)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusCreated, v)
}

func (a *api) listVehicles(c *gin.Context) {
	limit, _ := strconv.Atoi(c.Query("limit"))
	f := server.VehicleFilter{HardwareID: c.Query("hardwareId"), After: c.Query("after"), Limit: limit}
	if p, _ := principal(c); p.DealerOnly() {
		f.Regions = p.Regions // a dealer sees the vehicles it serves
	}
	vs, err := a.Registry.List(c.Request.Context(), f)
	if err != nil {
		a.fail(c, err)
		return
	}
	next := ""
	if len(vs) > 0 {
		next = vs[len(vs)-1].VIN
	}
	c.JSON(http.StatusOK, gin.H{"vehicles": nonNil(vs), "next": next})
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func (a *api) getVehicle(c *gin.Context) {
	p, _ := principal(c)
	v, err := a.Registry.Get(c.Request.Context(), p, c.Param("vin"))
	if err != nil {
		a.fail(c, err)
		return
	}
	all, err := a.Jobs.ByVIN(c.Request.Context(), v.VIN)
	if err != nil {
		a.fail(c, err)
		return
	}
	open := []server.Job{}
	for _, j := range all {
		if !server.JobTerminal(j.State) {
			open = append(open, j)
		}
	}
	c.JSON(http.StatusOK, gin.H{"vehicle": v, "openJobs": open, "authorization": connect.StateOf(v, a.Now())})
}

func (a *api) manifest(c *gin.Context) {
	var sm vehicleauth.SignedManifest
	if err := decodeJSON(c, &sm); err != nil {
		a.fail(c, err)
		return
	}
	if err := a.Registry.CheckIn(c.Request.Context(), c.Param("vin"), sm); err != nil {
		a.fail(c, err)
		return
	}
	// A manifest that asks for it gets the server's time for its nonce:
	// the vehicle's clock stays trusted between cycles.
	var m struct {
		Nonce      string `json:"nonce"`
		AttestTime bool   `json:"attestTime"`
	}
	body := gin.H{"status": "recorded"}
	if json.Unmarshal(sm.Signed, &m) == nil && m.AttestTime && a.TimeKey != nil {
		att, err := a.attest(c.Param("vin"), m.Nonce)
		if err != nil {
			a.fail(c, err)
			return
		}
		body["time"] = att
	}
	c.JSON(http.StatusOK, body)
}

// timeAttestation answers POST /api/v1/vehicles/{vin}/time {"nonce"}:
// public, as the signed time is worth nothing to anyone but the vehicle
// that chose the nonce, and a vehicle whose clock is wrong cannot sign a
// request the server takes (its time would be refused as skewed).
func (a *api) timeAttestation(c *gin.Context) {
	var req struct {
		Nonce string `json:"nonce"`
	}
	if err := decodeJSON(c, &req); err != nil {
		a.fail(c, err)
		return
	}
	if a.TimeKey == nil {
		a.fail(c, server.Errorf(server.KindUnavailable, "this server has no time key"))
		return
	}
	att, err := a.attest(c.Param("vin"), req.Nonce)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, att)
}

func (a *api) attest(vin, nonce string) (timeattest.Attestation, error) {
	att, err := timeattest.Sign(a.TimeKey.Private, a.TimeKey.ID, timeattest.Statement{VIN: vin, Nonce: nonce,
		Time: a.Now().UTC(), ValidSeconds: int64(timeattest.Validity / time.Second)})
	if err != nil {
		return att, server.Errorf(server.KindInvalid, "time attestation: %v", err)
	}
	return att, nil
}

func (a *api) createJob(c *gin.Context) {
	var req jobs.CreateRequest
	if err := decodeJSON(c, &req); err != nil {
		a.fail(c, err)
		return
	}
	p, _ := principal(c)
	if len(req.VINs) > 0 {
		js, err := a.Jobs.CreateMany(c.Request.Context(), p, req)
		if err != nil {
			a.fail(c, err)
			return
		}
		c.JSON(http.StatusCreated, gin.H{"jobs": js})
		return
	}
	j, err := a.Jobs.Create(c.Request.Context(), p, req)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusCreated, j)
}

func (a *api) listJobs(c *gin.Context) {
	vin := c.Query("vin")
	if vin == "" {
		a.fail(c, server.Errorf(server.KindInvalid, "give ?vin=VIN"))
		return
	}
	js, err := a.Jobs.ByVIN(c.Request.Context(), vin)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"jobs": nonNil(js)})
}

func (a *api) getJob(c *gin.Context) {
	j, err := a.Jobs.Get(c.Request.Context(), c.Param("id"))
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, j)
}

func (a *api) cancelJob(c *gin.Context) {
	p, _ := principal(c)
	j, err := a.Jobs.Cancel(c.Request.Context(), p, c.Param("id"))
	if err != nil {
		a.fail(c, err)
		return
	}
	status := http.StatusOK
	if !server.JobTerminal(j.State) {
		status = http.StatusAccepted // flashing: the install finishes or rolls back first
	}
	c.JSON(status, j)
}

func (a *api) jobEvent(c *gin.Context) {
	var req jobs.EventRequest
	if err := decodeJSON(c, &req); err != nil {
		a.fail(c, err)
		return
	}
	p, _ := principal(c)
	j, err := a.Jobs.Event(c.Request.Context(), p.VIN, c.Param("id"), req)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"id": j.ID, "state": j.State})
}

func (a *api) audit(c *gin.Context) {
	after, _ := strconv.ParseInt(c.Query("after"), 10, 64)
	limit, _ := strconv.Atoi(c.Query("limit"))
	list := a.Store.ListAudit
	if c.Query("newest") == "true" { // newest first; after= is then "before"
		list, after = a.Store.RecentAudit, 0
		if b, err := strconv.ParseInt(c.Query("before"), 10, 64); err == nil {
			after = b
		}
	}
	es, err := list(c.Request.Context(), after, limit)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"entries": nonNil(es)})
}

func (a *api) directorFile(c *gin.Context) {
	ctx := c.Request.Context()
	vin, name := c.Param("vin"), strings.TrimPrefix(c.Param("file"), "/")
	if strings.HasSuffix(name, ".root.json") {
		f, err := a.Repo.OpenDirectorRoot(ctx, name)
		if err != nil {
			a.fail(c, err)
			return
		}
		defer f.Close()
		serveFile(c, name, f)
		return
	}
	// Only the vehicle itself gets here (allow checked the VIN), and
	// the vehicle is read only when its assignment must be decided again.
	p, _ := principal(c)
	load := func(ctx context.Context) (server.Vehicle, error) { return a.Registry.Get(ctx, p, vin) }
	var body []byte
	var err error
	if name == "timestamp.json" {
		body, err = a.Director.Timestamp(ctx, vin, load)
		c.Header("Cache-Control", "no-store")
	} else {
		body, err = a.Director.File(ctx, vin, name)
		c.Header("Cache-Control", "private, max-age=31536000, immutable")
	}
	if err != nil {
		a.fail(c, err)
		return
	}
	c.Data(http.StatusOK, "application/json", body)
}

func (a *api) linkCode(c *gin.Context) {
	code, exp, err := a.Owners.NewLinkCode(c.Request.Context(), c.Param("vin"))
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"code": code, "expiresAt": exp})
}

func (a *api) linkVehicle(c *gin.Context) {
	var req owners.LinkRequest
	if err := decodeJSON(c, &req); err != nil {
		a.fail(c, err)
		return
	}
	p, _ := principal(c)
	l, err := a.Owners.LinkWithCode(c.Request.Context(), p, req)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusCreated, l)
}

// OwnedVehicle is one entry of an owner's vehicle list.
type OwnedVehicle struct {
	Vehicle      server.Vehicle `json:"vehicle"`
	Link         server.Link    `json:"link"`
	Subscription string         `json:"subscription"`
}

func (a *api) ownedVehicles(c *gin.Context) ([]OwnedVehicle, error) {
	p, _ := principal(c)
	links, err := a.Owners.Mine(c.Request.Context(), p)
	if err != nil {
		return nil, err
	}
	out := []OwnedVehicle{}
	for _, l := range links {
		v, err := a.Store.Vehicle(c.Request.Context(), l.VIN)
		if err != nil {
			return nil, err
		}
		out = append(out, OwnedVehicle{Vehicle: v, Link: l, Subscription: a.Owners.SubscriptionState(l)})
	}
	return out, nil
}

func (a *api) myVehicles(c *gin.Context) {
	vs, err := a.ownedVehicles(c)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"vehicles": vs})
}

func (a *api) releaseVehicle(c *gin.Context) {
	p, _ := principal(c)
	if err := a.Owners.Release(c.Request.Context(), p, c.Param("vin")); err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"status": "released"})
}

func (a *api) transferVehicle(c *gin.Context) {
	var req owners.TransferRequest
	if err := decodeJSON(c, &req); err != nil {
		a.fail(c, err)
		return
	}
	p, _ := principal(c)
	l, err := a.Owners.Transfer(c.Request.Context(), p, c.Param("vin"), req)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, l)
}

func (a *api) usbBundle(c *gin.Context) {
	ctx := c.Request.Context()
	p, _ := principal(c)
	v, err := a.Registry.Get(ctx, p, c.Param("vin")) // owners: only their own (404 otherwise)
	if err != nil {
		a.fail(c, err)
		return
	}
	valid := bundle.DefaultValidity
	if s := c.Query("valid_days"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 365 {
			a.fail(c, server.Errorf(server.KindInvalid, "valid_days %q: want 1 to 365", s))
			return
		}
		valid = time.Duration(n) * 24 * time.Hour
	}
	full := false
	if s := c.Query("full"); s != "" {
		if full, err = strconv.ParseBool(s); err != nil {
			a.fail(c, server.Errorf(server.KindInvalid, "full %q: want true or false", s))
			return
		}
	}
	plan, err := a.Bundles.Prepare(ctx, v, valid, full)
	if err != nil {
		a.fail(c, err)
		return
	}
	if err := plan.Serve(ctx, c.Writer, a.Store, p, a.Now()); err != nil {
		// Headers are gone; cutting the stream makes the download fail
		// visibly instead of leaving a bundle that looks complete.
		a.Log.ErrorContext(ctx, "bundle stream failed", "vin", v.VIN, "err", err)
		panic(http.ErrAbortHandler)
	}
}

func (a *api) auth(c *gin.Context) {
	var req connect.Request
	if err := decodeJSON(c, &req); err != nil {
		a.fail(c, err)
		return
	}
	ans, err := a.Connect.Handle(c.Request.Context(), c.Param("vin"), req)
	if err != nil {
		a.fail(c, err)
		return
	}
	if ans.Token == "" {
		setOutcome(c, "challenge_issued")
	}
	c.JSON(http.StatusOK, ans)
}

func (a *api) replaceECU(c *gin.Context) {
	var req registry.ReplaceRequest
	if err := decodeJSON(c, &req); err != nil {
		a.fail(c, err)
		return
	}
	p, _ := principal(c)
	v, err := a.Registry.ReplaceECU(c.Request.Context(), p, c.Param("vin"), c.Param("serial"), req)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, v)
}

// softwareRecord answers a vehicle's software record: a page of JSON
// (?after=ID&limit=N, oldest first), or all of it streamed as CSV or as a
// signed document (server/softwarerecord), in constant memory whatever
// its length.
func (a *api) softwareRecord(c *gin.Context) {
	p, _ := principal(c)
	ctx := c.Request.Context()
	v, err := a.Registry.Get(ctx, p, c.Param("vin"))
	if err != nil {
		a.fail(c, err)
		return
	}
	switch c.Query("format") {
	case "", "json":
		after, err1 := queryInt(c, "after", 0)
		limit, err2 := queryInt(c, "limit", recordPageDefault)
		if err := errors.Join(err1, err2); err != nil || after < 0 || limit < 1 || limit > server.MaxRecordPage {
			a.fail(c, server.Errorf(server.KindInvalid, "after= must be an entry ID and limit= 1 to %d", server.MaxRecordPage))
			return
		}
		recs, err := a.Store.SoftwareRecords(ctx, v.VIN, server.RecordQuery{AfterID: after, Limit: int(limit) + 1})
		if err != nil {
			a.fail(c, err)
			return
		}
		doc := softwarerecord.Document{VIN: v.VIN, GeneratedAt: a.Now().UTC(), Entries: recs}
		if len(recs) > int(limit) {
			doc.Entries = recs[:limit]
			doc.NextAfter = recs[limit-1].ID
		}
		c.JSON(http.StatusOK, doc)
	case "csv":
		c.Header("Content-Disposition", `attachment; filename="software-record-`+v.VIN+`.csv"`)
		c.Header("Content-Type", "text/csv; charset=utf-8")
		c.Status(http.StatusOK)
		cw, err := softwarerecord.NewCSVWriter(c.Writer)
		if err == nil {
			err = a.eachRecord(ctx, v.VIN, cw.Add)
		}
		if err == nil {
			err = cw.Close()
		}
		if err != nil {
			a.Log.Warn("software record CSV cut short", "vin", v.VIN, "err", err)
			panic(http.ErrAbortHandler) // the client sees a broken download, not a short file
		}
	case "signed":
		if a.RecordKey == nil {
			a.fail(c, server.Errorf(server.KindUnavailable, "this server has no key to sign software records"))
			return
		}
		c.Header("Content-Disposition", `attachment; filename="software-record-`+v.VIN+`.jsonl"`)
		c.Header("Content-Type", "application/x-ndjson")
		c.Status(http.StatusOK)
		sw, err := softwarerecord.NewWriter(c.Writer, v.VIN, a.Now(), a.RecordKey)
		if err == nil {
			err = a.eachRecord(ctx, v.VIN, sw.Add)
		}
		if err == nil {
			err = sw.Close()
		}
		if err != nil {
			a.Log.Warn("signed software record cut short", "vin", v.VIN, "err", err)
			panic(http.ErrAbortHandler) // unsigned, so no verifier takes it
		}
	default:
		a.fail(c, server.Errorf(server.KindInvalid, "format %q: want json, csv or signed", c.Query("format")))
	}
}

// recordPageDefault is a JSON page of the software record without limit=.
const recordPageDefault = 500

// eachRecord calls fn with every entry of vin's software record, oldest
// first, a page at a time.
func (a *api) eachRecord(ctx context.Context, vin string, fn func(server.SoftwareRecord) error) error {
	var after int64
	for {
		page, err := a.Store.SoftwareRecords(ctx, vin, server.RecordQuery{AfterID: after, Limit: server.MaxRecordPage})
		if err != nil {
			return err
		}
		for _, r := range page {
			if err := fn(r); err != nil {
				return err
			}
			after = r.ID
		}
		if len(page) < server.MaxRecordPage {
			return nil
		}
	}
}

// pushInfo tells a vehicle which broker and topic carry its wake-ups.
func (a *api) pushInfo(c *gin.Context) {
	vin := c.Param("vin")
	c.JSON(http.StatusOK, gin.H{"broker": a.Push.BrokerFor(c.Request.Host), "topic": vehicleauth.WakeTopic(vin)})
}

// queryInt reads an integer query parameter, def when absent.
func queryInt(c *gin.Context, name string, def int64) (int64, error) {
	s := c.Query(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s=%q is not a number", name, s)
	}
	return n, nil
}
