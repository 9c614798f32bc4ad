package server

// Principal is who is calling.
type Principal struct {
	ID   string
	Name string
	Role Role
	// VIN is set for a vehicle (signed request); Role is then empty.
	VIN string
}

// IsVehicle reports whether the caller is a vehicle.
func (p Principal) IsVehicle() bool { return p.VIN != "" }

// System is the server itself acting (timeouts, auto-assign), for the audit log.
var System = Principal{ID: "server", Name: "server", Role: "system"}
