package campaigns

import (
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/server"
)

func TestHaltReason(t *testing.T) {
	cfg := server.CampaignConfig{Waves: []int{10, 50, 100}, MinSamples: 20, FailureThreshold: 0.05}
	tests := []struct {
		name   string
		open   int
		counts []server.WaveCount
		halt   bool
		says   string
	}{
		{"no failure never halts", 1, []server.WaveCount{{Targeted: 100, Succeeded: 100}}, false, ""},
		{"one failure among few finished counts over minSamples", 1,
			[]server.WaveCount{{Targeted: 100, Succeeded: 1, Failed: 1}}, false, ""},
		{"two failures over a sample of 20 is 10%", 1,
			[]server.WaveCount{{Targeted: 100, Succeeded: 1, Failed: 2}}, true, "counted over a sample of 20 that is a failure rate of 10%"},
		{"a small wave: the sample is the whole wave", 1,
			[]server.WaveCount{{Targeted: 4, InProgress: 3, RolledBack: 1}}, true, "1 of 1 finished vehicles failed, rolled back or timed out; counted over a sample of 4"},
		{"declined and taken-over members are not in the sample", 1,
			[]server.WaveCount{{Targeted: 10, Declined: 5, Canceled: 4, TimedOut: 1}}, true, "sample of 1"},
		{"at the threshold it runs on", 1,
			[]server.WaveCount{{Targeted: 100, Succeeded: 95, Failed: 5}}, false, ""},
		{"over the threshold of finished vehicles it halts", 1,
			[]server.WaveCount{{Targeted: 100, Succeeded: 94, Failed: 3, RolledBack: 2, TimedOut: 1}}, true, "6 of 100 finished"},
		{"any open wave can halt, and names itself", 2,
			[]server.WaveCount{{Targeted: 10, Succeeded: 10}, {Targeted: 40, Succeeded: 30, Failed: 10}}, true, "wave 2 (50%)"},
		{"waves not open yet are not counted", 1,
			[]server.WaveCount{{Targeted: 10, Succeeded: 10}, {Targeted: 40, Failed: 40}}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reason, halt := haltReason(cfg, tt.open, tt.counts)
			if halt != tt.halt || !strings.Contains(reason, tt.says) {
				t.Fatalf("haltReason = %v %q, want %v containing %q", halt, reason, tt.halt, tt.says)
			}
		})
	}
}

func TestNextWaveIsCumulative(t *testing.T) {
	tests := []struct {
		name    string
		total   int
		percent int
		counts  []server.WaveCount
		want    int
	}{
		{"first wave of 1% rounds up", 250, 1, nil, 3},
		{"second wave takes what the first did not", 250, 10, []server.WaveCount{{Targeted: 3}}, 22},
		{"last wave takes the rest", 250, 100, []server.WaveCount{{Targeted: 3}, {Targeted: 22}, {Targeted: 100}}, 125},
		{"members that joined the open waves are not taken twice", 10, 50, []server.WaveCount{{Targeted: 6}}, 0},
		{"one vehicle: the first wave takes it", 1, 1, nil, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := nextWave(tt.total, tt.percent, tt.counts); got != tt.want {
				t.Fatalf("nextWave = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestWaveReady(t *testing.T) {
	opened := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	camp := func(open int) server.Campaign {
		return server.Campaign{OpenWaves: open, WaveOpened: []time.Time{opened, opened},
			Config: server.CampaignConfig{Waves: []int{10, 50, 100}, MinSamples: 5, SuccessThreshold: 0.9, Soak: time.Hour}}
	}
	later := opened.Add(2 * time.Hour)
	tests := []struct {
		name  string
		c     server.Campaign
		count server.WaveCount
		now   time.Time
		ready bool
		why   string
	}{
		{"the first wave opens at once", camp(0), server.WaveCount{}, opened, true, ""},
		{"too few finished", camp(1), server.WaveCount{Targeted: 10, Succeeded: 4, InProgress: 6}, later, false, "4 of the 5 finished"},
		{"a small wave needs all of it", camp(1), server.WaveCount{Targeted: 3, Succeeded: 2, Queued: 1}, later, false, "2 of the 3"},
		{"success rate too low", camp(1), server.WaveCount{Targeted: 10, Succeeded: 8, Failed: 2}, later, false, "success rate 80%, below 90%"},
		{"still soaking", camp(1), server.WaveCount{Targeted: 10, Succeeded: 10}, opened.Add(30 * time.Minute), false, "soaking until"},
		{"enough, good and soaked", camp(1), server.WaveCount{Targeted: 10, Succeeded: 10}, later, true, ""},
		{"declined members need no result", camp(1), server.WaveCount{Targeted: 5, Declined: 3, Succeeded: 2}, later, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			counts := []server.WaveCount{tt.count, tt.count}
			ready, why := waveReady(tt.c, counts, tt.now)
			if ready != tt.ready || !strings.Contains(why, tt.why) {
				t.Fatalf("waveReady = %v %q, want %v containing %q", ready, why, tt.ready, tt.why)
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	base := CreateRequest{Name: "fix", ECU: "dcm", Version: "2.0.0"}
	tests := []struct {
		name string
		edit func(*CreateRequest)
		bad  string // "" for valid
	}{
		{"defaults", func(*CreateRequest) {}, ""},
		{"no name", func(r *CreateRequest) { r.Name = " " }, "name"},
		{"unknown ECU", func(r *CreateRequest) { r.ECU = "radio" }, "ecu"},
		{"no version", func(r *CreateRequest) { r.Version = "" }, "version"},
		{"bad VIN", func(r *CreateRequest) { r.Selector.VINs = []string{"nope"} }, "selector.vins"},
		{"waves must rise", func(r *CreateRequest) { r.Waves = []int{10, 5, 100} }, "increasing"},
		{"waves end at 100", func(r *CreateRequest) { r.Waves = []int{10, 50} }, "last wave must be 100"},
		{"negative minSamples", func(r *CreateRequest) { r.MinSamples = -1 }, "minSamples"},
		{"threshold over 1", func(r *CreateRequest) { r.FailureThreshold = f(1.5) }, "fractions"},
		{"bad soak", func(r *CreateRequest) { r.Soak = "soon" }, "soak"},
		{"rate cap", func(r *CreateRequest) { r.MaxPerMinute = -3 }, "maxPerMinute"},
		{"consent", func(r *CreateRequest) { r.Consent = "dealer" }, "consent"},
		{"window zone", func(r *CreateRequest) { r.Window = &server.Window{Start: "01:00", End: "05:00", TZ: "Mars/Olympus"} }, "window"},
		{"window times", func(r *CreateRequest) { r.Window = &server.Window{Start: "1am", End: "05:00", TZ: "UTC"} }, "HH:MM"},
		{"empty window", func(r *CreateRequest) { r.Window = &server.Window{Start: "05:00", End: "05:00", TZ: "UTC"} }, "same"},
		{"a good window", func(r *CreateRequest) { r.Window = &server.Window{Start: "01:00", End: "05:00", TZ: "Europe/Berlin"} }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := base
			tt.edit(&r)
			c, err := r.config()
			if tt.bad == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tt.name == "defaults" && (len(c.Waves) != 4 || c.MinSamples != 20 || c.SuccessThreshold != 0.95 || c.FailureThreshold != 0.05 ||
					c.Soak != time.Hour || c.MaxPerMinute != 1000 || c.Consent != "none") {
					t.Fatalf("defaults: %+v", c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.bad) || server.ErrorOf(err).Code != "invalid_campaign" {
				t.Fatalf("config: %v, want an invalid_campaign error about %q", err, tt.bad)
			}
		})
	}
}
