// Package diagnosis answers "why do connected services fail for this
// car?" from the evidence the server holds: the last handshake, the
// owner link and subscription, the refused requests, the trouble codes and
// signal the car reported, what each ECU runs against what the director
// assigns, the last contact, and the service's own health. The rules are
// one ordered table (rules.go): the first finding is the likeliest cause.
package diagnosis

import (
	"fmt"
	"time"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/server"
)

// Evidence is what the server knows that bears on one vehicle.
type Evidence struct {
	Now     time.Time
	Vehicle server.Vehicle
	// Link is nil when no owner is linked; Owner and Claimant are the
	// names of the linked owner and of a pending claimant.
	Link            *server.Link
	Owner, Claimant string
	// Episodes are the trouble code episodes active or recent.
	Episodes []server.DTCEpisode
	// ECUs are what each ECU runs against what the director assigns.
	ECUs []ECUState
	// Jobs are the vehicle's jobs, oldest first.
	Jobs []server.Job
	// Service is the server's own health checks (those of /status).
	Service []server.HealthCheck
	// OfflineAfter is how long without contact makes a car "offline".
	OfflineAfter time.Duration
}

// ECUState is one ECU: what it runs and what it should.
type ECUState struct {
	Serial, Type, HardwareID string
	InstalledVersion         string
	InstalledSHA256          string
	ReportedAt               time.Time
	// Signed: what it runs is an image the image repository lists for
	// its hardware.
	Signed bool
	// AssignedVersion and AssignedPath are the director's assignment
	// ("" when none); Outdated: the ECU does not run it.
	AssignedVersion, AssignedPath string
	Outdated                      bool
}

// Fact is one piece of evidence behind a finding: which record says it,
// as of when.
type Fact struct {
	Record string    `json:"record"`
	At     time.Time `json:"at,omitzero"`
	Detail string    `json:"detail"`
}

// Action is a fix Roadsign can carry out for a dealer.
type Action struct {
	// Kind is reflash (push a job for ECU), reprovision (register a
	// replaced unit's key), renew (extend the subscription a year) or
	// transfer (accept the pending claim).
	Kind  string `json:"kind"`
	ECU   string `json:"ecu,omitempty"`
	Label string `json:"label"`
}

// Action kinds.
const (
	ActReflash     = "reflash"
	ActReprovision = "reprovision"
	ActRenew       = "renew"
	ActTransfer    = "transfer"
)

// Severities: a problem explains failing services; info is worth knowing
// and nothing to worry about.
const (
	Problem = "problem"
	Info    = "info"
)

// Finding is one cause, with its evidence and fix.
type Finding struct {
	Code     string   `json:"code"`
	Severity string   `json:"severity"`
	Title    string   `json:"title"`
	Evidence []Fact   `json:"evidence"`
	Fix      string   `json:"fix"`
	Actions  []Action `json:"actions,omitempty"`
	// owner is the rule's owner-facing wording.
	owner OwnerStep
}

// Report is a vehicle's diagnosis for dealers and admins.
type Report struct {
	VIN string `json:"vin"`
	At  time.Time
	// Healthy: no finding is a problem.
	Healthy  bool      `json:"healthy"`
	Summary  string    `json:"summary"`
	Findings []Finding `json:"findings"`
}

// OwnerStep is what an owner reads: the cause in plain words, what they
// can do themselves, and whether a dealer must help.
type OwnerStep struct {
	Code      string   `json:"code"`
	Title     string   `json:"title"`
	Steps     []string `json:"steps"`
	SeeDealer bool     `json:"seeDealer"`
}

// OwnerReport is the owner-facing form of a diagnosis: no internals.
type OwnerReport struct {
	VIN     string      `json:"vin"`
	Healthy bool        `json:"healthy"`
	Summary string      `json:"summary"`
	Steps   []OwnerStep `json:"steps"`
}

// Diagnose applies every rule, in order, to the evidence.
func Diagnose(e Evidence) Report {
	r := Report{VIN: e.Vehicle.VIN, At: e.Now, Healthy: true}
	for _, rule := range Rules {
		for _, f := range rule.Match(e) {
			f.Code, f.Severity = rule.Code, rule.Severity
			f.owner = rule.Owner
			f.owner.Code = rule.Code
			if f.Fix == "" {
				f.Fix = rule.Fix
			}
			if rule.Severity == Problem {
				r.Healthy = false
			}
			r.Findings = append(r.Findings, f)
		}
	}
	r.Summary = summary(e, r)
	return r
}

// Problems are the codes of the findings that are problems.
func (r Report) Problems() []string {
	var out []string
	for _, f := range r.Findings {
		if f.Severity == Problem {
			out = append(out, f.Code)
		}
	}
	return out
}

// FirstProblem is the likeliest cause of failing services (nil when the
// car is healthy).
func (r Report) FirstProblem() *Finding {
	for i := range r.Findings {
		if r.Findings[i].Severity == Problem {
			return &r.Findings[i]
		}
	}
	return nil
}

// ForOwner is the report in the owner's words: the problems' steps, in
// order, without records, keys or serials.
func (r Report) ForOwner() OwnerReport {
	o := OwnerReport{VIN: r.VIN, Healthy: r.Healthy, Steps: []OwnerStep{}}
	for _, f := range r.Findings {
		if f.Severity == Problem {
			o.Steps = append(o.Steps, f.owner)
		}
	}
	if r.Healthy {
		o.Summary = "We found nothing wrong: your car's connected services are working. If the screen still shows an error, restart the head unit (hold its power button for 10 seconds)."
	} else {
		o.Summary = fmt.Sprintf("We found %s that stop%s your car's connected services; the likeliest comes first.", count(len(o.Steps), "thing"), map[bool]string{true: "s"}[len(o.Steps) == 1])
	}
	return o
}

func summary(e Evidence, r Report) string {
	v := e.Vehicle
	if !r.Healthy {
		return fmt.Sprintf("%s found; the likeliest cause first: %s.", count(len(r.Problems()), "problem"), r.FirstProblem().Title)
	}
	s := "Connected services work: "
	switch {
	case v.AuthState == errcode.Authorized && !v.AuthExpires.IsZero():
		s += "authorized until " + v.AuthExpires.UTC().Format(time.RFC3339)
	case v.AuthState == errcode.Authorized:
		s += "authorized"
	default:
		s += "no handshake failure on record"
	}
	if !v.LastSeen.IsZero() {
		s += "; last contact " + v.LastSeen.UTC().Format(time.RFC3339)
	}
	if v.SignalBars >= 0 {
		s += fmt.Sprintf("; signal %d bars", v.SignalBars)
	}
	return s + "; no active trouble codes."
}

// count is "1 thing" or "N things".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
