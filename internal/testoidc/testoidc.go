// Package testoidc runs a real OpenID Connect provider on loopback for
// tests: zitadel/oidc's provider package (op) with its example storage
// and log-in page, plus users whose ID tokens carry a roles claim (and a
// regions claim). Tests log in through it in a browser; nothing of the
// protocol is mocked.
package testoidc

import (
	"context"
	"net"
	"net/http"
	"testing"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"
)

// User is one account at the provider.
type User struct {
	Username, Password string
	Roles, Regions     []string
}

// Provider is a running provider.
type Provider struct {
	Issuer string
	ln     net.Listener
	users  map[string]User // by ID
}

// Listen reserves the provider's address, so its issuer URL is known
// before the relying party starts.
func Listen(t testing.TB) *Provider {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &Provider{Issuer: "http://" + ln.Addr().String(), ln: ln, users: map[string]User{}}
}

// Serve starts the provider with the users and one confidential web
// client (secret, PKCE allowed) redirecting to redirectURL.
func (p *Provider) Serve(t testing.TB, clientID, secret, redirectURL string, users ...User) {
	t.Helper()
	byName := map[string]*storage.User{}
	byID := map[string]*storage.User{}
	for i, u := range users {
		id := "user-" + string(rune('a'+i))
		su := &storage.User{ID: id, Username: u.Username, Password: u.Password, FirstName: u.Username, LastName: "Test",
			Email: u.Username + "@example.test", EmailVerified: true, PreferredLanguage: language.English}
		byName[u.Username], byID[id] = su, su
		p.users[id] = u
	}
	client := storage.WebClient(clientID, secret, redirectURL)
	st := &store{Storage: storage.NewStorageWithClients(userStore{byName, byID}, map[string]*storage.Client{clientID: client}), p: p}
	srv := &http.Server{Handler: exampleop.SetupServer(p.Issuer, st, nil, false)}
	go srv.Serve(p.ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
}

type userStore struct{ byName, byID map[string]*storage.User }

func (u userStore) GetUserByID(id string) *storage.User         { return u.byID[id] }
func (u userStore) GetUserByUsername(name string) *storage.User { return u.byName[name] }
func (u userStore) ExampleClientID() string                     { return "service" }

// store adds the roles and regions claims, and the user's name, to the
// ID token.
type store struct {
	*storage.Storage
	p *Provider
}

// SetUserinfoFromRequest is called for each ID token.
func (s *store) SetUserinfoFromRequest(ctx context.Context, info *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, info, req, scopes); err != nil {
		return err
	}
	u, ok := s.p.users[req.GetSubject()]
	if !ok {
		return nil
	}
	info.PreferredUsername = u.Username
	info.AppendClaims("roles", u.Roles)
	if len(u.Regions) > 0 {
		info.AppendClaims("regions", u.Regions)
	}
	return nil
}
