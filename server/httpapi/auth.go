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

	"github.com/roadsign/roadsign/internal/vehicleauth"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/accounts"
)

// Who may call a route.
const (
	Public  = "public"
	Admin   = "admin"
	Dealer  = "dealer"
	Owner   = "owner"
	Vehicle = "vehicle" // the vehicle whose VIN is in the path (or owns the job)
)

const principalKey = "roadsign.principal"

// unknownVehicleKey stands in for the key of an unregistered VIN: a valid
// ed25519 public key whose private half nobody has.
var unknownVehicleKey = func() ed25519.PublicKey {
	seed := sha256.Sum256([]byte("roadsign: no vehicle holds this key"))
	return ed25519.NewKeyFromSeed(seed[:]).Public().(ed25519.PublicKey)
}()

// maxVehicleBody caps a signed vehicle request's body (manifests, events).
const maxVehicleBody = 1 << 20

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
		p, err := a.Accounts.Authenticate(c.Request.Context(), strings.TrimSpace(strings.TrimPrefix(h, "Bearer ")))
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
	key, err := a.Registry.VehicleKey(c.Request.Context(), claim.VIN)
	if errors.Is(err, server.ErrNotFound) {
		// Verify against a key nobody holds, so an unregistered VIN costs
		// and answers the same as a registered one with a bad signature.
		key = unknownVehicleKey
	} else if err != nil {
		a.fail(c, err)
		return
	}
	var body []byte
	if c.Request.Body != nil {
		body, err = io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, maxVehicleBody))
		if err != nil {
			a.fail(c, server.Errorf(server.KindTooLarge, "vehicle request body is over %d bytes", maxVehicleBody))
			return
		}
		c.Request.Body = io.NopCloser(bytes.NewReader(body))
	}
	err = claim.Verify(key, c.Request.Method, c.Request.URL.Path, body, a.Now())
	var skew *vehicleauth.ClockSkewError
	switch {
	case errors.As(err, &skew):
		a.fail(c, server.CodedErrorf(server.KindUnauthorized, "clock_skew", "%s", skew.Error()))
		return
	case err != nil:
		a.fail(c, server.CodedErrorf(server.KindUnauthorized, "unknown_vehicle_key",
			"the request for %s is not signed by a key registered for that VIN: a vehicle must be registered first, and a replaced DCM re-provisioned by a dealer", claim.VIN))
		return
	}
	c.Set(principalKey, accounts.Principal{VIN: claim.VIN, Name: claim.VIN})
	c.Next()
}

func principal(c *gin.Context) (accounts.Principal, bool) {
	v, ok := c.Get(principalKey)
	if !ok {
		return accounts.Principal{}, false
	}
	return v.(accounts.Principal), true
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
		case !p.IsVehicle() && slices.Contains(who, string(p.Role)):
		default:
			a.fail(c, server.Errorf(server.KindForbidden, "%s may not call %s %s (allowed: %s)", callerKind(p), c.Request.Method, c.FullPath(), strings.Join(who, ", ")))
			return
		}
		c.Next()
	}
}

func callerKind(p accounts.Principal) string {
	if p.IsVehicle() {
		return "a vehicle"
	}
	return "a " + string(p.Role)
}
