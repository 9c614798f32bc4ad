package accounts

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/sqlite"
)

// TestAPITokenLife: a token works until it expires or is revoked, then
// gets 401 with a code saying which; its roles are cut to the account's
// roles at each use; a disabled account's tokens stop at once.
func TestAPITokenLife(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	s := New(st, NewPasswords(1, nil), "bootstrap-secret", func() time.Time { return now })
	acct, err := s.Create(ctx, Bootstrap, CreateRequest{Roles: []string{"release-manager", "support"}, Name: "ops-rita"})
	if err != nil {
		t.Fatal(err)
	}
	me, err := s.Authenticate(ctx, acct.Token, "10.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.CreateToken(ctx, me, TokenRequest{Name: "ci", Roles: []string{"release-manager", "support"}, ExpiresIn: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	code := func(err error) string { return server.ErrorOf(err).Code }

	p, err := s.Authenticate(ctx, tok.Token, "10.0.0.2")
	if err != nil || p.TokenID != tok.ID || !p.Is(server.RoleReleaseManager) {
		t.Fatalf("fresh token: %+v %v", p, err)
	}
	// An API token cannot make tokens beyond its own scope.
	if _, err := s.CreateToken(ctx, server.Principal{ID: p.ID, Name: p.Name, Roles: server.Roles{server.RoleSupport}}, TokenRequest{Name: "x", Roles: []string{"release-manager"}, ExpiresIn: "1h"}); code(err) != errcode.ScopeExceeded {
		t.Fatalf("token beyond the caller's scope: %v", err)
	}
	now = now.Add(59 * time.Minute)
	if _, err := s.Authenticate(ctx, tok.Token, "10.0.0.2"); err != nil {
		t.Fatalf("a minute before expiry: %v", err)
	}
	now = now.Add(time.Minute)
	_, err = s.Authenticate(ctx, tok.Token, "10.0.0.2")
	if code(err) != errcode.TokenExpired || server.ErrorOf(err).Kind != server.KindUnauthorized {
		t.Fatalf("expired token: %v, want 401 token_expired", err)
	}
	views, err := s.Tokens(ctx, me)
	if err != nil || len(views) != 1 || views[0].State != "expired" || views[0].LastUsedFrom != "10.0.0.2" {
		t.Fatalf("token list: %+v %v", views, err)
	}

	tok2, err := s.CreateToken(ctx, me, TokenRequest{Name: "dash", Roles: []string{"support"}, ExpiresIn: "30d"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeToken(ctx, me, tok2.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, tok2.Token, ""); code(err) != errcode.TokenRevoked {
		t.Fatalf("revoked token: %v, want token_revoked", err)
	}
	if _, err := s.RevokeToken(ctx, server.Principal{ID: "someone-else", Roles: server.Roles{server.RoleReleaseManager}}, tok2.ID); server.ErrorOf(err).Kind != server.KindNotFound {
		t.Fatalf("revoking another account's token: %v, want not found", err)
	}

	tok3, _ := s.CreateToken(ctx, me, TokenRequest{Name: "ops", Roles: []string{"release-manager"}, ExpiresIn: "30d"})
	if _, err := s.SetDisabled(ctx, Bootstrap, acct.ID, true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, tok3.Token, ""); code(err) != errcode.AccountDisabled {
		t.Fatalf("token of a disabled account: %v", err)
	}
}

// TestBootstrapTokenYieldsToAnAdmin: the bootstrap token is an admin
// until an admin account exists, then it may only create accounts.
func TestBootstrapTokenYieldsToAnAdmin(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s := New(st, NewPasswords(1, nil), "bootstrap-secret", time.Now)
	p, err := s.Authenticate(ctx, "bootstrap-secret", "")
	if err != nil || !p.Is(server.RoleAdmin) {
		t.Fatalf("bootstrap before any admin: %+v %v", p, err)
	}
	if _, err := s.Create(ctx, p, CreateRequest{Role: "approver", Name: "ann"}); err != nil {
		t.Fatal(err)
	}
	if p, _ = s.Authenticate(ctx, "bootstrap-secret", ""); !p.Is(server.RoleAdmin) {
		t.Fatal("an approver account took the bootstrap token's admin role")
	}
	if _, err := s.Create(ctx, p, CreateRequest{Roles: []string{"admin"}, Name: "ops-admin"}); err != nil {
		t.Fatal(err)
	}
	p, _ = s.Authenticate(ctx, "bootstrap-secret", "")
	if p.Is(server.RoleAdmin) || !p.Is(RoleBootstrap) {
		t.Fatalf("bootstrap after an admin account exists: %v, want only %s", p.Roles, RoleBootstrap)
	}
	for _, bad := range []CreateRequest{
		{Name: "x"},
		{Role: "owner", Roles: []string{"approver"}, Name: "x", Password: "long enough"},
		{Role: "dealer", Name: "x"},
		{Role: "approver", Name: "x", Regions: []string{"EU"}},
		{Roles: []string{"root"}, Name: "x"},
		{Role: "approver", Name: "Release-Manager"},
	} {
		if _, err := s.Create(ctx, p, bad); server.ErrorOf(err).Kind != server.KindInvalid {
			t.Errorf("create %+v: %v, want invalid", bad, err)
		}
	}
}
