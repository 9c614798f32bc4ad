package diagnosis

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/director"
)

// Store is what the diagnosis reads and records.
type Store interface {
	Vehicle(ctx context.Context, vin string) (server.Vehicle, error)
	Link(ctx context.Context, vin string) (server.Link, error)
	AccountByID(ctx context.Context, id string) (server.Account, error)
	DTCEpisodes(ctx context.Context, vin string, since time.Time) ([]server.DTCEpisode, error)
	JobsByVIN(ctx context.Context, vin string) ([]server.Job, error)
	RecordFindings(ctx context.Context, vin string, codes []string, at time.Time) (opened, resolved []string, err error)
	Findings(ctx context.Context, vin string, limit int) ([]server.Finding, error)
	FindingCounts(ctx context.Context, since time.Time) ([]server.FindingCount, error)
}

// Director says what each ECU must run.
type Director interface {
	Assignment(ctx context.Context, v server.Vehicle) ([]director.Assigned, error)
}

// Images is the image repository.
type Images interface {
	CurrentTargets(ctx context.Context) (map[string]*metadata.TargetFiles, int64, error)
}

// Service diagnoses vehicles and records what it finds.
type Service struct {
	store    Store
	director Director
	images   Images
	// Status returns the service's own health checks.
	status func(ctx context.Context) []server.HealthCheck
	now    func() time.Time
	log    *slog.Logger
	// offlineAfter is how long without contact makes a car offline.
	offlineAfter time.Duration
	opened       *prometheus.CounterVec
	resolved     *prometheus.CounterVec
	notify       server.Notify
}

// Config is what the diagnosis is built from.
type Config struct {
	Store    Store
	Director Director
	Images   Images
	// Status returns the service's own health checks.
	Status func(ctx context.Context) []server.HealthCheck
	// OfflineAfter (72 h) is how long without contact makes a car offline.
	OfflineAfter time.Duration
	Now          func() time.Time
	Log          *slog.Logger
	// Notify hears of findings raised (diagnosis.finding_raised).
	Notify server.Notify
	// Metrics (may be nil) gets the findings counters.
	Metrics prometheus.Registerer
}

// New returns the service, or an error naming what cfg lacks.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.Director == nil || cfg.Images == nil || cfg.Status == nil || cfg.Now == nil || cfg.Log == nil {
		return nil, errors.New("diagnosis: store, director, image repository, status, clock and logger are required")
	}
	if cfg.OfflineAfter <= 0 {
		cfg.OfflineAfter = 72 * time.Hour
	}
	reg := cfg.Metrics
	s := &Service{store: cfg.Store, director: cfg.Director, images: cfg.Images, status: cfg.Status, now: cfg.Now, log: cfg.Log, offlineAfter: cfg.OfflineAfter, notify: cfg.Notify,
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "roadsign_diagnosis_findings_opened_total",
			Help: "Diagnosis findings (problems) opened, by code."}, []string{"code"}),
		resolved: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "roadsign_diagnosis_findings_resolved_total",
			Help: "Diagnosis findings (problems) resolved, by code."}, []string{"code"}),
	}
	if reg != nil {
		reg.MustRegister(s.opened, s.resolved)
	}
	return s, nil
}

// Diagnose gathers the evidence for vin, applies the rules, and records
// the problems found (opening new findings, resolving gone ones).
func (s *Service) Diagnose(ctx context.Context, vin string) (Report, error) {
	e, err := s.Evidence(ctx, vin)
	if err != nil {
		return Report{}, err
	}
	r := Diagnose(e)
	opened, resolved, err := s.store.RecordFindings(ctx, vin, r.Problems(), e.Now)
	if err != nil {
		return r, err
	}
	for _, c := range opened {
		s.opened.WithLabelValues(c).Inc()
		f := FindingRaised{VIN: vin, Code: c}
		for _, rf := range r.Findings {
			if rf.Code == c {
				f.Title, f.Fix = rf.Title, rf.Fix
			}
		}
		s.notify.Emit(ctx, "diagnosis.finding_raised", f)
	}
	for _, c := range resolved {
		s.resolved.WithLabelValues(c).Inc()
	}
	return r, nil
}

// Record diagnoses vin for the record only (after a handshake); a failure
// is logged, never passed on.
func (s *Service) Record(ctx context.Context, vin string) {
	if _, err := s.Diagnose(ctx, vin); err != nil {
		s.log.Warn("diagnosis after handshake", "vin", vin, "err", err)
	}
}

// Evidence gathers what the server knows about vin.
func (s *Service) Evidence(ctx context.Context, vin string) (Evidence, error) {
	now := s.now().UTC()
	v, err := s.store.Vehicle(ctx, vin)
	if err != nil {
		return Evidence{}, err
	}
	e := Evidence{Now: now, Vehicle: v, OfflineAfter: s.offlineAfter}
	l, err := s.store.Link(ctx, vin)
	switch {
	case errors.Is(err, server.ErrNotFound):
	case err != nil:
		return e, err
	default:
		e.Link = &l
		e.Owner = s.accountName(ctx, l.OwnerID)
		if l.PendingOwnerID != "" {
			e.Claimant = s.accountName(ctx, l.PendingOwnerID)
		}
	}
	if e.Episodes, err = s.store.DTCEpisodes(ctx, vin, now.Add(-30*24*time.Hour)); err != nil {
		return e, err
	}
	if e.Jobs, err = s.store.JobsByVIN(ctx, vin); err != nil {
		return e, err
	}
	if e.ECUs, err = s.ecuStates(ctx, v); err != nil {
		return e, err
	}
	if s.status != nil {
		e.Service = s.status(ctx)
	}
	return e, nil
}

func (s *Service) accountName(ctx context.Context, id string) string {
	if a, err := s.store.AccountByID(ctx, id); err == nil {
		return a.Name
	}
	return "account " + id
}

// ecuStates compares what each ECU reported with the image repository and
// the director's assignment.
func (s *Service) ecuStates(ctx context.Context, v server.Vehicle) ([]ECUState, error) {
	targets, _, err := s.images.CurrentTargets(ctx)
	if err != nil {
		return nil, fmt.Errorf("image repository: %w", err)
	}
	assigned, err := s.director.Assignment(ctx, v)
	if err != nil {
		return nil, fmt.Errorf("director assignment: %w", err)
	}
	bySerial := map[string]director.Assigned{}
	for _, a := range assigned {
		bySerial[a.Serial] = a
	}
	var out []ECUState
	for _, u := range v.ECUs {
		st := ECUState{Serial: u.Serial, Type: u.Type, HardwareID: u.HardwareID, InstalledVersion: u.InstalledVersion,
			InstalledSHA256: u.InstalledSHA256, ReportedAt: u.ReportedAt}
		for _, tf := range targets {
			if c, err := meta.TargetCustom(tf); err == nil && c.Supports(u.Type, u.HardwareID) && hex.EncodeToString(tf.Hashes["sha256"]) == u.InstalledSHA256 {
				st.Signed = true
				break
			}
		}
		if a, ok := bySerial[u.Serial]; ok && u.InstalledSHA256 != "" {
			st.AssignedVersion, st.AssignedPath = a.Image.Version, a.Path
			st.Outdated = hex.EncodeToString(a.Target.Hashes["sha256"]) != u.InstalledSHA256
		}
		out = append(out, st)
	}
	return out, nil
}

// History is a vehicle's recorded findings, newest first.
func (s *Service) History(ctx context.Context, vin string) ([]server.Finding, error) {
	return s.store.Findings(ctx, vin, 100)
}

// Counts counts findings across the fleet: open now, resolved in the last
// 30 days.
func (s *Service) Counts(ctx context.Context) ([]server.FindingCount, error) {
	return s.store.FindingCounts(ctx, s.now().Add(-30*24*time.Hour))
}

// FindingRaised is the data of a diagnosis.finding_raised event.
type FindingRaised struct {
	VIN   string `json:"vin"`
	Code  string `json:"code"`
	Title string `json:"title,omitempty"`
	Fix   string `json:"fix,omitempty"`
}
