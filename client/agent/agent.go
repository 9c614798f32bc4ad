// Package agent runs the vehicle's update cycle: recover from the journal,
// refresh and verify both repositories (image and director), check the
// director's assignment against the image repository, stream and verify
// every image into its inactive slot, then switch, trial-boot and commit
// each ECU (or roll it back), reporting job progress and checking in a
// signed manifest.
//
// One file per stage: cycle.go (an online cycle, a USB install,
// reauthorization), install.go (the stages in order), plan.go (the
// director's assignment checked against the image repository), fetch.go
// (streaming into a slot, job events), checkin.go, status.go; source.go is
// where bytes come from (the server or a USB bundle, one interface).
package agent

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/client/fault"
	"github.com/roadsign/roadsign/client/tufclient"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/progress"
)

// Agent updates one vehicle.
type Agent struct {
	V      *vehicle.Vehicle
	Client *http.Client
	// API talks to the server as this vehicle (job events, check-in).
	API *api.Client
	Log *slog.Logger
	// Progress receives progress bars (drawn only on a terminal).
	Progress io.Writer
	Faults   fault.Set
	Policy   download.Policy
	// Now is the vehicle's clock (nil: time.Now): its RTC until a time
	// attestation gives the cycle a trusted one (clock.go).
	Now func() time.Time
	// trustedClock says Now is the attested time; rtc is the vehicle's
	// own clock once Now is replaced.
	trustedClock bool
	rtc          func() time.Time
	// health is what this cycle found about the vehicle's units.
	health *health
	// jobs are this cycle's reports on update-set jobs.
	jobs *jobLog
	// remotes are this cycle's connections to secondary ECUs.
	remotes map[string]*remoteECU
	// trusted is this cycle's verified metadata, which secondaries are
	// offered to verify for themselves.
	trusted struct{ images, directed *tufclient.Trusted }
}

// boot is how this cycle reaches ECU e: its own slots, or the secondary
// over the vehicle network (one connection per cycle).
func (a *Agent) boot(e vehicle.ECUConfig) ecuDriver {
	if e.Addr == "" {
		return a.V.ECU(e)
	}
	if r, ok := a.remotes[e.Serial]; ok {
		return r
	}
	if a.remotes == nil {
		a.remotes = map[string]*remoteECU{}
	}
	r := &remoteECU{ecu: e}
	a.remotes[e.Serial] = r
	return r
}

// closeRemotes ends this cycle's connections to secondaries.
func (a *Agent) closeRemotes() {
	for _, r := range a.remotes {
		r.Close()
	}
	a.remotes = nil
}

// Outcomes of one ECU in a cycle.
const (
	UpToDate   = "up-to-date"
	Installed  = "installed"
	RolledBack = "rolled-back"
	Refused    = "refused"
	Failed     = "failed"
	Canceled   = "canceled"
	// Waiting: assigned, to install in its maintenance window.
	Waiting = "waiting"
)

// ECUResult is what happened to one ECU.
type ECUResult struct {
	Type    string `json:"type"`
	Serial  string `json:"serial"`
	From    string `json:"from"`
	To      string `json:"to,omitempty"`
	Target  string `json:"target,omitempty"`
	JobID   string `json:"jobId,omitempty"`
	Outcome string `json:"outcome"`
	Detail  string `json:"detail,omitempty"`
	// Transferred is how many image bytes were downloaded in this cycle.
	Transferred int64 `json:"transferred,omitempty"`
	// StreamSeconds is how long the image took from the first byte asked
	// for to a verified slot: download, sha256 and slot write, fsynced.
	StreamSeconds float64 `json:"streamSeconds,omitempty"`
	// Delta says the slot was rebuilt from a delta; DeltaFallback, why
	// an offered delta was given up for the full image.
	Delta         bool   `json:"delta"`
	DeltaFallback string `json:"deltaFallback,omitempty"`
}

// Report is the outcome of one update cycle.
type Report struct {
	// Recovery says what was finished or rolled back from the journal
	// before the cycle (after a power loss).
	Recovery []RecoveryNote `json:"recovery,omitempty"`
	ECUs     []ECUResult    `json:"ecus"`
}

// RecoveryNote is what recovery did on one ECU.
type RecoveryNote struct {
	Serial string `json:"serial"`
	What   string `json:"what"`
}

func (a *Agent) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// logErr logs a failure to record something that does not stop the cycle.
func (a *Agent) logErr(what string, err error) {
	if err != nil {
		a.Log.Error(what, "err", err)
	}
}

// truncate cuts s to at most n bytes, on a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// say tells a person at a terminal what is happening (logs get slog).
func (a *Agent) say(format string, args ...any) {
	if progress.IsTerminal(a.Progress) {
		fmt.Fprintf(a.Progress, format+"\n", args...)
	}
}

func (j *jobProgress) Add(n int64) {
	j.bar.Add(n)
	j.done += n
	if pct := int(100 * j.done / max(j.total, 1)); pct >= j.next && j.next < 100 {
		j.report(pct)
		for j.next <= pct {
			j.next += 25
		}
	}
}
