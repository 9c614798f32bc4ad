package secondary

import (
	"path/filepath"

	"github.com/roadsign/roadsign/client/ecunet"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// Report signs this cycle's ECU version report with the ECU's own key:
// the image its active slot runs, the refusal it has to report, the
// latest time it can vouch for and a counter that rose since the last.
func (s *State) Report() (vehicleauth.SignedECUReport, error) {
	rec, err := s.ECU().LoadRecord()
	if err != nil {
		return vehicleauth.SignedECUReport{}, err
	}
	n, err := vehicle.NextCounter(filepath.Join(s.Dir, "report-counter"))
	if err != nil {
		return vehicleauth.SignedECUReport{}, err
	}
	r := vehicleauth.ECUVersionReport{ECUSerial: s.Config.ECU.Serial, AttackDetected: s.lastAttack(), LatestTime: s.now().UTC(), Counter: n}
	if a := rec.Slots[rec.Active]; a != nil {
		r.InstalledImage = vehicleauth.InstalledImage{Filename: a.Target, Length: a.Length, Hashes: map[string]string{"sha256": a.SHA256}}
	}
	return vehicleauth.SignECUReport(s.key.Private, r)
}

// Status is what the ECU runs, for the primary's status.
func (s *State) Status() (ecunet.Status, error) {
	rec, err := s.ECU().LoadRecord()
	if err != nil {
		return ecunet.Status{}, err
	}
	st := ecunet.Status{Envelope: ecunet.Envelope{Type: ecunet.TypeStatus}, Serial: s.Config.ECU.Serial, ECUType: s.Config.ECU.Type,
		HardwareID: s.Config.ECU.HardwareID, ActiveSlot: string(rec.Active), LastResult: rec.LastResult, UpdatedAt: rec.UpdatedAt,
		Trial: rec.Trial, Failed: rec.Failed}
	if a := rec.Slots[rec.Active]; a != nil {
		st.Version, st.SHA256, st.Target, st.Length, st.ReleaseCounter = a.Version, a.SHA256, a.Target, a.Length, a.ReleaseCounter
	}
	return st, nil
}
