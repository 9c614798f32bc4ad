package agent

import (
	"context"

	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// CheckIn posts the signed manifest of what every ECU runs. A vehicle
// whose ECUs have keys of their own sends a vehicle version manifest:
// each ECU signs its own report (a secondary over the vehicle network),
// and the server takes what each runs from its report.
func (a *Agent) CheckIn(ctx context.Context) error {
	if a.API == nil {
		return nil
	}
	defer a.closeRemotes()
	var ecus []vehicleauth.ECUReport
	info := api.CheckInInfo{PrimarySerial: a.V.Primary}
	for _, e := range a.V.ECUs {
		if a.health.unreachable(e) {
			if a.V.Keyed() {
				info.Unreachable = append(info.Unreachable, e.Serial)
			}
			continue // not on the bus: nothing to report for it
		}
		rec, err := a.boot(e).LoadRecord()
		if err != nil && e.Addr != "" {
			a.Log.Warn("secondary unreachable; reported as such", "ecu", e.Serial, "err", err)
			info.Unreachable = append(info.Unreachable, e.Serial)
			continue
		}
		if err != nil {
			return err
		}
		r := vehicleauth.ECUReport{Serial: e.Serial, LastResult: rec.LastResult}
		if e.Addr == "" && !a.V.EncryptionKeyReported(e.Serial) {
			// Until the server took it once: its images may be encrypted.
			ek, err := a.V.EncryptionKey(e.Serial)
			if err != nil {
				return err
			}
			r.EncryptionKey = ek.PublicKey().Bytes()
		}
		if s := rec.Slots[rec.Active]; s != nil {
			r.InstalledTarget, r.Version, r.SHA256, r.Length = s.Target, s.Version, s.SHA256, s.Length
			if m := a.health.running(e.Serial, s.SHA256); m != s.SHA256 {
				r.InstalledTarget, r.SHA256 = "", m // corrupt: not the recorded image
			}
		}
		ecus = append(ecus, r)
		if !a.V.Keyed() {
			continue
		}
		sr, err := a.ecuReport(e, r)
		if err != nil {
			return err
		}
		info.ECUReports = append(info.ECUReports, sr)
	}
	offline, err := a.V.OfflineInstalls()
	if err != nil {
		return err
	}
	if info.DTCs, info.Signal, err = a.healthReport(); err != nil {
		return err
	}
	ts, err := a.V.LoadTimeState()
	if err != nil {
		return err
	}
	info.AttestTime, info.TimeUntrusted = true, ts.Untrusted
	res, err := a.API.CheckIn(ctx, ecus, offline, info)
	if err != nil {
		return err
	}
	if res.Time != nil {
		// The server's time for this check-in's nonce keeps the clock
		// trusted (and makes a vehicle whose RTC was right trusted again).
		// (Simulated damage is the cycle's own attestation's.)
		if err := a.acceptAttestation(*res.Time, res.Nonce, ""); err != nil {
			a.Log.Warn("the check-in's time attestation was refused", "err", err)
		}
	}
	if err := a.V.SaveCheckIn(a.now()); err != nil {
		return err
	}
	for _, r := range ecus {
		if len(r.EncryptionKey) > 0 {
			if err := a.V.MarkEncryptionKeyReported(r.Serial); err != nil {
				return err
			}
		}
	}
	return a.V.ClearOfflineInstalls()
}

// ecuReport is ECU e's signed version report: a secondary signs its own;
// a local ECU's is signed here with its own key (the primary's is the
// vehicle key), from what r says it runs.
func (a *Agent) ecuReport(e vehicle.ECUConfig, r vehicleauth.ECUReport) (vehicleauth.SignedECUReport, error) {
	if e.Addr != "" {
		return a.boot(e).(*remoteECU).Report()
	}
	k, err := keys.Load(a.V.ECUKeyPath(e.Serial))
	if err != nil {
		return vehicleauth.SignedECUReport{}, err
	}
	n, err := a.V.NextReportCounter(e.Serial)
	if err != nil {
		return vehicleauth.SignedECUReport{}, err
	}
	rep := vehicleauth.ECUVersionReport{ECUSerial: e.Serial, LatestTime: a.now().UTC(), Counter: n}
	if r.SHA256 != "" {
		rep.InstalledImage = vehicleauth.InstalledImage{Filename: r.InstalledTarget, Length: r.Length, Hashes: map[string]string{"sha256": r.SHA256}}
	}
	return vehicleauth.SignECUReport(k.Private, rep)
}
