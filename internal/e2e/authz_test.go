package e2e

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// TestAuthorizationMatrix calls every route with every kind of caller (and
// none) and checks the status against the access table in docs/api.md: a caller who
// may not call a route gets 401 without credentials and 403 with the
// wrong ones; one who may never gets 401 or 403.
func TestAuthorizationMatrix(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v1, v2 := w.vehicle(1), w.vehicle(2)
	dealer, owner := w.account("dealer", "dealer-1"), w.account("owner", "owner-1")
	rm, ap, sp := w.account("release-manager", "rm-1"), w.account("approver", "approver-1"), w.account("support", "support-1")
	job := w.job(dealer, map[string]any{"vin": v1.vin, "ecu": "dcm", "version": "latest", "reason": "authz test"})
	var camp struct{ ID string } // a campaign the admin routes may act on
	w.api("POST", "/api/v1/campaigns", adminToken, map[string]any{"name": "authz", "ecu": "dcm", "version": "2.0.0"}, &camp)
	var spare struct{ ID string } // an account the admin routes may disable and re-key
	w.api("POST", "/api/v1/accounts", adminToken, map[string]any{"role": "dealer", "name": "spare", "regions": []string{"NA"}}, &spare)
	// Once an admin account exists, the bootstrap token only creates accounts.
	admin := w.account("admin", "ops-admin")
	vkey := func(v vehicleState) ed25519.PrivateKey {
		k, err := keys.Load(filepath.Join(v.dir, "vehicle.key"))
		if err != nil {
			t.Fatal(err)
		}
		return k.Private
	}
	k1, k2 := vkey(v1), vkey(v2)

	const all = "none bootstrap admin release-manager approver support dealer owner vehicle other-vehicle"
	const read = "admin release-manager approver support dealer"
	const people = "admin release-manager approver dealer owner"
	someID := uuid.NewString()
	matrix := []struct {
		method, path, concrete string
		allowed                string
	}{
		{"GET", "/healthz", "", all},
		{"GET", "/readyz", "", all},
		{"GET", "/metrics", "", all},
		{"GET", "/api/v1/openapi.json", "", all},
		{"GET", "/repo/{file}", "/repo/timestamp.json", all},
		{"HEAD", "/repo/{file}", "/repo/timestamp.json", all},
		{"GET", "/director/{vin}/{file}", "/director/" + v1.vin + "/timestamp.json", "vehicle"},
		{"POST", "/api/v1/repo/publish", "", "admin release-manager"},
		{"PUT", "/api/v1/repo/targets/{file}", "/api/v1/repo/targets/dcm/" + strings.Repeat("ab", 32) + ".x.img", "admin release-manager"},
		{"POST", "/api/v1/accounts", "", "bootstrap admin"},
		{"GET", "/api/v1/accounts", "", "admin support"},
		{"POST", "/api/v1/accounts/{id}/disable", "/api/v1/accounts/" + spare.ID + "/disable", "admin"},
		{"POST", "/api/v1/accounts/{id}/enable", "/api/v1/accounts/" + spare.ID + "/enable", "admin"},
		{"POST", "/api/v1/accounts/{id}/token", "/api/v1/accounts/" + spare.ID + "/token", "admin"},
		{"POST", "/api/v1/owners/me/password", "", "owner"},
		{"POST", "/api/v1/owners/me/vehicles/{vin}/claim", "/api/v1/owners/me/vehicles/" + v1.vin + "/claim", "owner"},
		{"POST", "/api/v1/vehicles/{vin}/claim", "/api/v1/vehicles/" + v1.vin + "/claim", "admin release-manager dealer"},
		{"POST", "/api/v1/vehicles", "", "admin release-manager dealer"},
		{"GET", "/api/v1/vehicles", "", read},
		// Owners may call it; for a VIN not theirs they get 404 (tested below).
		{"GET", "/api/v1/vehicles/{vin}", "/api/v1/vehicles/" + v1.vin, read + " owner"},
		{"POST", "/api/v1/vehicles/{vin}/manifest", "/api/v1/vehicles/" + v1.vin + "/manifest", "vehicle"},
		{"GET", "/api/v1/vehicles/{vin}/diagnosis", "/api/v1/vehicles/" + v1.vin + "/diagnosis", read + " owner"},
		{"GET", "/api/v1/vehicles/{vin}/software-record", "/api/v1/vehicles/" + v1.vin + "/software-record", read + " owner"},
		{"GET", "/api/v1/vehicles/{vin}/push", "/api/v1/vehicles/" + v1.vin + "/push", "vehicle"},
		{"GET", "/api/v1/diagnoses", "", read},
		{"POST", "/api/v1/tokens", "", people},
		{"GET", "/api/v1/tokens", "", people + " support"},
		{"POST", "/api/v1/tokens/{id}/revoke", "/api/v1/tokens/" + someID + "/revoke", people},
		{"POST", "/api/v1/webhooks", "", "admin"},
		{"GET", "/api/v1/webhooks", "", "admin support"},
		{"DELETE", "/api/v1/webhooks/{id}", "/api/v1/webhooks/" + someID, "admin"},
		{"GET", "/api/v1/approvals", "", read},
		{"POST", "/api/v1/approvals/{id}/approve", "/api/v1/approvals/" + someID + "/approve", "approver"},
		{"POST", "/api/v1/approvals/{id}/refuse", "/api/v1/approvals/" + someID + "/refuse", "approver"},
		{"POST", "/api/v1/jobs", "", "admin release-manager dealer"},
		{"GET", "/api/v1/jobs", "/api/v1/jobs?vin=" + v1.vin, read},
		{"GET", "/api/v1/jobs/{id}", "/api/v1/jobs/" + job.ID, read},
		{"POST", "/api/v1/jobs/{id}/cancel", "/api/v1/jobs/" + job.ID + "/cancel", "admin release-manager dealer"},
		{"POST", "/api/v1/jobs/{id}/events", "/api/v1/jobs/" + job.ID + "/events", "vehicle"},
		{"GET", "/api/v1/audit", "", "admin support approver"},
		{"POST", "/api/v1/campaigns", "", "admin release-manager"},
		{"GET", "/api/v1/campaigns", "", read},
		{"GET", "/api/v1/campaigns/{id}", "/api/v1/campaigns/" + camp.ID, read},
		{"PATCH", "/api/v1/campaigns/{id}", "/api/v1/campaigns/" + camp.ID, "admin release-manager"},
		{"POST", "/api/v1/campaigns/{id}/approve", "/api/v1/campaigns/" + camp.ID + "/approve", "approver"},
		{"POST", "/api/v1/campaigns/{id}/refuse", "/api/v1/campaigns/" + camp.ID + "/refuse", "approver"},
		{"POST", "/api/v1/campaigns/{id}/start", "/api/v1/campaigns/" + camp.ID + "/start", "admin release-manager"},
		{"POST", "/api/v1/campaigns/{id}/pause", "/api/v1/campaigns/" + camp.ID + "/pause", "admin release-manager"},
		{"POST", "/api/v1/campaigns/{id}/resume", "/api/v1/campaigns/" + camp.ID + "/resume", "admin release-manager"},
		{"POST", "/api/v1/campaigns/{id}/abort", "/api/v1/campaigns/" + camp.ID + "/abort", "admin release-manager"},
		{"GET", "/api/v1/owners/me/updates", "", "owner"},
		{"POST", "/api/v1/owners/me/vehicles/{vin}/consent", "/api/v1/owners/me/vehicles/" + v1.vin + "/consent", "owner"},
		{"POST", "/api/v1/vehicles/{vin}/link-code", "/api/v1/vehicles/" + v1.vin + "/link-code", "vehicle"},
		{"POST", "/api/v1/owners/me/vehicles", "", "owner"},
		{"GET", "/api/v1/owners/me/vehicles", "", "owner"},
		{"DELETE", "/api/v1/owners/me/vehicles/{vin}", "/api/v1/owners/me/vehicles/" + v1.vin, "owner"},
		{"POST", "/api/v1/vehicles/{vin}/owner", "/api/v1/vehicles/" + v1.vin + "/owner", "admin release-manager dealer"},
		{"GET", "/api/v1/vehicles/{vin}/usb-bundle", "/api/v1/vehicles/" + v1.vin + "/usb-bundle", "dealer owner"},
		{"POST", "/api/v1/vehicles/{vin}/auth", "/api/v1/vehicles/" + v1.vin + "/auth", "vehicle"},
		// Public: a car whose clock is wrong cannot sign a request (docs/api.md).
		{"POST", "/api/v1/vehicles/{vin}/time", "/api/v1/vehicles/" + v1.vin + "/time", all},
		{"POST", "/api/v1/vehicles/{vin}/ecus/{serial}/replace", "/api/v1/vehicles/" + v1.vin + "/ecus/DCM000001/replace", "dealer"},
		// Pages authenticate by session cookie, not by these credentials
		// (TestWeb* drive them); here they must only never fail with 5xx.
		{"GET", "/", "", "browser"},
		{"POST", "/login", "", "browser"},
		{"POST", "/logout", "", "browser"},
		{"POST", "/link", "", "browser"},
		{"POST", "/password", "", "browser"},
		{"POST", "/claim", "", "browser"},
		{"GET", "/vehicles/{vin}/usb", "/vehicles/" + v1.vin + "/usb", "browser"},
		{"GET", "/dealer", "", "browser"},
		{"POST", "/dealer/login", "", "browser"},
		{"GET", "/dealer/sso", "", "browser"},
		{"GET", "/dealer/sso/callback", "/dealer/sso/callback?state=x&code=y", "browser"},
		{"POST", "/dealer/jobs", "", "browser"},
		{"GET", "/dealer/jobs/{id}", "/dealer/jobs/" + job.ID + ".json", "browser"},
		{"POST", "/dealer/jobs/{id}/cancel", "/dealer/jobs/" + job.ID + "/cancel", "browser"},
		{"POST", "/dealer/replace", "", "browser"},
		{"POST", "/dealer/renew", "", "browser"},
		{"POST", "/dealer/claim", "", "browser"},
		{"GET", "/dealer/diagnoses", "", "browser"},
		{"GET", "/vehicles/{vin}/help", "/vehicles/" + v1.vin + "/help", "browser"},
		{"GET", "/vehicles/{vin}/record", "/vehicles/" + v1.vin + "/record", "browser"},
		{"GET", "/dealer/campaigns", "", "browser"},
		{"GET", "/dealer/approvals", "", "browser"},
		{"POST", "/dealer/approvals/{id}", "/dealer/approvals/" + someID, "browser"},
		{"GET", "/dealer/tokens", "", "browser"},
		{"POST", "/dealer/tokens/{id}/revoke", "/dealer/tokens/" + someID + "/revoke", "browser"},
		{"GET", "/dealer/webhooks", "", "browser"},
		{"GET", "/dealer/campaigns/{id}", "/dealer/campaigns/" + uuid.NewString(), "browser"},
		{"POST", "/dealer/campaigns/{id}", "/dealer/campaigns/" + uuid.NewString(), "browser"},
		{"POST", "/consent", "", "browser"},
		{"GET", "/status", "", "browser"},
		{"GET", "/static/{file}", "/static/style.css", "browser"},
	}

	// Every route the server documents is in the matrix, and only those.
	var doc struct {
		Paths map[string]map[string]any `json:"paths"`
	}
	if code := w.api("GET", "/api/v1/openapi.json", "", nil, &doc); code != 200 {
		t.Fatalf("openapi: %d", code)
	}
	var documented, tested []string
	for p, ops := range doc.Paths {
		for m := range ops {
			documented = append(documented, strings.ToUpper(m)+" "+p)
		}
	}
	for _, m := range matrix {
		tested = append(tested, m.method+" "+m.path)
	}
	sort.Strings(documented)
	sort.Strings(tested)
	if strings.Join(documented, "\n") != strings.Join(tested, "\n") {
		t.Fatalf("routes documented:\n%s\nroutes in this test:\n%s", strings.Join(documented, "\n"), strings.Join(tested, "\n"))
	}

	callers := strings.Fields(all)
	for _, m := range matrix {
		path := m.path
		if m.concrete != "" {
			path = m.concrete
		}
		for _, caller := range callers {
			body := []byte(`{}`)
			if m.method == "GET" || m.method == "HEAD" {
				body = nil
			}
			req, err := http.NewRequest(m.method, w.url+path, bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			switch caller {
			case "bootstrap":
				req.Header.Set("Authorization", "Bearer "+adminToken)
			case "admin":
				req.Header.Set("Authorization", "Bearer "+admin)
			case "release-manager":
				req.Header.Set("Authorization", "Bearer "+rm)
			case "approver":
				req.Header.Set("Authorization", "Bearer "+ap)
			case "support":
				req.Header.Set("Authorization", "Bearer "+sp)
			case "dealer":
				req.Header.Set("Authorization", "Bearer "+dealer)
			case "owner":
				req.Header.Set("Authorization", "Bearer "+owner)
			case "vehicle":
				vehicleauth.Sign(req, k1, v1.vin, body, time.Now())
			case "other-vehicle":
				vehicleauth.Sign(req, k2, v2.vin, body, time.Now())
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var e struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			json.NewDecoder(resp.Body).Decode(&e)
			resp.Body.Close()
			if m.allowed == "browser" {
				if resp.StatusCode >= 500 {
					t.Errorf("%s %s as %s: %d", m.method, m.path, caller, resp.StatusCode)
				}
				continue
			}
			allowed := strings.Contains(" "+m.allowed+" ", " "+caller+" ")
			denied := resp.StatusCode == 401 || resp.StatusCode == 403
			want := "allowed"
			switch {
			case allowed && denied:
			case !allowed && caller == "none" && resp.StatusCode != 401:
				want = "401"
			case !allowed && caller != "none" && resp.StatusCode != 403:
				want = "403"
			default:
				continue
			}
			t.Errorf("%s %s as %s: got %d (%s), want %s", m.method, m.path, caller, resp.StatusCode, e.Error.Message, want)
		}
	}
}
