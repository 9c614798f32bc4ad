package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/roadsign/roadsign/server"
)

const jobCols = `id, vin, ecu_serial, ecu_type, target_path, version, forced, reason, state, created_by, created_at, updated_at, attempts, max_attempts, next_attempt_at, cancel_requested, phase, origin, campaign_id, maintenance_window, parts`

func jobArgs(j server.Job) []any {
	origin := j.Origin
	if origin == "" {
		origin = server.OriginDealer
	}
	window := ""
	if j.Window != nil {
		b, _ := json.Marshal(j.Window)
		window = string(b)
	}
	return []any{j.ID, j.VIN, j.ECUSerial, j.ECUType, j.TargetPath, j.Version, boolInt(j.Forced), j.Reason, j.State, j.CreatedBy,
		micros(j.CreatedAt), micros(j.UpdatedAt), j.Attempts, j.MaxAttempts, micros(j.NextAttemptAt), boolInt(j.CancelRequested), j.Phase, origin,
		j.CampaignID, window, jsonOrEmpty(j.Parts)}
}

func scanJob(sc interface{ Scan(...any) error }) (server.Job, error) {
	var j server.Job
	var forced, cancel int
	var created, updated, next int64
	var window, parts string
	err := sc.Scan(&j.ID, &j.VIN, &j.ECUSerial, &j.ECUType, &j.TargetPath, &j.Version, &forced, &j.Reason, &j.State, &j.CreatedBy,
		&created, &updated, &j.Attempts, &j.MaxAttempts, &next, &cancel, &j.Phase, &j.Origin, &j.CampaignID, &window, &parts)
	j.Forced, j.CancelRequested = forced == 1, cancel == 1
	j.CreatedAt, j.UpdatedAt, j.NextAttemptAt = fromMicros(created), fromMicros(updated), fromMicros(next)
	if window != "" {
		j.Window = &server.Window{}
		json.Unmarshal([]byte(window), j.Window)
	}
	if err == nil && parts != "" {
		if perr := json.Unmarshal([]byte(parts), &j.Parts); perr != nil {
			return j, fmt.Errorf("job %s: its parts do not decode: %w", j.ID, perr)
		}
	}
	return j, err
}

// jsonOrEmpty is v as JSON, or "" for an empty slice.
func jsonOrEmpty[T any](v []T) string {
	if len(v) == 0 {
		return ""
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// execer is a database or a transaction.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// bumpVehicleGen counts a change to a vehicle's assignment inputs (see
// server.DirectorHead), in the transaction that made it: a director poll
// after it decides the assignment again.
const bumpVehicleGen = `UPDATE vehicles SET director_gen = director_gen + 1 WHERE vin = ?`

// bumpJobVehicleGen is bumpVehicleGen for the vehicle of a job ID.
const bumpJobVehicleGen = `UPDATE vehicles SET director_gen = director_gen + 1 WHERE vin = (SELECT vin FROM jobs WHERE id = ?)`

func (s *Store) insertJob(ctx context.Context, db execer, j server.Job) error {
	if _, err := db.ExecContext(ctx, s.q(`INSERT INTO jobs (`+jobCols+`) VALUES (`+placeholders(21)+`)`), jobArgs(j)...); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, s.q(bumpVehicleGen), j.VIN); err != nil {
		return err
	}
	for _, e := range j.Events {
		if _, err := db.ExecContext(ctx, s.q(`INSERT INTO job_events (job_id, at, kind, percent, message) VALUES (?, ?, ?, ?, ?)`),
			j.ID, micros(e.At), e.Kind, e.Percent, e.Message); err != nil {
			return err
		}
	}
	return nil
}

// CreateJob implements server.Jobs.
func (s *Store) CreateJob(ctx context.Context, j server.Job) error {
	return s.wrap("create job", s.tx(ctx, func(tx *sql.Tx) error { return s.insertJob(ctx, tx, j) }))
}

func (s *Store) events(ctx context.Context, ids []string) (map[string][]server.JobEvent, error) {
	out := map[string][]server.JobEvent{}
	if len(ids) == 0 {
		return out, nil
	}
	ph := strings.TrimSuffix(strings.Repeat("?, ", len(ids)), ", ")
	args := make([]any, len(ids))
	for i, v := range ids {
		args[i] = v
	}
	rows, err := s.query(ctx, `SELECT job_id, at, kind, percent, message FROM job_events WHERE job_id IN (`+ph+`) ORDER BY id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var e server.JobEvent
		var at int64
		if err := rows.Scan(&id, &at, &e.Kind, &e.Percent, &e.Message); err != nil {
			return nil, err
		}
		e.At = fromMicros(at)
		out[id] = append(out[id], e)
	}
	return out, rows.Err()
}

func (s *Store) jobs(ctx context.Context, what, where string, args ...any) ([]server.Job, error) {
	rows, err := s.query(ctx, `SELECT `+jobCols+` FROM jobs WHERE `+where, args...)
	if err != nil {
		return nil, s.wrap(what, err)
	}
	defer rows.Close()
	var out []server.Job
	var ids []string
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, s.wrap(what, err)
		}
		out = append(out, j)
		ids = append(ids, j.ID)
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap(what, err)
	}
	ev, err := s.events(ctx, ids)
	if err != nil {
		return nil, s.wrap(what, err)
	}
	for i := range out {
		out[i].Events = ev[out[i].ID]
		if out[i].Events == nil {
			out[i].Events = []server.JobEvent{}
		}
		out[i].EventCount = len(out[i].Events)
	}
	return out, nil
}

// JobHead implements server.Jobs.
func (s *Store) JobHead(ctx context.Context, id string) (server.Job, error) {
	var n int
	row := s.queryRow(ctx, `SELECT `+jobCols+`, (SELECT COUNT(*) FROM job_events e WHERE e.job_id = jobs.id) FROM jobs WHERE id = ?`, id)
	j, err := scanJob(scanWith{row, []any{&n}})
	if errors.Is(err, sql.ErrNoRows) {
		return j, server.Errorf(server.KindNotFound, "no job %s", id)
	}
	j.EventCount = n
	return j, s.wrap("job "+id, err)
}

// scanWith scans a row into what the wrapped scan asks for, then extra.
type scanWith struct {
	row   interface{ Scan(...any) error }
	extra []any
}

func (w scanWith) Scan(dest ...any) error { return w.row.Scan(append(dest, w.extra...)...) }

// Job implements server.Jobs.
func (s *Store) Job(ctx context.Context, id string) (server.Job, error) {
	js, err := s.jobs(ctx, "job "+id, `id = ?`, id)
	if err != nil {
		return server.Job{}, err
	}
	if len(js) == 0 {
		return server.Job{}, server.Errorf(server.KindNotFound, "no job %s", id)
	}
	return js[0], nil
}

// JobsByVIN implements server.Jobs.
func (s *Store) JobsByVIN(ctx context.Context, vin string) ([]server.Job, error) {
	return s.jobs(ctx, "jobs of "+vin, `vin = ? ORDER BY created_at, id`, vin)
}

// OpenJobs implements server.Jobs.
func (s *Store) OpenJobs(ctx context.Context, limit int) ([]server.Job, error) {
	return s.jobs(ctx, "open jobs", `state IN ('queued', 'in_progress') ORDER BY created_at, id LIMIT ?`, limit)
}

const insertJobEvent = `INSERT INTO job_events (job_id, at, kind, percent, message) VALUES (?, ?, ?, ?, ?)`

// UpdateJob implements server.Jobs: the job, its events and its
// vehicle's generation in one transaction.
func (s *Store) UpdateJob(ctx context.Context, j server.Job, from string, events ...server.JobEvent) error {
	return s.updateJob(ctx, j, from, nil, events)
}

// UpdateJobRecorded implements server.Jobs.
func (s *Store) UpdateJobRecorded(ctx context.Context, j server.Job, from string, rec server.SoftwareRecord, events ...server.JobEvent) error {
	return s.updateJob(ctx, j, from, &rec, events)
}

func (s *Store) updateJob(ctx context.Context, j server.Job, from string, rec *server.SoftwareRecord, events []server.JobEvent) error {
	return s.wrap("update job "+j.ID, s.tx(ctx, func(tx *sql.Tx) error {
		res, err := s.txExec(ctx, tx, `UPDATE jobs SET state = ?, updated_at = ?, attempts = ?, next_attempt_at = ?, cancel_requested = ?, phase = ?
			WHERE id = ? AND state = ?`,
			j.State, micros(j.UpdatedAt), j.Attempts, micros(j.NextAttemptAt), boolInt(j.CancelRequested), j.Phase, j.ID, from)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return server.Errorf(server.KindConflict, "job %s is no longer %s; read it again", j.ID, from)
		}
		if _, err := s.txExec(ctx, tx, bumpJobVehicleGen, j.ID); err != nil {
			return err
		}
		for _, e := range events {
			if _, err := s.txExec(ctx, tx, insertJobEvent, j.ID, micros(e.At), e.Kind, e.Percent, e.Message); err != nil {
				return err
			}
		}
		if rec != nil {
			r := *rec
			if _, err := s.txExec(ctx, tx, insertSoftwareRecord, r.VIN, r.ECUSerial, r.ECUType, micros(r.At), r.FromVersion, r.FromSHA256,
				r.ToVersion, r.ToSHA256, r.Via, r.JobID, r.CampaignID, r.Outcome, r.Detail, jsonOrEmpty(r.Parts)); err != nil {
				return err
			}
		}
		return nil
	}))
}

// AddJobEvent implements server.Jobs.
func (s *Store) AddJobEvent(ctx context.Context, id string, e server.JobEvent) error {
	_, err := s.exec(ctx, insertJobEvent, id, micros(e.At), e.Kind, e.Percent, e.Message)
	return s.wrap("job event", err)
}

// JobStates implements server.Jobs.
func (s *Store) JobStates(ctx context.Context) (map[string]int, error) {
	rows, err := s.query(ctx, `SELECT state, COUNT(*) FROM jobs GROUP BY state`)
	if err != nil {
		return nil, s.wrap("job states", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var state string
		var n int
		if err := rows.Scan(&state, &n); err != nil {
			return nil, s.wrap("job states", err)
		}
		out[state] = n
	}
	return out, s.wrap("job states", rows.Err())
}
