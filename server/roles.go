package server

import (
	"slices"
	"strings"
)

// Role is what an account may do; docs/roles.md has the permission table.
type Role string

// Roles.
const (
	// RoleAdmin manages accounts and settings; it also holds what a
	// release manager may do, but never approves.
	RoleAdmin Role = "admin"
	// RoleReleaseManager proposes and runs campaigns and jobs on many
	// vehicles; what reaches the fleet needs an approver's approval.
	RoleReleaseManager Role = "release-manager"
	// RoleApprover approves or refuses what another account proposed.
	RoleApprover Role = "approver"
	// RoleSupport reads everything and changes nothing.
	RoleSupport Role = "support"
	// RoleDealer acts on the vehicles of its regions.
	RoleDealer Role = "dealer"
	// RoleOwner is a vehicle owner (portal, own vehicles).
	RoleOwner Role = "owner"
)

// AllRoles are the roles in the order the docs list them.
var AllRoles = []Role{RoleAdmin, RoleReleaseManager, RoleApprover, RoleSupport, RoleDealer, RoleOwner}

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return slices.Contains(AllRoles, r) }

// Roles are the roles an account (or a token) holds.
type Roles []Role

// Has reports whether rs holds r.
func (rs Roles) Has(r Role) bool { return slices.Contains(rs, r) }

// Any reports whether rs holds one of want.
func (rs Roles) Any(want ...Role) bool {
	for _, r := range want {
		if rs.Has(r) {
			return true
		}
	}
	return false
}

// Covers reports whether every role of sub is in rs.
func (rs Roles) Covers(sub Roles) bool {
	for _, r := range sub {
		if !rs.Has(r) {
			return false
		}
	}
	return true
}

// String joins the roles with commas (how they are stored and audited).
func (rs Roles) String() string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = string(r)
	}
	return strings.Join(s, ",")
}

// ParseRoles splits a stored roles string; unknown names are kept (and
// grant nothing).
func ParseRoles(s string) Roles {
	var rs Roles
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			rs = append(rs, Role(f))
		}
	}
	return rs
}
