package campaigns_test

import (
	"testing"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/campaigns"
	"github.com/roadsign/roadsign/server/sqlstore"
)

// TestFourEyes: nobody starts a campaign alone, on SQLite and on
// PostgreSQL. The release manager's start is answered approval_required;
// neither the one who asked nor the campaign's author may approve; a
// second account holding approver does, and the start goes through once;
// a change of the image after approval voids it; raising a running
// campaign's waves needs its own approval; a refusal needs a reason.
func TestFourEyes(t *testing.T) {
	for _, backend := range []struct {
		name string
		open func(*testing.T) *sqlstore.Store
	}{{"sqlite", sqliteStore}, {"postgres", postgresStore}} {
		t.Run(backend.name, func(t *testing.T) {
			w := newWorldOn(t, backend.open(t), 30)
			c := w.create(t, campaigns.CreateRequest{Name: "four eyes", ECU: "dcm", Version: "2.0.0", Waves: []int{10, 100}})
			code := func(err error) string { return server.ErrorOf(err).Code }

			_, err := w.svc.Start(ctx, admin, c.ID)
			if code(err) != errcode.ApprovalRequired || server.ErrorOf(err).Kind != server.KindConflict {
				t.Fatalf("start alone: %v, want 409 approval_required", err)
			}
			pending, ok, err := w.approvals.Pending(ctx, c.ID)
			if err != nil || !ok {
				t.Fatalf("no pending request: %v", err)
			}
			// The same request again makes no second one.
			if _, err := w.svc.Start(ctx, admin, c.ID); code(err) != errcode.ApprovalRequired {
				t.Fatal(err)
			}
			if all, _ := w.approvals.Of(ctx, c.ID); len(all) != 1 {
				t.Fatalf("%d requests after two tries, want 1", len(all))
			}

			selfApprover := server.Principal{ID: admin.ID, Name: admin.Name, Roles: server.Roles{server.RoleReleaseManager, server.RoleApprover}}
			author := server.Principal{ID: "other-id", Name: admin.Name, Roles: server.Roles{server.RoleApprover}}
			support := server.Principal{ID: "s1", Name: "support-1", Roles: server.Roles{server.RoleSupport}}
			for _, tc := range []struct {
				name string
				by   server.Principal
				want string
			}{
				{"the one who asked", selfApprover, errcode.OwnApproval},
				{"the campaign's author", author, errcode.OwnApproval},
				{"no approver role", support, errcode.Forbidden},
			} {
				if _, err := w.approvals.Decide(ctx, tc.by, pending.ID, true, "", c.CreatedBy); code(err) != tc.want {
					t.Errorf("%s approves: %v, want %s", tc.name, err, tc.want)
				}
			}
			if _, err := w.svc.Start(ctx, admin, c.ID); code(err) != errcode.ApprovalRequired {
				t.Fatalf("start after refused self-approvals: %v", err)
			}

			// Approved, then the image changes: the approval is void.
			if _, err := w.approvals.Decide(ctx, approver, pending.ID, true, "", c.CreatedBy); err != nil {
				t.Fatal(err)
			}
			v1 := "1.0.0"
			if _, err := w.svc.Change(ctx, admin, c.ID, campaigns.ChangeRequest{Version: &v1}); err != nil {
				t.Fatal(err)
			}
			if a, _ := w.approvals.Get(ctx, pending.ID); a.State != server.ApprovalVoided {
				t.Fatalf("approval after the image changed: %s, want voided", a.State)
			}
			if _, err := w.svc.Start(ctx, admin, c.ID); code(err) != errcode.ApprovalRequired {
				t.Fatalf("start after the image changed: %v, want approval_required", err)
			}
			// Back to 2.0.0; approving the request made for 1.0.0 is void too.
			v2 := "2.0.0"
			if _, err := w.svc.Change(ctx, admin, c.ID, campaigns.ChangeRequest{Version: &v2}); err != nil {
				t.Fatal(err)
			}
			if _, err := w.svc.Start(ctx, admin, c.ID); code(err) != errcode.ApprovalRequired {
				t.Fatal(err)
			}
			pending, _, _ = w.approvals.Pending(ctx, c.ID)
			if _, err := w.approvals.Decide(ctx, approver, pending.ID, false, ""); code(err) != errcode.Invalid {
				t.Fatalf("refusal without a reason: %v", err)
			}
			if _, err := w.approvals.Decide(ctx, approver, pending.ID, true, ""); err != nil {
				t.Fatal(err)
			}
			v, err := w.svc.Start(ctx, admin, c.ID)
			if err != nil || v.State != server.CampaignRunning {
				t.Fatalf("start with approval: %v %v", v.State, err)
			}
			if a, _ := w.approvals.Get(ctx, pending.ID); a.State != server.ApprovalUsed {
				t.Fatalf("approval after the start: %s, want used", a.State)
			}

			// Raising the waves of a running campaign is approved apart.
			w.tick(t)
			if _, err := w.svc.Change(ctx, admin, c.ID, campaigns.ChangeRequest{Waves: []int{10, 50, 100}}); code(err) != errcode.ApprovalRequired {
				t.Fatalf("raise waves alone: %v", err)
			}
			pending, _, _ = w.approvals.Pending(ctx, c.ID)
			if pending.Action != "campaign.waves" {
				t.Fatalf("pending %s, want campaign.waves", pending.Action)
			}
			if _, err := w.approvals.Decide(ctx, approver, pending.ID, false, "50 % is too fast for this modem"); err != nil {
				t.Fatal(err)
			}
			if _, err := w.svc.Change(ctx, admin, c.ID, campaigns.ChangeRequest{Waves: []int{10, 50, 100}}); code(err) != errcode.ApprovalRequired {
				t.Fatalf("raise waves after a refusal: %v", err)
			}
			pending, _, _ = w.approvals.Pending(ctx, c.ID)
			if _, err := w.approvals.Decide(ctx, approver, pending.ID, true, ""); err != nil {
				t.Fatal(err)
			}
			got, err := w.svc.Change(ctx, admin, c.ID, campaigns.ChangeRequest{Waves: []int{10, 50, 100}})
			if err != nil || len(got.Config.Waves) != 3 {
				t.Fatalf("raise waves with approval: %v %v", got.Config.Waves, err)
			}
			// The audit log names each decision.
			es, err := w.store.ListAudit(ctx, 0, 1000)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]int{}
			for _, e := range es {
				seen[e.Action]++
			}
			for action, n := range map[string]int{"approval.request": 5, "approval.approve": 3, "approval.refuse": 1, "approval.void": 2} {
				if seen[action] != n {
					t.Errorf("audit %s: %d entries, want %d (%v)", action, seen[action], n, seen)
				}
			}
		})
	}
}
