package diagnosis

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/server"
)

// Rule turns evidence into findings of one kind. Match returns none when
// the rule does not apply, or one per unit it applies to.
type Rule struct {
	Code     string
	Severity string
	// Fix is the dealer's fix, unless a finding words its own.
	Fix   string
	Owner OwnerStep
	Match func(e Evidence) []Finding
}

// Trouble codes the rules read (the agent sets them; docs/cli.md).
const (
	dtcConnection = "B15C4"
	dtcDCMFault   = "B15A8"
	dtcLostComm   = "U1100"
)

// weakSignal is the most bars at which a lost connection is blamed on
// coverage or the antenna.
const weakSignal = 1

// Rules are applied in this order, the likeliest cause first: a fault on
// the service's side, then the car not being able to talk to us at all,
// then account and subscription, then the car's units and firmware.
var Rules = []Rule{
	{
		Code: "service_unhealthy", Severity: Problem,
		Fix: "The fault is on Roadsign's side; nothing needs doing on the car. The operator is alerted (see /status); the car recovers on its own once the service does.",
		Owner: OwnerStep{Title: "Our service has a problem right now", Steps: []string{
			"Nothing is wrong with your car, and there is nothing to do on it.",
			"We are working on it; connected services come back on their own. Try again in an hour."}},
		Match: func(e Evidence) []Finding {
			var facts []Fact
			for _, c := range e.Service {
				if !c.OK {
					facts = append(facts, Fact{Record: "service status", At: e.Now, Detail: c.Name + ": " + c.Detail})
				}
			}
			if len(facts) == 0 {
				return nil
			}
			return []Finding{{Title: "The service itself is unhealthy", Evidence: facts}}
		},
	},
	{
		Code: "unknown_vehicle_key", Severity: Problem,
		Fix: "If the DCM was replaced, re-provision it: register the new unit's serial and public key for this VIN. If it was not, these requests did not come from this car.",
		Owner: OwnerStep{Title: "Our service does not recognise your car's telematics unit", Steps: []string{
			"This usually happens after a repair that replaced the telematics unit (DCM).",
			"A dealer has to register the new unit for your car: book a visit and mention this message."}, SeeDealer: true},
		Match: func(e Evidence) []Finding {
			f := e.Vehicle.RequestFaults
			if f.BadSignatureAt.IsZero() || !f.BadSignatureAt.After(e.Vehicle.LastSeen) {
				return nil
			}
			detail := fmt.Sprintf("%s for this VIN not signed by its registered key; the last at %s", count(f.BadSignatureCount, "request"), stamp(f.BadSignatureAt))
			if !e.Vehicle.LastSeen.IsZero() {
				detail += fmt.Sprintf(", after the car's last accepted check-in at %s", stamp(e.Vehicle.LastSeen))
			}
			return []Finding{{Title: "The car signs with a key the server does not know (replaced DCM not re-provisioned?)",
				Evidence: []Fact{{Record: "refused requests", At: f.BadSignatureAt, Detail: detail}},
				Actions:  []Action{{Kind: ActReprovision, ECU: serialOf(e, "dcm"), Label: "Re-provision the DCM"}}}}
		},
	},
	{
		Code: "checkin_refused", Severity: Problem,
		Fix: "The units the car reports are not the ones registered for this VIN, so every check-in is refused and no update reaches it. Compare the units in the car with those listed here, and re-provision the one that differs: the removed unit, replaced by a new one of the same type and its hardware ID.",
		Owner: OwnerStep{Title: "Our records of your car's units do not match your car", Steps: []string{
			"This happens when a unit was replaced and registered wrongly.",
			"A dealer has to correct the registration: book a visit and mention this message."}, SeeDealer: true},
		Match: func(e Evidence) []Finding {
			f := e.Vehicle.RequestFaults
			if f.CheckInRefusedAt.IsZero() || !f.CheckInRefusedAt.After(e.Vehicle.LastSeen) || ecuReportCode(f.CheckInRefused) != "" {
				return nil
			}
			return []Finding{{Title: "The car's check-ins are refused: the units it reports do not match its registration",
				Evidence: []Fact{{Record: "refused check-ins", At: f.CheckInRefusedAt, Detail: f.CheckInRefused}},
				Actions:  []Action{{Kind: ActReprovision, ECU: unreported(e), Label: "Correct the registration"}}}}
		},
	},
	{
		Code: "ecu_report_refused", Severity: Problem,
		Owner: OwnerStep{Title: "One of your car's units could not prove which software it runs", Steps: []string{
			"Each unit of your car signs what it runs; one unit's signature was missing or wrong, so we hold back updates.",
			"A dealer checks the unit named here: book a visit and mention this message."}, SeeDealer: true},
		Match: func(e Evidence) []Finding {
			f := e.Vehicle.RequestFaults
			code := ecuReportCode(f.CheckInRefused)
			if f.CheckInRefusedAt.IsZero() || !f.CheckInRefusedAt.After(e.Vehicle.LastSeen) || code == "" {
				return nil
			}
			unit := namedUnit(e, f.CheckInRefused)
			fixes := map[string]string{
				errcode.ECUReportSignature: "The unit's report is not signed by the key registered for it. If the unit was replaced, re-provision it with the new unit's key; if it was not, its report was forged: inspect the head unit (the primary that relays it).",
				errcode.ECUReportReplayed:  "The unit's report repeats one from an earlier cycle: a report played back. Inspect the head unit (the primary that relays the reports) and the vehicle network; do not re-provision.",
				errcode.ECUUnknown:         "A unit not registered for this VIN reports: a replaced unit that was not re-provisioned. Re-provision it in place of the unit it replaced, with its own key.",
				errcode.ECUMissing:         "A registered unit sent no report: check that it is fitted, powered and on the vehicle bus; if it was replaced, re-provision the replacement.",
			}
			return []Finding{{Title: "The car's check-ins are refused: " + code + " (" + unitOr(unit) + ")",
				Evidence: []Fact{{Record: "refused check-ins", At: f.CheckInRefusedAt, Detail: f.CheckInRefused}},
				Fix:      fixes[code],
				Actions:  []Action{{Kind: ActReprovision, ECU: unit, Label: "Re-provision " + unitOr(unit)}}}}
		},
	},
	{
		Code: "time_untrusted", Severity: Problem,
		Fix: "The car could not get a time it can trust from the server's signed time attestation, so it installs nothing (its own clock decides nothing). A wrong nonce or signature means something between the car and the server answers in the server's place (a proxy, a captive portal, an attack): check the car's network path. A stale time means the server's clock is behind what the car already trusted: check the servers' time (NTP).",
		Owner: OwnerStep{Title: "Your car could not confirm the time, so it waits with its updates", Steps: []string{
			"Your car checks the time with our service before it installs anything, and that check failed.",
			"Drive somewhere with good mobile coverage (not through a public Wi-Fi login page); it checks again on its own.",
			"If it keeps failing, a dealer checks the car's connection."}, SeeDealer: true},
		Match: func(e Evidence) []Finding {
			if e.Vehicle.TimeUntrusted == "" {
				return nil
			}
			return []Finding{{Title: "The car holds no trusted time, so it installs nothing",
				Evidence: []Fact{{Record: "check-in", At: e.Vehicle.LastSeen, Detail: e.Vehicle.TimeUntrusted}}}}
		},
	},
	{
		Code: "ecu_refused_image", Severity: Problem,
		Fix: "The unit refused an image or metadata its primary sent it that the director did not sign for it. Nothing was installed on it. Inspect the head unit (the primary) for tampering before the next update; the unit itself is fine.",
		Owner: OwnerStep{Title: "One of your car's units refused software it was not meant to get", Steps: []string{
			"A unit of your car turned down software that we did not sign for it, and kept its own.",
			"Your car is safe to drive. A dealer inspects it: book a visit and mention this message."}, SeeDealer: true},
		Match: func(e Evidence) []Finding {
			var out []Finding
			for _, u := range e.Vehicle.ECUs {
				if u.Attack == "" || e.Now.Sub(u.AttackAt) > 30*24*time.Hour {
					continue
				}
				out = append(out, Finding{Title: fmt.Sprintf("%s %s refused what it was sent", u.Type, u.Serial),
					Evidence: []Fact{{Record: "signed report of " + u.Serial, At: u.AttackAt, Detail: u.Attack}}})
			}
			return out
		},
	},
	{
		Code: "clock_skew", Severity: Problem,
		Fix: "The car's clock is wrong, not its DCM: it takes time from GNSS or the network; check the time source and the antenna. Do not replace the DCM.",
		Owner: OwnerStep{Title: "Your car's clock is wrong", Steps: []string{
			"Your car sets its clock from satellites and the mobile network. Park it outside, away from buildings, for 15 minutes with the engine on.",
			"If the clock is still wrong afterwards, a dealer checks its time source."}},
		Match: func(e Evidence) []Finding {
			f := e.Vehicle.RequestFaults
			if f.ClockSkewAt.IsZero() || !f.ClockSkewAt.After(e.Vehicle.LastSeen) {
				return nil
			}
			dir := "behind"
			if f.ClockSkew < 0 {
				dir = "ahead of"
			}
			off := f.ClockSkew.Abs().Round(time.Second)
			if off >= time.Minute {
				off = off.Round(time.Minute)
			}
			return []Finding{{Title: "The car's clock is off, so its requests are refused",
				Evidence: []Fact{{Record: "refused requests", At: f.ClockSkewAt,
					Detail: fmt.Sprintf("the car's clock was %s %s the server's", off, dir)}}}}
		},
	},
	{
		Code: "vehicle_offline", Severity: Problem,
		Fix: "The car has not reached the server: it may be parked without coverage, its 12 V battery disconnected, or the DCM without power or antenna. Drive it into coverage; if it stays silent, check the DCM's power and antenna.",
		Owner: OwnerStep{Title: "Your car has not been in touch with us", Steps: []string{
			"Drive your car somewhere with good mobile coverage and keep it on for 10 minutes.",
			"If it still does not connect, a dealer checks the telematics unit's power and antenna."}, SeeDealer: true},
		Match: func(e Evidence) []Finding {
			last, what := lastContact(e)
			if e.OfflineAfter <= 0 || e.Now.Sub(last) < e.OfflineAfter {
				return nil
			}
			return []Finding{{Title: fmt.Sprintf("No contact from the car for %s", e.Now.Sub(last).Round(time.Minute)),
				Evidence: []Fact{{Record: what, At: last, Detail: "the car's last contact with the server"}}}}
		},
	},
	{
		Code: "no_signal", Severity: Problem,
		Fix: "Antenna or coverage, not software: check the DCM's antenna and its cable; if the car is parked without coverage, this is expected. No reflash needed.",
		Owner: OwnerStep{Title: "Your car had no mobile signal", Steps: []string{
			"Your car lost its connection where there was no mobile signal (an underground car park, a remote area).",
			"It reconnects on its own once it has signal. If it loses signal where your phone has it, a dealer checks the car's antenna."}},
		Match: func(e Evidence) []Finding {
			ep := activeEpisode(e, dtcConnection)
			if ep == nil || ep.SignalBars == nil || *ep.SignalBars > weakSignal {
				return nil
			}
			return []Finding{{Title: fmt.Sprintf("B15C4 telematics connection error with %s of signal", count(*ep.SignalBars, "bar")),
				Evidence: []Fact{episodeFact(*ep)}}}
		},
	},
	{
		Code: "telematics_connection", Severity: Problem,
		Fix: "The car had signal but could not reach the server: if /status showed the service down then, nothing to do; otherwise the DCM's connection fails: reflash the DCM.",
		Owner: OwnerStep{Title: "Your car could not reach our service", Steps: []string{
			"Your car had mobile signal but could not reach us for a while.",
			"If it keeps happening, a dealer updates the telematics unit's software."}, SeeDealer: true},
		Match: func(e Evidence) []Finding {
			ep := activeEpisode(e, dtcConnection)
			if ep == nil || (ep.SignalBars != nil && *ep.SignalBars <= weakSignal) {
				return nil
			}
			title := "B15C4 telematics connection error with good signal"
			if ep.SignalBars == nil {
				title = "B15C4 telematics connection error (signal unknown)"
			}
			return []Finding{{Title: title, Evidence: []Fact{episodeFact(*ep)},
				Actions: []Action{{Kind: ActReflash, ECU: "dcm", Label: "Reflash the DCM"}}}}
		},
	},
	{
		Code: "subscription_expired", Severity: Problem,
		Fix: "Renew the connected-services subscription.",
		Owner: OwnerStep{Title: "Your connected-services subscription has ended", Steps: []string{
			"Any dealer renews it for you in a few minutes: call or visit one and give them your car's VIN (on this page).",
			"Services come back at your car's next connection after the renewal."}, SeeDealer: true},
		Match: func(e Evidence) []Finding {
			if e.Link == nil || !e.Now.After(e.Link.SubscriptionEnds) {
				return nil
			}
			return []Finding{{Title: "The connected-services subscription has ended",
				Evidence: []Fact{{Record: "owner link", At: e.Link.SubscriptionEnds, Detail: fmt.Sprintf("the subscription of %s ended on %s", ownerName(e), e.Link.SubscriptionEnds.Format(time.DateOnly))}},
				Actions:  []Action{{Kind: ActRenew, Label: "Renew for a year"}}}}
		},
	},
	{
		Code: "linked_to_previous_owner", Severity: Problem,
		Fix: "The car is still linked to its previous owner while someone else claims it: the previous owner releases or hands it over, or a dealer transfers it after checking the sale.",
		Owner: OwnerStep{Title: "Someone else asked to link your car", Steps: []string{
			"If you sold this car, accept the new owner's claim on your vehicles page; if you did not, reject it.",
			"Your own connected services are not affected."}},
		Match: func(e Evidence) []Finding {
			if e.Link == nil || e.Link.PendingOwnerID == "" {
				return nil
			}
			return []Finding{{Title: "Linked to its previous owner while a new owner claims it",
				Evidence: []Fact{{Record: "owner link", At: e.Link.PendingSince,
					Detail: fmt.Sprintf("linked to %s since %s; %s claimed it", ownerName(e), e.Link.LinkedAt.Format(time.DateOnly), e.Claimant)}},
				Actions: []Action{{Kind: ActTransfer, Label: "Transfer to " + e.Claimant}}}}
		},
	},
	{
		Code: "vehicle_not_linked", Severity: Problem,
		Fix: "No owner account is linked: the owner links the car in the portal with the code the car shows (Settings › Connected services › Link account).",
		Owner: OwnerStep{Title: "Your car is not linked to your account", Steps: []string{
			"On the car's screen, open Settings › Connected services › Link account to show a code.",
			"Enter the VIN and that code on your vehicles page."}},
		Match: func(e Evidence) []Finding {
			if e.Link != nil {
				return nil
			}
			facts := []Fact{{Record: "owner link", Detail: "no owner account is linked to this VIN"}}
			if e.Vehicle.AuthState == errcode.VehicleNotLinked {
				facts = append(facts, handshakeFact(e))
			}
			return []Finding{{Title: "No owner account is linked to the car", Evidence: facts}}
		},
	},
	{
		Code: "lost_communication", Severity: Problem,
		Fix: "U1100: the head unit and the DCM do not talk on the vehicle bus. Check the wiring and connectors between them; this is not software.",
		Owner: OwnerStep{Title: "The screen and the telematics unit are not talking", Steps: []string{
			"Restart the head unit: hold its power button for 10 seconds, or switch the car off, lock it and wait 5 minutes.",
			"If the message comes back, a dealer checks the connection between the screen and the telematics unit."}, SeeDealer: true},
		Match: func(e Evidence) []Finding {
			ep := activeEpisode(e, dtcLostComm)
			if ep == nil {
				return nil
			}
			return []Finding{{Title: "U1100 lost communication between the head unit and the DCM", Evidence: []Fact{episodeFact(*ep)}}}
		},
	},
	{
		Code: "dcm_fault", Severity: Problem,
		Owner: OwnerStep{Title: "Your car's telematics unit reports a fault", Steps: []string{
			"A dealer reinstalls the telematics unit's software; this takes about 15 minutes.",
			"If the fault comes back after that, the unit is replaced."}, SeeDealer: true},
		Match: func(e Evidence) []Finding {
			ep := activeEpisode(e, dtcDCMFault)
			if ep == nil {
				return nil
			}
			f := Finding{Title: "B15A8 DCM internal fault", Evidence: []Fact{episodeFact(*ep)},
				Fix:     "Reflash the DCM. If B15A8 comes back after a reflash, replace the DCM.",
				Actions: []Action{{Kind: ActReflash, ECU: "dcm", Label: "Reflash the DCM"}}}
			if j := lastSucceeded(e, "dcm"); j != nil && ep.FirstSeen.After(j.UpdatedAt) {
				f.Title = "B15A8 DCM internal fault, again after a reflash"
				f.Fix = "B15A8 came back after the DCM was reflashed: replace the DCM, then re-provision it."
				f.Evidence = append(f.Evidence, Fact{Record: "job " + j.ID, At: j.UpdatedAt, Detail: "the DCM was reflashed with " + j.Version})
				f.Actions = []Action{{Kind: ActReprovision, ECU: serialOf(e, "dcm"), Label: "Re-provision the replacement DCM"}}
			}
			return []Finding{f}
		},
	},
	{
		Code: "firmware_unsigned", Severity: Problem,
		Fix: "The unit runs firmware that is not a signed image for its hardware (corrupt or tampered): reflash it.",
		Owner: OwnerStep{Title: "Software on your car is damaged", Steps: []string{
			"Download the USB update on your vehicles page and install it, or let a dealer reinstall the software."}, SeeDealer: true},
		Match: func(e Evidence) []Finding {
			var out []Finding
			for _, u := range e.ECUs {
				if u.Signed || u.InstalledSHA256 == "" {
					continue
				}
				out = append(out, Finding{Title: fmt.Sprintf("%s %s runs firmware that is not a signed image", u.Type, u.Serial),
					Evidence: []Fact{{Record: "check-in", At: u.ReportedAt, Detail: fmt.Sprintf("%s reported sha256 %.12s…, which no signed image for %s has", u.Serial, u.InstalledSHA256, u.HardwareID)}},
					Actions:  []Action{{Kind: ActReflash, ECU: u.Type, Label: "Reflash the " + u.Type}}})
			}
			return out
		},
	},
	{
		Code: "firmware_outdated", Severity: Problem,
		Fix: "The unit does not run the image the director assigns, so the handshake refuses it: it updates over the air at its next check-in; or install the USB update, or push a dealer reflash.",
		Owner: OwnerStep{Title: "Your car needs a software update", Steps: []string{
			"Leave your car switched on where it has mobile signal: the update installs on its own.",
			"Or download the USB update on your vehicles page and install it from a USB stick."}},
		Match: func(e Evidence) []Finding {
			if e.Vehicle.AuthState != errcode.FirmwareNotAuthorized {
				return nil
			}
			return outdated(e)
		},
	},
	{
		Code: "handshake_failed", Severity: Problem,
		Fix: "The last connected-services handshake failed for a reason no other finding explains: restart the head unit, then reauthorize; if it persists, read the message.",
		Owner: OwnerStep{Title: "The last connection attempt failed", Steps: []string{
			"Restart the head unit: hold its power button for 10 seconds.",
			"If the problem stays, a dealer reads the details."}, SeeDealer: true},
		Match: func(e Evidence) []Finding {
			st := e.Vehicle.AuthState
			if slices.Contains([]string{"", errcode.Authorized, errcode.VehicleNotLinked, errcode.SubscriptionExpired, errcode.FirmwareNotAuthorized}, st) {
				return nil
			}
			return []Finding{{Title: "The last handshake failed: " + st, Evidence: []Fact{handshakeFact(e)}}}
		},
	},
	{
		Code: "update_pending", Severity: Info,
		Fix: "An update is assigned and installs at the car's next check-in; nothing else to do.",
		Match: func(e Evidence) []Finding {
			if e.Vehicle.AuthState == errcode.FirmwareNotAuthorized {
				return nil
			}
			return outdated(e)
		},
	},
	{
		Code: "connection_recovered", Severity: Info,
		Fix: "The connection was lost for a while and came back; nothing to do unless it recurs.",
		Match: func(e Evidence) []Finding {
			for _, ep := range e.Episodes {
				if ep.Code == dtcConnection && !ep.Active() && e.Now.Sub(ep.ClearedAt) < 24*time.Hour {
					return []Finding{{Title: "A connection loss in the last day, since recovered", Evidence: []Fact{episodeFact(ep)}}}
				}
			}
			return nil
		},
	},
	{
		Code: "other_trouble_code", Severity: Info,
		Fix: "A trouble code Roadsign has no rule for; read it with a scan tool.",
		Match: func(e Evidence) []Finding {
			var out []Finding
			for _, ep := range e.Episodes {
				if ep.Active() && !slices.Contains([]string{dtcConnection, dtcDCMFault, dtcLostComm}, ep.Code) {
					out = append(out, Finding{Title: "Trouble code " + ep.Code + " is set", Evidence: []Fact{episodeFact(ep)}})
				}
			}
			return out
		},
	},
}

// outdated is one finding per ECU that does not run its assignment.
func outdated(e Evidence) []Finding {
	var out []Finding
	for _, u := range e.ECUs {
		if !u.Outdated || !u.Signed {
			continue
		}
		facts := []Fact{{Record: "director assignment", At: e.Now, Detail: fmt.Sprintf("%s %s runs %s; the director assigns %s (%s)", u.Type, u.Serial, orNone(u.InstalledVersion), u.AssignedVersion, u.AssignedPath)}}
		if e.Vehicle.AuthState == errcode.FirmwareNotAuthorized {
			facts = append(facts, handshakeFact(e))
		}
		out = append(out, Finding{Title: fmt.Sprintf("%s %s runs %s, not the assigned %s", u.Type, u.Serial, orNone(u.InstalledVersion), u.AssignedVersion),
			Evidence: facts, Actions: []Action{{Kind: ActReflash, ECU: u.Type, Label: "Reflash the " + u.Type + " now"}}})
	}
	return out
}

// lastContact is the last time the car reached the server, accepted or
// refused, and which record says so.
func lastContact(e Evidence) (time.Time, string) {
	v := e.Vehicle
	last, what := v.CreatedAt, "registration"
	for _, c := range []struct {
		at   time.Time
		what string
	}{{v.LastSeen, "check-in"}, {v.AuthAt, "handshake"}, {v.RequestFaults.BadSignatureAt, "refused requests"}, {v.RequestFaults.ClockSkewAt, "refused requests"}} {
		if c.at.After(last) {
			last, what = c.at, c.what
		}
	}
	return last, what
}

func activeEpisode(e Evidence, code string) *server.DTCEpisode {
	for i, ep := range e.Episodes {
		if ep.Code == code && ep.Active() {
			return &e.Episodes[i]
		}
	}
	return nil
}

func episodeFact(ep server.DTCEpisode) Fact {
	d := fmt.Sprintf("%s first seen %s, last %s, %s", ep.Code, stamp(ep.FirstSeen), stamp(ep.LastSeen), count(ep.Count, "time"))
	if ep.SignalBars != nil {
		d += fmt.Sprintf(", weakest signal %d bars", *ep.SignalBars)
	}
	if !ep.Active() {
		d += ", cleared " + stamp(ep.ClearedAt)
	}
	if ep.Detail != "" {
		d += ": " + ep.Detail
	}
	return Fact{Record: "trouble codes reported at check-in", At: ep.ReportedAt, Detail: d}
}

func handshakeFact(e Evidence) Fact {
	msg := e.Vehicle.AuthState
	if e.Vehicle.AuthMessage != "" {
		msg += ": " + e.Vehicle.AuthMessage
	}
	return Fact{Record: "last handshake", At: e.Vehicle.AuthAt, Detail: msg}
}

func lastSucceeded(e Evidence, ecuType string) *server.Job {
	for i := len(e.Jobs) - 1; i >= 0; i-- {
		if j := e.Jobs[i]; j.ECUType == ecuType && j.State == server.JobSucceeded {
			return &e.Jobs[i]
		}
	}
	return nil
}

// ecuReportCode is the ECU report refusal a refused check-in's detail
// starts with ("" for another refusal).
func ecuReportCode(detail string) string {
	for _, c := range []string{errcode.ECUReportSignature, errcode.ECUReportReplayed, errcode.ECUUnknown, errcode.ECUMissing} {
		if strings.HasPrefix(detail, c+": ") {
			return c
		}
	}
	return ""
}

// namedUnit is the registered unit a refusal names ("" if none).
func namedUnit(e Evidence, detail string) string {
	for _, u := range e.Vehicle.ECUs {
		if strings.Contains(detail, " "+u.Serial+" ") || strings.Contains(detail, " "+u.Serial+",") || strings.Contains(detail, " "+u.Serial+":") {
			return u.Serial
		}
	}
	return ""
}

func unitOr(serial string) string {
	if serial == "" {
		return "the unit named in the evidence"
	}
	return serial
}

func serialOf(e Evidence, ecuType string) string {
	for _, u := range e.Vehicle.ECUs {
		if u.Type == ecuType {
			return u.Serial
		}
	}
	return ""
}

func ownerName(e Evidence) string {
	if e.Owner != "" {
		return e.Owner
	}
	return "the owner"
}

func orNone(s string) string {
	if strings.TrimSpace(s) == "" {
		return "nothing reported"
	}
	return s
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// unreported is the registered unit the car has reported least recently
// (never, after a wrong re-provision): the one whose registration to fix.
func unreported(e Evidence) string {
	best := ""
	var at time.Time
	for _, u := range e.ECUs {
		if best == "" || u.ReportedAt.Before(at) {
			best, at = u.Serial, u.ReportedAt
		}
	}
	return best
}
