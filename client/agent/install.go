package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/vehicle"
)

// update runs the stages of one install cycle from src: recover, verify,
// plan, fetch every image, then switch and commit each ECU.
func (a *Agent) update(ctx context.Context, src Source) (Report, error) {
	var rep Report
	hooks := a.Faults.Hooks()

	// 1. Whatever a power loss interrupted comes first.
	var rolledBack error
	for _, e := range a.V.ECUs {
		did, err := a.V.ECU(e).Recover(hooks)
		if did != "" {
			a.Log.Info("recovered from journal", "ecu", e.Serial, "what", did)
			rep.Recovery = append(rep.Recovery, RecoveryNote{Serial: e.Serial, What: did})
		}
		if errors.Is(err, client.ErrRolledBack) {
			rolledBack = err
			continue
		}
		if err != nil {
			return rep, fmt.Errorf("recover ECU %s: %w", e.Serial, err)
		}
	}

	// 2. Verify both repositories from their pinned roots, online or
	// from the USB bundle.
	images, directed, err := src.Refresh(ctx)
	if err != nil {
		return rep, err
	}

	// 3. What the director assigns, checked against the image repository.
	pl, err := a.plan(images, directed)
	rep.ECUs = pl.results
	if err != nil {
		for _, p := range pl.jobs {
			a.event(ctx, src, p, eventFailed, 0, err.Error())
		}
		return rep, err
	}
	for _, p := range pl.satisfied {
		a.event(ctx, src, p, "succeeded", 100, p.custom.Version+" "+a.installedHow(p.ecu.Serial))
	}
	plans := pl.installs
	if len(plans) == 0 {
		return rep, rolledBack
	}

	// 4. Stream and verify every image before any slot switches, so a
	// refusal leaves every ECU as it was.
	var live []*plan
	for i, p := range plans {
		start := time.Now()
		n, err := a.fetch(ctx, src, p)
		rep.ECUs[p.idx].Transferred = n
		if err == nil {
			rep.ECUs[p.idx].StreamSeconds = time.Since(start).Seconds()
		}
		switch {
		case errors.Is(err, errJobCanceled):
			p.boot.Abort()
			rep.ECUs[p.idx].Outcome, rep.ECUs[p.idx].Detail = Canceled, "the job was canceled before flashing; nothing installed"
			continue
		case errors.Is(err, client.ErrRefused):
			for _, q := range plans[:i+1] {
				q.boot.Abort()
				rep.ECUs[q.idx].Outcome, rep.ECUs[q.idx].Detail = Refused, err.Error()
			}
			for _, q := range plans {
				a.event(ctx, src, q, eventFailed, 0, err.Error())
			}
			return rep, err
		case err != nil:
			rep.ECUs[p.idx].Outcome, rep.ECUs[p.idx].Detail = Failed, err.Error()
			if errors.Is(err, client.ErrRolledBack) { // flash write error: nothing switched
				a.event(ctx, src, p, eventFailed, 0, err.Error())
			}
			return rep, err
		}
		live = append(live, p)
	}

	// 5. Switch, trial-boot and commit (or roll back) each ECU.
	for _, p := range live {
		a.Log.Info("switching to new slot", "ecu", p.ecu.Serial, "version", p.custom.Version)
		a.say("installing %s %s on %s: switching slots, trial boot, boot check...", p.ecu.Type, p.custom.Version, p.ecu.Serial)
		a.event(ctx, src, p, "installing", 100, "switching to slot "+string(p.w.Journal().Slot))
		a.event(ctx, src, p, "rebooting", 100, "trial boot of "+p.custom.Version)
		err := p.boot.Switch(hooks)
		r := &rep.ECUs[p.idx]
		switch {
		case err == nil:
			r.Outcome = Installed
			a.event(ctx, src, p, "succeeded", 100, p.custom.Version+" booted and committed")
			if a.health != nil {
				delete(a.health.measured, p.ecu.Serial) // the new slot is verified
			}
			if p.ecu.Type == dcmType {
				a.logErr("clear DTC", a.V.ClearDTC(vehicle.DTCDCMInternalFault))
			}
		case errors.Is(err, client.ErrRolledBack):
			r.Outcome, r.Detail = RolledBack, err.Error()
			rolledBack = err
			a.event(ctx, src, p, "rolled_back", 100, err.Error())
			if p.ecu.Type == dcmType {
				a.logErr("set DTC", a.V.SetDTC(vehicle.DTCDCMInternalFault, fmt.Sprintf("DCM image %s failed its boot check on %s; rolled back", p.custom.Version, p.ecu.Serial), nil))
			}
		default:
			r.Outcome, r.Detail = Failed, err.Error()
			a.event(ctx, src, p, eventFailed, 0, err.Error())
			return rep, fmt.Errorf("ECU %s: %w", p.ecu.Serial, err)
		}
	}
	return rep, rolledBack
}
