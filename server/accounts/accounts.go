// Package accounts creates accounts, authenticates bearer tokens and
// owner passwords, and keeps portal sessions. Tokens are 256 random bits,
// shown once and stored as their sha256 (they are high-entropy, so a fast
// hash is right); owner passwords are argon2id hashes, computed under a
// concurrency limit. Sessions live on the server, so logging out, changing
// the password or disabling the account ends them; a disabled account's
// tokens stop working at once.
package accounts

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/vin"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/auditlog"
)

// Store is what accounts need of the state store.
type Store interface {
	server.Accounts
	server.Sessions
	server.APITokens
	auditlog.Appender
}

// Service manages accounts.
type Service struct {
	store          Store
	passwords      *Passwords
	bootstrapToken string
	now            func() time.Time
	// SessionTTL is how long a portal session lasts.
	SessionTTL time.Duration
}

// New returns a Service. bootstrapToken (ROADSIGN_ADMIN_TOKEN) authenticates
// as an admin without an account, so the first accounts can be made.
func New(store Store, passwords *Passwords, bootstrapToken string, now func() time.Time) *Service {
	return &Service{store: store, passwords: passwords, bootstrapToken: bootstrapToken, now: now, SessionTTL: 12 * time.Hour}
}

// HashToken is how tokens are stored.
func HashToken(token string) string {
	s := sha256.Sum256([]byte(token))
	return hex.EncodeToString(s[:])
}

// Bootstrap is the principal of the bootstrap admin token while no
// admin account exists.
var Bootstrap = server.Principal{ID: "bootstrap-admin", Name: "bootstrap-admin", Roles: server.Roles{server.RoleAdmin}}

// RoleBootstrap is all the bootstrap admin token holds once an admin
// account exists: it may create accounts (a locked-out admin's way back
// in) and nothing else. No account can hold it.
const RoleBootstrap server.Role = "bootstrap"

// Authenticate returns the principal a bearer token belongs to.
// from is the caller's address, recorded as an API token's last use.
func (s *Service) Authenticate(ctx context.Context, token, from string) (server.Principal, error) {
	if token == "" {
		return server.Principal{}, server.Errorf(server.KindUnauthorized, "missing bearer token; send Authorization: Bearer TOKEN")
	}
	if s.bootstrapToken != "" && subtle.ConstantTimeCompare([]byte(HashToken(token)), []byte(HashToken(s.bootstrapToken))) == 1 {
		return s.bootstrap(ctx)
	}
	a, err := s.store.AccountByTokenHash(ctx, HashToken(token))
	if errors.Is(err, server.ErrNotFound) {
		return s.apiToken(ctx, token, from)
	}
	if err != nil {
		return server.Principal{}, err
	}
	if a.Disabled {
		return server.Principal{}, disabledError(a)
	}
	return principalOf(a), nil
}

func disabledError(a server.Account) error {
	return server.CodedErrorf(server.KindUnauthorized, errcode.AccountDisabled, "account %s is disabled; ask an admin", a.Name)
}

// bootstrap is the bootstrap token's principal: an admin until an
// enabled admin account exists, then only an account creator.
func (s *Service) bootstrap(ctx context.Context) (server.Principal, error) {
	admin, err := s.store.AdminExists(ctx)
	if err != nil || !admin {
		return Bootstrap, err
	}
	p := Bootstrap
	p.Roles = server.Roles{RoleBootstrap}
	return p, nil
}

func principalOf(a server.Account) server.Principal {
	return server.Principal{ID: a.ID, Name: a.Name, Roles: a.Roles, Regions: a.Regions}
}

// CheckOwnerPassword checks an owner's name and password. Unknown names,
// other roles and disabled accounts cost a full password check too and
// fail the same way.
func (s *Service) CheckOwnerPassword(ctx context.Context, name, password string) (server.Principal, bool, error) {
	a, err := s.store.AccountByName(ctx, strings.TrimSpace(name))
	if err != nil && !errors.Is(err, server.ErrNotFound) {
		return server.Principal{}, false, err
	}
	hash := ""
	if err == nil && a.Roles.Has(server.RoleOwner) && !a.Disabled {
		hash = a.PasswordHash
	}
	ok, err := s.passwords.Check(ctx, hash, password)
	if err != nil || !ok {
		return server.Principal{}, false, err
	}
	return principalOf(a), true, nil
}

// AccountID returns the ID of the account with name ("" if none).
func (s *Service) AccountID(ctx context.Context, name string) string {
	a, err := s.store.AccountByName(ctx, strings.TrimSpace(name))
	if err != nil {
		return ""
	}
	return a.ID
}

// CreateRequest is the body of POST /api/v1/accounts: Roles, or one Role
// (as before roles existed). A dealer names its Regions.
type CreateRequest struct {
	Role     string   `json:"role,omitempty"`
	Roles    []string `json:"roles,omitempty"`
	Name     string   `json:"name"`
	Password string   `json:"password,omitempty"`
	Regions  []string `json:"regions,omitempty"`
}

// Created is the answer: the token is shown only here.
type Created struct {
	ID      string       `json:"id"`
	Role    string       `json:"role"`
	Roles   server.Roles `json:"roles"`
	Name    string       `json:"name"`
	Regions []string     `json:"regions,omitempty"`
	Token   string       `json:"token"`
}

func created(a server.Account, token string) Created {
	return Created{ID: a.ID, Role: string(a.Roles[0]), Roles: a.Roles, Name: a.Name, Regions: a.Regions, Token: token}
}

// ParseRoles checks a request's roles: known, no repeats, at least one;
// an owner is an owner only. one is the older single "role" field.
func ParseRoles(one string, many []string) (server.Roles, error) {
	if one != "" {
		many = append([]string{one}, many...)
	}
	if len(many) == 0 {
		return nil, server.Errorf(server.KindInvalid, "roles: give at least one of %s", server.Roles(server.AllRoles))
	}
	var rs server.Roles
	for _, r := range many {
		role := server.Role(strings.TrimSpace(r))
		if !role.Valid() {
			return nil, server.Errorf(server.KindInvalid, "role %q: want one of %s", r, server.Roles(server.AllRoles))
		}
		if !rs.Has(role) {
			rs = append(rs, role)
		}
	}
	if rs.Has(server.RoleOwner) && len(rs) > 1 {
		return nil, server.Errorf(server.KindInvalid, "roles: an owner account holds no other role; make a separate account for staff work")
	}
	return rs, nil
}

// checkRegions checks a dealer's regions (required) and that no other
// account names any.
func checkRegions(rs server.Roles, regions []string) ([]string, error) {
	if !rs.Has(server.RoleDealer) {
		if len(regions) > 0 {
			return nil, server.Errorf(server.KindInvalid, "regions: only dealer accounts are scoped to regions")
		}
		return nil, nil
	}
	if len(regions) == 0 || len(regions) > 32 {
		return nil, server.Errorf(server.KindInvalid, "regions: a dealer acts only on vehicles of its regions; give 1 to 32 region codes such as [\"EU\"]")
	}
	var out []string
	for _, r := range regions {
		r = strings.TrimSpace(r)
		if r == "" || len(r) > 16 || strings.Contains(r, ",") {
			return nil, server.Errorf(server.KindInvalid, "region %q: give a region code such as NA or EU", r)
		}
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out, nil
}

// Create makes an account and returns its token once.
func (s *Service) Create(ctx context.Context, by server.Principal, req CreateRequest) (Created, error) {
	roles, err := ParseRoles(req.Role, req.Roles)
	if err != nil {
		return Created{}, err
	}
	regions, err := checkRegions(roles, req.Regions)
	if err != nil {
		return Created{}, err
	}
	name := strings.TrimSpace(req.Name)
	if name == "" || len(name) > 100 {
		return Created{}, server.Errorf(server.KindInvalid, "name: give 1 to 100 characters")
	}
	if reserved(name) {
		return Created{}, server.CodedErrorf(server.KindInvalid, errcode.ReservedName, "name %q is reserved (it names the server, a role or a vehicle in the audit log); choose another name", name)
	}
	a := server.Account{ID: uuid.NewString(), Roles: roles, Regions: regions, Name: name, CreatedAt: s.now().UTC()}
	if roles.Has(server.RoleOwner) {
		if len(req.Password) < 8 || len(req.Password) > 256 {
			return Created{}, server.Errorf(server.KindInvalid, "password: owners need one of 8 to 256 characters")
		}
		h, err := s.passwords.Hash(ctx, req.Password)
		if err != nil {
			return Created{}, err
		}
		a.PasswordHash = h
	}
	token, err := NewToken()
	if err != nil {
		return Created{}, err
	}
	a.TokenHash = HashToken(token)
	if err := s.store.CreateAccount(ctx, a); err != nil {
		if errors.Is(err, server.ErrConflict) {
			return Created{}, server.Errorf(server.KindConflict, "an account named %q exists; choose another name", name)
		}
		return Created{}, err
	}
	return created(a, token), nil
}

// reservedNames are what the audit log calls the server, the bootstrap
// token and the roles; an account may not pass itself off as one of them.
var reservedNames = []string{"bootstrap-admin", "bootstrap", "server", "system", "vehicle", "admin", "dealer", "owner", "root", "anonymous",
	"release-manager", "approver", "support"}

// reserved reports whether name is reserved: one of reservedNames (in any
// case) or a VIN, which is how vehicles appear in the audit log.
func reserved(name string) bool {
	for _, r := range reservedNames {
		if strings.EqualFold(name, r) {
			return true
		}
	}
	return vin.Validate(strings.ToUpper(name)) == nil
}

// NewToken returns a random bearer token.
func NewToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random token: %w", err)
	}
	return "rs_" + base64.RawURLEncoding.EncodeToString(b), nil
}

// --- administration ---

// View is an account as GET /api/v1/accounts shows it.
type View struct {
	ID        string       `json:"id"`
	Role      server.Role  `json:"role"`
	Roles     server.Roles `json:"roles"`
	Name      string       `json:"name"`
	Regions   []string     `json:"regions,omitempty"`
	Disabled  bool         `json:"disabled"`
	CreatedAt time.Time    `json:"createdAt"`
}

func viewOf(a server.Account) View {
	v := View{ID: a.ID, Roles: a.Roles, Name: a.Name, Regions: a.Regions, Disabled: a.Disabled, CreatedAt: a.CreatedAt}
	if len(a.Roles) > 0 {
		v.Role = a.Roles[0]
	}
	return v
}

// List returns every account.
func (s *Service) List(ctx context.Context) ([]View, error) {
	as, err := s.store.ListAccounts(ctx)
	out := make([]View, 0, len(as))
	for _, a := range as {
		out = append(out, viewOf(a))
	}
	return out, err
}

func (s *Service) byID(ctx context.Context, id string) (server.Account, error) {
	a, err := s.store.AccountByID(ctx, id)
	if errors.Is(err, server.ErrNotFound) {
		return a, server.Errorf(server.KindNotFound, "no account %s", id)
	}
	return a, err
}

// SetDisabled disables (or enables again) an account. Disabling ends its
// sessions, and its token stops working at once.
func (s *Service) SetDisabled(ctx context.Context, by server.Principal, id string, disabled bool) (View, error) {
	a, err := s.byID(ctx, id)
	if err != nil {
		return View{}, err
	}
	if disabled && a.ID == by.ID {
		return View{}, server.Errorf(server.KindConflict, "you cannot disable your own account; ask another admin")
	}
	if err := s.store.SetAccountDisabled(ctx, id, disabled); err != nil {
		return View{}, err
	}
	action := "account.enable"
	if disabled {
		action = "account.disable"
		if err := s.store.DeleteSessions(ctx, id); err != nil {
			return View{}, err
		}
	}
	if err := auditlog.Record(ctx, s.store, s.now(), by, action, id, "name="+a.Name); err != nil {
		return View{}, err
	}
	a.Disabled = disabled
	return viewOf(a), nil
}

// RotateToken gives an account a new token; the old one stops working.
func (s *Service) RotateToken(ctx context.Context, by server.Principal, id string) (Created, error) {
	a, err := s.byID(ctx, id)
	if err != nil {
		return Created{}, err
	}
	token, err := NewToken()
	if err != nil {
		return Created{}, err
	}
	if err := s.store.SetAccountToken(ctx, id, HashToken(token)); err != nil {
		return Created{}, err
	}
	if err := auditlog.Record(ctx, s.store, s.now(), by, "account.token", id, "token replaced; the old one is revoked"); err != nil {
		return Created{}, err
	}
	return created(a, token), nil
}

// ChangePassword sets an owner's new password after checking the current
// one, and ends all of the account's sessions.
func (s *Service) ChangePassword(ctx context.Context, p server.Principal, current, next string) error {
	if len(next) < 8 || len(next) > 256 {
		return server.Errorf(server.KindInvalid, "new password: give 8 to 256 characters")
	}
	a, err := s.byID(ctx, p.ID)
	if err != nil {
		return err
	}
	if !a.Roles.Has(server.RoleOwner) {
		return server.Errorf(server.KindForbidden, "only owner accounts have passwords; others use tokens")
	}
	ok, err := s.passwords.Check(ctx, a.PasswordHash, current)
	if err != nil {
		return err
	}
	if !ok {
		return server.Errorf(server.KindForbidden, "the current password is wrong")
	}
	h, err := s.passwords.Hash(ctx, next)
	if err != nil {
		return err
	}
	if err := s.store.SetAccountPassword(ctx, a.ID, h); err != nil {
		return err
	}
	if err := s.store.DeleteSessions(ctx, a.ID); err != nil {
		return err
	}
	return auditlog.Record(ctx, s.store, s.now(), p, "account.password", a.ID, "password changed; every session ended")
}

// --- sessions ---

// StartSession opens a portal session for p and returns its cookie value:
// 256 random bits, stored only as their sha256.
func (s *Service) StartSession(ctx context.Context, p server.Principal) (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	id := base64.RawURLEncoding.EncodeToString(b)
	now := s.now().UTC()
	return id, s.store.CreateSession(ctx, server.Session{IDHash: HashToken(id), AccountID: p.ID, CreatedAt: now, ExpiresAt: now.Add(s.SessionTTL)})
}

// Session returns the principal of a live session; false if the session
// ended, expired, or its account is disabled. The bootstrap admin has no
// account and so no portal session.
func (s *Service) Session(ctx context.Context, id string) (server.Principal, bool) {
	if id == "" || len(id) > 64 {
		return server.Principal{}, false
	}
	se, err := s.store.Session(ctx, HashToken(id))
	if err != nil || !s.now().Before(se.ExpiresAt) {
		return server.Principal{}, false
	}
	a, err := s.store.AccountByID(ctx, se.AccountID)
	if err != nil || a.Disabled {
		return server.Principal{}, false
	}
	return principalOf(a), true
}

// EndSession ends one session (logout).
func (s *Service) EndSession(ctx context.Context, id string) error {
	return s.store.DeleteSession(ctx, HashToken(id))
}
