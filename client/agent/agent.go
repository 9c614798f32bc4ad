// Package agent runs the vehicle's update cycle: recover from the journal,
// refresh and verify repository metadata, pick an image per ECU, stream
// and verify every image into its inactive slot, then switch, trial-boot
// and commit each ECU (or roll it back).
package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path"
	"slices"
	"sort"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/bootctl"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/client/fault"
	"github.com/roadsign/roadsign/client/tufclient"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/progress"
	"github.com/roadsign/roadsign/signer/meta"
)

// Agent updates one vehicle.
type Agent struct {
	V      *vehicle.Vehicle
	Client *http.Client
	Log    *slog.Logger
	// Progress receives progress bars (drawn only on a terminal).
	Progress io.Writer
	Faults   fault.Set
	Policy   download.Policy
}

// Outcomes of one ECU in a cycle.
const (
	UpToDate   = "up-to-date"
	Installed  = "installed"
	RolledBack = "rolled-back"
	Refused    = "refused"
	Failed     = "failed"
	Recovered  = "recovered"
)

// ECUResult is what happened to one ECU.
type ECUResult struct {
	Type    string `json:"type"`
	Serial  string `json:"serial"`
	From    string `json:"from"`
	To      string `json:"to,omitempty"`
	Target  string `json:"target,omitempty"`
	Outcome string `json:"outcome"`
	Detail  string `json:"detail,omitempty"`
	// Transferred is how many image bytes were downloaded in this cycle.
	Transferred int64 `json:"transferred,omitempty"`
}

// Report is the outcome of one update cycle.
type Report struct {
	// Recovery says what was finished or rolled back from the journal
	// before the cycle (after a power loss).
	Recovery []RecoveryNote `json:"recovery,omitempty"`
	ECUs     []ECUResult    `json:"ecus"`
}

// RecoveryNote is what recovery did on one ECU.
type RecoveryNote struct {
	Serial string `json:"serial"`
	What   string `json:"what"`
}

// plan is one chosen install.
type plan struct {
	ecu    vehicle.ECUConfig
	boot   *bootctl.ECU
	path   string
	tf     *metadata.TargetFiles
	custom meta.Custom
	from   string
	w      *bootctl.Writer
	// idx is this ECU's entry in Report.ECUs.
	idx int
}

// Update runs one cycle. The error, if any, wraps client.ErrRefused
// (nothing installed), client.ErrRolledBack (an ECU is back on its old
// image) or is operational.
func (a *Agent) Update(ctx context.Context) (Report, error) {
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

	// 2. Verify the image repository.
	image := &tufclient.Repo{Name: "image", Dir: a.V.ImageRepoDir(), MetadataURL: a.V.Server + "/repo", Client: a.Client, Log: a.Log}
	trusted, err := image.Refresh(ctx)
	if err != nil {
		return rep, err
	}

	// 3. Choose, per ECU, the newest image built for it.
	var plans []*plan
	for _, e := range a.V.ECUs {
		p, res, err := a.choose(e, trusted)
		if err != nil {
			return rep, err
		}
		rep.ECUs = append(rep.ECUs, res)
		if p != nil {
			p.idx = len(rep.ECUs) - 1
			plans = append(plans, p)
		}
	}
	if len(plans) == 0 {
		return rep, rolledBack
	}

	// 4. Stream and verify every image before any slot switches, so a
	// refusal leaves every ECU as it was.
	for i, p := range plans {
		n, err := a.fetch(ctx, p)
		rep.ECUs[p.idx].Transferred = n
		if err != nil {
			if errors.Is(err, client.ErrRefused) {
				for _, q := range plans[:i+1] {
					q.boot.Abort()
					rep.ECUs[q.idx].Outcome, rep.ECUs[q.idx].Detail = Refused, err.Error()
				}
			} else {
				rep.ECUs[p.idx].Outcome, rep.ECUs[p.idx].Detail = Failed, err.Error()
			}
			return rep, err
		}
	}

	// 5. Switch, trial-boot and commit (or roll back) each ECU.
	for _, p := range plans {
		a.Log.Info("switching to new slot", "ecu", p.ecu.Serial, "version", p.custom.Version)
		a.say("installing %s %s on %s: switching slots, trial boot, boot check...", p.ecu.Type, p.custom.Version, p.ecu.Serial)
		err := p.boot.Switch(hooks)
		r := &rep.ECUs[p.idx]
		switch {
		case err == nil:
			r.Outcome = Installed
		case errors.Is(err, client.ErrRolledBack):
			r.Outcome, r.Detail = RolledBack, err.Error()
			rolledBack = err
		default:
			r.Outcome, r.Detail = Failed, err.Error()
			return rep, fmt.Errorf("ECU %s: %w", p.ecu.Serial, err)
		}
	}
	return rep, rolledBack
}

// say tells a person at a terminal what is happening (logs get slog).
func (a *Agent) say(format string, args ...any) {
	if progress.IsTerminal(a.Progress) {
		fmt.Fprintf(a.Progress, format+"\n", args...)
	}
}

// installed finds what the active slot runs, as the repository knows it:
// the target whose hash matches the slot's, else the recorded counter.
func installed(rec *bootctl.Record, targets map[string]*metadata.TargetFiles) (version string, counter int64) {
	s := rec.Slots[rec.Active]
	if s == nil {
		return "", 0
	}
	for _, tf := range targets {
		if hex.EncodeToString(tf.Hashes["sha256"]) == s.SHA256 && tf.Length == s.Length {
			if c, err := meta.TargetCustom(tf); err == nil {
				return s.Version, c.ReleaseCounter
			}
		}
	}
	return s.Version, s.ReleaseCounter
}

func (a *Agent) choose(e vehicle.ECUConfig, trusted *tufclient.Trusted) (*plan, ECUResult, error) {
	boot := a.V.ECU(e)
	rec, err := boot.LoadRecord()
	if err != nil {
		return nil, ECUResult{}, err
	}
	targets := trusted.Targets()
	from, counter := installed(rec, targets)
	res := ECUResult{Type: e.Type, Serial: e.Serial, From: from, Outcome: UpToDate}
	var best *plan
	paths := make([]string, 0, len(targets))
	for p := range targets {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		tf := targets[p]
		c, err := meta.TargetCustom(tf)
		if err != nil || !c.Supports(e.Type, e.HardwareID) || c.ReleaseCounter <= counter {
			continue
		}
		if slices.Contains(rec.Failed, hex.EncodeToString(tf.Hashes["sha256"])) {
			res.Detail = fmt.Sprintf("skipping %s: it failed its boot check on this ECU before", p)
			continue
		}
		if best == nil || c.ReleaseCounter > best.custom.ReleaseCounter {
			best = &plan{ecu: e, boot: boot, path: p, tf: tf, custom: c, from: from}
		}
	}
	if best != nil {
		res.To, res.Target = best.custom.Version, best.path
	}
	return best, res, nil
}

// fetch streams one image into its ECU's inactive slot and verifies it.
// It returns how many bytes it downloaded.
func (a *Agent) fetch(ctx context.Context, p *plan) (int64, error) {
	sum := hex.EncodeToString(p.tf.Hashes["sha256"])
	if len(sum) != 64 {
		return 0, fmt.Errorf("%w: target %s has no sha256 in signed metadata; nothing installed", client.ErrRefused, p.path)
	}
	w, err := p.boot.Begin(bootctl.Journal{
		Target: p.path, Length: p.tf.Length, SHA256: sum,
		Version: p.custom.Version, ReleaseCounter: p.custom.ReleaseCounter,
	})
	if err != nil {
		return 0, fmt.Errorf("ECU %s: %w", p.ecu.Serial, err)
	}
	w.WriteHook = a.Faults.WriteHook(p.tf.Length)
	p.w = w
	if w.Offset() > 0 {
		a.Log.Info("resuming download", "target", p.path, "offset", w.Offset(), "length", p.tf.Length)
	}
	name := path.Base(p.path)
	url := a.V.Server + "/repo/targets/" + meta.ConsistentPath(p.path, sum, true)
	bar := progress.New(a.Progress, "downloading "+name, p.tf.Length, w.Offset())
	res, err := download.Fetch(ctx, a.Client, download.Target{
		URL: url, Length: p.tf.Length, Offset: w.Offset(), W: w,
		Body: a.Faults.Body(p.tf.Length), Progress: bar,
	}, a.Policy)
	bar.Finish()
	n := res.Transferred
	switch {
	case errors.Is(err, download.ErrServerLength):
		w.Pause()
		p.boot.Abort()
		return n, fmt.Errorf("%w: target %s: %v; nothing installed", client.ErrRefused, p.path, err)
	case errors.Is(err, fault.ErrFlash):
		w.Pause()
		p.boot.Abort()
		return n, fmt.Errorf("%w: ECU %s: writing slot %s failed (%v); the active slot was not touched", client.ErrRolledBack, p.ecu.Serial, w.Journal().Slot, err)
	case err != nil:
		// Keep what arrived: the next attempt resumes from here.
		if perr := w.Pause(); perr != nil {
			return n, fmt.Errorf("download %s: %v; and saving progress failed: %w", p.path, err, perr)
		}
		if errors.Is(err, download.ErrNotFound) {
			return n, fmt.Errorf("download %s: %w (%d of %d bytes kept; the next update resumes)", p.path, err, w.Offset(), p.tf.Length)
		}
		return n, fmt.Errorf("%w: download %s: %v (%d of %d bytes kept; the next update resumes)", client.ErrUnreachable, p.path, err, w.Offset(), p.tf.Length)
	}
	a.Log.Info("downloaded", "target", p.path, "bytes", n, "attempts", res.Attempts)
	a.say("verifying %s: length and sha256 against signed metadata", name)
	return n, w.Finish(a.Faults.Hooks())
}

// Status is the vehicle's state as `status --json` prints it (CONTRACT.md).
type Status struct {
	VIN           string        `json:"vin"`
	ECUs          []ECUStatus   `json:"ecus"`
	Authorization AuthStatus    `json:"authorization"`
	DTCs          []vehicle.DTC `json:"dtcs"`
}

// ECUStatus is one ECU's state.
type ECUStatus struct {
	Type       string                 `json:"type"`
	Serial     string                 `json:"serial"`
	HardwareID string                 `json:"hardwareId"`
	ActiveSlot string                 `json:"activeSlot"`
	Version    string                 `json:"version"`
	Trial      bool                   `json:"trial,omitempty"`
	Slots      map[string]*SlotStatus `json:"slots"`
	LastResult string                 `json:"lastResult"`
	Install    *bootctl.Journal       `json:"installInProgress,omitempty"`
}

// SlotStatus is what one slot holds.
type SlotStatus struct {
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
}

// AuthStatus is the connected-services authorization state.
type AuthStatus struct {
	State     string    `json:"state"`
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
}

// VehicleStatus reads the state directory.
func VehicleStatus(v *vehicle.Vehicle) (Status, error) {
	st := Status{VIN: v.VIN, DTCs: []vehicle.DTC{}, Authorization: AuthStatus{State: "not_authorized"}}
	dtcs, err := v.DTCs()
	if err != nil {
		return st, err
	}
	if dtcs != nil {
		st.DTCs = dtcs
	}
	for _, e := range v.ECUs {
		b := v.ECU(e)
		rec, err := b.LoadRecord()
		if err != nil {
			return st, err
		}
		j, _ := b.LoadJournal()
		es := ECUStatus{Type: e.Type, Serial: e.Serial, HardwareID: e.HardwareID, ActiveSlot: string(rec.Active),
			Trial: rec.Trial, LastResult: rec.LastResult, Install: j, Slots: map[string]*SlotStatus{}}
		for _, s := range []bootctl.Slot{bootctl.A, bootctl.B} {
			if info := rec.Slots[s]; info != nil {
				es.Slots[string(s)] = &SlotStatus{Version: info.Version, SHA256: info.SHA256}
			} else {
				es.Slots[string(s)] = nil
			}
		}
		if info := rec.Slots[rec.Active]; info != nil {
			es.Version = info.Version
		}
		st.ECUs = append(st.ECUs, es)
	}
	return st, nil
}
