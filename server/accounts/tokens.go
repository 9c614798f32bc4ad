package accounts

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/auditlog"
)

// MaxTokenLife is the longest an API token may be given.
const MaxTokenLife = 366 * 24 * time.Hour

// apiToken authenticates a scoped API token: unknown, expired and
// revoked tokens are refused with their own codes; the token's roles are
// cut to its account's current roles; each use is noted (when, from where).
func (s *Service) apiToken(ctx context.Context, token, from string) (server.Principal, error) {
	t, err := s.store.APITokenByHash(ctx, HashToken(token))
	if errors.Is(err, server.ErrNotFound) {
		return server.Principal{}, server.Errorf(server.KindUnauthorized, "unknown bearer token; ask an admin for an account, or create an API token")
	}
	if err != nil {
		return server.Principal{}, err
	}
	now := s.now()
	if !t.RevokedAt.IsZero() {
		return server.Principal{}, server.CodedErrorf(server.KindUnauthorized, errcode.TokenRevoked, "API token %q was revoked at %s; create a new one", t.Name, t.RevokedAt.Format(time.RFC3339))
	}
	if !now.Before(t.ExpiresAt) {
		return server.Principal{}, server.CodedErrorf(server.KindUnauthorized, errcode.TokenExpired, "API token %q expired at %s; create a new one", t.Name, t.ExpiresAt.Format(time.RFC3339))
	}
	a, err := s.store.AccountByID(ctx, t.AccountID)
	if err != nil {
		return server.Principal{}, err
	}
	if a.Disabled {
		return server.Principal{}, disabledError(a)
	}
	// The last use is noted at most once a minute per address: a script
	// polling with its token must not turn every read into a write.
	if from != t.LastUsedFrom || now.Sub(t.LastUsedAt) >= time.Minute {
		if err := s.store.TouchAPIToken(ctx, t.ID, now.UTC(), from); err != nil {
			return server.Principal{}, err
		}
	}
	p := principalOf(a)
	p.Roles, p.TokenID = nil, t.ID
	for _, r := range t.Roles {
		if a.Roles.Has(r) {
			p.Roles = append(p.Roles, r)
		}
	}
	return p, nil
}

// TokenRequest is the body of POST /api/v1/tokens.
type TokenRequest struct {
	Name      string   `json:"name"`
	Roles     []string `json:"roles"`
	ExpiresIn string   `json:"expiresIn"`
}

// TokenView is an API token as listed (never the token itself).
type TokenView struct {
	ID           string       `json:"id"`
	Account      string       `json:"account"`
	Name         string       `json:"name"`
	Roles        server.Roles `json:"roles"`
	CreatedAt    time.Time    `json:"createdAt"`
	ExpiresAt    time.Time    `json:"expiresAt"`
	RevokedAt    time.Time    `json:"revokedAt,omitzero"`
	LastUsedAt   time.Time    `json:"lastUsedAt,omitzero"`
	LastUsedFrom string       `json:"lastUsedFrom,omitempty"`
	// State is active, expired or revoked.
	State string `json:"state"`
}

// TokenCreated is the answer to POST /api/v1/tokens: the token is shown
// only here.
type TokenCreated struct {
	TokenView
	Token string `json:"token"`
}

// ParseLife reads a token's life: a Go duration ("720h") or days ("30d").
func ParseLife(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var d time.Duration
	var err error
	if n, ok := strings.CutSuffix(s, "d"); ok {
		var days int
		days, err = strconv.Atoi(n)
		d = time.Duration(days) * 24 * time.Hour
	} else {
		d, err = time.ParseDuration(s)
	}
	if err != nil || d < time.Minute || d > MaxTokenLife {
		return 0, server.Errorf(server.KindInvalid, "expiresIn %q: give a life from 1m to 366d, such as \"30d\" or \"12h\"", s)
	}
	return d, nil
}

// CreateToken makes an API token for the caller's account, scoped to
// roles the caller holds, and returns it once.
func (s *Service) CreateToken(ctx context.Context, by server.Principal, req TokenRequest) (TokenCreated, error) {
	if by.ID == Bootstrap.ID {
		return TokenCreated{}, server.Errorf(server.KindForbidden, "the bootstrap admin token has no account to hold API tokens; create an account first")
	}
	name := strings.TrimSpace(req.Name)
	if name == "" || len(name) > 100 {
		return TokenCreated{}, server.Errorf(server.KindInvalid, "name: give 1 to 100 characters")
	}
	roles, err := ParseRoles("", req.Roles)
	if err != nil {
		return TokenCreated{}, err
	}
	if !by.Roles.Covers(roles) {
		return TokenCreated{}, server.CodedErrorf(server.KindForbidden, errcode.ScopeExceeded, "roles %s: a token may hold only roles you hold (%s)", roles, by.Roles)
	}
	life, err := ParseLife(req.ExpiresIn)
	if err != nil {
		return TokenCreated{}, err
	}
	token, err := NewToken()
	if err != nil {
		return TokenCreated{}, err
	}
	now := s.now().UTC()
	t := server.APIToken{ID: uuid.NewString(), AccountID: by.ID, Name: name, Roles: roles, TokenHash: HashToken(token), CreatedAt: now, ExpiresAt: now.Add(life)}
	if err := s.store.CreateAPIToken(ctx, t); err != nil {
		return TokenCreated{}, err
	}
	if err := auditlog.Record(ctx, s.store, now, by, "token.create", t.ID, fmt.Sprintf("%q, roles %s, expires %s", name, roles, t.ExpiresAt.Format(time.RFC3339))); err != nil {
		return TokenCreated{}, err
	}
	return TokenCreated{TokenView: s.tokenView(t, by.Name), Token: token}, nil
}

func (s *Service) tokenView(t server.APIToken, account string) TokenView {
	v := TokenView{ID: t.ID, Account: account, Name: t.Name, Roles: t.Roles, CreatedAt: t.CreatedAt, ExpiresAt: t.ExpiresAt,
		RevokedAt: t.RevokedAt, LastUsedAt: t.LastUsedAt, LastUsedFrom: t.LastUsedFrom, State: "active"}
	switch {
	case !t.RevokedAt.IsZero():
		v.State = "revoked"
	case !s.now().Before(t.ExpiresAt):
		v.State = "expired"
	}
	return v
}

// Tokens lists the caller's API tokens; an admin's list has every account's.
func (s *Service) Tokens(ctx context.Context, by server.Principal) ([]TokenView, error) {
	account := by.ID
	if by.Is(server.RoleAdmin) {
		account = ""
	}
	ts, err := s.store.APITokens(ctx, account)
	if err != nil {
		return nil, err
	}
	names := map[string]string{}
	out := make([]TokenView, 0, len(ts))
	for _, t := range ts {
		if _, ok := names[t.AccountID]; !ok {
			names[t.AccountID] = t.AccountID
			if a, err := s.store.AccountByID(ctx, t.AccountID); err == nil {
				names[t.AccountID] = a.Name
			}
		}
		out = append(out, s.tokenView(t, names[t.AccountID]))
	}
	return out, nil
}

// RevokeToken revokes one of the caller's API tokens (an admin: anyone's).
func (s *Service) RevokeToken(ctx context.Context, by server.Principal, id string) (TokenView, error) {
	t, err := s.store.APIToken(ctx, id)
	if errors.Is(err, server.ErrNotFound) || (err == nil && t.AccountID != by.ID && !by.Is(server.RoleAdmin)) {
		return TokenView{}, server.Errorf(server.KindNotFound, "no API token %s of yours", id)
	}
	if err != nil {
		return TokenView{}, err
	}
	now := s.now().UTC()
	if err := s.store.RevokeAPIToken(ctx, id, now); errors.Is(err, server.ErrNotFound) {
		return TokenView{}, server.Errorf(server.KindConflict, "API token %s is revoked already", id)
	} else if err != nil {
		return TokenView{}, err
	}
	if err := auditlog.Record(ctx, s.store, now, by, "token.revoke", id, fmt.Sprintf("%q", t.Name)); err != nil {
		return TokenView{}, err
	}
	t.RevokedAt = now
	name := by.Name
	if a, err := s.store.AccountByID(ctx, t.AccountID); err == nil {
		name = a.Name
	}
	return s.tokenView(t, name), nil
}
