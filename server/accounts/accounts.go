// Package accounts creates accounts and authenticates bearer tokens.
// Tokens are 256 random bits, shown once and stored as their sha256 (they
// are high-entropy, so a fast hash is right); owner passwords are stored
// as argon2id hashes.
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
	"strings"
	"time"

	"github.com/google/uuid"
	"golang.org/x/crypto/argon2"

	"github.com/roadsign/roadsign/internal/vin"
	"github.com/roadsign/roadsign/server"
)

// Principal is who is calling.
type Principal struct {
	ID   string
	Name string
	Role server.Role
	// VIN is set for a vehicle (signed request); Role is then empty.
	VIN string
}

// IsVehicle reports whether the caller is a vehicle.
func (p Principal) IsVehicle() bool { return p.VIN != "" }

// Service manages accounts.
type Service struct {
	store          server.Store
	bootstrapToken string
	now            func() time.Time
}

// New returns a Service. bootstrapToken (ROADSIGN_ADMIN_TOKEN) authenticates
// as an admin without an account, so the first accounts can be made.
func New(store server.Store, bootstrapToken string, now func() time.Time) *Service {
	return &Service{store: store, bootstrapToken: bootstrapToken, now: now}
}

// HashToken is how tokens are stored.
func HashToken(token string) string {
	s := sha256.Sum256([]byte(token))
	return hex.EncodeToString(s[:])
}

// Authenticate returns the principal a bearer token belongs to.
func (s *Service) Authenticate(ctx context.Context, token string) (Principal, error) {
	if token == "" {
		return Principal{}, server.Errorf(server.KindUnauthorized, "missing bearer token; send Authorization: Bearer TOKEN")
	}
	if s.bootstrapToken != "" && subtle.ConstantTimeCompare([]byte(HashToken(token)), []byte(HashToken(s.bootstrapToken))) == 1 {
		return Principal{ID: "bootstrap-admin", Name: "bootstrap-admin", Role: server.RoleAdmin}, nil
	}
	a, err := s.store.AccountByTokenHash(ctx, HashToken(token))
	if errors.Is(err, server.ErrNotFound) {
		return Principal{}, server.Errorf(server.KindUnauthorized, "unknown bearer token; ask an admin for an account")
	}
	if err != nil {
		return Principal{}, err
	}
	return Principal{ID: a.ID, Name: a.Name, Role: a.Role}, nil
}

// CreateRequest is the body of POST /api/v1/accounts.
type CreateRequest struct {
	Role     string `json:"role"`
	Name     string `json:"name"`
	Password string `json:"password,omitempty"`
}

// Created is the answer: the token is shown only here.
type Created struct {
	ID    string `json:"id"`
	Role  string `json:"role"`
	Name  string `json:"name"`
	Token string `json:"token"`
}

// Create makes an account and returns its token once.
func (s *Service) Create(ctx context.Context, by Principal, req CreateRequest) (Created, error) {
	role := server.Role(req.Role)
	if !role.Valid() {
		return Created{}, server.Errorf(server.KindInvalid, "role %q: want admin, dealer or owner", req.Role)
	}
	name := strings.TrimSpace(req.Name)
	if name == "" || len(name) > 100 {
		return Created{}, server.Errorf(server.KindInvalid, "name: give 1 to 100 characters")
	}
	if reserved(name) {
		return Created{}, server.CodedErrorf(server.KindInvalid, "reserved_name", "name %q is reserved (it names the server, a role or a vehicle in the audit log); choose another name", name)
	}
	a := server.Account{ID: uuid.NewString(), Role: role, Name: name, CreatedAt: s.now().UTC()}
	if role == server.RoleOwner {
		if len(req.Password) < 8 {
			return Created{}, server.Errorf(server.KindInvalid, "password: owners need one of at least 8 characters")
		}
		a.PasswordHash = HashPassword(req.Password)
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
	return Created{ID: a.ID, Role: string(role), Name: name, Token: token}, nil
}

// reservedNames are what the audit log calls the server, the bootstrap
// token and the roles; an account may not pass itself off as one of them.
var reservedNames = []string{"bootstrap-admin", "server", "system", "vehicle", "admin", "dealer", "owner", "root", "anonymous"}

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

// argon2id parameters (RFC 9106's second recommendation, memory-light).
const (
	argonTime    = 3
	argonMemory  = 64 << 10 // KiB
	argonThreads = 2
	argonKeyLen  = 32
)

// HashPassword returns an argon2id hash in the PHC string format.
func HashPassword(password string) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
}

// CheckPassword reports whether password matches an argon2id hash.
func CheckPassword(hash, password string) bool {
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil {
		return false
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	want, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil {
		return false
	}
	got := argon2.IDKey([]byte(password), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}

// System is the server itself acting (timeouts, auto-assign), for the audit log.
var System = Principal{ID: "server", Name: "server", Role: "system"}

// Audit appends an audit record for an action by p, naming p by ID (an
// account's UUID, "bootstrap-admin", a vehicle's VIN, or "server") as
// well as by name and role.
func Audit(ctx context.Context, store server.Store, now time.Time, p Principal, action, subject, detail string) error {
	id, actor, role := p.ID, p.Name, string(p.Role)
	if p.IsVehicle() {
		id, actor, role = p.VIN, p.VIN, "vehicle"
	}
	return store.AppendAudit(ctx, server.AuditEntry{At: now.UTC(), ActorID: id, Actor: actor, Role: role, Action: action, Subject: subject, Detail: detail})
}
