package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/bootctl"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/client/fault"
	"github.com/roadsign/roadsign/internal/delta"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/sealed"
)

// fetchDelta rebuilds p's image in the inactive slot from the delta the
// director offers, reading the active slot as its base. It returns the
// bytes downloaded and, when the delta cannot be used (not verified,
// another base, damaged, a base slot that changed), the reason: the
// caller then installs the full image in the same cycle. An error is a
// failure the full image would meet too (network, canceled job, flash).
func (a *Agent) fetchDelta(ctx context.Context, src Source, p *plan, sum string) (int64, string, error) {
	ecu := p.boot.(*bootctl.ECU)
	if j, _ := ecu.LoadJournal(); j != nil && j.Phase == bootctl.PhaseDownload && j.Delta == nil && j.SHA256 == sum && j.Written > 0 {
		return 0, "a download of the full image is under way; it resumes", nil
	}
	dtf, err := a.trusted.images.TargetInfo(p.delta)
	if err != nil {
		return 0, fmt.Sprintf("delta %s is not in the verified image repository (%v)", p.delta, err), nil
	}
	d, err := meta.TargetDelta(dtf)
	dsum := hex.EncodeToString(dtf.Hashes["sha256"])
	switch {
	case err != nil:
		return 0, fmt.Sprintf("delta %s: %v", p.delta, err), nil
	case d.Format != delta.Format:
		return 0, fmt.Sprintf("delta %s is in format %q, this agent reads %s", p.delta, d.Format, delta.Format), nil
	case d.Target != p.path || d.TargetSHA256 != sum || d.TargetLength != p.tf.Length:
		return 0, fmt.Sprintf("delta %s rebuilds %s, not the assigned %s", p.delta, d.Target, p.path), nil
	case len(dsum) != 64:
		return 0, fmt.Sprintf("delta %s has no sha256 in signed metadata", p.delta), nil
	}
	w, err := ecu.BeginDelta(p.journal(sum), bootctl.DeltaProgress{Target: p.delta, Length: dtf.Length, SHA256: dsum, BaseSHA256: d.BaseSHA256})
	if errors.Is(err, bootctl.ErrDelta) {
		return 0, err.Error(), nil
	}
	if err != nil {
		return 0, "", fmt.Errorf("ECU %s: %w", p.ecu.Serial, err)
	}
	if p.sealedDelta != nil && w.Offset() > 0 {
		// The delta's own bytes are not kept, so its sealed sha256
		// cannot be carried on: an encrypted delta starts over (it is
		// small next to the image).
		w.Discard()
		if w, err = ecu.BeginDelta(p.journal(sum), bootctl.DeltaProgress{Target: p.delta, Length: dtf.Length, SHA256: dsum, BaseSHA256: d.BaseSHA256}); err != nil {
			return 0, err.Error(), nil
		}
	}
	w.WriteHook = a.Faults.WriteHook(p.tf.Length)
	if a.Faults.CorruptDelta || a.Faults.TruncateDelta {
		a.Log.Info("simulating a damaged delta", "delta", p.delta)
	}
	if w.Offset() > 0 {
		a.Log.Info("resuming delta", "delta", p.delta, "offset", w.Offset(), "length", dtf.Length)
	}
	t, dst := Target{Path: p.delta, SHA256: dsum, Length: dtf.Length, Delta: true}, io.Writer(w)
	var dec *sealed.Decrypter
	if p.sealedDelta != nil {
		if dec, _, err = p.sealedDelta.decrypter(w, dtf.Length, 0, ""); err != nil {
			w.Discard()
			return 0, fmt.Sprintf("encrypted delta %s: %v", p.delta, err), nil
		}
		t, dst = p.sealedDelta.target(true), dec
	}
	res, canceled, err := a.stream(ctx, src, p, t, dst, w.Offset(), "delta "+path.Base(p.delta), "downloading delta "+p.delta)
	if dec != nil {
		err = finishSealed(dec, canceled, err)
	}
	n := res.Transferred
	switch {
	case canceled:
		w.Pause()
		return n, "", errJobCanceled
	case errors.Is(err, bootctl.ErrDelta), errors.Is(err, download.ErrServerLength), errors.Is(err, download.ErrNotFound), errors.Is(err, sealed.ErrAuth):
		w.Discard()
		return n, err.Error(), nil
	case errors.Is(err, fault.ErrFlash):
		w.Discard()
		return n, "", fmt.Errorf("%w: ECU %s: writing slot %s failed (%v); the active slot was not touched", client.ErrRolledBack, p.ecu.Serial, w.Journal().Slot, err)
	case err != nil:
		if perr := w.Pause(); perr != nil {
			return n, "", fmt.Errorf("delta %s: %v; and saving progress failed: %w", p.delta, err, perr)
		}
		return n, "", fmt.Errorf("%w: delta %s: %v (progress kept; the next update resumes)", client.ErrUnreachable, p.delta, err)
	}
	a.say("verifying %s: rebuilt from a delta, length and sha256 against signed metadata", path.Base(p.path))
	if err := w.Finish(a.Faults.Hooks()); err != nil {
		w.Discard()
		if errors.Is(err, bootctl.ErrDelta) {
			return n, err.Error(), nil
		}
		return n, "", err
	}
	a.Log.Info("rebuilt from delta", "target", p.path, "delta", p.delta, "bytes", n)
	return n, "", nil
}
