package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/boottime"
	"github.com/roadsign/roadsign/internal/timeattest"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// Secure time. The vehicle's RTC decides nothing: every expiry verdict,
// maintenance window and signed request time of a cycle comes from the
// server's time attestation for a nonce the vehicle just chose, verified
// against the time key of its trusted director root, and counted on with
// the boot clock (CLOCK_BOOTTIME: suspend counts, a changed RTC does not).
// The latest trusted time is kept as a floor that never goes down: an
// attestation before it is stale, and one more than ten years past it is
// refused unless the director root changed since. Without a valid attestation the
// vehicle's time is untrusted and it installs nothing (time_untrusted).

// TimeUntrusted is the refusal code of a cycle without a trusted time.
const TimeUntrusted = "time_untrusted"

// maxTimeJump bounds how far past the floor an attestation may be: a
// vehicle offline for years is fine, one told it is decades later is not.
const maxTimeJump = 10 * 365 * 24 * time.Hour

// secureTime gets the cycle's trusted time: a fresh attestation, or,
// when the server cannot be reached, the one accepted earlier in this
// boot while still valid.
func (a *Agent) secureTime(ctx context.Context) error {
	if a.API == nil {
		return a.untrusted("no server to attest the time")
	}
	nonce := vehicleauth.Nonce()
	att, err := a.API.TimeAttestation(ctx, nonce)
	if err != nil {
		st, lerr := a.V.LoadTimeState()
		if _, ok := trustedNow(st); ok && lerr == nil && errors.Is(err, client.ErrUnreachable) {
			a.useTrustedClock(st)
			return nil
		}
		if errors.Is(err, client.ErrUnreachable) {
			return err
		}
		return a.untrusted(fmt.Sprintf("the server gave no time attestation: %v", err))
	}
	return a.acceptAttestation(att, nonce, a.Faults.Attestation)
}

// acceptAttestation verifies att (for nonce) and makes it the cycle's
// clock; otherwise the vehicle's time is untrusted. damage simulates a
// bad attestation (fault.Set.Attestation; "" for none).
func (a *Agent) acceptAttestation(att timeattest.Attestation, nonce, damage string) error {
	switch damage {
	case "wrong-nonce": // an attestation replayed from another request
		nonce = vehicleauth.Nonce()
	case "bad-sig": // one signed by another key
		if len(att.Sig) > 0 {
			att.Sig = append([]byte(nil), att.Sig...)
			att.Sig[0] ^= 0x01
		}
	}
	raw, err := os.ReadFile(filepath.Join(a.V.DirectorRepoDir(), "root.json"))
	if err != nil {
		return a.untrusted(fmt.Sprintf("no trusted director root: %v", err))
	}
	root, err := metadata.Root().FromBytes(raw)
	if err != nil {
		return a.untrusted(fmt.Sprintf("trusted director root: %v", err))
	}
	s, err := timeattest.Verify(root, att, a.V.VIN, nonce)
	if err != nil {
		return a.untrusted(err.Error())
	}
	st, err := a.V.LoadTimeState()
	if err != nil {
		return err
	}
	if damage == "stale" { // as if the server's clock were behind what the vehicle trusts
		s.Time = laterOf(st.Floor, s.Time).Add(-time.Hour)
	}
	switch {
	case !st.Floor.IsZero() && s.Time.Before(st.Floor):
		return a.untrusted(fmt.Sprintf("the attested time %s is before %s, a time this vehicle already trusted (stale or replayed)",
			s.Time.Format(time.RFC3339), st.Floor.Format(time.RFC3339)))
	case !st.Floor.IsZero() && s.Time.Sub(st.Floor) > maxTimeJump && root.Signed.Version <= st.RootVersion:
		return a.untrusted(fmt.Sprintf("the attested time %s is more than ten years past %s, the last time this vehicle trusted (only a new director root may move it that far)",
			s.Time.Format(time.RFC3339), st.Floor.Format(time.RFC3339)))
	}
	r, err := boottime.Now()
	if err != nil {
		return a.untrusted(fmt.Sprintf("no boot clock: %v", err))
	}
	st = vehicle.TimeState{Floor: s.Time, AttestedAt: s.Time, Boot: r.Boot, BootNanos: int64(r.Since), ValidSeconds: s.ValidSeconds,
		RootVersion: root.Signed.Version}
	if err := a.V.SaveTimeState(st); err != nil {
		return err
	}
	a.useTrustedClock(st)
	return nil
}

// untrusted records why the vehicle holds no trusted time (reported at
// the next check-in) and returns the refusal.
func (a *Agent) untrusted(why string) error {
	if st, err := a.V.LoadTimeState(); err == nil {
		st.Untrusted = why
		st.AttestedAt, st.Boot, st.BootNanos = time.Time{}, "", 0
		a.logErr("recording the untrusted time", a.V.SaveTimeState(st))
	}
	a.trustedClock = false
	return fmt.Errorf("%w: %s: %s; nothing installed until the vehicle holds a trusted time", client.ErrRefused, TimeUntrusted, why)
}

// trustedNow is the time st attests now, if it was taken in this boot
// and is still valid.
func trustedNow(st vehicle.TimeState) (time.Time, bool) {
	if st.AttestedAt.IsZero() || st.Untrusted != "" {
		return time.Time{}, false
	}
	now, err := boottime.Now()
	if err != nil {
		return time.Time{}, false
	}
	el, ok := boottime.Reading{Boot: st.Boot, Since: time.Duration(st.BootNanos)}.Elapsed(now)
	if !ok || el > time.Duration(st.ValidSeconds)*time.Second {
		return time.Time{}, false
	}
	return st.AttestedAt.Add(el), true
}

// useTrustedClock makes st's attested time, counted on with the boot
// clock, the agent's clock (expiry, windows, signed requests).
func (a *Agent) useTrustedClock(st vehicle.TimeState) {
	clock := func() time.Time {
		if t, ok := trustedNow(st); ok {
			return t
		}
		return st.AttestedAt // past its validity mid-cycle: never guess later
	}
	a.keepRTC()
	a.Now, a.trustedClock = clock, true
	if a.API != nil {
		a.API.UseClock(clock)
	}
}

// raiseFloor records the trusted time now as the floor.
func (a *Agent) raiseFloor() {
	if !a.trustedClock {
		return
	}
	st, err := a.V.LoadTimeState()
	if err != nil {
		return
	}
	if now := a.now(); now.After(st.Floor) {
		st.Floor = now
		a.logErr("raising the time floor", a.V.SaveTimeState(st))
	}
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// TimeStatus is the vehicle's time as status --json shows it.
type TimeStatus struct {
	State string    `json:"state"`
	Floor time.Time `json:"floor,omitzero"`
	// Untrusted is why, when the last attempt failed.
	Untrusted string `json:"untrusted,omitempty"`
}

// timeStatus reads the vehicle's time state.
func timeStatus(v *vehicle.Vehicle) TimeStatus {
	st, err := v.LoadTimeState()
	if err != nil {
		return TimeStatus{State: "untrusted", Untrusted: err.Error()}
	}
	out := TimeStatus{State: "untrusted", Floor: st.Floor, Untrusted: st.Untrusted}
	if _, ok := trustedNow(st); ok {
		out.State = "trusted"
	}
	return out
}

// usbTime is the clock of an offline install from a USB bundle issued at
// issued (bundle.json's word, which the director's signed metadata must
// repeat): the latest of the vehicle's floor, that issue time and a time
// attested earlier in this boot. The RTC plays no part; the bundle's
// life is bounded by it.
func (a *Agent) usbTime(issued time.Time) error {
	st, err := a.V.LoadTimeState()
	if err != nil {
		return err
	}
	t := laterOf(st.Floor, issued.UTC())
	if tn, ok := trustedNow(st); ok {
		t = laterOf(t, tn)
	}
	a.keepRTC()
	a.Now, a.trustedClock = func() time.Time { return t }, false
	return nil
}

// keepRTC keeps the vehicle's own clock before a trusted one replaces
// it: maintenance windows are the vehicle's local time of day, a
// schedule rather than a security decision.
func (a *Agent) keepRTC() {
	if a.rtc != nil {
		return
	}
	a.rtc = a.Now
	if a.rtc == nil {
		a.rtc = time.Now
	}
}

// localTime is the vehicle's own clock (its RTC).
func (a *Agent) localTime() time.Time {
	if a.rtc != nil {
		return a.rtc()
	}
	return a.now()
}
