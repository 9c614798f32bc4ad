package agent

import (
	"errors"
	"fmt"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

const (
	// unreachableCycles is how many cycles in a row must miss the server
	// before DTC B15C4 is set: one dropped connection is not a fault.
	unreachableCycles = 3
	// integrityMaxAge is how long a measurement of an active slot is
	// trusted while its file is unchanged.
	integrityMaxAge = 24 * time.Hour
	// benchSignalBars is what the simulated modem reads without a
	// signal:BARS fault.
	benchSignalBars = 4
)

// health is what a cycle found about the vehicle's own units.
type health struct {
	// measured holds the sha256 of active slots that do not match their
	// record, by ECU serial: what the ECU really runs.
	measured map[string]string
	// canLost: the head unit does not answer on the vehicle bus.
	canLost bool
	// bars is the DCM's cellular signal.
	bars int
}

// checkHealth reads the modem, the vehicle bus and the active slots, and
// sets or clears DTCs U1100 and B15A8 (a corrupt DCM slot) accordingly.
// It runs once per cycle, before anything talks to the server.
func (a *Agent) checkHealth() (*health, error) {
	h := &health{measured: map[string]string{}, bars: benchSignalBars, canLost: a.Faults.CANLoss}
	if a.Faults.SignalBars != nil {
		h.bars = *a.Faults.SignalBars
	}
	conn, err := a.V.Connection()
	if err != nil {
		return nil, err
	}
	conn.SignalBars, conn.SignalAt = h.bars, a.now().UTC()
	if err := a.V.SaveConnection(conn); err != nil {
		return nil, err
	}
	if h.canLost {
		err = a.V.SetDTC(vehicle.DTCLostCommHeadUnit, "no answer from the head unit on the vehicle bus", nil)
	} else {
		err = a.V.ClearDTC(vehicle.DTCLostCommHeadUnit)
	}
	if err != nil {
		return nil, err
	}
	for _, e := range a.V.ECUs {
		if e.Addr != "" {
			continue // a secondary watches its own slots
		}
		boot := a.V.ECU(e)
		if a.Faults.CorruptActive && e.Type == dcmType {
			if m, err := boot.CheckActive(integrityMaxAge); err == nil && m.Matches {
				if err := boot.CorruptActive(); err != nil {
					return nil, err
				}
			}
		}
		m, err := boot.CheckActive(integrityMaxAge)
		if err != nil {
			return nil, fmt.Errorf("check the active slot of %s: %w", e.Serial, err)
		}
		if m.Matches {
			continue
		}
		h.measured[e.Serial] = m.SHA256
		a.Log.Warn("active slot does not match its record", "ecu", e.Serial, "slot", m.Slot, "measured", m.SHA256)
		if e.Type == dcmType {
			detail := fmt.Sprintf("active slot %s of %s does not match the image recorded for it (measured sha256 %.12s…)", m.Slot, e.Serial, m.SHA256)
			if err := a.V.SetDTC(vehicle.DTCDCMInternalFault, detail, nil); err != nil {
				return nil, err
			}
		}
	}
	return h, nil
}

// ECU types with faults of their own.
const (
	dcmType      = "dcm"
	headUnitType = "head-unit"
)

// unreachable reports whether the head unit is cut off from the DCM (the
// agent runs on the DCM), so it can be neither reported nor updated.
func (h *health) unreachable(e vehicle.ECUConfig) bool {
	return h != nil && h.canLost && e.Type == headUnitType
}

// running is the sha256 an ECU runs: the recorded one, unless the slot
// was measured to differ.
func (h *health) running(serial, recorded string) string {
	if h != nil {
		if m, ok := h.measured[serial]; ok {
			return m
		}
	}
	return recorded
}

// noteConnection counts cycles that could not reach the server and sets
// B15C4 after several in a row, with the signal at the time; a cycle that
// reached the server clears it (after its check-in reported it).
func (a *Agent) noteConnection(h *health, cycleErr error) {
	conn, err := a.V.Connection()
	if err == nil {
		if errors.Is(cycleErr, client.ErrUnreachable) {
			conn.Failures++
		} else {
			conn.Failures = 0
		}
		err = a.V.SaveConnection(conn)
	}
	switch {
	case err != nil:
	case conn.Failures >= unreachableCycles:
		bars := conn.SignalBars
		err = a.V.SetDTC(vehicle.DTCTelematicsConnection, fmt.Sprintf("%d cycles in a row could not reach the server (signal %d bars): %v", conn.Failures, bars, cycleErr), &bars)
	case conn.Failures == 0:
		err = a.V.ClearDTC(vehicle.DTCTelematicsConnection)
	}
	if err != nil {
		a.Log.Error("record the connection state", "err", err)
	}
}

// healthReport is what the check-in tells the server about the vehicle.
func (a *Agent) healthReport() (dtcs []vehicleauth.DTCEpisode, signal *vehicleauth.SignalReport, err error) {
	hist, err := a.V.DTCHistory()
	if err != nil {
		return nil, nil, err
	}
	for _, d := range hist {
		d.Description, d.Detail = "", truncate(d.Detail, 200) // the server has the words; details are bounded
		dtcs = append(dtcs, d)
	}
	conn, err := a.V.Connection()
	if err == nil && conn.SignalBars >= 0 {
		signal = &vehicleauth.SignalReport{Bars: conn.SignalBars, At: conn.SignalAt}
	}
	return dtcs, signal, err
}
