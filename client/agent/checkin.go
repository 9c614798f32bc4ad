package agent

import (
	"context"

	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// CheckIn posts the signed manifest of what every ECU runs.
func (a *Agent) CheckIn(ctx context.Context) error {
	if a.API == nil {
		return nil
	}
	var ecus []vehicleauth.ECUReport
	for _, e := range a.V.ECUs {
		if a.health.unreachable(e) {
			continue // not on the bus: nothing to report for it
		}
		rec, err := a.V.ECU(e).LoadRecord()
		if err != nil {
			return err
		}
		r := vehicleauth.ECUReport{Serial: e.Serial, LastResult: rec.LastResult}
		if s := rec.Slots[rec.Active]; s != nil {
			r.InstalledTarget, r.Version, r.SHA256, r.Length = s.Target, s.Version, s.SHA256, s.Length
			if m := a.health.running(e.Serial, s.SHA256); m != s.SHA256 {
				r.InstalledTarget, r.SHA256 = "", m // corrupt: not the recorded image
			}
		}
		ecus = append(ecus, r)
	}
	offline, err := a.V.OfflineInstalls()
	if err != nil {
		return err
	}
	dtcs, signal, err := a.healthReport()
	if err != nil {
		return err
	}
	if err := a.API.CheckIn(ctx, ecus, offline, api.Health{DTCs: dtcs, Signal: signal}); err != nil {
		return err
	}
	if err := a.V.SaveCheckIn(a.now()); err != nil {
		return err
	}
	return a.V.ClearOfflineInstalls()
}
