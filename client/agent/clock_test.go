package agent_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/agent"
	"github.com/roadsign/roadsign/client/fault"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/testsupport"
)

// rtc sets the car's clock (its RTC) to at, running on from there.
func (c *car) rtc(at time.Time) {
	start := time.Now()
	clock := func() time.Time { return at.Add(time.Since(start)) }
	c.a.Now, c.a.API.Now = clock, clock
}

// TestSecureTimeWrongRTC: whatever the RTC reads (1970, five years
// ahead), one attestation gives the cycle a trusted time: the metadata's
// expiry is judged by it and the update installs.
func TestSecureTimeWrongRTC(t *testing.T) {
	for name, at := range map[string]time.Time{
		"RTC in 1970":          time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC),
		"RTC five years ahead": time.Now().AddDate(5, 0, 0),
	} {
		t.Run(name, func(t *testing.T) {
			c := newCar(t)
			c.rtc(at)
			c.u.Direct("", testsupport.Assign{Path: "dcm-2.0.bin", ECUs: map[string]string{"DCM1": "DCM-A"}})
			c.u.Publish()
			if _, err := c.a.Update(context.Background()); err != nil || c.running(t)["DCM1"] != "2.0.0" {
				t.Fatalf("update: %v, runs %v", err, c.running(t))
			}
			st, err := agent.VehicleStatus(c.v)
			if err != nil {
				t.Fatal(err)
			}
			if st.Time.State != "trusted" || time.Since(st.Time.Floor).Abs() > time.Minute {
				t.Fatalf("time after the update: %+v", st.Time)
			}
		})
	}
}

// TestSecureTimeRefusals: an attestation replayed from another request
// (wrong nonce), one not signed by the director root's time key, and one
// older than a time the car already trusted each leave the car without a
// trusted time: nothing installs, and its check-in reports why.
func TestSecureTimeRefusals(t *testing.T) {
	for _, tc := range []struct{ fault, says string }{
		{"wrong-nonce", "another nonce"},
		{"bad-sig", "not signed by the director root's time key"},
		{"stale", "before"},
	} {
		t.Run(tc.fault, func(t *testing.T) {
			c := newCar(t)
			if _, err := c.a.Update(context.Background()); err != nil { // a first trusted time: the floor
				t.Fatal(err)
			}
			c.u.Direct("", testsupport.Assign{Path: "dcm-2.0.bin", ECUs: map[string]string{"DCM1": "DCM-A"}})
			c.u.Publish()
			f, err := fault.Parse("attestation=" + tc.fault)
			if err != nil {
				t.Fatal(err)
			}
			c.a.Faults = f
			_, err = c.a.Update(context.Background())
			if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), agent.TimeUntrusted) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("update: %v; want a %s refusal naming %q", err, agent.TimeUntrusted, tc.says)
			}
			if c.running(t)["DCM1"] != "1.0.0" {
				t.Fatalf("installed without a trusted time: %v", c.running(t))
			}
			if m := c.u.LastManifest(); !strings.Contains(m.TimeUntrusted, tc.says) {
				t.Fatalf("the check-in did not report the untrusted time: %q", m.TimeUntrusted)
			}
			c.a.Faults = fault.Set{}
			if _, err := c.a.Update(context.Background()); err != nil || c.running(t)["DCM1"] != "2.0.0" {
				t.Fatalf("with a good attestation again: %v, runs %v", err, c.running(t))
			}
		})
	}
}

// TestSecureTimeFreeze: metadata that has expired, frozen by an attacker
// who keeps serving it while the car's RTC is set back (so that by the
// RTC it looks current), is refused: the car judges expiry by the time
// the server attested.
func TestSecureTimeFreeze(t *testing.T) {
	c := newCar(t)
	c.u.ExpireAt(time.Now().Add(2 * time.Second))
	c.u.Publish()
	if _, err := c.a.Update(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(time.Now().Add(2 * time.Second).Truncate(time.Second).Add(time.Second)))
	c.rtc(time.Now().Add(-time.Hour))
	_, err := c.a.Update(context.Background())
	if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("frozen metadata with the RTC set back: %v, want refused as expired", err)
	}
}

// TestSecureTimeJump: an attestation more than ten years past the last
// time the car trusted is refused while its director root is the one it
// had then.
func TestSecureTimeJump(t *testing.T) {
	c := newCar(t)
	old := vehicle.TimeState{Floor: time.Now().AddDate(-20, 0, 0), RootVersion: 1}
	if err := c.v.SaveTimeState(old); err != nil {
		t.Fatal(err)
	}
	_, err := c.a.Update(context.Background())
	if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "ten years") {
		t.Fatalf("update: %v, want a refusal of the jump", err)
	}
}
