package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/client/bootctl"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/client/fault"
	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/progress"
)

var errJobCanceled = errors.New("job canceled on the server")

// eventFailed is the job event for a failed attempt.
const eventFailed = "failed"

// event reports job progress; without a job it does nothing. It returns
// errJobCanceled when the server says the job was canceled.
func (a *Agent) event(ctx context.Context, src Source, p *plan, kind string, pct int, msg string) error {
	jobs := src.Jobs()
	if p.jobID == "" || jobs == nil {
		return nil
	}
	e := api.JobEvent{Kind: kind, Percent: pct, Message: truncate(msg, api.MaxEventMessage)}
	if kind == "succeeded" && p.tf != nil {
		e.SHA256 = hex.EncodeToString(p.tf.Hashes["sha256"])
	}
	if !a.jobs.report(p, &e) {
		return nil
	}
	err := jobs.JobEvent(ctx, p.jobID, e)
	var apiErr *api.Error
	if errors.As(err, &apiErr) && apiErr.Code == errcode.JobCanceled {
		return errJobCanceled
	}
	if err != nil {
		a.Log.Warn("job event not delivered", "job", p.jobID, "kind", kind, "err", err)
	}
	return nil
}

// jobLog keeps one cycle's reports on update-set jobs (one job for
// several ECUs): their events are one stream that never goes back a
// phase, and they report one outcome: succeeded, naming every ECU's
// image, once all of them installed; else the first failure.
type jobLog struct {
	// parts is how many ECUs each job covers in this cycle's metadata.
	parts map[string]int
	phase map[string]int
	ended map[string]bool
	// installed are the set's ECUs that installed: serial → sha256.
	installed map[string]map[string]string
}

func newJobLog(parts map[string]int) *jobLog {
	return &jobLog{parts: parts, phase: map[string]int{}, ended: map[string]bool{}, installed: map[string]map[string]string{}}
}

// progressPhases orders progress events (the server refuses going back).
var progressPhases = map[string]int{"downloading": 1, "installing": 2, "rebooting": 3}

// report says whether e, about p's ECU, goes to the server now; for the
// outcome of a set it completes e with every ECU's image.
func (l *jobLog) report(p *plan, e *api.JobEvent) bool {
	if l == nil || l.parts[p.jobID] < 2 {
		return true
	}
	id := p.jobID
	switch {
	case l.ended[id]:
		return false
	case progressPhases[e.Kind] > 0:
		if progressPhases[e.Kind] < l.phase[id] {
			return false
		}
		l.phase[id] = progressPhases[e.Kind]
		return true
	case e.Kind == "succeeded":
		if l.installed[id] == nil {
			l.installed[id] = map[string]string{}
		}
		l.installed[id][p.ecu.Serial] = e.SHA256
		if len(l.installed[id]) < l.parts[id] {
			return false
		}
		e.Installed, e.SHA256 = l.installed[id], ""
		e.Message = fmt.Sprintf("update set of %d ECUs installed; last: %s", len(e.Installed), e.Message)
	}
	l.ended[id] = true
	return true
}

// fetch streams one image into its ECU's inactive slot and verifies it.
// It returns how many bytes it downloaded.
func (a *Agent) fetch(ctx context.Context, src Source, p *plan) (int64, error) {
	sum := hex.EncodeToString(p.tf.Hashes["sha256"])
	if len(sum) != 64 {
		return 0, fmt.Errorf("%w: target %s has no sha256 in signed metadata; nothing installed", client.ErrRefused, p.path)
	}
	if r, ok := p.boot.(*remoteECU); ok {
		return a.fetchRemote(ctx, src, p, r, sum)
	}
	var viaDelta int64
	if p.delta != "" {
		n, fallback, err := a.fetchDelta(ctx, src, p, sum)
		switch {
		case err != nil:
			return n, err
		case fallback == "":
			p.usedDelta = true
			return n, nil
		}
		a.Log.Warn("delta given up; installing the full image", "ecu", p.ecu.Serial, "delta", p.delta, "why", fallback)
		a.say("delta for %s given up (%s); downloading the full image", p.ecu.Serial, fallback)
		p.deltaFallback, viaDelta = fallback, n
	}
	fetch := a.fetchFull
	if p.sealed != nil {
		fetch = a.fetchSealed
	}
	n, err := fetch(ctx, src, p, sum)
	return viaDelta + n, err
}

// journal is the install journal of p's image (sha256 sum).
func (p *plan) journal(sum string) bootctl.Journal {
	return bootctl.Journal{Target: p.path, Length: p.tf.Length, SHA256: sum,
		Version: p.custom.Version, ReleaseCounter: p.custom.ReleaseCounter, JobID: p.jobID}
}

// fetchFull streams the full image into the ECU's inactive slot.
func (a *Agent) fetchFull(ctx context.Context, src Source, p *plan, sum string) (int64, error) {
	w, err := p.boot.(*bootctl.ECU).Begin(p.journal(sum))
	if err != nil {
		return 0, fmt.Errorf("ECU %s: %w", p.ecu.Serial, err)
	}
	w.WriteHook = a.Faults.WriteHook(p.tf.Length)
	p.w = w
	if w.Offset() > 0 {
		a.Log.Info("resuming download", "target", p.path, "offset", w.Offset(), "length", p.tf.Length)
	}
	name := path.Base(p.path)
	res, canceled, err := a.stream(ctx, src, p, Target{Path: p.path, SHA256: sum, Length: p.tf.Length}, w, w.Offset(), "downloading "+name, "downloading "+p.path)
	n := res.Transferred
	if err := a.afterStream(p, w, canceled, err); err != nil {
		return n, err
	}
	a.Log.Info("downloaded", "target", p.path, "bytes", n, "attempts", res.Attempts)
	a.say("verifying %s: length and sha256 against signed metadata", name)
	return n, w.Finish(a.Faults.Hooks())
}

// afterStream is what a failed or canceled download into p's slot
// (writer w) means; nil when it completed. What arrived is kept for the
// next attempt, unless the failure means the slot must be wiped.
func (a *Agent) afterStream(p *plan, w *bootctl.Writer, canceled bool, err error) error {
	switch {
	case canceled:
		w.Pause()
		return errJobCanceled
	case errors.Is(err, download.ErrServerLength):
		w.Pause()
		p.boot.Abort()
		return fmt.Errorf("%w: target %s: %v; nothing installed", client.ErrRefused, p.path, err)
	case errors.Is(err, fault.ErrFlash):
		w.Pause()
		p.boot.Abort()
		return fmt.Errorf("%w: ECU %s: writing slot %s failed (%v); the active slot was not touched", client.ErrRolledBack, p.ecu.Serial, w.Journal().Slot, err)
	case err != nil:
		// Keep what arrived: the next attempt resumes from here.
		if perr := w.Pause(); perr != nil {
			return fmt.Errorf("download %s: %v; and saving progress failed: %w", p.path, err, perr)
		}
		if errors.Is(err, download.ErrNotFound) {
			return fmt.Errorf("download %s: %w (%d of %d bytes kept; the next update resumes)", p.path, err, w.Offset(), p.tf.Length)
		}
		return fmt.Errorf("%w: download %s: %v (%d of %d bytes kept; the next update resumes)", client.ErrUnreachable, p.path, err, w.Offset(), p.tf.Length)
	}
	return nil
}

// stream fetches t into w from offset, drawing a progress bar (label)
// and reporting "downloading" to p's job: msg at the start, then every
// 25 %. canceled says the server canceled the job, before or during the
// download (which it then stops).
func (a *Agent) stream(ctx context.Context, src Source, p *plan, t Target, w io.Writer, offset int64, label, msg string) (res download.Result, canceled bool, err error) {
	if err := a.event(ctx, src, p, "downloading", int(100*offset/max(t.Length, 1)), msg); errors.Is(err, errJobCanceled) {
		return download.Result{}, true, nil
	}
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	bar := progress.New(a.Progress, label, t.Length, offset)
	prog := &jobProgress{bar: bar, done: offset, total: t.Length, next: 25 * (1 + int(100*offset/max(t.Length, 1))/25),
		report: func(pct int) {
			if err := a.event(ctx, src, p, "downloading", pct, ""); errors.Is(err, errJobCanceled) {
				canceled = true
				cancel()
			}
		}}
	res, err = src.Fetch(dctx, t, w, offset, prog)
	bar.Finish()
	return res, canceled, err
}

// jobProgress feeds the progress bar and reports every 25% to the job.
type jobProgress struct {
	bar         *progress.Bar
	done, total int64
	next        int
	report      func(pct int)
}
