// Package agent runs the vehicle's update cycle: recover from the journal,
// refresh and verify both repositories (image and director), check the
// director's assignment against the image repository, stream and verify
// every image into its inactive slot, then switch, trial-boot and commit
// each ECU (or roll it back), reporting job progress and checking in a
// signed manifest.
package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/client/bootctl"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/client/fault"
	"github.com/roadsign/roadsign/client/tufclient"
	"github.com/roadsign/roadsign/client/usb"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/progress"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// Agent updates one vehicle.
type Agent struct {
	V      *vehicle.Vehicle
	Client *http.Client
	// API talks to the server as this vehicle (job events, check-in).
	API *api.Client
	Log *slog.Logger
	// Progress receives progress bars (drawn only on a terminal).
	Progress io.Writer
	Faults   fault.Set
	Policy   download.Policy
	// Now is the clock metadata expiry is checked against (nil: time.Now).
	Now func() time.Time
	// bundle is set for an offline install from a USB bundle.
	bundle *usb.Bundle
	// health is what this cycle found about the vehicle's units.
	health *health
}

// Outcomes of one ECU in a cycle.
const (
	UpToDate   = "up-to-date"
	Installed  = "installed"
	RolledBack = "rolled-back"
	Refused    = "refused"
	Failed     = "failed"
	Canceled   = "canceled"
	// Waiting: assigned, to install in its maintenance window.
	Waiting = "waiting"
)

// ECUResult is what happened to one ECU.
type ECUResult struct {
	Type    string `json:"type"`
	Serial  string `json:"serial"`
	From    string `json:"from"`
	To      string `json:"to,omitempty"`
	Target  string `json:"target,omitempty"`
	JobID   string `json:"jobId,omitempty"`
	Outcome string `json:"outcome"`
	Detail  string `json:"detail,omitempty"`
	// Transferred is how many image bytes were downloaded in this cycle.
	Transferred int64 `json:"transferred,omitempty"`
	// StreamSeconds is how long the image took from the first byte asked
	// for to a verified slot: download, sha256 and slot write, fsynced.
	StreamSeconds float64 `json:"streamSeconds,omitempty"`
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

// plan is one install the director assigned and both repositories agree on.
type plan struct {
	ecu    vehicle.ECUConfig
	boot   *bootctl.ECU
	path   string
	tf     *metadata.TargetFiles
	custom meta.Custom
	jobID  string
	w      *bootctl.Writer
	// idx is this ECU's entry in Report.ECUs.
	idx int
	// window, if set, is when the install may happen.
	window *window
}

type window struct{ start, end, tz string }

var errJobCanceled = errors.New("job canceled on the server")

// Update runs one cycle. The error, if any, wraps client.ErrRefused
// (nothing installed), client.ErrRolledBack (an ECU is back on its old
// image) or is operational.
func (a *Agent) Update(ctx context.Context) (Report, error) {
	h, err := a.checkHealth()
	if err != nil {
		return Report{}, err
	}
	a.health = h
	rep, err := a.cycle(ctx)
	a.noteConnection(h, err)
	return rep, err
}

func (a *Agent) cycle(ctx context.Context) (Report, error) {
	// Uptane order: the director hears what the vehicle runs before it
	// decides. After the first time, the check-in at the end of each
	// cycle keeps it current; USB installs not yet reported are reported
	// first (the software record then knows what each ECU ran before).
	at, _ := a.V.LastCheckIn()
	offline, _ := a.V.OfflineInstalls()
	if (at.IsZero() || len(offline) > 0) && a.API != nil {
		if err := a.CheckIn(ctx); err != nil {
			a.Log.Warn("first check-in failed", "err", err)
		}
	}
	rep, err := a.update(ctx)
	// Check in whatever happened, so the server's inventory is current.
	if cerr := a.CheckIn(ctx); cerr != nil && !errors.Is(err, client.ErrUnreachable) {
		a.Log.Warn("check-in failed; the next cycle reports again", "err", cerr)
		if err == nil && errors.Is(cerr, client.ErrUnreachable) {
			err = cerr
		}
	}
	if a.needsReauthorization(rep) && !errors.Is(err, client.ErrUnreachable) {
		if _, aerr := a.Reauthorize(ctx); aerr != nil {
			a.Log.Warn("reauthorization failed", "err", aerr)
		}
	}
	return rep, err
}

// needsReauthorization: after an install, whenever the car is not
// authorized (a USB install, a failed handshake whose cause may have been
// fixed since), and when the token nears its expiry.
func (a *Agent) needsReauthorization(rep Report) bool {
	if installedAny(rep) {
		return true
	}
	auth, err := a.V.Auth()
	if err != nil || auth.State != vehicle.Authorized {
		return true
	}
	renew := auth.RenewAt()
	return renew.IsZero() || !a.now().Before(renew)
}

func installedAny(rep Report) bool {
	for _, e := range rep.ECUs {
		if e.Outcome == Installed {
			return true
		}
	}
	return false
}

// InstallUSB installs from a USB bundle with the same verification as
// online, without the network: the bundle must be for this VIN, unexpired,
// and not older than metadata the vehicle has already seen. The install
// is reported at the next online check-in.
func (a *Agent) InstallUSB(ctx context.Context, b *usb.Bundle) (Report, error) {
	if b.Manifest.VIN != a.V.VIN {
		return Report{}, fmt.Errorf("%w: this USB bundle is for VIN %s, this vehicle is %s; nothing installed", client.ErrRefused, b.Manifest.VIN, a.V.VIN)
	}
	if a.now().After(b.Manifest.ValidUntil) {
		return Report{}, fmt.Errorf("%w: this USB bundle expired on %s; download a new one; nothing installed", client.ErrRefused, b.Manifest.ValidUntil.Format(time.DateOnly))
	}
	h, err := a.checkHealth()
	if err != nil {
		return Report{}, err
	}
	a.health = h
	a.bundle = b
	api := a.API
	a.API = nil // offline: no job events, no check-in
	defer func() { a.bundle, a.API = nil, api }()
	rep, err := a.update(ctx)
	for _, e := range rep.ECUs {
		if e.Outcome == Installed {
			note := fmt.Sprintf("%s %s: %s -> %s from USB bundle issued %s", e.Type, e.Serial, e.From, e.To, b.Manifest.IssuedAt.Format(time.RFC3339))
			if nerr := a.V.AddOfflineInstall(note); nerr != nil {
				a.Log.Warn("could not record the offline install", "err", nerr)
			}
		}
	}
	if installedAny(rep) {
		// The token was bound to the old firmware: the next online
		// contact runs the handshake again.
		pending := vehicle.Auth{State: vehicle.PendingReauthorization, At: a.now().UTC(),
			Message: "installed from USB; connected services reauthorize at the next online contact"}
		if serr := a.V.SaveAuth(pending); serr != nil {
			a.Log.Warn("could not record the pending reauthorization", "err", serr)
		}
	}
	return rep, err
}

func (a *Agent) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// Reauthorize runs the connected-services handshake and records the outcome.
func (a *Agent) Reauthorize(ctx context.Context) (vehicle.Auth, error) {
	var fw []api.Firmware
	for _, e := range a.V.ECUs {
		rec, err := a.V.ECU(e).LoadRecord()
		if err != nil {
			return vehicle.Auth{}, err
		}
		if s := rec.Slots[rec.Active]; s != nil && !a.health.unreachable(e) {
			fw = append(fw, api.Firmware{Serial: e.Serial, SHA256: a.health.running(e.Serial, s.SHA256)})
		}
	}
	res, err := a.API.Authorize(ctx, fw)
	st := vehicle.Auth{State: vehicle.Authorized, Token: res.Token, ExpiresAt: res.ExpiresAt, At: a.now().UTC()}
	var apiErr *api.Error
	switch {
	case errors.As(err, &apiErr):
		st = vehicle.Auth{State: apiErr.Code, Message: apiErr.Message, At: a.now().UTC()}
		err = fmt.Errorf("authorization failed: %s: %s", apiErr.Code, apiErr.Message)
	case err != nil:
		return vehicle.Auth{}, err // unreachable: keep the last known state
	}
	if serr := a.V.SaveAuth(st); serr != nil {
		return st, serr
	}
	return st, err
}

func (a *Agent) update(ctx context.Context) (Report, error) {
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
	images, directed, err := a.refresh(ctx)
	if err != nil {
		return rep, err
	}

	// 3. What the director assigns, checked against the image repository.
	plans, results, err := a.plan(images, directed)
	rep.ECUs = results
	if err != nil {
		for _, p := range plans {
			a.event(ctx, p, eventFailed, 0, err.Error())
		}
		return rep, err
	}
	if len(plans) == 0 {
		return rep, rolledBack
	}

	// 4. Stream and verify every image before any slot switches, so a
	// refusal leaves every ECU as it was.
	var live []*plan
	for i, p := range plans {
		start := time.Now()
		n, err := a.fetch(ctx, p)
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
				a.event(ctx, q, eventFailed, 0, err.Error())
			}
			return rep, err
		case err != nil:
			rep.ECUs[p.idx].Outcome, rep.ECUs[p.idx].Detail = Failed, err.Error()
			if errors.Is(err, client.ErrRolledBack) { // flash write error: nothing switched
				a.event(ctx, p, eventFailed, 0, err.Error())
			}
			return rep, err
		}
		live = append(live, p)
	}

	// 5. Switch, trial-boot and commit (or roll back) each ECU.
	for _, p := range live {
		a.Log.Info("switching to new slot", "ecu", p.ecu.Serial, "version", p.custom.Version)
		a.say("installing %s %s on %s: switching slots, trial boot, boot check...", p.ecu.Type, p.custom.Version, p.ecu.Serial)
		a.event(ctx, p, "installing", 100, "switching to slot "+string(p.w.Journal().Slot))
		a.event(ctx, p, "rebooting", 100, "trial boot of "+p.custom.Version)
		err := p.boot.Switch(hooks)
		r := &rep.ECUs[p.idx]
		switch {
		case err == nil:
			r.Outcome = Installed
			a.event(ctx, p, "succeeded", 100, p.custom.Version+" booted and committed")
			if a.health != nil {
				delete(a.health.measured, p.ecu.Serial) // the new slot is verified
			}
			if p.ecu.Type == dcmType {
				a.logErr("clear DTC", a.V.ClearDTC(vehicle.DTCDCMInternalFault))
			}
		case errors.Is(err, client.ErrRolledBack):
			r.Outcome, r.Detail = RolledBack, err.Error()
			rolledBack = err
			a.event(ctx, p, "rolled_back", 100, err.Error())
			if p.ecu.Type == dcmType {
				a.logErr("set DTC", a.V.SetDTC(vehicle.DTCDCMInternalFault, fmt.Sprintf("DCM image %s failed its boot check on %s; rolled back", p.custom.Version, p.ecu.Serial), nil))
			}
		default:
			r.Outcome, r.Detail = Failed, err.Error()
			a.event(ctx, p, eventFailed, 0, err.Error())
			return rep, fmt.Errorf("ECU %s: %w", p.ecu.Serial, err)
		}
	}
	return rep, rolledBack
}

// refresh verifies both repositories: online from the server, or from
// the USB bundle being installed.
func (a *Agent) refresh(ctx context.Context) (images, directed *tufclient.Trusted, err error) {
	if a.bundle != nil {
		return a.refreshBundle(ctx)
	}
	image := &tufclient.Repo{Name: "image", Dir: a.V.ImageRepoDir(), MetadataURL: a.V.Server + "/repo", Client: a.Client, Log: a.Log, Now: a.Now}
	dir := &tufclient.Repo{Name: "director", Dir: a.V.DirectorRepoDir(), MetadataURL: a.V.Server + "/director/" + url.PathEscape(a.V.VIN),
		Client: a.Client, Log: a.Log, Now: a.Now}
	if a.API != nil {
		dir.Sign = a.API.SignGet
	}
	if images, err = image.Refresh(ctx); err != nil {
		return nil, nil, err
	}
	if directed, err = dir.Refresh(ctx); err != nil {
		return nil, nil, err
	}
	return images, directed, nil
}

// refreshBundle verifies a USB bundle's metadata, offline, in caches of
// its own (the online ones never see bundle metadata):
//   - the director's, from the vehicle's trusted director root, checked
//     now: it must be marked as made for a bundle (meta.USBBundle), for
//     this VIN, and not older than a bundle installed before;
//   - the image repository's, from the trusted image root, checked as of
//     the issue time the director signed: the bundle carries the timestamp
//     and snapshot that were current then, and the director pins that
//     timestamp by hash. Root and targets, signed offline, must also be
//     valid now, and targets not older than what the vehicle trusts online.
func (a *Agent) refreshBundle(ctx context.Context) (images, directed *tufclient.Trusted, err error) {
	refuse := func(format string, args ...any) (*tufclient.Trusted, *tufclient.Trusted, error) {
		return nil, nil, fmt.Errorf("%w: USB bundle: "+format+"; nothing installed", append([]any{client.ErrRefused}, args...)...)
	}
	b := a.bundle
	dir := &tufclient.Repo{Name: "director (USB bundle)", Dir: a.V.DirectorUSBDir(), MetadataURL: usb.Scheme + "director", Fetcher: b, Log: a.Log, Now: a.Now}
	image := &tufclient.Repo{Name: "image (USB bundle)", Dir: a.V.ImageUSBDir(), MetadataURL: usb.Scheme + "image", Fetcher: b, Log: a.Log}
	if err := tufclient.SeedRoot(a.V.DirectorRepoDir(), dir.Dir); err != nil {
		return nil, nil, err
	}
	if err := tufclient.SeedRoot(a.V.ImageRepoDir(), image.Dir); err != nil {
		return nil, nil, err
	}
	if directed, err = dir.Refresh(ctx); err != nil {
		return nil, nil, err
	}
	ub, err := meta.USBBundleOf(directed.TargetsCustom())
	switch {
	case err != nil:
		return refuse("%v", err)
	case ub.VIN != a.V.VIN:
		return refuse("made for VIN %s, this vehicle is %s", ub.VIN, a.V.VIN)
	case !a.now().Before(ub.ValidUntil):
		return refuse("it expired on %s; download a new one", ub.ValidUntil.Format(time.DateOnly))
	}
	image.Now = func() time.Time { return ub.IssuedAt }
	if images, err = image.Refresh(ctx); err != nil {
		return nil, nil, err
	}
	raw, err := b.ReadFile("image/timestamp.json", 1<<20)
	if err != nil {
		return refuse("no image timestamp: %v", err)
	}
	if sum := sha256.Sum256(raw); hex.EncodeToString(sum[:]) != ub.ImageTimestampSHA256 || images.Version(metadata.TIMESTAMP) != ub.ImageTimestampVersion {
		return refuse("its image timestamp is not the one its director metadata pins (v%d)", ub.ImageTimestampVersion)
	}
	if what := images.Expired(a.now()); what != "" {
		return refuse("image repository %s; download a new bundle", what)
	}
	if online := tufclient.CachedVersion(a.V.ImageRepoDir(), metadata.TARGETS); images.Version(metadata.TARGETS) < online {
		return refuse("its image targets v%d are older than v%d, which this vehicle already trusts; download a new bundle",
			images.Version(metadata.TARGETS), online)
	}
	return images, directed, nil
}

// eventFailed is the job event for a failed attempt.
const eventFailed = "failed"

// event reports job progress; without a job it does nothing. It returns
// errJobCanceled when the server says the job was canceled.
func (a *Agent) event(ctx context.Context, p *plan, kind string, pct int, msg string) error {
	if p.jobID == "" || a.API == nil {
		return nil
	}
	e := api.JobEvent{Kind: kind, Percent: pct, Message: truncate(msg, api.MaxEventMessage)}
	if kind == "succeeded" && p.tf != nil {
		e.SHA256 = hex.EncodeToString(p.tf.Hashes["sha256"])
	}
	err := a.API.JobEvent(ctx, p.jobID, e)
	var apiErr *api.Error
	if errors.As(err, &apiErr) && apiErr.Code == errcode.JobCanceled {
		return errJobCanceled
	}
	if err != nil {
		a.Log.Warn("job event not delivered", "job", p.jobID, "kind", kind, "err", err)
	}
	return nil
}

// truncate cuts s to at most n bytes, on a character boundary.
// logErr logs a failure to record something that does not stop the cycle.
func (a *Agent) logErr(what string, err error) {
	if err != nil {
		a.Log.Error(what, "err", err)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// say tells a person at a terminal what is happening (logs get slog).
func (a *Agent) say(format string, args ...any) {
	if progress.IsTerminal(a.Progress) {
		fmt.Fprintf(a.Progress, format+"\n", args...)
	}
}

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

// directorCustom is the director's custom metadata on a target.
type directorCustom struct {
	ECUIdentifiers map[string]struct {
		HardwareID string `json:"hardwareId"`
	} `json:"ecuIdentifiers"`
	JobID     string `json:"jobId"`
	Downgrade bool   `json:"downgrade"`
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
func (a *Agent) plan(images, directed *tufclient.Trusted) ([]*plan, []ECUResult, error) {
	var results []ECUResult
	byserial := map[string]vehicle.ECUConfig{}
	for _, e := range a.V.ECUs {
		byserial[e.Serial] = e
	}
	// Jobs named in refused metadata still hear that their attempt failed.
	var jobPlans []*plan
	refuse := func(format string, args ...any) ([]*plan, []ECUResult, error) {
		return jobPlans, results, fmt.Errorf("%w: director: "+format+"; nothing installed", append([]any{client.ErrRefused}, args...)...)
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
		}
		itf, err := images.TargetInfo(p)
		if err != nil {
			return refuse("target %s is not in the image repository (%v)", p, err)
		}
		if itf.Length != dtf.Length || !hashesEqual(itf.Hashes, dtf.Hashes) {
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
			assigned[serial] = &plan{ecu: e, boot: a.V.ECU(e), path: p, tf: itf, custom: ic, jobID: dc.JobID}
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
		boot := a.V.ECU(e)
		rec, err := boot.LoadRecord()
		if err != nil {
			return nil, results, err
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
				a.event(context.Background(), p, "succeeded", 100, p.custom.Version+" "+a.installedHow(e.Serial))
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
			in, err := meta.InWindow(p.window.start, p.window.end, p.window.tz, a.now())
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
	return plans, results, nil
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

func hashesEqual(a, b metadata.Hashes) bool {
	if len(a) == 0 || len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if hex.EncodeToString(v) != hex.EncodeToString(b[k]) {
			return false
		}
	}
	return true
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
		Version: p.custom.Version, ReleaseCounter: p.custom.ReleaseCounter, JobID: p.jobID,
	})
	if err != nil {
		return 0, fmt.Errorf("ECU %s: %w", p.ecu.Serial, err)
	}
	w.WriteHook = a.Faults.WriteHook(p.tf.Length)
	p.w = w
	if w.Offset() > 0 {
		a.Log.Info("resuming download", "target", p.path, "offset", w.Offset(), "length", p.tf.Length)
	}
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	canceled := false
	if err := a.event(ctx, p, "downloading", int(100*w.Offset()/max(p.tf.Length, 1)), "downloading "+p.path); errors.Is(err, errJobCanceled) {
		w.Pause()
		return 0, errJobCanceled
	}
	name := path.Base(p.path)
	bar := progress.New(a.Progress, "downloading "+name, p.tf.Length, w.Offset())
	prog := &jobProgress{bar: bar, done: w.Offset(), total: p.tf.Length, next: 25 * (1 + int(100*w.Offset()/max(p.tf.Length, 1))/25),
		report: func(pct int) {
			if err := a.event(ctx, p, "downloading", pct, ""); errors.Is(err, errJobCanceled) {
				canceled = true
				cancel()
			}
		}}
	var res download.Result
	if a.bundle != nil {
		res, err = copyFromBundle(a.bundle, "targets/"+meta.ConsistentPath(p.path, sum, false), w, p.tf.Length, prog)
	} else {
		url := a.V.Server + "/repo/targets/" + meta.ConsistentPath(p.path, sum, true)
		res, err = download.Fetch(dctx, a.Client, download.Target{
			URL: url, Length: p.tf.Length, Offset: w.Offset(), W: w,
			Body: a.Faults.Body(p.tf.Length), Progress: prog,
		}, a.Policy)
	}
	bar.Finish()
	n := res.Transferred
	switch {
	case canceled:
		w.Pause()
		return n, errJobCanceled
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

// copyFromBundle copies an image from a USB bundle into the slot writer,
// from the writer's offset, never reading past the signed length.
func copyFromBundle(b *usb.Bundle, name string, w *bootctl.Writer, length int64, prog *jobProgress) (download.Result, error) {
	f, err := b.OpenFile(name)
	if err != nil {
		if download.IsNotFound(err) {
			return download.Result{}, fmt.Errorf("%w: the bundle lacks %s", download.ErrServerLength, name)
		}
		return download.Result{}, err
	}
	defer f.Close()
	if _, err := f.Seek(w.Offset(), io.SeekStart); err != nil {
		return download.Result{}, err
	}
	n, err := io.Copy(w, io.TeeReader(io.LimitReader(f, length-w.Offset()), progressWriter{prog}))
	return download.Result{Transferred: n, Attempts: 1, Done: err == nil}, err
}

type progressWriter struct{ p *jobProgress }

func (p progressWriter) Write(b []byte) (int, error) { p.p.Add(int64(len(b))); return len(b), nil }

// jobProgress feeds the progress bar and reports every 25% to the job.
type jobProgress struct {
	bar         *progress.Bar
	done, total int64
	next        int
	report      func(pct int)
}

func (j *jobProgress) Add(n int64) {
	j.bar.Add(n)
	j.done += n
	if pct := int(100 * j.done / max(j.total, 1)); pct >= j.next && j.next < 100 {
		j.report(pct)
		for j.next <= pct {
			j.next += 25
		}
	}
}

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

// Status is the vehicle's state as `status --json` prints it (docs/cli.md).
type Status struct {
	VIN           string        `json:"vin"`
	ECUs          []ECUStatus   `json:"ecus"`
	Authorization AuthStatus    `json:"authorization"`
	DTCs          []vehicle.DTC `json:"dtcs"`
	// SignalBars is the DCM's last cellular signal reading (-1: none yet).
	SignalBars int `json:"signalBars"`
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
	Message   string    `json:"message,omitempty"`
}

// VehicleStatus reads the state directory.
func VehicleStatus(v *vehicle.Vehicle) (Status, error) {
	st := Status{VIN: v.VIN, DTCs: []vehicle.DTC{}}
	auth, err := v.Auth()
	if err != nil {
		return st, err
	}
	st.Authorization = AuthStatus{State: auth.State, ExpiresAt: auth.ExpiresAt, Message: auth.Message}
	dtcs, err := v.DTCs()
	if err != nil {
		return st, err
	}
	if dtcs != nil {
		st.DTCs = dtcs
	}
	conn, err := v.Connection()
	if err != nil {
		return st, err
	}
	st.SignalBars = conn.SignalBars
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
