// Package boottime reads a clock that counts time since boot, suspend
// included (Linux's CLOCK_BOOTTIME), and names the boot it counts from:
// between two time attestations a vehicle counts on with it, whatever its
// RTC says.
package boottime

import "time"

// Reading is the clock's value during one boot.
type Reading struct {
	Boot  string
	Since time.Duration
}

// Elapsed is how long has passed since r, and whether r was taken in
// the same boot (otherwise the clock started over and nothing is known).
func (r Reading) Elapsed(now Reading) (time.Duration, bool) {
	if r.Boot == "" || r.Boot != now.Boot || now.Since < r.Since {
		return 0, false
	}
	return now.Since - r.Since, true
}
