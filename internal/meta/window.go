package meta

import (
	"fmt"
	"time"
	_ "time/tzdata" // an ECU may have no zoneinfo of its own
)

// InWindow reports whether t falls in the daily window from start to end
// ("HH:MM"; end may be past midnight) in time zone tz.
func InWindow(start, end, tz string, t time.Time) (bool, error) {
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return false, fmt.Errorf("maintenance window: time zone %q: %w", tz, err)
	}
	s, err1 := time.Parse("15:04", start)
	e, err2 := time.Parse("15:04", end)
	if err1 != nil || err2 != nil {
		return false, fmt.Errorf("maintenance window %s-%s: want HH:MM", start, end)
	}
	local := t.In(loc)
	m := local.Hour()*60 + local.Minute()
	from, to := s.Hour()*60+s.Minute(), e.Hour()*60+e.Minute()
	if from < to {
		return m >= from && m < to, nil
	}
	return m >= from || m < to, nil // across midnight
}
