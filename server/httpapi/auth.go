package httpapi

import (
	"bytes"
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
	if err != nil {
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
	if err := claim.Verify(key, c.Request.Method, c.Request.URL.Path, body, a.Now()); err != nil {
		if errors.Is(err, vehicleauth.ErrBadSignature) {
			a.fail(c, server.CodedErrorf(server.KindUnauthorized, "unknown_vehicle_key", "the request is not signed by the key registered for %s; a replaced DCM must be re-provisioned by a dealer", claim.VIN))
			return
		}
		a.fail(c, server.CodedErrorf(server.KindUnauthorized, "unauthorized", "%v", err))
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
