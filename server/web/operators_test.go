package web

import (
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/accounts"
	"github.com/roadsign/roadsign/server/approvals"
	"github.com/roadsign/roadsign/server/webhooks"
)

// TestOperatorPagesRender: the approvals, API tokens and webhooks pages
// execute with data in every state they show (a template error would
// otherwise surface only when someone opens the page).
func TestOperatorPagesRender(t *testing.T) {
	w, err := New(Deps{Secret: []byte("secret"), Now: time.Now, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	what := json.RawMessage(`{"campaign":"c1","images":{"HW":{"target":"dcm/x.img","sha256":"abc"}},"waves":[10,100]}`)
	pending := approvals.View{ID: "a1", Action: approvals.ActionCampaignStart, Subject: "c1", What: what, Fingerprint: "fp", State: server.ApprovalPending, RequestedBy: "anna", RequestedAt: at}
	refused := pending
	refused.ID, refused.State, refused.DecidedBy, refused.Reason, refused.DecidedAt = "a2", server.ApprovalRefused, "ben", "too fast", at
	for _, tc := range []struct {
		name string
		data any
		want []string
	}{
		{"approvals", approvalsPage{page: page{Title: "Approvals", User: "ben"}, Pending: []approvals.View{pending}, Decided: []approvals.View{refused}, Approver: true, Me: "ben"},
			[]string{`form method="post" action="/dealer/approvals/a1"`, `&#34;sha256&#34;: &#34;abc&#34;`, "too fast", "Start campaign"}},
		{"approvals", approvalsPage{page: page{Title: "Approvals", User: "anna"}, Pending: []approvals.View{pending}, Approver: true, Me: "anna"},
			[]string{"You asked for this; another approver decides."}},
		{"tokens", tokensPage{page: page{Title: "API tokens"}, Tokens: []accounts.TokenView{
			{ID: "t1", Account: "anna", Name: "ci", Roles: server.Roles{server.RoleSupport}, ExpiresAt: at, LastUsedAt: at, LastUsedFrom: "192.0.2.1", State: "active"},
			{ID: "t2", Account: "anna", Name: "old", ExpiresAt: at, State: "revoked"}}},
			[]string{"from 192.0.2.1", `action="/dealer/tokens/t1/revoke"`, "never"}},
		{"webhooks", webhooksPage{page: page{Title: "Webhooks"}, Webhooks: []webhooks.View{{ID: "h1", URL: "https://x.example/h", Events: []string{"campaign.halted"}, CreatedBy: "ops",
			Deliveries: []webhooks.DeliveryView{{ID: "d1", Event: "campaign.halted", State: server.DeliveryPending, Attempts: 2, CreatedAt: at, NextAt: at, LastStatus: 500, LastError: "answered 500"}}}}},
			[]string{"https://x.example/h", "pending (next 09:00:00)", "answered 500"}},
	} {
		rec := httptest.NewRecorder()
		if err := w.tmpl.ExecuteTemplate(rec, tc.name, tc.data); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		for _, s := range tc.want {
			if !strings.Contains(rec.Body.String(), s) {
				t.Errorf("%s page lacks %q", tc.name, s)
			}
		}
	}
}
