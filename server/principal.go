package server

import (
	"slices"
	"strings"

	"github.com/roadsign/roadsign/internal/errcode"
)

// Principal is who is calling.
type Principal struct {
	ID   string
	Name string
	// Roles are what the caller may do: its account's, or (an API
	// token) the token's scope.
	Roles Roles
	// Regions scope a dealer to the vehicles of those regions.
	Regions []string
	// VIN is set for a vehicle (signed request); Roles is then empty.
	VIN string
	// TokenID is the API token the caller used ("" for an account's own
	// token, a session or a vehicle).
	TokenID string
}

// IsVehicle reports whether the caller is a vehicle.
func (p Principal) IsVehicle() bool { return p.VIN != "" }

// Is reports whether the caller holds role r.
func (p Principal) Is(r Role) bool { return p.Roles.Has(r) }

// DealerOnly reports whether the caller acts only as a dealer: its
// reach is its regions, not the fleet.
func (p Principal) DealerOnly() bool {
	return p.Is(RoleDealer) && !p.Roles.Any(RoleAdmin, RoleReleaseManager, RoleSupport)
}

// Reaches reports whether the caller may act on a vehicle of region:
// every staff role reaches the fleet, a dealer only its regions.
func (p Principal) Reaches(region string) bool {
	return !p.DealerOnly() || slices.Contains(p.Regions, region)
}

// System is the server itself acting (timeouts, auto-assign), for the audit log.
var System = Principal{ID: "server", Name: "server", Roles: Roles{"system"}}

// Reach is nil when p may act on v: a dealer only on vehicles of its
// regions (docs/roles.md).
func (p Principal) Reach(v Vehicle) error {
	if p.IsVehicle() || p.Is(RoleOwner) || p.Reaches(v.Region) {
		return nil
	}
	return CodedErrorf(KindForbidden, errcode.OutsideRegion,
		"vehicle %s is in region %s; dealer %s acts on vehicles of %s only: send it to a dealer of its region", v.VIN, v.Region, p.Name, strings.Join(p.Regions, ", "))
}
