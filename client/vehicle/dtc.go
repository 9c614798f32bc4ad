package vehicle

import (
	"sort"
	"time"

	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// The diagnostic trouble codes the agent sets.
const (
	// DTCTelematicsConnection: the server could not be reached for
	// several cycles in a row.
	DTCTelematicsConnection = "B15C4"
	// DTCDCMInternalFault: a DCM image failed its boot check, or the DCM's
	// active slot no longer matches its recorded sha256.
	DTCDCMInternalFault = "B15A8"
	// DTCLostCommHeadUnit: the head unit does not answer on the vehicle
	// bus (lost communication between head unit and DCM).
	DTCLostCommHeadUnit = "U1100"
)

var dtcDescriptions = map[string]string{
	DTCTelematicsConnection: "telematics connection error",
	DTCDCMInternalFault:     "DCM internal fault",
	DTCLostCommHeadUnit:     "lost communication with the head unit",
}

// dtcHistory is how long a cleared code is kept (and reported).
const dtcHistory = 30 * 24 * time.Hour

const dtcFile = "dtcs.json"

// DTCs returns the active trouble codes, sorted by code.
func (v *Vehicle) DTCs() ([]vehicleauth.DTCEpisode, error) {
	all, err := v.DTCHistory()
	active := all[:0]
	for _, d := range all {
		if d.Active() {
			active = append(active, d)
		}
	}
	return active, err
}

// DTCHistory returns every code's last episode, active or cleared in the
// last 30 days, sorted by code.
func (v *Vehicle) DTCHistory() ([]vehicleauth.DTCEpisode, error) {
	var m map[string]vehicleauth.DTCEpisode
	if err := v.readJSON(dtcFile, &m); err != nil {
		return nil, err
	}
	out := make([]vehicleauth.DTCEpisode, 0, len(m))
	for _, d := range m {
		if d.Active() || v.now().Sub(d.ClearedAt) < dtcHistory {
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Code < out[j].Code })
	return out, nil
}

func (v *Vehicle) saveDTCs(list []vehicleauth.DTCEpisode) error {
	m := map[string]vehicleauth.DTCEpisode{}
	for _, d := range list {
		m[d.Code] = d
	}
	return v.writeJSON(dtcFile, m)
}

// SetDTC records code (or one more occurrence of it) with what was seen;
// signalBars, if not nil, is the cellular signal at the time.
func (v *Vehicle) SetDTC(code, detail string, signalBars *int) error {
	list, err := v.DTCHistory()
	if err != nil {
		return err
	}
	now := v.now().UTC()
	i := sort.Search(len(list), func(i int) bool { return list[i].Code >= code })
	if i == len(list) || list[i].Code != code {
		list = append(list, vehicleauth.DTCEpisode{Code: code})
		i = len(list) - 1
	}
	d := &list[i]
	if !d.Active() || d.FirstSeen.IsZero() {
		*d = vehicleauth.DTCEpisode{Code: code, Description: dtcDescriptions[code], FirstSeen: now}
	}
	d.Count++
	d.LastSeen, d.Detail = now, detail
	if signalBars != nil && (d.SignalBars == nil || *signalBars < *d.SignalBars) {
		bars := *signalBars
		d.SignalBars = &bars
	}
	return v.saveDTCs(list)
}

// ClearDTC clears code if it is set; its episode stays in the history.
func (v *Vehicle) ClearDTC(code string) error {
	list, err := v.DTCHistory()
	if err != nil {
		return err
	}
	for i := range list {
		if list[i].Code == code && list[i].Active() {
			list[i].ClearedAt = v.now().UTC()
			return v.saveDTCs(list)
		}
	}
	return nil
}

// Connection is the vehicle's link to the server, as the DCM sees it.
type Connection struct {
	// Failures is how many cycles in a row could not reach the server.
	Failures int `json:"failures"`
	// SignalBars is the DCM's last cellular signal reading, 0 to 5.
	SignalBars int       `json:"signalBars"`
	SignalAt   time.Time `json:"signalAt,omitzero"`
}

// Connection returns the link's state.
func (v *Vehicle) Connection() (Connection, error) {
	c := Connection{SignalBars: -1}
	return c, v.readJSON("connection.json", &c)
}

// SaveConnection records the link's state.
func (v *Vehicle) SaveConnection(c Connection) error { return v.writeJSON("connection.json", c) }
