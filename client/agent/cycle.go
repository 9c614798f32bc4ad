package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/client/usb"
	"github.com/roadsign/roadsign/client/vehicle"
)

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
	// No expiry verdict, window or signed request before a trusted time.
	if err := a.secureTime(ctx); err != nil {
		if !errors.Is(err, client.ErrUnreachable) {
			// The refusal is evidence: the check-in reports it (signed
			// with the RTC's time, which the server may refuse as skewed:
			// that is evidence too).
			if cerr := a.CheckIn(ctx); cerr != nil {
				a.Log.Warn("could not report the untrusted time", "err", cerr)
			}
		}
		return Report{}, err
	}
	defer a.raiseFloor()
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
	rep, err := a.update(ctx, a.server())
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
	if err := a.usbTime(b.Manifest.IssuedAt); err != nil {
		return Report{}, err
	}
	if a.now().After(b.Manifest.ValidUntil) {
		return Report{}, fmt.Errorf("%w: this USB bundle expired on %s; download a new one; nothing installed", client.ErrRefused, b.Manifest.ValidUntil.Format(time.DateOnly))
	}
	h, err := a.checkHealth()
	if err != nil {
		return Report{}, err
	}
	a.health = h
	// Offline: no job events, no check-in (the next online cycle reports).
	rep, err := a.update(ctx, a.bundle(b))
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

// Reauthorize runs the connected-services handshake and records the outcome.
func (a *Agent) Reauthorize(ctx context.Context) (vehicle.Auth, error) {
	var fw []api.Firmware
	for _, e := range a.V.ECUs {
		rec, err := a.boot(e).LoadRecord()
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
