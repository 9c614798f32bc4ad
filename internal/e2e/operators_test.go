package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roadsign/roadsign/server/webhooks"
)

type apiErr struct {
	Error struct{ Code, Message string } `json:"error"`
}

// TestSupportChangesNothing: a support account reads everything and gets
// 403 on every state-changing route. The routes come from the route
// table (the OpenAPI document and its access lists), not a hand list.
func TestSupportChangesNothing(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v := w.vehicle(1)
	support := w.account("support", "support-1")
	var doc struct {
		Paths map[string]map[string]struct {
			Access []string `json:"x-roadsign-access"`
		} `json:"paths"`
	}
	if code := w.api("GET", "/api/v1/openapi.json", "", nil, &doc); code != 200 {
		t.Fatalf("openapi: %d", code)
	}
	param := regexp.MustCompile(`\{[a-z]+\}`)
	changing, reads := 0, 0
	for p, ops := range doc.Paths {
		concrete := strings.ReplaceAll(p, "{vin}", v.vin)
		concrete = param.ReplaceAllString(concrete, "00000000-0000-4000-8000-000000000000")
		for m, op := range ops {
			method := strings.ToUpper(m)
			if slices.Contains(op.Access, "public") {
				continue // needs no credentials; pages check their own sessions
			}
			var e apiErr
			code := w.api(method, concrete, support, map[string]any{}, &e)
			switch method {
			case "GET", "HEAD":
				if slices.Contains(op.Access, "support") {
					reads++
					if code == 401 || code == 403 {
						t.Errorf("support reading %s %s: %d %s", method, p, code, e.Error.Message)
					}
				}
			default:
				changing++
				if code != 403 || e.Error.Code != "forbidden" {
					t.Errorf("support calling %s %s: %d %q, want 403 forbidden", method, p, code, e.Error.Code)
				}
			}
		}
	}
	if changing < 30 || reads < 10 {
		t.Fatalf("only %d state-changing and %d readable routes found in the route table", changing, reads)
	}
	t.Logf("support: 403 on all %d state-changing routes, reads %d routes", changing, reads)
}

// TestDealerStaysInItsRegion: a dealer acts on the vehicles of its
// regions only.
func TestDealerStaysInItsRegion(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v := w.vehicle(1) // registered in NA
	var eu, na struct{ Token string }
	w.api("POST", "/api/v1/accounts", adminToken, map[string]any{"role": "dealer", "name": "dealer-munich", "regions": []string{"EU"}}, &eu)
	w.api("POST", "/api/v1/accounts", adminToken, map[string]any{"role": "dealer", "name": "dealer-boston", "regions": []string{"NA"}}, &na)
	var e apiErr
	if code := w.api("POST", "/api/v1/accounts", adminToken, map[string]any{"role": "dealer", "name": "dealer-nowhere"}, &e); code != 400 {
		t.Fatalf("a dealer without regions: %d, want 400", code)
	}
	job := map[string]any{"vin": v.vin, "ecu": "dcm", "version": "latest", "reason": "region test"}
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"POST", "/api/v1/jobs", job},
		{"POST", "/api/v1/vehicles", map[string]any{"vin": testVIN(9), "model": "m", "year": 2025, "region": "NA", "publicKey": "x"}},
		{"POST", "/api/v1/vehicles/" + v.vin + "/owner", map[string]any{"owner": "nobody"}},
		{"GET", "/api/v1/vehicles/" + v.vin, nil},
		{"GET", "/api/v1/vehicles/" + v.vin + "/diagnosis", nil},
		{"GET", "/api/v1/vehicles/" + v.vin + "/usb-bundle", nil},
		{"POST", "/api/v1/vehicles/" + v.vin + "/ecus/DCM000001/replace", map[string]any{"serial": "DCMNEW", "hardwareId": dcmHW, "publicKey": "x", "reason": "swap"}},
	} {
		e = apiErr{}
		if code := w.api(c.method, c.path, eu.Token, c.body, &e); code != 403 || e.Error.Code != "outside_region" {
			t.Errorf("EU dealer %s %s on an NA car: %d %q, want 403 outside_region", c.method, c.path, code, e.Error.Code)
		}
	}
	var list struct{ Vehicles []struct{ VIN string } }
	if w.api("GET", "/api/v1/vehicles", eu.Token, nil, &list); len(list.Vehicles) != 0 {
		t.Errorf("the EU dealer lists %d NA vehicles", len(list.Vehicles))
	}
	if w.api("GET", "/api/v1/vehicles", na.Token, nil, &list); len(list.Vehicles) != 1 || list.Vehicles[0].VIN != v.vin {
		t.Errorf("the NA dealer's list: %+v", list.Vehicles)
	}
	var j struct{ ID string }
	if code := w.api("POST", "/api/v1/jobs", na.Token, job, &j); code != 201 {
		t.Fatalf("NA dealer's job on an NA car: %d", code)
	}
	e = apiErr{}
	if code := w.api("POST", "/api/v1/jobs/"+j.ID+"/cancel", eu.Token, nil, &e); code != 403 || e.Error.Code != "outside_region" {
		t.Errorf("EU dealer cancels an NA car's job: %d %q, want 403 outside_region", code, e.Error.Code)
	}
}

// TestAPITokenScope: a scoped token cannot exceed its scope; a revoked
// one gets 401 token_revoked; each use is recorded with its address.
func TestAPITokenScope(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	var acct struct{ Token string }
	w.api("POST", "/api/v1/accounts", adminToken, map[string]any{"roles": []string{"release-manager", "support"}, "name": "ops-rita"}, &acct)
	var e apiErr
	if code := w.api("POST", "/api/v1/tokens", acct.Token, map[string]any{"name": "too much", "roles": []string{"admin"}, "expiresIn": "30d"}, &e); code != 403 || e.Error.Code != "scope_exceeded" {
		t.Fatalf("token with a role the account lacks: %d %q, want 403 scope_exceeded", code, e.Error.Code)
	}
	if code := w.api("POST", "/api/v1/tokens", acct.Token, map[string]any{"name": "forever", "roles": []string{"support"}, "expiresIn": "5y"}, &e); code != 400 {
		t.Fatalf("token without a bounded life: %d, want 400", code)
	}
	var tok struct {
		ID, Token, State string
		Roles            []string
	}
	if code := w.api("POST", "/api/v1/tokens", acct.Token, map[string]any{"name": "dashboard", "roles": []string{"support"}, "expiresIn": "30d"}, &tok); code != 201 || tok.Token == "" || tok.State != "active" {
		t.Fatalf("create token: %d %+v", code, tok)
	}
	if code := w.api("GET", "/api/v1/campaigns", tok.Token, nil, nil); code != 200 {
		t.Fatalf("the support token reads campaigns: %d", code)
	}
	e = apiErr{}
	if code := w.api("POST", "/api/v1/campaigns", tok.Token, map[string]any{"name": "x", "ecu": "dcm", "version": "2.0.0"}, &e); code != 403 {
		t.Fatalf("the support-scoped token of a release manager creates a campaign: %d, want 403", code)
	}
	if !strings.Contains(e.Error.Message, "API token") {
		t.Errorf("the refusal should say it is the token's scope: %q", e.Error.Message)
	}
	if code := w.api("POST", "/api/v1/campaigns", acct.Token, map[string]any{"name": "x", "ecu": "dcm", "version": "2.0.0"}, nil); code != 201 {
		t.Fatalf("the account itself creates a campaign: %d", code)
	}
	var list struct {
		Tokens []struct {
			ID, State, LastUsedFrom string
			LastUsedAt              time.Time
		}
	}
	w.api("GET", "/api/v1/tokens", acct.Token, nil, &list)
	if len(list.Tokens) != 1 || list.Tokens[0].LastUsedAt.IsZero() || list.Tokens[0].LastUsedFrom != "127.0.0.1" {
		t.Fatalf("token list should show its last use and address: %+v", list.Tokens)
	}
	if code := w.api("POST", "/api/v1/tokens/"+tok.ID+"/revoke", acct.Token, nil, nil); code != 200 {
		t.Fatalf("revoke: %d", code)
	}
	e = apiErr{}
	if code := w.api("GET", "/api/v1/campaigns", tok.Token, nil, &e); code != 401 || e.Error.Code != "token_revoked" {
		t.Fatalf("revoked token: %d %q, want 401 token_revoked", code, e.Error.Code)
	}
	e = apiErr{}
	if code := w.api("GET", "/api/v1/campaigns", "rs_not-a-token", nil, &e); code != 401 || e.Error.Code != "unauthorized" {
		t.Fatalf("unknown token: %d %q, want 401 unauthorized", code, e.Error.Code)
	}
	actions := strings.Join(w.auditActions(t), " ")
	for _, a := range []string{"token.create", "token.revoke"} {
		if !strings.Contains(actions, a) {
			t.Errorf("audit log lacks %s: %s", a, actions)
		}
	}
}

// TestJobsForManyVehiclesNeedApproval: over the threshold, jobs for many
// vehicles wait for a second person's approval of exactly those vehicles.
func TestJobsForManyVehiclesNeedApproval(t *testing.T) {
	w := newWorld(t, "--approve-jobs-over", "2", "--auto-assign", "none")
	w.setup(nil)
	var vins []string
	for i := 1; i <= 3; i++ {
		vins = append(vins, w.vehicle(i).vin)
	}
	rm := w.account("release-manager", "rm-1")
	body := map[string]any{"vins": vins, "ecu": "dcm", "version": "2.0.0", "reason": "modem fix for the pilot fleet"}
	var e apiErr
	if code := w.api("POST", "/api/v1/jobs", rm, map[string]any{"vins": vins[:2], "ecu": "dcm", "version": "2.0.0", "reason": "two"}, nil); code != 201 {
		t.Fatalf("jobs for 2 vehicles (at the threshold): %d, want 201", code)
	}
	if code := w.api("POST", "/api/v1/jobs", rm, body, &e); code != 409 || e.Error.Code != "approval_required" {
		t.Fatalf("jobs for 3 vehicles: %d %q, want 409 approval_required", code, e.Error.Code)
	}
	var pending struct {
		Approvals []struct{ ID, Action, RequestedBy string }
	}
	w.api("GET", "/api/v1/approvals?state=pending", rm, nil, &pending)
	if len(pending.Approvals) != 1 || pending.Approvals[0].Action != "jobs.create" {
		t.Fatalf("pending approvals: %+v", pending.Approvals)
	}
	id := pending.Approvals[0].ID
	approver := w.account("approver", "approver-1")
	// Approving other vehicles does not approve these.
	if code := w.api("POST", "/api/v1/jobs", rm, map[string]any{"vins": vins, "ecu": "dcm", "version": "2.0.0", "reason": "another reason"}, &e); code != 409 {
		t.Fatalf("a different batch: %d, want 409", code)
	}
	if code := w.api("POST", "/api/v1/approvals/"+id+"/approve", approver, nil, nil); code != 200 {
		t.Fatalf("approve: %d", code)
	}
	var out struct{ Jobs []struct{ ID, VIN string } }
	if code := w.api("POST", "/api/v1/jobs", rm, body, &out); code != 201 || len(out.Jobs) != 3 {
		t.Fatalf("approved batch: %d %+v", code, out)
	}
	if code := w.api("POST", "/api/v1/jobs", rm, body, &e); code != 409 || e.Error.Code != "approval_required" {
		t.Fatalf("the same batch again: %d %q: an approval is good once", code, e.Error.Code)
	}
}

// TestWebhookDeliveredThroughFailuresAndRestart: a receiver subscribed
// to campaign.halted gets the halt signed; it answers 500 three times,
// the server restarts in between, and the delivery still arrives, with
// the same delivery ID each time (the receiver's idempotency key).
func TestWebhookDeliveredThroughFailuresAndRestart(t *testing.T) {
	const secret = "a shared secret of the ticket system"
	type attempt struct {
		event, delivery string
		verified        error
		body            []byte
	}
	var mu sync.Mutex
	var attempts []attempt
	first := make(chan struct{})
	rcv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		attempts = append(attempts, attempt{r.Header.Get(webhooks.EventHeader), r.Header.Get(webhooks.DeliveryHeader),
			webhooks.Verify(secret, r.Header, body, time.Now(), 5*time.Minute), body})
		if len(attempts) == 1 {
			close(first)
		}
		if len(attempts) <= 3 {
			rw.WriteHeader(http.StatusInternalServerError)
			return
		}
		rw.WriteHeader(http.StatusNoContent)
	}))
	defer rcv.Close()

	w := newWorld(t, "--auto-assign", "none", "--campaign-tick", "50ms")
	w.setup(func(s sample) bool { return s.Version != "2.0.0" })
	var e apiErr
	if code := w.api("POST", "/api/v1/webhooks", adminToken, map[string]any{"url": rcv.URL, "events": []string{"campaign.halted"}, "secret": "short"}, &e); code != 400 {
		t.Fatalf("a short secret: %d, want 400", code)
	}
	var hook struct{ ID string }
	if code := w.api("POST", "/api/v1/webhooks", adminToken, map[string]any{"url": rcv.URL + "/roadsign", "events": []string{"campaign.halted"}, "secret": secret}, &hook); code != 201 {
		t.Fatalf("subscribe: %d", code)
	}
	f := w.simFleet(t, 40, 3, map[string]float64{"1.1.0": 0.5}, nil)
	id := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "1.1.0", "waves": []int{50, 100}, "minSamples": 5, "failureThreshold": 0.05})
	runUntil(t, f, "the campaign to halt", func() bool { return w.campaign(t, id).State == "halted" })
	select {
	case <-first:
	case <-time.After(30 * time.Second):
		t.Fatal("no delivery of campaign.halted within 30 s")
	}
	// Once the failed attempt is recorded, the server restarts: the
	// delivery waits in the database, not in this process.
	waitFor(t, "the first failed attempt to be recorded", func() bool {
		var l struct {
			Webhooks []struct{ Deliveries []struct{ Attempts int } }
		}
		w.api("GET", "/api/v1/webhooks", adminToken, nil, &l)
		return len(l.Webhooks) == 1 && len(l.Webhooks[0].Deliveries) == 1 && l.Webhooks[0].Deliveries[0].Attempts >= 1
	})
	w.restart()
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		n := len(attempts)
		mu.Unlock()
		if n >= 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d attempts after 60 s, want the 4th to succeed", n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, a := range attempts {
		if a.verified != nil || a.event != "campaign.halted" || a.delivery != attempts[0].delivery {
			t.Errorf("attempt %d: event %q delivery %q signature %v", i+1, a.event, a.delivery, a.verified)
		}
	}
	var p struct {
		ID, Event string
		Data      struct{ Campaign, State, Reason string }
	}
	if err := json.Unmarshal(attempts[3].body, &p); err != nil || p.ID != attempts[0].delivery || p.Data.Campaign != id || p.Data.State != "halted" || p.Data.Reason == "" {
		t.Fatalf("body: %+v %v", p, err)
	}
	if len(attempts) != 4 {
		t.Errorf("%d attempts, want 4: a delivered event is not sent again", len(attempts))
	}
	var list struct {
		Webhooks []struct {
			Deliveries []struct {
				ID, State  string
				Attempts   int
				LastStatus int
			}
		}
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		w.api("GET", "/api/v1/webhooks", adminToken, nil, &list)
		if len(list.Webhooks) == 1 && len(list.Webhooks[0].Deliveries) == 1 && list.Webhooks[0].Deliveries[0].State == "delivered" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivery log: %+v", list)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if d := list.Webhooks[0].Deliveries[0]; d.Attempts != 4 || d.LastStatus != 204 || d.ID != attempts[0].delivery {
		t.Fatalf("delivery log entry: %+v", d)
	}
}
