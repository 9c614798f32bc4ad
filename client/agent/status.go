package agent

import (
	"errors"
	"time"

	"github.com/roadsign/roadsign/client/bootctl"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// Status is the vehicle's state as `status --json` prints it (docs/cli.md).
type Status struct {
	VIN           string                   `json:"vin"`
	ECUs          []ECUStatus              `json:"ecus"`
	Authorization AuthStatus               `json:"authorization"`
	DTCs          []vehicleauth.DTCEpisode `json:"dtcs"`
	// SignalBars is the DCM's last cellular signal reading (-1: none yet).
	SignalBars int `json:"signalBars"`
	// Time is whether the vehicle holds a trusted time, and its floor.
	Time TimeStatus `json:"time"`
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
	st := Status{VIN: v.VIN, DTCs: []vehicleauth.DTCEpisode{}, Time: timeStatus(v)}
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
		b := driver(v, e)
		if r, ok := b.(*remoteECU); ok {
			defer r.Close()
		}
		rec, err := b.LoadRecord()
		if errors.Is(err, errSecondaryUnreachable) {
			st.ECUs = append(st.ECUs, ECUStatus{Type: e.Type, Serial: e.Serial, HardwareID: e.HardwareID, LastResult: err.Error(), Slots: map[string]*SlotStatus{}})
			continue
		}
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
