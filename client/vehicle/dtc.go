package vehicle

import (
	"sort"
	"time"
)

// DTCTelematicsConnection is set while the agent cannot reach the server.
const DTCTelematicsConnection = "B15C4"

var dtcDescriptions = map[string]string{
	DTCTelematicsConnection: "telematics connection error",
}

// DTC is a diagnostic trouble code the vehicle has recorded.
type DTC struct {
	Code        string    `json:"code"`
	Description string    `json:"description"`
	Since       time.Time `json:"since"`
	Count       int       `json:"count"`
	Detail      string    `json:"detail,omitempty"`
}

const dtcFile = "dtcs.json"

// DTCs returns the active trouble codes, sorted by code.
func (v *Vehicle) DTCs() ([]DTC, error) {
	var m map[string]DTC
	if err := v.readJSON(dtcFile, &m); err != nil {
		return nil, err
	}
	out := make([]DTC, 0, len(m))
	for _, d := range m {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Code < out[j].Code })
	return out, nil
}

func (v *Vehicle) saveDTCs(list []DTC) error {
	m := map[string]DTC{}
	for _, d := range list {
		m[d.Code] = d
	}
	return v.writeJSON(dtcFile, m)
}

// SetDTC records code (or counts one more occurrence of it).
func (v *Vehicle) SetDTC(code, detail string) error {
	list, err := v.DTCs()
	if err != nil {
		return err
	}
	for i := range list {
		if list[i].Code == code {
			list[i].Count++
			list[i].Detail = detail
			return v.saveDTCs(list)
		}
	}
	list = append(list, DTC{Code: code, Description: dtcDescriptions[code], Since: v.now().UTC(), Count: 1, Detail: detail})
	return v.saveDTCs(list)
}

// ClearDTC removes code if it is set.
func (v *Vehicle) ClearDTC(code string) error {
	list, err := v.DTCs()
	if err != nil {
		return err
	}
	kept := list[:0]
	for _, d := range list {
		if d.Code != code {
			kept = append(kept, d)
		}
	}
	if len(kept) == len(list) {
		return nil
	}
	return v.saveDTCs(kept)
}
