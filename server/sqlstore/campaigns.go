package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/roadsign/roadsign/server"
)

const campaignCols = `id, name, state, config, halt_reason, seed, open_waves, wave_opened, created_by, created_at, updated_at, started_at, assign_clock`

func scanCampaign(sc interface{ Scan(...any) error }) (server.Campaign, error) {
	var c server.Campaign
	var config, opened string
	var created, updated, started, clock int64
	err := sc.Scan(&c.ID, &c.Name, &c.State, &config, &c.HaltReason, &c.Seed, &c.OpenWaves, &opened,
		&c.CreatedBy, &created, &updated, &started, &clock)
	if err != nil {
		return c, err
	}
	c.CreatedAt, c.UpdatedAt, c.StartedAt, c.AssignClock = fromMicros(created), fromMicros(updated), fromMicros(started), fromMicros(clock)
	if err := json.Unmarshal([]byte(config), &c.Config); err != nil {
		return c, fmt.Errorf("campaign %s config: %w", c.ID, err)
	}
	var at []int64
	if err := json.Unmarshal([]byte(opened), &at); err != nil {
		return c, fmt.Errorf("campaign %s waves: %w", c.ID, err)
	}
	for _, t := range at {
		c.WaveOpened = append(c.WaveOpened, fromMicros(t))
	}
	return c, nil
}

// CreateCampaign stores a new (draft) campaign.
func (s *Store) CreateCampaign(ctx context.Context, c server.Campaign) error {
	config, err := json.Marshal(c.Config)
	if err != nil {
		return err
	}
	return s.wrap("create campaign", s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := s.txExec(ctx, tx, `INSERT INTO campaigns (`+campaignCols+`) VALUES (`+placeholders(13)+`)`,
			c.ID, c.Name, c.State, string(config), c.HaltReason, c.Seed, c.OpenWaves, "[]",
			c.CreatedBy, micros(c.CreatedAt), micros(c.UpdatedAt), micros(c.StartedAt), micros(c.AssignClock)); err != nil {
			return err
		}
		return s.bumpCampaigns(ctx, tx)
	}))
}

// bumpCampaigns counts a change to any campaign (see
// server.DirectorHead), in the transaction that made it: auto-assign
// decisions depend on what campaigns cover and hold.
func (s *Store) bumpCampaigns(ctx context.Context, tx *sql.Tx) error {
	_, err := s.txExec(ctx, tx, `UPDATE repo_versions SET version = version + 1 WHERE name = 'campaigns'`)
	return err
}

// Campaign returns a campaign.
func (s *Store) Campaign(ctx context.Context, id string) (server.Campaign, error) {
	c, err := scanCampaign(s.queryRow(ctx, `SELECT `+campaignCols+` FROM campaigns WHERE id = ?`, id))
	return c, s.wrap("campaign "+id, err)
}

// Campaigns lists campaigns, newest first; with states, only those.
func (s *Store) Campaigns(ctx context.Context, states ...string) ([]server.Campaign, error) {
	q, args := `SELECT `+campaignCols+` FROM campaigns`, []any{}
	if len(states) > 0 {
		q += ` WHERE state IN (` + placeholders(len(states)) + `)`
		for _, st := range states {
			args = append(args, st)
		}
	}
	rows, err := s.query(ctx, q+` ORDER BY created_at DESC, id`, args...)
	if err != nil {
		return nil, s.wrap("campaigns", err)
	}
	defer rows.Close()
	var out []server.Campaign
	for rows.Next() {
		c, err := scanCampaign(rows)
		if err != nil {
			return nil, s.wrap("campaigns", err)
		}
		out = append(out, c)
	}
	return out, s.wrap("campaigns", rows.Err())
}

func placeholders(n int) string { return strings.TrimSuffix(strings.Repeat("?, ", n), ", ") }

// SetCampaignState moves a campaign from one of from to to (an
// operator's action); server.ErrConflict if it is in none of them.
func (s *Store) SetCampaignState(ctx context.Context, id string, from []string, to string, at time.Time) error {
	args := []any{to, micros(at), id}
	for _, f := range from {
		args = append(args, f)
	}
	return s.wrap("campaign "+id, s.tx(ctx, func(tx *sql.Tx) error {
		res, err := s.txExec(ctx, tx, `UPDATE campaigns SET state = ?, updated_at = ? WHERE id = ? AND state IN (`+placeholders(len(from))+`)`, args...)
		if err := s.oneRow(res, err); err != nil {
			return err
		}
		return s.bumpCampaigns(ctx, tx)
	}))
}

// SetCampaignConfig implements server.Campaigns.
func (s *Store) SetCampaignConfig(ctx context.Context, id string, from []string, cfg server.CampaignConfig, at time.Time) error {
	config, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("campaign %s config: %w", id, err)
	}
	args := []any{string(config), micros(at), id}
	for _, f := range from {
		args = append(args, f)
	}
	return s.wrap("campaign "+id, s.tx(ctx, func(tx *sql.Tx) error {
		res, err := s.txExec(ctx, tx, `UPDATE campaigns SET config = ?, updated_at = ? WHERE id = ? AND state IN (`+placeholders(len(from))+`)`, args...)
		if err := s.oneRow(res, err); err != nil {
			return err
		}
		return s.bumpCampaigns(ctx, tx)
	}))
}

func (s *Store) oneRow(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return server.ErrConflict
	}
	return nil
}

// CampaignCandidates lists the ECUs (VIN and serial) of type ecuType, built
// for one of hardwareIDs, that sel matches and that no running or paused
// campaign has.
func (s *Store) CampaignCandidates(ctx context.Context, ecuType string, hardwareIDs []string, sel server.Selector) ([]server.CampaignCandidate, error) {
	q := `SELECT e.vin, e.serial, e.hardware_id, e.installed_target FROM ecus e JOIN vehicles v ON v.vin = e.vin WHERE e.type = ?`
	args := []any{ecuType}
	in := func(col string, vals []any) {
		if len(vals) > 0 {
			q += ` AND ` + col + ` IN (` + placeholders(len(vals)) + `)`
			args = append(args, vals...)
		}
	}
	in("e.hardware_id", anys(hardwareIDs))
	in("e.hardware_id", anys(sel.HardwareIDs))
	in("v.model", anys(sel.Models))
	in("v.region", anys(sel.Regions))
	in("e.vin", anys(sel.VINs))
	years := make([]any, len(sel.Years))
	for i, y := range sel.Years {
		years[i] = y
	}
	in("v.year", years)
	q += ` AND NOT EXISTS (SELECT 1 FROM campaign_members m JOIN campaigns c ON c.id = m.campaign_id
		WHERE m.vin = e.vin AND m.ecu_serial = e.serial AND c.state IN ('running', 'paused')) ORDER BY e.vin, e.serial`
	rows, err := s.query(ctx, q, args...)
	if err != nil {
		return nil, s.wrap("campaign candidates", err)
	}
	defer rows.Close()
	var out []server.CampaignCandidate
	for rows.Next() {
		var m server.CampaignCandidate
		if err := rows.Scan(&m.VIN, &m.ECUSerial, &m.HardwareID, &m.Installed); err != nil {
			return nil, s.wrap("campaign candidates", err)
		}
		out = append(out, m)
	}
	return out, s.wrap("campaign candidates", rows.Err())
}

func anys(ss []string) []any {
	out := make([]any, len(ss))
	for i, v := range ss {
		out[i] = v
	}
	return out
}

// StartCampaign moves a draft campaign to running with its members, in
// one transaction.
func (s *Store) StartCampaign(ctx context.Context, id string, members []server.CampaignMember, at time.Time) error {
	return s.wrap("start campaign "+id, s.tx(ctx, func(tx *sql.Tx) error {
		res, err := s.txExec(ctx, tx, `UPDATE campaigns SET state = 'running', started_at = ?, updated_at = ?, assign_clock = ? WHERE id = ? AND state = 'draft'`,
			micros(at), micros(at), micros(at), id)
		if err := s.oneRow(res, err); err != nil {
			return err
		}
		if err := s.bumpCampaigns(ctx, tx); err != nil {
			return err
		}
		return s.insertMembers(ctx, tx, members)
	}))
}

// insertMembers inserts in batches (parameter counts are limited).
func (s *Store) insertMembers(ctx context.Context, tx *sql.Tx, members []server.CampaignMember) error {
	const cols, batch = 8, 200
	for len(members) > 0 {
		n := min(batch, len(members))
		q := `INSERT INTO campaign_members (campaign_id, vin, ecu_serial, draw, wave, job_id, consent, joined_at) VALUES ` +
			strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, ?, ?, ?, ?), ", n), ", ") + ` ON CONFLICT DO NOTHING`
		args := make([]any, 0, n*cols)
		for _, m := range members[:n] {
			args = append(args, m.CampaignID, m.VIN, m.ECUSerial, m.Draw, m.Wave, m.JobID, m.Consent, micros(m.JoinedAt))
		}
		if _, err := s.txExec(ctx, tx, q, args...); err != nil {
			return err
		}
		members = members[n:]
	}
	return nil
}

// AddCampaignMember adds a vehicle registered after the campaign started
// (includeNew); nothing if it is a member already.
func (s *Store) AddCampaignMember(ctx context.Context, m server.CampaignMember) error {
	return s.wrap("add campaign member", s.tx(ctx, func(tx *sql.Tx) error { return s.insertMembers(ctx, tx, []server.CampaignMember{m}) }))
}

// CampaignCounts counts the members of each opened wave by where they
// are, and all members (opened or not).
func (s *Store) CampaignCounts(ctx context.Context, id string) ([]server.WaveCount, int, error) {
	var total int
	if err := s.queryRow(ctx, `SELECT COUNT(*) FROM campaign_members WHERE campaign_id = ?`, id).Scan(&total); err != nil {
		return nil, 0, s.wrap("campaign counts", err)
	}
	rows, err := s.query(ctx, `SELECT m.wave, m.consent, COALESCE(j.state, ''), COUNT(*) FROM campaign_members m
		LEFT JOIN jobs j ON j.id = m.job_id WHERE m.campaign_id = ? AND m.wave >= 0 GROUP BY m.wave, m.consent, j.state`, id)
	if err != nil {
		return nil, 0, s.wrap("campaign counts", err)
	}
	defer rows.Close()
	var out []server.WaveCount
	for rows.Next() {
		var wave, n int
		var consent, state string
		if err := rows.Scan(&wave, &consent, &state, &n); err != nil {
			return nil, 0, s.wrap("campaign counts", err)
		}
		for len(out) <= wave {
			out = append(out, server.WaveCount{Wave: len(out)})
		}
		w := &out[wave]
		w.Targeted += n
		switch {
		case state == "" && consent == "declined":
			w.Declined += n
		case state == "":
			w.Waiting += n
		case state == server.JobQueued:
			w.Queued += n
		case state == server.JobInProgress:
			w.InProgress += n
		case state == server.JobSucceeded:
			w.Succeeded += n
		case state == server.JobFailed:
			w.Failed += n
		case state == server.JobRolledBack:
			w.RolledBack += n
		case state == server.JobTimedOut:
			w.TimedOut += n
		case state == server.JobCanceled:
			w.Canceled += n
		}
	}
	return out, total, s.wrap("campaign counts", rows.Err())
}

// CampaignMembers lists members, in draw order: of one wave, or (wave
// -1) those not in a wave yet.
func (s *Store) CampaignMembers(ctx context.Context, id string, wave int) ([]server.CampaignMember, error) {
	return s.members(ctx, `campaign_id = ? AND wave = ? ORDER BY draw`, id, wave)
}

// CampaignMembersToAssign lists up to limit members of opened waves that
// have no job yet and may get one (no consent needed, or given), in draw
// order.
func (s *Store) CampaignMembersToAssign(ctx context.Context, id string, openWaves, limit int) ([]server.CampaignMember, error) {
	return s.members(ctx, `campaign_id = ? AND wave >= 0 AND wave < ? AND job_id = '' AND consent IN ('', 'accepted') ORDER BY wave, draw LIMIT ?`, id, openWaves, limit)
}

// CampaignMembership returns the vehicle's memberships in campaigns.
func (s *Store) CampaignMembership(ctx context.Context, vin string) ([]server.CampaignMember, error) {
	return s.members(ctx, `vin = ? ORDER BY joined_at`, vin)
}

func (s *Store) members(ctx context.Context, where string, args ...any) ([]server.CampaignMember, error) {
	rows, err := s.query(ctx, `SELECT campaign_id, vin, ecu_serial, draw, wave, job_id, consent, joined_at FROM campaign_members WHERE `+where, args...)
	if err != nil {
		return nil, s.wrap("campaign members", err)
	}
	defer rows.Close()
	var out []server.CampaignMember
	for rows.Next() {
		var m server.CampaignMember
		var joined int64
		if err := rows.Scan(&m.CampaignID, &m.VIN, &m.ECUSerial, &m.Draw, &m.Wave, &m.JobID, &m.Consent, &joined); err != nil {
			return nil, s.wrap("campaign members", err)
		}
		m.JoinedAt = fromMicros(joined)
		out = append(out, m)
	}
	return out, s.wrap("campaign members", rows.Err())
}

// OpenCampaignWave opens wave number wave (0-based), which must be the
// next one: the first take members not in a wave yet, in draw order, join
// it (asked for consent if askConsent). Fenced by f.
func (s *Store) OpenCampaignWave(ctx context.Context, f server.Fence, id string, wave, take int, askConsent bool, at time.Time) error {
	return s.wrap("open wave of campaign "+id, s.fenced(ctx, f, at, func(tx *sql.Tx) error {
		var opened string
		if err := s.txQueryRow(ctx, tx, `SELECT wave_opened FROM campaigns WHERE id = ? AND open_waves = ? AND state = 'running'`, id, wave).Scan(&opened); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return server.ErrConflict // opened already, or no longer running
			}
			return err
		}
		var at0 []int64
		json.Unmarshal([]byte(opened), &at0)
		b, _ := json.Marshal(append(at0, micros(at)))
		if _, err := s.txExec(ctx, tx, `UPDATE campaigns SET open_waves = ?, wave_opened = ?, updated_at = ? WHERE id = ?`, wave+1, string(b), micros(at), id); err != nil {
			return err
		}
		consent := ""
		if askConsent {
			consent = "pending"
		}
		if _, err := s.txExec(ctx, tx, `UPDATE campaign_members SET wave = ?, consent = ? WHERE campaign_id = ? AND wave = -1 AND (vin, ecu_serial) IN
			(SELECT vin, ecu_serial FROM campaign_members WHERE campaign_id = ? AND wave = -1 ORDER BY draw LIMIT ?)`, wave, consent, id, id, take); err != nil {
			return err
		}
		return s.bumpCampaigns(ctx, tx)
	}))
}

// AssignCampaignJobs creates a job for each member (matched by VIN and
// ECU serial; a member that has one already is skipped) and moves the
// campaign's assignment clock, all fenced by f. It returns the jobs made.
func (s *Store) AssignCampaignJobs(ctx context.Context, f server.Fence, id string, jobs []server.Job, clock, at time.Time) ([]server.Job, error) {
	var made []server.Job
	err := s.fenced(ctx, f, at, func(tx *sql.Tx) error {
		made = made[:0]
		for _, j := range jobs {
			res, err := s.txExec(ctx, tx, `UPDATE campaign_members SET job_id = ? WHERE campaign_id = ? AND vin = ? AND ecu_serial = ? AND job_id = ''`,
				j.ID, id, j.VIN, j.ECUSerial)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				continue
			}
			if err := s.insertJob(ctx, tx, j); err != nil {
				return err
			}
			made = append(made, j)
		}
		_, err := s.txExec(ctx, tx, `UPDATE campaigns SET assign_clock = ? WHERE id = ?`, micros(clock), id)
		return err
	})
	return made, s.wrap("assign campaign "+id, err)
}

// EndCampaign moves a running campaign to halted or completed, fenced by f.
func (s *Store) EndCampaign(ctx context.Context, f server.Fence, id, to, reason string, at time.Time) error {
	return s.wrap("end campaign "+id, s.fenced(ctx, f, at, func(tx *sql.Tx) error {
		res, err := s.txExec(ctx, tx, `UPDATE campaigns SET state = ?, halt_reason = ?, updated_at = ? WHERE id = ? AND state = 'running'`, to, reason, micros(at), id)
		if err := s.oneRow(res, err); err != nil {
			return err
		}
		return s.bumpCampaigns(ctx, tx)
	}))
}

// SetCampaignConsent records an owner's answer for a member asked for
// consent; server.ErrConflict if it was not pending.
func (s *Store) SetCampaignConsent(ctx context.Context, id, vin, decision string) error {
	return s.wrap("consent", s.tx(ctx, func(tx *sql.Tx) error {
		res, err := s.txExec(ctx, tx, `UPDATE campaign_members SET consent = ? WHERE campaign_id = ? AND vin = ? AND consent = 'pending'`, decision, id, vin)
		if err := s.oneRow(res, err); err != nil {
			return err
		}
		_, err = s.txExec(ctx, tx, bumpVehicleGen, vin) // a declined member is no longer held
		return err
	}))
}

// CampaignJobs lists a campaign's jobs in a state.
func (s *Store) CampaignJobs(ctx context.Context, id, state string) ([]server.Job, error) {
	return s.jobs(ctx, "jobs of campaign "+id, `campaign_id = ? AND state = ? ORDER BY created_at, id`, id, state)
}

// CampaignTargets lists the images campaigns cover.
func (s *Store) CampaignTargets(ctx context.Context) (map[string]bool, error) {
	cs, err := s.Campaigns(ctx)
	out := map[string]bool{}
	for _, c := range cs {
		for _, p := range c.Config.Targets {
			out[p] = true
		}
		for _, part := range c.Config.With {
			for _, p := range part.Targets {
				out[p] = true
			}
		}
	}
	return out, err
}

// CampaignHolds lists the vehicle's ECU serials that a running or paused
// campaign holds: members still waiting for their job (not declined).
// Auto-assign leaves them alone.
func (s *Store) CampaignHolds(ctx context.Context, vin string) (map[string]bool, error) {
	rows, err := s.query(ctx, `SELECT m.ecu_serial FROM campaign_members m JOIN campaigns c ON c.id = m.campaign_id
		WHERE m.vin = ? AND c.state IN ('running', 'paused') AND m.job_id = '' AND m.consent <> 'declined'`, vin)
	if err != nil {
		return nil, s.wrap("campaign holds", err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var serial string
		if err := rows.Scan(&serial); err != nil {
			return nil, s.wrap("campaign holds", err)
		}
		out[serial] = true
	}
	return out, s.wrap("campaign holds", rows.Err())
}

// CampaignDeltas is a campaign's deltas policy ("" when it set none).
func (s *Store) CampaignDeltas(ctx context.Context, id string) (string, error) {
	c, err := s.Campaign(ctx, id)
	return c.Config.Deltas, err
}
