package diagnosis

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/server"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// healthy is a car that works: linked, subscribed, authorized, checked in
// a minute ago, good signal, running what it is assigned.
func healthy() Evidence {
	return Evidence{
		Now: t0, OfflineAfter: 72 * time.Hour,
		Vehicle: server.Vehicle{VIN: "VIN1", CreatedAt: t0.Add(-30 * 24 * time.Hour), LastSeen: t0.Add(-time.Minute),
			AuthState: "authorized", AuthAt: t0.Add(-time.Minute), AuthExpires: t0.Add(time.Hour), SignalBars: 4,
			ECUs: []server.ECU{{Serial: "HU1", Type: "head-unit"}, {Serial: "DCM1", Type: "dcm"}}},
		Link:  &server.Link{VIN: "VIN1", OwnerID: "o1", LinkedAt: t0.Add(-20 * 24 * time.Hour), SubscriptionEnds: t0.Add(300 * 24 * time.Hour)},
		Owner: "alice",
		ECUs: []ECUState{
			{Serial: "HU1", Type: "head-unit", InstalledVersion: "2.0.0", InstalledSHA256: "aa", Signed: true},
			{Serial: "DCM1", Type: "dcm", InstalledVersion: "2.0.0", InstalledSHA256: "bb", Signed: true},
		},
		Service: []server.HealthCheck{{Name: "State store", OK: true}, {Name: "Blob store", OK: true}},
	}
}

// episode is an episode of code; bars < 0: signal unknown.
func episode(code string, bars int, active bool) server.DTCEpisode {
	ep := server.DTCEpisode{Code: code, FirstSeen: t0.Add(-time.Hour), LastSeen: t0.Add(-10 * time.Minute), Count: 3, ReportedAt: t0.Add(-5 * time.Minute)}
	if bars >= 0 {
		ep.SignalBars = &bars
	}
	if !active {
		ep.ClearedAt = t0.Add(-2 * time.Minute)
	}
	return ep
}

// TestEachRule: every rule, from the evidence that produces it, comes
// first with its fix (and its one-click action where there is one).
func TestEachRule(t *testing.T) {
	tests := []struct {
		code   string
		action string
		change func(e *Evidence)
	}{
		{"service_unhealthy", "", func(e *Evidence) {
			e.Service[1] = server.HealthCheck{Name: "Blob store", Detail: "unreachable"}
		}},
		{"unknown_vehicle_key", ActReprovision, func(e *Evidence) {
			e.Vehicle.RequestFaults = server.RequestFaults{BadSignatureAt: t0.Add(-time.Second), BadSignatureCount: 7}
		}},
		{"checkin_refused", ActReprovision, func(e *Evidence) {
			e.Vehicle.RequestFaults = server.RequestFaults{CheckInRefusedAt: t0.Add(-time.Second), CheckInRefused: "the car reports units HU1, DCM1"}
			e.ECUs[0].ReportedAt = t0.Add(-time.Hour)
		}},
		{"ecu_report_refused", ActReprovision, func(e *Evidence) {
			e.Vehicle.RequestFaults = server.RequestFaults{CheckInRefusedAt: t0.Add(-time.Second),
				CheckInRefused: "ecu_report_signature: the report of dcm DCM1 is not signed by its registered key: a forged report, or a unit replaced without re-provisioning"}
		}},
		{"ecu_refused_image", "", func(e *Evidence) {
			e.Vehicle.ECUs[1].Attack, e.Vehicle.ECUs[1].AttackAt = "refused dcm/evil.img: not signed by the director for DCM1", t0.Add(-time.Hour)
		}},
		{"time_untrusted", "", func(e *Evidence) {
			e.Vehicle.TimeUntrusted = "time attestation answers another nonce (replayed)"
		}},
		{"clock_skew", "", func(e *Evidence) {
			e.Vehicle.RequestFaults = server.RequestFaults{ClockSkewAt: t0.Add(-time.Second), ClockSkew: -15 * time.Minute}
		}},
		{"vehicle_offline", "", func(e *Evidence) {
			e.Vehicle.LastSeen, e.Vehicle.AuthAt = t0.Add(-5*24*time.Hour), t0.Add(-5*24*time.Hour)
		}},
		{"no_signal", "", func(e *Evidence) { e.Episodes = []server.DTCEpisode{episode("B15C4", 0, true)} }},
		{"telematics_connection", ActReflash, func(e *Evidence) { e.Episodes = []server.DTCEpisode{episode("B15C4", 4, true)} }},
		{"subscription_expired", ActRenew, func(e *Evidence) {
			e.Link.SubscriptionEnds = t0.Add(-24 * time.Hour)
			e.Vehicle.AuthState = "subscription_expired"
		}},
		{"linked_to_previous_owner", ActTransfer, func(e *Evidence) {
			e.Link.PendingOwnerID, e.Link.PendingSince, e.Claimant = "o2", t0.Add(-time.Hour), "bob"
		}},
		{"vehicle_not_linked", "", func(e *Evidence) { e.Link, e.Vehicle.AuthState = nil, "vehicle_not_linked" }},
		{"lost_communication", "", func(e *Evidence) { e.Episodes = []server.DTCEpisode{episode("U1100", -1, true)} }},
		{"dcm_fault", ActReflash, func(e *Evidence) { e.Episodes = []server.DTCEpisode{episode("B15A8", -1, true)} }},
		{"firmware_unsigned", ActReflash, func(e *Evidence) { e.ECUs[1].Signed, e.ECUs[1].InstalledSHA256 = false, "cc" }},
		{"firmware_outdated", ActReflash, func(e *Evidence) {
			e.ECUs[1].InstalledVersion, e.ECUs[1].AssignedVersion, e.ECUs[1].Outdated = "1.0.0", "2.0.0", true
			e.Vehicle.AuthState = "firmware_not_authorized"
		}},
		{"handshake_failed", "", func(e *Evidence) { e.Vehicle.AuthState = "invalid_challenge" }},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			e := healthy()
			tt.change(&e)
			r := Diagnose(e)
			if r.Healthy || len(r.Findings) == 0 || r.Findings[0].Code != tt.code {
				t.Fatalf("first finding %+v, want %s", r.Findings, tt.code)
			}
			f := r.Findings[0]
			if f.Fix == "" || len(f.Evidence) == 0 || f.Evidence[0].Detail == "" {
				t.Errorf("%s has no fix or no evidence: %+v", tt.code, f)
			}
			if got := actionKinds(f); tt.action != "" && !slices.Contains(got, tt.action) {
				t.Errorf("%s actions %v, want %s", tt.code, got, tt.action)
			}
			o := r.ForOwner()
			if o.Healthy || len(o.Steps) == 0 || o.Steps[0].Code != tt.code || len(o.Steps[0].Steps) == 0 {
				t.Errorf("owner form: %+v", o)
			}
		})
	}
}

func actionKinds(f Finding) []string {
	var out []string
	for _, a := range f.Actions {
		out = append(out, a.Kind)
	}
	return out
}

// TestHealthyCarSaysSo: nothing alarming for a working car; a pending
// update and a recovered connection loss are information only.
func TestHealthyCarSaysSo(t *testing.T) {
	r := Diagnose(healthy())
	if !r.Healthy || len(r.Findings) != 0 || !strings.Contains(r.Summary, "Connected services work") {
		t.Fatalf("healthy car: %+v", r)
	}
	e := healthy()
	e.ECUs[0].AssignedVersion, e.ECUs[0].Outdated = "2.1.0", true
	e.Episodes = []server.DTCEpisode{episode("B15C4", 0, false)}
	r = Diagnose(e)
	if !r.Healthy || len(r.Findings) != 2 || r.Findings[0].Severity != Info || r.Findings[1].Severity != Info {
		t.Fatalf("info only: %+v", r)
	}
	if o := r.ForOwner(); !o.Healthy || len(o.Steps) != 0 {
		t.Fatalf("the owner sees nothing to do: %+v", o)
	}
}

// TestOrder: a replaced DCM explains everything after it; a B15A8 that
// comes back after a reflash says to replace the unit.
func TestOrder(t *testing.T) {
	e := healthy()
	e.Vehicle.RequestFaults = server.RequestFaults{BadSignatureAt: t0, BadSignatureCount: 2}
	e.Link.SubscriptionEnds = t0.Add(-time.Hour)
	r := Diagnose(e)
	if got := r.Problems(); !slices.Equal(got, []string{"unknown_vehicle_key", "subscription_expired"}) {
		t.Fatalf("order: %v", got)
	}
	e = healthy()
	e.Jobs = []server.Job{{ID: "j1", ECUType: "dcm", State: server.JobSucceeded, Version: "2.0.0", UpdatedAt: t0.Add(-2 * time.Hour)}}
	e.Episodes = []server.DTCEpisode{episode("B15A8", -1, true)}
	f := Diagnose(e).Findings[0]
	if f.Code != "dcm_fault" || !strings.Contains(f.Fix, "replace the DCM") || actionKinds(f)[0] != ActReprovision {
		t.Fatalf("recurring B15A8: %+v", f)
	}
	// Bad signatures older than the car's last accepted check-in are
	// history, not a finding.
	e = healthy()
	e.Vehicle.RequestFaults = server.RequestFaults{BadSignatureAt: t0.Add(-time.Hour), BadSignatureCount: 1}
	if r := Diagnose(e); !r.Healthy {
		t.Fatalf("old bad signatures: %+v", r.Findings)
	}
}
