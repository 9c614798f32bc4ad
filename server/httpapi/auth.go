package httpapi

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/tlsconf"
	"github.com/roadsign/roadsign/internal/vehicleauth"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/accounts"
)

// Who may call a route: anyone (Public), the vehicle whose VIN is in the
// path (or owns the job), or an account holding one of the roles
// (docs/roles.md has the permission table).
const (
	Public         = "public"
	Vehicle        = "vehicle"
	Admin          = string(server.RoleAdmin)
	ReleaseManager = string(server.RoleReleaseManager)
	Approver       = string(server.RoleApprover)
	Support        = string(server.RoleSupport)
	Dealer         = string(server.RoleDealer)
	Owner          = string(server.RoleOwner)
	// Bootstrap is the bootstrap admin token once an admin account
	// exists: it may only create accounts.
	Bootstrap = string(accounts.RoleBootstrap)
)

const principalKey = "roadsign.principal"

// unknownVehicleKey stands in for the key of an unregistered VIN: a valid
// ed25519 public key whose private half nobody has.
var unknownVehicleKey = func() ed25519.PublicKey {
	seed := sha256.Sum256([]byte("roadsign: no vehicle holds this key"))
	return ed25519.NewKeyFromSeed(seed[:]).Public().(ed25519.PublicKey)
}()

// authenticate identifies the caller, if any: a bearer token (account or
// the bootstrap admin) or a vehicle's signed request. It rejects bad
// credentials; routes decide whether anonymous calls are fine.
func (a *api) authenticate(c *gin.Context) {
	h := c.GetHeader("Authorization")
	switch {
	case h == "":
		c.Next()
		return
	case strings.HasPrefix(h, "Bearer "):
		p, err := a.Accounts.Authenticate(c.Request.Context(), strings.TrimSpace(strings.TrimPrefix(h, "Bearer ")), c.ClientIP())
		if err != nil {
			a.fail(c, err)
			return
		}
		c.Set(principalKey, p)
		c.Next()
		return
	}
	claim, ok, err := vehicleauth.Parse(h)
	if !ok {
		a.fail(c, server.Errorf(server.KindUnauthorized, "unsupported Authorization scheme; use Bearer TOKEN"))
		return
	}
	if err != nil {
		a.fail(c, server.Errorf(server.KindUnauthorized, "%v", err))
		return
	}
	if err := a.verifyVehicle(c, claim); err != nil {
		a.fail(c, err)
		return
	}
	c.Set(principalKey, server.Principal{VIN: claim.VIN, Name: claim.VIN})
	c.Next()
}

// verifyVehicle checks a signed vehicle request before its body is read:
// the signature over method, host, path, query and declared body hash,
// then the time, then that the nonce is new. Only then is the (small,
// already limited) body read and held to the declared hash.
func (a *api) verifyVehicle(c *gin.Context, claim vehicleauth.Claim) error {
	ctx, now := c.Request.Context(), a.Now()
	key, err := a.Registry.VehicleKey(ctx, claim.VIN)
	if errors.Is(err, server.ErrNotFound) {
		// Verify against a key nobody holds, so an unregistered VIN costs
		// and answers the same as a registered one with a bad signature.
		key = unknownVehicleKey
	} else if err != nil {
		return err
	}
	err = claim.Verify(key, c.Request, now, a.PublicHosts...)
	var skew *vehicleauth.ClockSkewError
	switch {
	case errors.As(err, &skew):
		a.Registry.NoteRequestFault(ctx, claim.VIN, server.RequestFault{Kind: server.FaultClockSkew, Skew: skew.Skew})
		return server.CodedErrorf(server.KindUnauthorized, errcode.ClockSkew, "%s", skew.Error())
	case err != nil:
		a.Registry.NoteRequestFault(ctx, claim.VIN, server.RequestFault{Kind: server.FaultBadSignature})
		return server.CodedErrorf(server.KindUnauthorized, errcode.UnknownVehicleKey,
			"the request for %s is not signed by a key registered for that VIN over host %q%s: a vehicle must be registered first and a replaced DCM re-provisioned by a dealer; "+
				"if every vehicle gets this, a reverse proxy may rewrite the Host header: start roadsign-server with --public-url set to the URL vehicles use (docs/operations.md)",
			claim.VIN, c.Request.Host, publicHostsNote(a.PublicHosts))
	}
	if a.VehicleClientCerts {
		tlsState := c.Request.TLS
		if tlsState == nil || len(tlsState.PeerCertificates) == 0 {
			return server.CodedErrorf(server.KindUnauthorized, errcode.ClientCertificateRequired,
				"this server requires vehicles to present their client certificate (mutual TLS); install one issued for the vehicle's key with roadsign-agent client-cert")
		}
		if !tlsconf.SameKey(tlsState.PeerCertificates[0].PublicKey, key) {
			a.Registry.NoteRequestFault(ctx, claim.VIN, server.RequestFault{Kind: server.FaultBadSignature})
			return server.CodedErrorf(server.KindUnauthorized, errcode.ClientCertificateMismatch,
				"the client certificate is not for the key registered to %s", claim.VIN)
		}
	}
	if err := a.Store.UseNonce(ctx, claim.VIN, "request:"+claim.Nonce, now); errors.Is(err, server.ErrConflict) {
		return server.CodedErrorf(server.KindUnauthorized, errcode.ReplayedRequest, "this signed request was seen before (nonce %s): a replay is refused; sign each request anew", claim.Nonce)
	} else if err != nil {
		return err
	}
	body, err := io.ReadAll(c.Request.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return server.Errorf(server.KindTooLarge, "vehicle request body is over this route's %d-byte limit", tooBig.Limit)
		}
		return server.Errorf(server.KindInvalid, "reading the request body: %v", err)
	}
	if vehicleauth.BodySHA256(body) != claim.BodySHA256 {
		return server.CodedErrorf(server.KindUnauthorized, errcode.BodyMismatch, "the request body is not the one the vehicle signed")
	}
	c.Request.Body = io.NopCloser(bytes.NewReader(body))
	return nil
}

func principal(c *gin.Context) (server.Principal, bool) {
	v, ok := c.Get(principalKey)
	if !ok {
		return server.Principal{}, false
	}
	return v.(server.Principal), true
}

// allow lets a route through for the listed kinds of caller: 401 without
// credentials, 403 with the wrong ones. A vehicle may only act for the
// VIN in the path.
func (a *api) allow(who []string) gin.HandlerFunc {
	return func(c *gin.Context) {
		if slices.Contains(who, Public) {
			c.Next()
			return
		}
		p, ok := principal(c)
		if !ok {
			a.fail(c, server.Errorf(server.KindUnauthorized, "this route needs credentials: Authorization: Bearer TOKEN"))
			return
		}
		switch {
		case p.IsVehicle() && slices.Contains(who, Vehicle):
			if vin := c.Param("vin"); vin != "" && vin != p.VIN {
				a.fail(c, server.Errorf(server.KindForbidden, "vehicle %s may not act for %s", p.VIN, vin))
				return
			}
		case !p.IsVehicle() && slices.ContainsFunc(who, func(w string) bool { return p.Is(server.Role(w)) }):
			if err := a.reach(c, p); err != nil {
				a.fail(c, err)
				return
			}
		default:
			a.fail(c, server.CodedErrorf(server.KindForbidden, errcode.Forbidden, "%s may not call %s %s (allowed: %s)", callerKind(p), c.Request.Method, c.FullPath(), strings.Join(who, ", ")))
			return
		}
		c.Next()
	}
}

// reach holds a dealer to the vehicles of its regions on every route
// with a VIN in its path (routes naming a vehicle otherwise, by a job or
// in the body, check in their handler).
func (a *api) reach(c *gin.Context, p server.Principal) error {
	vin := c.Param("vin")
	if vin == "" || !p.DealerOnly() {
		return nil
	}
	v, err := a.Store.Vehicle(c.Request.Context(), vin)
	if errors.Is(err, server.ErrNotFound) || server.ErrorOf(err).Kind == server.KindNotFound {
		return nil // the handler says there is no such vehicle
	}
	if err != nil {
		return err
	}
	return p.Reach(v)
}

func callerKind(p server.Principal) string {
	switch {
	case p.IsVehicle():
		return "a vehicle"
	case p.TokenID != "":
		return "an API token with roles " + p.Roles.String()
	case len(p.Roles) == 0:
		return "an account with no role"
	}
	return "an account with roles " + p.Roles.String()
}

// publicHostsNote names the --public-url hosts a signature was also
// checked against.
func publicHostsNote(hosts []string) string {
	if len(hosts) == 0 {
		return ""
	}
	return " or " + strings.Join(hosts, ", ")
}
