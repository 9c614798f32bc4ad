package campaigns

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/auditlog"
)

// maxBatch bounds the jobs one tick assigns per campaign.
const maxBatch = 500

// Tick advances every running campaign once. It runs on the elected
// replica; every write is fenced by f, and a fenced write ends the tick
// (this replica no longer leads).
func (s *Service) Tick(ctx context.Context, f server.Fence) error {
	cs, err := s.store.Campaigns(ctx, server.CampaignRunning)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range cs {
		if err := s.advance(ctx, f, c); errors.Is(err, server.ErrFenced) {
			return err
		} else if err != nil {
			errs = append(errs, fmt.Errorf("campaign %s: %w", c.ID, err))
		}
	}
	return errors.Join(errs...)
}

func finished(w server.WaveCount) int { return w.Succeeded + w.Failed + w.RolledBack + w.TimedOut }
func failures(w server.WaveCount) int { return w.Failed + w.RolledBack + w.TimedOut }

// eligible are the wave's members that count: not declined (consent) and
// not taken over by a dealer's job.
func eligible(w server.WaveCount) int { return w.Targeted - w.Declined - w.Canceled }

// advance: halt on failures; else open the next wave when the last one
// qualifies, or complete the campaign; then assign within the rate cap.
func (s *Service) advance(ctx context.Context, f server.Fence, c server.Campaign) error {
	now := s.now().UTC()
	cfg := c.Config
	counts, total, err := s.store.CampaignCounts(ctx, c.ID)
	if err != nil {
		return err
	}
	for len(counts) < c.OpenWaves {
		counts = append(counts, server.WaveCount{Wave: len(counts)})
	}
	s.m.observe(c.ID, counts)

	if reason, halt := haltReason(cfg, c.OpenWaves, counts); halt {
		return s.end(ctx, f, c, server.CampaignHalted, reason, now)
	}

	if c.OpenWaves < len(cfg.Waves) {
		if ready, _ := waveReady(c, counts, now); ready {
			take := nextWave(total, cfg.Waves[c.OpenWaves], counts)
			err := s.store.OpenCampaignWave(ctx, f, c.ID, c.OpenWaves, take, cfg.Consent == "owner", now)
			if errors.Is(err, server.ErrConflict) {
				return nil // opened meanwhile, or no longer running: look again next tick
			}
			if err != nil {
				return err
			}
			c.OpenWaves++
			c.WaveOpened = append(c.WaveOpened, now)
			s.m.waves.WithLabelValues(c.ID).Inc()
			if err := auditlog.Record(ctx, s.store, now, server.System, "campaign.wave_open", c.ID,
				fmt.Sprintf("wave %d (%d%%): %d more vehicles", c.OpenWaves, cfg.Waves[c.OpenWaves-1], take)); err != nil {
				return err
			}
			s.notify.Emit(ctx, "campaign.wave_opened", CampaignEvent{Campaign: c.ID, Name: c.Name, ECU: cfg.ECU, Version: cfg.Version,
				State: c.State, Wave: c.OpenWaves, Percent: cfg.Waves[c.OpenWaves-1], Added: take})
		}
	} else {
		done := true
		var total server.WaveCount
		for _, w := range counts {
			done = done && w.Waiting+w.Queued+w.InProgress == 0
			total.Succeeded += w.Succeeded
			total.Failed += failures(w)
			total.Declined += w.Declined + w.Canceled
		}
		if done {
			return s.end(ctx, f, c, server.CampaignCompleted, fmt.Sprintf("every wave done: %d succeeded, %d failed, rolled back or timed out, %d declined or taken over",
				total.Succeeded, total.Failed, total.Declined), now)
		}
	}
	return s.assign(ctx, f, c, now)
}

// haltReason says whether an open wave failed too often, and why. A
// wave's failure rate is over its finished vehicles, but never over fewer
// than minSamples (or the whole wave, if smaller): the first failure of a
// large wave does not halt it alone.
func haltReason(cfg server.CampaignConfig, openWaves int, counts []server.WaveCount) (string, bool) {
	for i := range openWaves {
		w := counts[i]
		base := max(finished(w), min(cfg.MinSamples, eligible(w)))
		if failures(w) > 0 && float64(failures(w))/float64(base) > cfg.FailureThreshold {
			return fmt.Sprintf("wave %d (%d%%): %d of %d finished vehicles failed, rolled back or timed out; counted over a sample of %d that is a failure rate of %s, above the %s threshold",
				i+1, cfg.Waves[i], failures(w), finished(w), base, rate(float64(failures(w))/float64(base)), rate(cfg.FailureThreshold)), true
		}
	}
	return "", false
}

// nextWave is how many more members the next wave takes: waves are
// cumulative percentages of all total members, rounded up, less those in
// the waves already open.
func nextWave(total, percent int, counts []server.WaveCount) int {
	inWaves := 0
	for _, w := range counts {
		inWaves += w.Targeted
	}
	return max(int(math.Ceil(float64(total)*float64(percent)/100))-inWaves, 0)
}

// waveReady says whether the last open wave lets the next one open (and
// if not, why): enough finished vehicles, enough successes, soaked long
// enough.
func waveReady(c server.Campaign, counts []server.WaveCount, now time.Time) (bool, string) {
	if c.OpenWaves == 0 {
		return true, ""
	}
	cfg, w := c.Config, counts[c.OpenWaves-1]
	need := min(cfg.MinSamples, eligible(w))
	switch {
	case finished(w) < need:
		return false, fmt.Sprintf("%d of the %d finished vehicles it needs", finished(w), need)
	case finished(w) > 0 && float64(w.Succeeded)/float64(finished(w)) < cfg.SuccessThreshold:
		return false, fmt.Sprintf("success rate %s, below %s", rate(float64(w.Succeeded)/float64(finished(w))), rate(cfg.SuccessThreshold))
	case now.Sub(c.WaveOpened[c.OpenWaves-1]) < cfg.Soak:
		return false, fmt.Sprintf("soaking until %s", c.WaveOpened[c.OpenWaves-1].Add(cfg.Soak).Format(time.RFC3339))
	}
	return true, ""
}

// assign gives jobs to members of open waves, in draw order, no faster
// than maxPerMinute: the campaign's assignment clock moves on by
// 60s/maxPerMinute per job and may lag now by at most a minute.
func (s *Service) assign(ctx context.Context, f server.Fence, c server.Campaign, now time.Time) error {
	cfg := c.Config
	per := time.Minute / time.Duration(cfg.MaxPerMinute)
	clock := c.AssignClock
	if floor := now.Add(-time.Minute); clock.Before(floor) {
		clock = floor
	}
	n := min(int(now.Sub(clock)/per), maxBatch)
	if n <= 0 || c.OpenWaves == 0 {
		return nil
	}
	ms, err := s.store.CampaignMembersToAssign(ctx, c.ID, c.OpenWaves, n)
	if err != nil || len(ms) == 0 {
		return err
	}
	var jobs []server.Job
	for _, m := range ms {
		v, err := s.store.Vehicle(ctx, m.VIN)
		if err != nil {
			return err
		}
		e, ok := v.ECUBySerial(m.ECUSerial)
		path := cfg.Targets[e.HardwareID]
		if !ok || path == "" {
			continue // the unit was replaced by one the campaign has no image for
		}
		parts, why := setParts(cfg, v, server.JobPart{ECUSerial: e.Serial, ECUType: e.Type, TargetPath: path, Version: cfg.Version})
		if why != "" {
			s.log.Warn("campaign member has no complete update set; not assigned", "campaign", c.ID, "vin", m.VIN, "why", why)
			continue
		}
		what := fmt.Sprintf("%s on %s %s", cfg.Version, e.Type, e.Serial)
		if len(parts) > 1 {
			var ps []string
			for _, p := range parts {
				ps = append(ps, fmt.Sprintf("%s %s on %s", p.ECUType, p.Version, p.ECUSerial))
			}
			what = "update set " + strings.Join(ps, " + ")
		} else {
			parts = nil
		}
		jobs = append(jobs, server.Job{
			ID: uuid.NewString(), VIN: m.VIN, ECUSerial: m.ECUSerial, ECUType: e.Type, TargetPath: path, Version: cfg.Version,
			Reason: "campaign " + c.Name, State: server.JobQueued, CreatedBy: c.CreatedBy, Origin: server.OriginCampaign,
			CampaignID: c.ID, Window: cfg.Window, CreatedAt: now, UpdatedAt: now, MaxAttempts: 1, Parts: parts,
			Events: []server.JobEvent{{At: now, Kind: server.JobQueued, Message: fmt.Sprintf("%s, campaign %s wave %d", what, c.Name, m.Wave+1)}},
		})
	}
	made, err := s.store.AssignCampaignJobs(ctx, f, c.ID, jobs, clock.Add(per*time.Duration(len(ms))), now)
	if err != nil {
		return err
	}
	if len(made) == 0 {
		return nil
	}
	s.m.assigned.WithLabelValues(c.ID).Add(float64(len(made)))
	vins := make([]string, len(made))
	for i, j := range made {
		vins[i] = j.VIN
	}
	if s.wake != nil {
		s.wake(vins...)
	}
	shown := vins
	if len(shown) > 10 {
		shown = append(shown[:10:10], fmt.Sprintf("and %d more", len(vins)-10))
	}
	return auditlog.Record(ctx, s.store, now, server.System, "campaign.assign", c.ID, fmt.Sprintf("%d vehicles: %s", len(made), strings.Join(shown, " ")))
}

// setParts is a member's update set: lead, then for each other ECU of
// the campaign's set the vehicle's one ECU of that type with the image
// for its hardware. why says what is missing when there is no such set.
func setParts(cfg server.CampaignConfig, v server.Vehicle, lead server.JobPart) ([]server.JobPart, string) {
	parts := []server.JobPart{lead}
	for _, w := range cfg.With {
		var found []server.ECU
		for _, e := range v.ECUs {
			if e.Type == w.ECU {
				found = append(found, e)
			}
		}
		if len(found) != 1 {
			return nil, fmt.Sprintf("the vehicle has %d ECUs of type %s; the set needs one", len(found), w.ECU)
		}
		path := w.Targets[found[0].HardwareID]
		if path == "" {
			return nil, fmt.Sprintf("no %s %s image for hardware %s", w.ECU, w.Version, found[0].HardwareID)
		}
		parts = append(parts, server.JobPart{ECUSerial: found[0].Serial, ECUType: w.ECU, TargetPath: path, Version: w.Version})
	}
	return parts, ""
}

// end halts or completes a campaign; a halt cancels jobs no vehicle
// started yet (started ones finish or roll back).
func (s *Service) end(ctx context.Context, f server.Fence, c server.Campaign, to, reason string, now time.Time) error {
	halt := ""
	if to == server.CampaignHalted {
		halt = reason
	}
	if err := s.store.EndCampaign(ctx, f, c.ID, to, halt, now); errors.Is(err, server.ErrConflict) {
		return nil
	} else if err != nil {
		return err
	}
	action, event := "campaign.complete", "campaign.completed"
	if to == server.CampaignHalted {
		action, event = "campaign.halt", "campaign.halted"
		s.m.halts.Inc()
		if err := s.cancelQueued(ctx, c.ID, "campaign halted: "+reason); err != nil {
			return err
		}
	}
	if err := auditlog.Record(ctx, s.store, now, server.System, action, c.ID, reason); err != nil {
		return err
	}
	s.notify.Emit(ctx, event, CampaignEvent{Campaign: c.ID, Name: c.Name, ECU: c.Config.ECU, Version: c.Config.Version, State: to, Reason: reason, Wave: c.OpenWaves})
	return nil
}

// CampaignEvent is the data of the campaign.* webhook events.
type CampaignEvent struct {
	Campaign string `json:"campaign"`
	Name     string `json:"name"`
	ECU      string `json:"ecu"`
	Version  string `json:"version"`
	State    string `json:"state"`
	// Wave is the number of waves open; Percent (wave_opened) how much
	// of the fleet they cover, Added how many vehicles the wave added.
	Wave    int    `json:"wave"`
	Percent int    `json:"percent,omitempty"`
	Added   int    `json:"added,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

type metrics struct {
	vehicles *prometheus.GaugeVec
	assigned *prometheus.CounterVec
	waves    *prometheus.CounterVec
	halts    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		vehicles: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "roadsign_campaign_vehicles",
			Help: "Vehicles of each running campaign's open waves, by state (targeted, waiting, queued, in_progress, succeeded, failed, rolled_back, timed_out, declined)."}, []string{"campaign", "state"}),
		assigned: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "roadsign_campaign_assigned_total", Help: "Jobs campaigns assigned."}, []string{"campaign"}),
		waves:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "roadsign_campaign_waves_opened_total", Help: "Campaign waves opened."}, []string{"campaign"}),
		halts:    prometheus.NewCounter(prometheus.CounterOpts{Name: "roadsign_campaign_halts_total", Help: "Campaigns halted by their failure threshold."}),
	}
	if reg != nil {
		reg.MustRegister(m.vehicles, m.assigned, m.waves, m.halts)
	}
	return m
}

func (m *metrics) observe(id string, counts []server.WaveCount) {
	var t server.WaveCount
	for _, w := range counts {
		add(&t, w)
	}
	for state, n := range map[string]int{"targeted": t.Targeted, "waiting": t.Waiting, "queued": t.Queued, "in_progress": t.InProgress,
		"succeeded": t.Succeeded, "failed": t.Failed, "rolled_back": t.RolledBack, "timed_out": t.TimedOut, "declined": t.Declined} {
		m.vehicles.WithLabelValues(id, state).Set(float64(n))
	}
}
