package agent

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/bootctl"
	"github.com/roadsign/roadsign/client/tufclient"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/meta"
)

// plan is one install the director assigned and both repositories agree on.
type plan struct {
	ecu    vehicle.ECUConfig
	boot   ecuDriver
	path   string
	tf     *metadata.TargetFiles
	custom meta.Custom
	jobID  string
	w      *bootctl.Writer
	// idx is this ECU's entry in Report.ECUs.
	idx int
	// window, if set, is when the install may happen.
	window *window
	// delta, when the director offers one, is the delta target that
	// rebuilds this image from what the ECU runs; usedDelta and
	// deltaFallback say how it went.
	delta         string
	usedDelta     bool
	deltaFallback string
	// sealed (and sealedDelta), for hardware whose images are encrypted,
	// is the sealed image (and delta) this ECU opens with its own key.
	sealed, sealedDelta *sealedFile
}

type window struct{ start, end, tz string }

// installed finds what the active slot runs, as the repository knows it:
// the target whose hash matches the slot's, else the recorded counter.
func installed(rec *bootctl.Record, images *tufclient.Trusted, serialTarget string) (version string, counter int64) {
	s := rec.Slots[rec.Active]
	if s == nil {
		return "", 0
	}
	for _, p := range []string{s.Target, serialTarget} {
		if p == "" {
			continue
		}
		if tf, err := images.TargetInfo(p); err == nil && hex.EncodeToString(tf.Hashes["sha256"]) == s.SHA256 {
			if c, err := meta.TargetCustom(tf); err == nil {
				return s.Version, c.ReleaseCounter
			}
		}
	}
	for _, tf := range images.Targets() {
		if hex.EncodeToString(tf.Hashes["sha256"]) == s.SHA256 && tf.Length == s.Length {
			if c, err := meta.TargetCustom(tf); err == nil {
				return s.Version, c.ReleaseCounter
			}
		}
	}
	return s.Version, s.ReleaseCounter
}

// planned is what plan decided: the installs to do, each ECU's result so
// far, the jobs already satisfied (the ECU runs the image), and, when the
// director's metadata is refused, the jobs it named (they hear that their
// attempt failed).
type planned struct {
	installs  []*plan
	results   []ECUResult
	satisfied []*plan
	jobs      []*plan
	// jobParts is how many ECUs each job covers (more than one: an
	// update set).
	jobParts map[string]int
}

// directorCustom is the director's custom metadata on a target.
type directorCustom struct {
	ECUIdentifiers map[string]struct {
		HardwareID string `json:"hardwareId"`
	} `json:"ecuIdentifiers"`
	JobID     string `json:"jobId"`
	Downgrade bool   `json:"downgrade"`
	// Deltas, per ECU serial: a delta of the image repository that
	// rebuilds the target from what that ECU runs.
	Deltas map[string]string `json:"deltas"`
	// Encrypted, per ECU serial: the sealed image (and delta) and its
	// file key, wrapped for that ECU alone.
	Encrypted map[string]*encryptedTarget `json:"encrypted"`
	// Window, from a campaign: install only then (vehicle's local time).
	Window *struct {
		Start string `json:"start"`
		End   string `json:"end"`
		TZ    string `json:"tz"`
	} `json:"window"`
}

// plan checks the director's assignment (Uptane full verification) and
// returns the installs to do. Any violation refuses the whole cycle: the
// director must name this VIN, only this vehicle's ECU serials, each at
// most once, with their hardware IDs; the image repository must list the
// same target with the same length and hashes, built for that ECU; and
// the release counter must not go down unless a dealer job forces it and
// the image permits it.
func (a *Agent) plan(images, directed *tufclient.Trusted) (planned, error) {
	var results []ECUResult
	var satisfied []*plan
	byserial := map[string]vehicle.ECUConfig{}
	for _, e := range a.V.ECUs {
		byserial[e.Serial] = e
	}
	// Jobs named in refused metadata still hear that their attempt failed.
	var jobPlans []*plan
	jobParts := map[string]int{}
	refuse := func(format string, args ...any) (planned, error) {
		return planned{results: results, jobs: jobPlans, jobParts: jobParts}, fmt.Errorf("%w: director: "+format+"; nothing installed", append([]any{client.ErrRefused}, args...)...)
	}
	if vin, _ := directed.TargetsCustom()["vin"].(string); vin != a.V.VIN {
		return refuse("metadata is for VIN %q, this vehicle is %s", vin, a.V.VIN)
	}
	assigned := map[string]*plan{}
	paths := make([]string, 0)
	for p := range directed.Targets() {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		dtf := directed.Targets()[p]
		var dc directorCustom
		if dtf.Custom == nil || json.Unmarshal(*dtf.Custom, &dc) != nil || len(dc.ECUIdentifiers) == 0 {
			return refuse("target %s names no ECU", p)
		}
		if dc.JobID != "" {
			jobPlans = append(jobPlans, &plan{path: p, jobID: dc.JobID})
			jobParts[dc.JobID] += len(dc.ECUIdentifiers)
		}
		itf, err := images.TargetInfo(p)
		if err != nil {
			return refuse("target %s is not in the image repository (%v)", p, err)
		}
		if itf.Length != dtf.Length || !meta.HashesEqual(itf.Hashes, dtf.Hashes) {
			return refuse("target %s: length or hashes differ between director and image repository", p)
		}
		ic, err := meta.TargetCustom(itf)
		if err != nil {
			return refuse("target %s: %v", p, err)
		}
		for serial, id := range dc.ECUIdentifiers {
			e, ok := byserial[serial]
			switch {
			case !ok:
				return refuse("target %s names ECU serial %s, which this vehicle does not have", p, serial)
			case assigned[serial] != nil:
				return refuse("ECU serial %s is assigned twice (%s and %s)", serial, assigned[serial].path, p)
			case id.HardwareID != e.HardwareID:
				return refuse("target %s is for hardware %s, ECU %s is %s", p, id.HardwareID, serial, e.HardwareID)
			case !ic.Supports(e.Type, e.HardwareID):
				return refuse("target %s is a %s image for %v, but ECU %s is a %s %s", p, ic.ECU, ic.HardwareIDs, serial, e.Type, e.HardwareID)
			}
			assigned[serial] = &plan{ecu: e, boot: a.boot(e), path: p, tf: itf, custom: ic, jobID: dc.JobID, delta: dc.Deltas[serial]}
			if et := dc.Encrypted[serial]; et != nil {
				pl := assigned[serial]
				if pl.sealed, err = a.openSealed(serial, p, et); err != nil {
					return refuse("%v", err)
				}
				if et.Delta != nil && pl.delta != "" {
					if pl.sealedDelta, err = a.openSealed(serial, pl.delta, et.Delta); err != nil {
						return refuse("%v", err)
					}
				}
			}
			if dc.Window != nil {
				assigned[serial].window = &window{dc.Window.Start, dc.Window.End, dc.Window.TZ}
			}
			// A downgrade needs both: the director (a forced dealer job)
			// and the signer (the image permits it).
			assigned[serial].custom.AllowDowngrade = dc.Downgrade && ic.AllowDowngrade
		}
	}
	var plans []*plan
	for _, e := range a.V.ECUs {
		rec, err := a.boot(e).LoadRecord()
		if errors.Is(err, errSecondaryUnreachable) {
			if assigned[e.Serial] != nil {
				// Every image of a cycle is verified before any switches:
				// without this ECU, nothing installs.
				return planned{results: results, jobs: jobPlans, jobParts: jobParts}, fmt.Errorf("%w: %v; it has an update assigned, so nothing is installed this cycle", client.ErrUnreachable, err)
			}
			results = append(results, ECUResult{Type: e.Type, Serial: e.Serial, Outcome: Failed, Detail: "unreachable on the vehicle network; not updated"})
			continue
		}
		if err != nil {
			return planned{results: results}, err
		}
		p := assigned[e.Serial]
		target := ""
		if p != nil {
			target = p.path
		}
		from, counter := installed(rec, images, target)
		res := ECUResult{Type: e.Type, Serial: e.Serial, From: from, Outcome: UpToDate}
		if a.health.unreachable(e) {
			res.Outcome, res.Detail = Failed, "no communication with the head unit on the vehicle bus (DTC U1100); not updated"
			results = append(results, res)
			continue
		}
		if p == nil {
			res.Detail = "no update assigned"
			results = append(results, res)
			continue
		}
		res.To, res.Target, res.JobID = p.custom.Version, p.path, p.jobID
		sum := hex.EncodeToString(p.tf.Hashes["sha256"])
		switch {
		case rec.Slots[rec.Active] != nil && a.health.running(e.Serial, rec.Slots[rec.Active].SHA256) == sum:
			res.Detail = "already running the assigned image"
			results = append(results, res)
			if p.jobID != "" {
				satisfied = append(satisfied, p)
			}
			continue
		case p.custom.ReleaseCounter < counter && !p.custom.AllowDowngrade:
			results = append(results, res)
			return refuse("target %s has release counter %d, lower than the installed %d (rollback refused: a downgrade needs a forced dealer job and an image signed with --allow-downgrade)", p.path, p.custom.ReleaseCounter, counter)
		case p.jobID == "" && slices.Contains(rec.Failed, sum):
			res.Detail = fmt.Sprintf("skipping %s: it failed its boot check on this ECU before", p.path)
			results = append(results, res)
			continue
		case p.window != nil:
			in, err := meta.InWindow(p.window.start, p.window.end, p.window.tz, a.localTime())
			if err != nil || !in {
				res.Outcome = Waiting
				res.Detail = fmt.Sprintf("waiting for the maintenance window %s-%s %s", p.window.start, p.window.end, p.window.tz)
				if err != nil {
					res.Detail = err.Error()
				}
				results = append(results, res)
				continue
			}
		}
		p.idx = len(results)
		results = append(results, res)
		plans = append(plans, p)
	}
	return planned{installs: plans, results: results, satisfied: satisfied, jobParts: jobParts}, nil
}

// installedHow says how an ECU came to run what a job asks for: from a
// USB bundle not yet reported, or it already did.
func (a *Agent) installedHow(serial string) string {
	notes, _ := a.V.OfflineInstalls()
	reported, _ := a.V.ReportedOfflineInstalls()
	for _, n := range append(notes, reported...) {
		if strings.Contains(n, " "+serial+": ") {
			return "was installed offline: " + n
		}
	}
	return "was already installed"
}
