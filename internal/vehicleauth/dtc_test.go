package vehicleauth_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/vehicleauth"
)

func TestDTCEpisodeJSON(t *testing.T) {
	at := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	bars := 2
	tests := []struct {
		name string
		in   string
		want vehicleauth.DTCEpisode
	}{
		{"as reported", `{"code":"B15C4","firstSeen":"2026-12-01T09:00:00Z","lastSeen":"2026-12-01T09:00:00Z","count":2,"signalBars":2}`,
			vehicleauth.DTCEpisode{Code: "B15C4", FirstSeen: at, LastSeen: at, Count: 2, SignalBars: &bars}},
		{"a vehicle's state from before the shared type (since)", `{"code":"U1100","description":"lost communication","since":"2026-12-01T09:00:00Z","count":1}`,
			vehicleauth.DTCEpisode{Code: "U1100", Description: "lost communication", FirstSeen: at, Count: 1}},
		{"firstSeen wins over since", `{"code":"U1100","firstSeen":"2026-12-01T09:00:00Z","since":"2020-01-01T00:00:00Z","count":1}`,
			vehicleauth.DTCEpisode{Code: "U1100", FirstSeen: at, Count: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got vehicleauth.DTCEpisode
			if err := json.Unmarshal([]byte(tt.in), &got); err != nil {
				t.Fatal(err)
			}
			a, _ := json.Marshal(got)
			b, _ := json.Marshal(tt.want)
			if string(a) != string(b) {
				t.Fatalf("got %s, want %s", a, b)
			}
			if !got.Active() {
				t.Fatal("an episode without clearedAt is active")
			}
		})
	}
	var e vehicleauth.DTCEpisode
	if err := json.Unmarshal([]byte(`{"code":7}`), &e); err == nil {
		t.Fatal("a malformed episode decoded")
	}
}
