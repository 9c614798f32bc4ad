package bootctl

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/roadsign/roadsign/client"
)

// checkpointEvery is how often a download fsyncs the slot and records the
// progress in the journal, so that a restart after a power loss downloads
// at most this much again (a dropped connection loses nothing: Pause
// records every byte).
const checkpointEvery = 64 << 20

// Hooks let failure simulation act at the phase boundaries.
type Hooks struct {
	// At is called at "write" (all bytes streamed, before the final fsync
	// and verification), "switch" (boot control points at the new slot,
	// before the trial boot) and "commit" (boot check passed, before the
	// commit is recorded). A simulated power loss kills the process there.
	At func(point string)
	// FailBoot, if it returns an error, makes the trial boot fail with it.
	FailBoot func() error
}

func (h Hooks) at(point string) {
	if h.At != nil {
		h.At(point)
	}
}

// Begin starts an install of j into the slot that is not active, or
// resumes the one the journal records for the same image: the part already
// fsynced is kept and re-hashed, the rest is downloaded again. The caller
// writes the remaining bytes from Offset() on and then calls Finish.
func (e *ECU) Begin(j Journal) (*Writer, error) {
	rec, old, err := e.beginInstall(&j)
	if err != nil {
		return nil, err
	}
	resume := sameDownload(old, &j)
	if resume {
		j.Written, j.StartedAt = old.Written, old.StartedAt
	}
	f, err := e.openInactive(rec, &j, resume)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	if j.Written > 0 {
		n, err := io.CopyBuffer(h, io.LimitReader(readOnce(f), j.Written), make([]byte, chunkSize))
		if err != nil || n != j.Written {
			f.Close()
			return nil, fmt.Errorf("re-read slot %s for resume: %d of %d bytes: %v", j.Slot, n, j.Written, err)
		}
	}
	return newWriter(e, &j, f, h), nil
}

// beginInstall points j at the inactive slot for a download, once no
// trial boot is pending, and returns the boot record and the journal of
// the install in progress (nil: none).
func (e *ECU) beginInstall(j *Journal) (*Record, *Journal, error) {
	rec, err := e.LoadRecord()
	if err != nil {
		return nil, nil, err
	}
	if rec.Trial {
		return nil, nil, errors.New("a trial boot is pending; recover first")
	}
	j.Slot, j.Phase = rec.Active.Other(), PhaseDownload
	old, err := e.LoadJournal()
	if err != nil {
		return nil, nil, err
	}
	return rec, old, nil
}

// sameDownload reports whether old is a download of j's image into j's
// slot, which j may resume.
func sameDownload(old, j *Journal) bool {
	return old != nil && old.Phase == PhaseDownload && old.Slot == j.Slot &&
		old.SHA256 == j.SHA256 && old.Length == j.Length && old.Target == j.Target
}

// openInactive records j and opens its slot for writing from j.Written
// on. A fresh install (not resume) first forgets what the slot held and
// starts at 0; a resumed one keeps the fsynced prefix and drops anything
// past it, which may be torn.
func (e *ECU) openInactive(rec *Record, j *Journal, resume bool) (*os.File, error) {
	if !resume {
		j.Written, j.StartedAt = 0, e.now().UTC()
		if rec.Slots[j.Slot] != nil {
			rec.Slots[j.Slot] = nil
			if err := e.SaveRecord(rec); err != nil {
				return nil, err
			}
		}
	}
	if err := e.SaveJournal(j); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(e.SlotPath(j.Slot), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open slot %s: %w", j.Slot, err)
	}
	if err := f.Truncate(j.Written); err != nil {
		f.Close()
		return nil, fmt.Errorf("truncate slot %s: %w", j.Slot, err)
	}
	if err := reserve(f, j.Length); err != nil {
		f.Close()
		return nil, fmt.Errorf("reserve %d bytes in slot %s: %w; free space for the image and retry", j.Length, j.Slot, err)
	}
	return f, nil
}

// Journal returns the install's journal.
func (w *Writer) Journal() Journal { return *w.j }

// Offset is where the download continues.
func (w *Writer) Offset() int64 { return w.n }

// Abort forgets an install in progress: the inactive slot is emptied and
// the journal cleared. The active slot is never touched.
func (e *ECU) Abort() error {
	j, err := e.LoadJournal()
	if err != nil || j == nil {
		return err
	}
	rec, err := e.LoadRecord()
	if err != nil {
		return err
	}
	if j.Slot == rec.Active {
		// The switch happened; aborting would be a rollback, not an abort.
		return errors.New("install already switched slots; cannot abort")
	}
	if err := os.Truncate(e.SlotPath(j.Slot), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("wipe slot %s: %w", j.Slot, err)
	}
	return e.ClearJournal()
}

// Switch points boot control at the verified slot, on trial, and
// "reboots" into it: the boot check runs and the slot is committed, or
// boot control falls back to the previous slot. It returns nil when the
// new image was committed and an ErrRolledBack error when it was not.
func (e *ECU) Switch(hooks Hooks) error {
	if err := e.Trial(hooks); err != nil {
		return err
	}
	return e.Commit(hooks)
}

// Trial is Switch up to the passed boot check: the new slot stays on
// trial (PhaseTrial) until Commit makes it permanent or Revert goes
// back, so that several ECUs of one update set switch together or not
// at all. A failed boot check falls back at once (ErrRolledBack).
func (e *ECU) Trial(hooks Hooks) error {
	j, err := e.LoadJournal()
	if err != nil {
		return err
	}
	if j == nil || j.Phase != PhaseVerified {
		return errors.New("no verified install to switch to")
	}
	rec, err := e.LoadRecord()
	if err != nil {
		return err
	}
	rec.Slots[j.Slot] = &SlotInfo{Version: j.Version, SHA256: j.SHA256, Length: j.Length, Target: j.Target, ReleaseCounter: j.ReleaseCounter}
	rec.Active, rec.Trial, rec.BootAttempts = j.Slot, true, 0
	rec.LastResult = "trial boot of " + j.Version
	if err := e.SaveRecord(rec); err != nil {
		return err
	}
	j.Phase = PhaseSwitch
	if err := e.SaveJournal(j); err != nil {
		return err
	}
	hooks.at("switch")
	if err := e.bootCheck(rec, hooks); err != nil {
		return err
	}
	j.Phase = PhaseTrial
	return e.SaveJournal(j)
}

// Commit makes a slot that passed its trial boot (Trial) permanent.
func (e *ECU) Commit(hooks Hooks) error {
	rec, err := e.LoadRecord()
	if err != nil {
		return err
	}
	if !rec.Trial {
		return errors.New("no slot on trial to commit")
	}
	hooks.at("commit")
	return e.commit(rec)
}

// Revert undoes this ECU's part of an update set that did not complete:
// a slot on trial (its own boot check passed or not yet run) falls back
// to the previous one, which it never touched, without counting the
// image as failed here; a verified slot not yet switched is discarded.
// A download in progress is left to resume. It reports whether
// anything was reverted.
func (e *ECU) Revert(why string) (bool, error) {
	rec, err := e.LoadRecord()
	if err != nil {
		return false, err
	}
	if rec.Trial {
		_, _, err := e.fallBack(rec, why)
		return err == nil, err
	}
	j, err := e.LoadJournal()
	if err != nil || j == nil {
		return false, err
	}
	if j.Phase == PhaseVerified {
		return true, e.Abort()
	}
	if j.Phase != PhaseDownload { // a finished install's stale journal
		return false, e.ClearJournal()
	}
	return false, nil
}

// trialBoot is the bootloader starting a slot on trial, then committing
// it.
func (e *ECU) trialBoot(rec *Record, hooks Hooks) error {
	if err := e.bootCheck(rec, hooks); err != nil {
		return err
	}
	hooks.at("commit")
	return e.commit(rec)
}

// bootCheck starts the slot on trial; it falls back if the check fails.
func (e *ECU) bootCheck(rec *Record, hooks Hooks) error {
	rec.BootAttempts++
	if err := e.SaveRecord(rec); err != nil {
		return err
	}
	_, err := e.BootCheck(rec.Active)
	if err == nil && hooks.FailBoot != nil {
		err = hooks.FailBoot()
	}
	if err != nil {
		return e.rollback(rec, err)
	}
	return nil
}

func (e *ECU) commit(rec *Record) error {
	rec.Trial = false
	rec.LastResult = "installed " + rec.Slots[rec.Active].Version
	if err := e.SaveRecord(rec); err != nil {
		return err
	}
	return e.ClearJournal()
}

func (e *ECU) rollback(rec *Record, cause error) error {
	if s := rec.Slots[rec.Active]; s != nil && !slices.Contains(rec.Failed, s.SHA256) {
		rec.Failed = append(rec.Failed, s.SHA256)
	}
	version, prev, err := e.fallBack(rec, cause.Error())
	if err != nil {
		return err
	}
	return fmt.Errorf("%w: %s %s: new image %s failed its boot check (%v); running %s again", client.ErrRolledBack, e.Type, e.HardwareID, version, cause, prev)
}

// fallBack points boot control back at the slot the trial one replaced
// and clears the journal; it returns the versions of both.
func (e *ECU) fallBack(rec *Record, why string) (version, prev string, err error) {
	version, prev = "?", "?"
	if s := rec.Slots[rec.Active]; s != nil {
		version = s.Version
	}
	rec.Active, rec.Trial = rec.Active.Other(), false
	if s := rec.Slots[rec.Active]; s != nil {
		prev = s.Version
	}
	rec.LastResult = fmt.Sprintf("rolled back from %s to %s: %s", version, prev, why)
	if err := e.SaveRecord(rec); err != nil {
		return version, prev, err
	}
	return version, prev, e.ClearJournal()
}

// Recover finishes what a power loss interrupted, from the boot record and
// journal: a pending trial boot is run (commit or fall back), a verified
// but unswitched slot is discarded (never switched alone: see Trial), a
// stale journal is cleared. A download in progress is left for the next
// update to resume.
// It returns a description of what it did ("" for nothing) and, like
// Switch, an ErrRolledBack error if the new image did not boot.
func (e *ECU) Recover(hooks Hooks) (string, error) {
	rec, err := e.LoadRecord()
	if err != nil {
		return "", err
	}
	j, err := e.LoadJournal()
	if err != nil {
		return "", err
	}
	if rec.Trial {
		v := rec.Slots[rec.Active]
		err := e.trialBoot(rec, hooks)
		if err != nil {
			return "rebooted during a trial boot; rolled back", err
		}
		return fmt.Sprintf("rebooted during the trial boot of %s; committed it", v.Version), nil
	}
	if j == nil {
		return "", nil
	}
	switch {
	case j.Phase == PhaseSwitch || j.Slot == rec.Active:
		// The switch was recorded and resolved; only the journal was left.
		return "cleared a finished install's journal", e.ClearJournal()
	case j.Phase == PhaseVerified:
		// Verified but never switched: it may be one ECU of an update set
		// whose others were not ready, so it never switches alone. The
		// next update installs it again, with its set.
		return "discarded a verified slot of " + j.Version + " that was never switched; the next update installs it again", e.Abort()
	}
	return "", nil
}
