package storetest

import (
	"reflect"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/roadsign/roadsign/server"
)

// testOperators: roles and single sign-on accounts, API tokens, approvals
// and the webhook delivery queue.
func testOperators(t *testing.T, s server.Store) {
	t.Run("admin and SSO accounts", func(t *testing.T) {
		if ok, err := s.AdminExists(ctx); err != nil || ok {
			t.Fatalf("admin exists in an empty store: %v %v", ok, err)
		}
		a := server.Account{ID: uuid.NewString(), Roles: server.Roles{server.RoleApprover, server.RoleAdmin, server.RoleSupport}, Name: "ops", TokenHash: "ta", CreatedAt: now}
		must(t, s.CreateAccount(ctx, a))
		if ok, _ := s.AdminExists(ctx); !ok {
			t.Fatal("an admin in the middle of the roles is not found")
		}
		must(t, s.SetAccountDisabled(ctx, a.ID, true))
		if ok, _ := s.AdminExists(ctx); ok {
			t.Fatal("a disabled admin counts")
		}
		sso := server.Account{ID: uuid.NewString(), Roles: server.Roles{server.RoleSupport}, Name: "sam", TokenHash: "ts", CreatedAt: now, Subject: "https://idp sub-1"}
		must(t, s.CreateAccount(ctx, sso))
		must(t, s.SetAccountRoles(ctx, sso.ID, server.Roles{server.RoleDealer}, []string{"EU"}))
		got, err := s.AccountBySubject(ctx, "https://idp sub-1")
		must(t, err)
		if got.ID != sso.ID || got.Roles.String() != "dealer" || !reflect.DeepEqual(got.Regions, []string{"EU"}) {
			t.Fatalf("SSO account: %+v", got)
		}
		_, err = s.AccountBySubject(ctx, "https://idp sub-2")
		wantErr(t, err, server.ErrNotFound)
	})
	t.Run("API tokens", func(t *testing.T) {
		tok := server.APIToken{ID: uuid.NewString(), AccountID: "acct", Name: "ci", Roles: server.Roles{server.RoleSupport}, TokenHash: "th", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
		must(t, s.CreateAPIToken(ctx, tok))
		wantErr(t, s.CreateAPIToken(ctx, tok), server.ErrConflict)
		must(t, s.TouchAPIToken(ctx, tok.ID, now.Add(time.Minute), "192.0.2.7"))
		got, err := s.APITokenByHash(ctx, "th")
		must(t, err)
		if !got.LastUsedAt.Equal(now.Add(time.Minute)) || got.LastUsedFrom != "192.0.2.7" || got.Roles.String() != "support" || !got.ExpiresAt.Equal(tok.ExpiresAt) {
			t.Fatalf("token: %+v", got)
		}
		must(t, s.RevokeAPIToken(ctx, tok.ID, now.Add(2*time.Minute)))
		wantErr(t, s.RevokeAPIToken(ctx, tok.ID, now.Add(3*time.Minute)), server.ErrNotFound) // revoked once
		if ts, err := s.APITokens(ctx, "acct"); err != nil || len(ts) != 1 || !ts[0].RevokedAt.Equal(now.Add(2*time.Minute)) {
			t.Fatalf("tokens of acct: %+v %v", ts, err)
		}
		if ts, _ := s.APITokens(ctx, "someone"); len(ts) != 0 {
			t.Fatalf("another account's tokens: %+v", ts)
		}
		_, err = s.APITokenByHash(ctx, "nope")
		wantErr(t, err, server.ErrNotFound)
	})
	t.Run("approvals", func(t *testing.T) {
		a := server.Approval{ID: uuid.NewString(), Action: "campaign.start", Subject: "c1", What: `{"x":1}`, Fingerprint: "fp1",
			State: server.ApprovalPending, RequestedByID: "rm", RequestedBy: "rm-1", RequestedAt: now}
		must(t, s.CreateApproval(ctx, a))
		b := a
		b.ID, b.RequestedAt, b.Subject = uuid.NewString(), now.Add(time.Second), "c2"
		must(t, s.CreateApproval(ctx, b))
		d := a
		d.State, d.DecidedByID, d.DecidedBy, d.Reason, d.DecidedAt = server.ApprovalApproved, "ap", "approver-1", "ok", now.Add(time.Minute)
		must(t, s.SetApprovalState(ctx, d, server.ApprovalPending))
		wantErr(t, s.SetApprovalState(ctx, d, server.ApprovalPending), server.ErrConflict) // decided once
		got, err := s.Approval(ctx, a.ID)
		must(t, err)
		if !reflect.DeepEqual(got, d) {
			t.Fatalf("approval:\n%+v\nwant\n%+v", got, d)
		}
		if of, _ := s.ApprovalsOf(ctx, "c1"); len(of) != 1 || of[0].ID != a.ID {
			t.Fatalf("approvals of c1: %+v", of)
		}
		if in, _ := s.ApprovalsIn(ctx, 10, server.ApprovalPending); len(in) != 1 || in[0].ID != b.ID {
			t.Fatalf("pending: %+v", in)
		}
		if in, _ := s.ApprovalsIn(ctx, 10, server.ApprovalPending, server.ApprovalApproved); len(in) != 2 || in[0].ID != b.ID {
			t.Fatalf("pending or approved, newest first: %+v", in)
		}
	})
	t.Run("webhook deliveries", func(t *testing.T) {
		w := server.Webhook{ID: uuid.NewString(), URL: "https://hooks.example/x", Events: []string{"campaign.halted", "job.state_changed"}, Secret: "0123456789abcdef", CreatedBy: "ops", CreatedAt: now}
		must(t, s.CreateWebhook(ctx, w))
		if ws, _ := s.ListWebhooks(ctx); len(ws) != 1 || !reflect.DeepEqual(ws[0], w) {
			t.Fatalf("webhooks: %+v", ws)
		}
		d1 := server.Delivery{ID: uuid.NewString(), WebhookID: w.ID, Event: "campaign.halted", Body: "{}", State: server.DeliveryPending, CreatedAt: now, NextAt: now}
		d2 := d1
		d2.ID, d2.NextAt = uuid.NewString(), now.Add(time.Hour)
		must(t, s.EnqueueDeliveries(ctx, []server.Delivery{d1, d2}))
		due, err := s.DueDeliveries(ctx, now, now.Add(time.Minute), 10)
		must(t, err)
		if len(due) != 1 || due[0].ID != d1.ID {
			t.Fatalf("due: %+v", due)
		}
		if again, _ := s.DueDeliveries(ctx, now, now.Add(time.Minute), 10); len(again) != 0 {
			t.Fatalf("a claimed delivery was handed out again: %+v", again)
		}
		got := due[0]
		got.Attempts, got.LastStatus, got.LastError, got.NextAt = 1, 500, "answered 500", now.Add(2*time.Second)
		must(t, s.UpdateDelivery(ctx, got))
		if due, _ := s.DueDeliveries(ctx, now.Add(2*time.Second), now.Add(time.Minute), 10); len(due) != 1 || due[0].Attempts != 1 || due[0].LastStatus != 500 {
			t.Fatalf("due after a failed attempt: %+v", due)
		}
		log, err := s.Deliveries(ctx, w.ID, 10)
		must(t, err)
		if len(log) != 2 {
			t.Fatalf("delivery log: %+v", log)
		}
		must(t, s.DeleteWebhook(ctx, w.ID))
		wantErr(t, s.DeleteWebhook(ctx, w.ID), server.ErrNotFound)
		if log, _ := s.Deliveries(ctx, w.ID, 10); len(log) != 0 {
			t.Fatalf("pending deliveries of a deleted webhook remain: %+v", log)
		}
	})
}
