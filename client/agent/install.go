package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/bootctl"
	"github.com/roadsign/roadsign/client/vehicle"
)

// update runs the stages of one install cycle from src: recover, verify,
// plan, fetch every image, then switch and commit each ECU.
func (a *Agent) update(ctx context.Context, src Source) (Report, error) {
	var rep Report
	hooks := a.Faults.Hooks()
	a.jobs = nil
	defer a.closeRemotes()

	// 1. Whatever a power loss interrupted comes first: an update set
	// as a whole, then each ECU.
	if err := a.recoverSet(&rep); err != nil {
		return rep, err
	}
	var rolledBack error
	for _, e := range a.V.ECUs {
		did, err := a.boot(e).Recover(hooks)
		if errors.Is(err, errSecondaryUnreachable) {
			// It finishes its own recovery once back; an update set it
			// is part of was settled above or keeps its journal.
			a.Log.Warn("secondary unreachable at recovery", "ecu", e.Serial, "err", err)
			continue
		}
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
	a.trusted.images, a.trusted.directed = images, directed

	// 3. What the director assigns, checked against the image repository.
	pl, err := a.plan(images, directed)
	rep.ECUs = pl.results
	a.jobs = newJobLog(pl.jobParts)
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
		rep.ECUs[p.idx].Delta, rep.ECUs[p.idx].DeltaFallback = p.usedDelta, p.deltaFallback
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

	// 5. Switch, trial-boot and commit (or roll back) each ECU; several
	// ECUs are one update set, all on the new images or all on the old.
	if len(live) > 1 {
		err := a.switchSet(ctx, src, live, &rep, hooks)
		if errors.Is(err, client.ErrRolledBack) {
			rolledBack = err
		} else if err != nil {
			return rep, err
		}
		return rep, rolledBack
	}
	for _, p := range live {
		a.switching(ctx, src, p)
		err := p.boot.Switch(hooks)
		r := &rep.ECUs[p.idx]
		switch {
		case err == nil:
			a.installed(ctx, src, p, r)
		case errors.Is(err, client.ErrRolledBack):
			rolledBack = err
			a.rolledBack(ctx, src, p, r, err)
		default:
			r.Outcome, r.Detail = Failed, err.Error()
			a.event(ctx, src, p, eventFailed, 0, err.Error())
			return rep, fmt.Errorf("ECU %s: %w", p.ecu.Serial, err)
		}
	}
	return rep, rolledBack
}

// switching says that p's ECU switches to its new slot for a trial boot.
func (a *Agent) switching(ctx context.Context, src Source, p *plan) {
	a.Log.Info("switching to new slot", "ecu", p.ecu.Serial, "version", p.custom.Version)
	a.say("installing %s %s on %s: switching slots, trial boot, boot check...", p.ecu.Type, p.custom.Version, p.ecu.Serial)
	to := "its other slot"
	if p.w != nil {
		to = "slot " + string(p.w.Journal().Slot)
	}
	a.event(ctx, src, p, "installing", 100, "switching to "+to)
	a.event(ctx, src, p, "rebooting", 100, "trial boot of "+p.custom.Version)
}

// installed records that p's new image booted and was committed.
func (a *Agent) installed(ctx context.Context, src Source, p *plan, r *ECUResult) {
	r.Outcome = Installed
	a.event(ctx, src, p, "succeeded", 100, p.custom.Version+" booted and committed")
	if a.health != nil {
		delete(a.health.measured, p.ecu.Serial) // the new slot is verified
	}
	if p.ecu.Type == dcmType {
		a.logErr("clear DTC", a.V.ClearDTC(vehicle.DTCDCMInternalFault))
	}
}

// rolledBack records that p's new image failed its boot check and the
// ECU is back on its old one.
func (a *Agent) rolledBack(ctx context.Context, src Source, p *plan, r *ECUResult, cause error) {
	r.Outcome, r.Detail = RolledBack, cause.Error()
	a.event(ctx, src, p, "rolled_back", 100, cause.Error())
	if p.ecu.Type == dcmType {
		a.logErr("set DTC", a.V.SetDTC(vehicle.DTCDCMInternalFault, fmt.Sprintf("DCM image %s did not stay installed on %s: %v", p.custom.Version, p.ecu.Serial, cause), nil))
	}
}

// switchSet switches the ECUs of live as one update set, in order. Each
// switches and trial-boots; only when every one passed its boot check
// are they all committed. If one fails, those that switched before it go
// back to their old images too, and those after it never switch. The
// set's journal (vehicle.UpdateSet) makes a power loss at any point end
// the same way: all old, or all new.
func (a *Agent) switchSet(ctx context.Context, src Source, live []*plan, rep *Report, hooks bootctl.Hooks) error {
	set := vehicle.UpdateSet{Phase: vehicle.SetSwitching, Versions: map[string]string{}}
	for _, p := range live {
		set.Serials = append(set.Serials, p.ecu.Serial)
		set.Versions[p.ecu.Serial] = p.custom.Version
	}
	if err := a.V.SaveUpdateSet(set); err != nil {
		return fmt.Errorf("record the update set: %w", err)
	}
	for i, p := range live {
		a.switching(ctx, src, p)
		err := p.boot.Trial(hooks)
		if err == nil {
			continue
		}
		why := fmt.Sprintf("its update set failed: %s %s on %s did not pass its boot check", p.ecu.Type, p.custom.Version, p.ecu.Serial)
		if errors.Is(err, client.ErrRolledBack) {
			a.rolledBack(ctx, src, p, &rep.ECUs[p.idx], err)
		} else {
			// The switch itself failed (boot control could not be
			// written): this ECU goes back too, and if even that fails
			// the journal stays for the next start to finish.
			why = fmt.Sprintf("its update set failed: %s %s on %s could not be switched", p.ecu.Type, p.custom.Version, p.ecu.Serial)
			if _, rerr := p.boot.Revert(why); rerr != nil {
				return fmt.Errorf("ECU %s: %w (going back: %v)", p.ecu.Serial, err, rerr)
			}
			r := &rep.ECUs[p.idx]
			r.Outcome, r.Detail = Failed, err.Error()
			a.event(ctx, src, p, eventFailed, 0, err.Error())
			err = fmt.Errorf("ECU %s: %w", p.ecu.Serial, err)
		}
		// The others' images are fine: their jobs' attempts failed (and
		// are retried), they did not roll back for a fault of their own.
		for j, q := range live {
			if j == i {
				continue
			}
			if _, err := q.boot.Revert(why); err != nil {
				return fmt.Errorf("ECU %s: going back with its update set: %w", q.ecu.Serial, err)
			}
			r := &rep.ECUs[q.idx]
			if r.Outcome, r.Detail = RolledBack, "back on its old image: "+why; j > i {
				r.Outcome, r.Detail = Failed, "not switched: "+why
			}
			a.event(ctx, src, q, eventFailed, 0, "not installed: "+why)
		}
		if cerr := a.V.ClearUpdateSet(); cerr != nil {
			return cerr
		}
		return err
	}
	set.Phase = vehicle.SetCommitting
	if err := a.V.SaveUpdateSet(set); err != nil {
		return fmt.Errorf("record the update set: %w", err)
	}
	for _, p := range live {
		if err := p.boot.Commit(hooks); err != nil {
			rep.ECUs[p.idx].Outcome, rep.ECUs[p.idx].Detail = Failed, err.Error()
			return fmt.Errorf("ECU %s: %w", p.ecu.Serial, err)
		}
		a.installed(ctx, src, p, &rep.ECUs[p.idx])
	}
	return a.V.ClearUpdateSet()
}

// recoverSet ends an update set a power loss interrupted: while it was
// switching, every ECU of it goes back to its old image (none of them is
// counted as failed: this cycle installs the set again); once it was
// committing, every ECU still on trial is committed.
func (a *Agent) recoverSet(rep *Report) error {
	set, err := a.V.UpdateSet()
	if err != nil || set == nil {
		return err
	}
	for _, e := range a.V.ECUs {
		if !slices.Contains(set.Serials, e.Serial) {
			continue
		}
		boot := a.boot(e)
		var what string
		if set.Phase == vehicle.SetCommitting {
			rec, err := boot.LoadRecord()
			if err != nil {
				return fmt.Errorf("recover ECU %s: %w", e.Serial, err)
			}
			if !rec.Trial {
				continue
			}
			if err := boot.Commit(bootctl.Hooks{}); err != nil {
				return fmt.Errorf("recover ECU %s: %w", e.Serial, err)
			}
			what = "power was lost while its update set was committing; committed " + set.Versions[e.Serial]
		} else {
			did, err := boot.Revert("power was lost during its update set")
			if err != nil {
				return fmt.Errorf("recover ECU %s: %w", e.Serial, err)
			}
			if !did {
				continue
			}
			what = "power was lost during its update set of " + strings.Join(set.Serials, ", ") + "; back on its old image, to be installed again with the set"
		}
		a.Log.Info("recovered update set", "ecu", e.Serial, "what", what)
		rep.Recovery = append(rep.Recovery, RecoveryNote{Serial: e.Serial, What: what})
	}
	return a.V.ClearUpdateSet()
}
