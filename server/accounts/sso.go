package accounts

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/uuid"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/auditlog"
)

// SSOUser is who a single sign-on provider says logged in.
type SSOUser struct {
	Issuer, Subject string
	// Name is how the account is named (preferred_username or email).
	Name string
	// Roles and Regions are the provider's claims.
	Roles, Regions []string
}

// SSOLogin returns the principal of a user the provider vouched for,
// making its account at the first log-in and taking its roles (and a
// dealer's regions) from the provider at each one. Only staff roles
// come this way; owners log in with passwords.
func (s *Service) SSOLogin(ctx context.Context, u SSOUser) (server.Principal, error) {
	if u.Issuer == "" || u.Subject == "" {
		return server.Principal{}, server.Errorf(server.KindUnauthorized, "the identity provider named no subject")
	}
	var roles server.Roles
	for _, r := range u.Roles {
		role := server.Role(strings.TrimSpace(r))
		if role.Valid() && role != server.RoleOwner && !roles.Has(role) {
			roles = append(roles, role)
		}
	}
	if len(roles) == 0 {
		return server.Principal{}, server.Errorf(server.KindForbidden, "your single sign-on account holds no Roadsign role (%s); ask your identity administrator for one of admin, release-manager, approver, support or dealer",
			strings.Join(u.Roles, ", "))
	}
	regions, err := checkRegions(roles, u.Regions)
	if err != nil {
		return server.Principal{}, err
	}
	key := u.Issuer + " " + u.Subject
	now := s.now().UTC()
	a, err := s.store.AccountBySubject(ctx, key)
	switch {
	case errors.Is(err, server.ErrNotFound):
		name := strings.TrimSpace(u.Name)
		if name == "" || len(name) > 100 || reserved(name) {
			name = "sso-" + u.Subject
		}
		token, err := NewToken() // never shown: SSO accounts use sessions and API tokens
		if err != nil {
			return server.Principal{}, err
		}
		a = server.Account{ID: uuid.NewString(), Roles: roles, Regions: regions, Name: name, TokenHash: HashToken(token), CreatedAt: now, Subject: key}
		if err := s.store.CreateAccount(ctx, a); errors.Is(err, server.ErrConflict) {
			return server.Principal{}, server.Errorf(server.KindConflict, "an account named %q exists and is not your single sign-on account; ask an admin", name)
		} else if err != nil {
			return server.Principal{}, err
		}
		if err := auditlog.Record(ctx, s.store, now, principalOf(a), "account.sso_create", a.ID, fmt.Sprintf("%s from %s, roles=%s%s", name, u.Issuer, roles, RegionsAudit(regions))); err != nil {
			return server.Principal{}, err
		}
	case err != nil:
		return server.Principal{}, err
	case a.Disabled:
		return server.Principal{}, disabledError(a)
	case a.Roles.String() != roles.String() || !slices.Equal(a.Regions, regions):
		if err := s.store.SetAccountRoles(ctx, a.ID, roles, regions); err != nil {
			return server.Principal{}, err
		}
		if err := auditlog.Record(ctx, s.store, now, principalOf(a), "account.sso_roles", a.ID, fmt.Sprintf("roles %s -> %s%s (from %s)", a.Roles, roles, RegionsAudit(regions), u.Issuer)); err != nil {
			return server.Principal{}, err
		}
		a.Roles, a.Regions = roles, regions
	}
	return principalOf(a), nil
}

// RegionsAudit is what an account's audit record says of its regions.
func RegionsAudit(regions []string) string {
	if len(regions) == 0 {
		return ""
	}
	return ", regions=" + strings.Join(regions, ",")
}
