// Package sqlstore implements server.Store in portable SQL over
// database/sql. The sqlite and postgres packages open the database and
// supply a Dialect (placeholders, DDL types, error codes, locking); the
// queries themselves are shared so both backends behave the same.
package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/roadsign/roadsign/server"
)

// Dialect is what differs between SQL backends.
type Dialect struct {
	Name string
	// Placeholder returns the n-th (1-based) bind parameter.
	Placeholder func(n int) string
	// Types substitutes {{AUTOID}} and {{BLOB}} in the schema.
	AutoID, Blob string
	// IsUnique reports a unique-constraint violation.
	IsUnique func(error) bool
	// LockMigrations serializes migrations across processes (may be nil).
	LockMigrations func(ctx context.Context, tx *sql.Tx) error
	// LockAudit serializes audit appends across processes (nil where a
	// write transaction locks the whole database, as SQLite's does).
	LockAudit func(ctx context.Context, tx *sql.Tx) error
	// ForUpdate locks selected rows to the transaction (" FOR UPDATE");
	// empty where transactions lock the whole database for writing anyway.
	ForUpdate string
}

// Store is a server.Store on a *sql.DB.
type Store struct {
	db    *sql.DB
	d     Dialect
	stmts stmts
	// trace, when set, sees every statement the store runs with its
	// arguments (TraceQueries).
	trace func(query string, args []any)
}

var _ server.Store = (*Store)(nil)

// New wraps db. Call Migrate before use.
func New(db *sql.DB, d Dialect) *Store { return &Store{db: db, d: d} }

// TraceQueries makes f see every statement the store runs from now on,
// in the dialect's form, with its arguments: the query-plan tests use it
// to explain the statements the server really runs. Set it before the
// store is shared.
func (s *Store) TraceQueries(f func(query string, args []any)) { s.trace = f }

// DB returns the underlying database (for backend-specific checks in tests).
func (s *Store) DB() *sql.DB { return s.db }

// q rewrites "?" placeholders for the dialect. Queries here never contain
// a literal question mark.
func (s *Store) q(query string) string {
	if s.d.Placeholder == nil {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString(s.d.Placeholder(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func fromMicros(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMicro(v).UTC()
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (s *Store) wrap(what string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("%s: %w", what, server.ErrNotFound)
	case s.d.IsUnique(err):
		return fmt.Errorf("%s: %w", what, server.ErrConflict)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func (s *Store) tx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Ping implements server.Store.
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// Close implements server.Store.
func (s *Store) Close() error {
	s.closeStatements()
	return s.db.Close()
}

// --- accounts ---

// CreateAccount implements server.Store.
func (s *Store) CreateAccount(ctx context.Context, a server.Account) error {
	_, err := s.exec(ctx, `INSERT INTO accounts (id, role, name, password_hash, token_hash, created_at, disabled) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		a.ID, string(a.Role), a.Name, a.PasswordHash, a.TokenHash, micros(a.CreatedAt), boolInt(a.Disabled))
	return s.wrap("create account "+a.Name, err)
}

const accountCols = `id, role, name, password_hash, token_hash, created_at, disabled`

func scanAccount(sc interface{ Scan(...any) error }) (server.Account, error) {
	var a server.Account
	var role string
	var created int64
	var disabled int
	err := sc.Scan(&a.ID, &role, &a.Name, &a.PasswordHash, &a.TokenHash, &created, &disabled)
	a.Role, a.CreatedAt, a.Disabled = server.Role(role), fromMicros(created), disabled == 1
	return a, err
}

func (s *Store) account(ctx context.Context, where string, arg any) (server.Account, error) {
	a, err := scanAccount(s.queryRow(ctx, `SELECT `+accountCols+` FROM accounts WHERE `+where+` = ?`, arg))
	return a, s.wrap("account", err)
}

// ListAccounts returns every account, by name.
func (s *Store) ListAccounts(ctx context.Context) ([]server.Account, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+accountCols+` FROM accounts ORDER BY name`)
	if err != nil {
		return nil, s.wrap("list accounts", err)
	}
	defer rows.Close()
	var out []server.Account
	for rows.Next() {
		a, err := scanAccount(rows)
		if err != nil {
			return nil, s.wrap("list accounts", err)
		}
		out = append(out, a)
	}
	return out, s.wrap("list accounts", rows.Err())
}

func (s *Store) updateAccount(ctx context.Context, id, set string, arg any) error {
	res, err := s.exec(ctx, `UPDATE accounts SET `+set+` = ? WHERE id = ?`, arg, id)
	if err != nil {
		return s.wrap("update account "+id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("account %s: %w", id, server.ErrNotFound)
	}
	return nil
}

// SetAccountDisabled disables or enables an account.
func (s *Store) SetAccountDisabled(ctx context.Context, id string, disabled bool) error {
	return s.updateAccount(ctx, id, "disabled", boolInt(disabled))
}

// SetAccountToken replaces an account's token hash (the old token stops working).
func (s *Store) SetAccountToken(ctx context.Context, id, tokenHash string) error {
	return s.updateAccount(ctx, id, "token_hash", tokenHash)
}

// SetAccountPassword replaces an account's password hash.
func (s *Store) SetAccountPassword(ctx context.Context, id, passwordHash string) error {
	return s.updateAccount(ctx, id, "password_hash", passwordHash)
}

// --- sessions ---

// CreateSession stores a portal session (and prunes expired ones).
func (s *Store) CreateSession(ctx context.Context, se server.Session) error {
	if _, err := s.exec(ctx, `DELETE FROM sessions WHERE expires_at < ?`, micros(se.CreatedAt)); err != nil {
		return s.wrap("prune sessions", err)
	}
	_, err := s.exec(ctx, `INSERT INTO sessions (id_hash, account_id, created_at, expires_at) VALUES (?, ?, ?, ?)`,
		se.IDHash, se.AccountID, micros(se.CreatedAt), micros(se.ExpiresAt))
	return s.wrap("create session", err)
}

// Session returns a session by its ID's hash.
func (s *Store) Session(ctx context.Context, idHash string) (server.Session, error) {
	se := server.Session{IDHash: idHash}
	var created, expires int64
	err := s.queryRow(ctx, `SELECT account_id, created_at, expires_at FROM sessions WHERE id_hash = ?`, idHash).
		Scan(&se.AccountID, &created, &expires)
	se.CreatedAt, se.ExpiresAt = fromMicros(created), fromMicros(expires)
	return se, s.wrap("session", err)
}

// DeleteSession ends one session.
func (s *Store) DeleteSession(ctx context.Context, idHash string) error {
	_, err := s.exec(ctx, `DELETE FROM sessions WHERE id_hash = ?`, idHash)
	return s.wrap("delete session", err)
}

// DeleteSessions ends every session of an account.
func (s *Store) DeleteSessions(ctx context.Context, accountID string) error {
	_, err := s.exec(ctx, `DELETE FROM sessions WHERE account_id = ?`, accountID)
	return s.wrap("delete sessions of "+accountID, err)
}

// AccountByTokenHash implements server.Store.
func (s *Store) AccountByTokenHash(ctx context.Context, h string) (server.Account, error) {
	return s.account(ctx, "token_hash", h)
}

// AccountByID implements server.Store.
func (s *Store) AccountByID(ctx context.Context, id string) (server.Account, error) {
	return s.account(ctx, "id", id)
}

// AccountByName implements server.Store.
func (s *Store) AccountByName(ctx context.Context, name string) (server.Account, error) {
	return s.account(ctx, "name", name)
}

// --- vehicles ---

// CreateVehicle implements server.Store.
func (s *Store) CreateVehicle(ctx context.Context, v server.Vehicle) error {
	return s.wrap("create vehicle "+v.VIN, s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := s.txExec(ctx, tx, `INSERT INTO vehicles (vin, model, year, region, public_key, created_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, 0)`,
			v.VIN, v.Model, v.Year, v.Region, v.PublicKey, micros(v.CreatedAt)); err != nil {
			return err
		}
		for i, e := range v.ECUs {
			if _, err := s.txExec(ctx, tx, `INSERT INTO ecus (serial, vin, type, hardware_id, position) VALUES (?, ?, ?, ?, ?)`,
				e.Serial, v.VIN, e.Type, e.HardwareID, i); err != nil {
				return err
			}
		}
		return nil
	}))
}

const vehicleCols = `vin, model, year, region, public_key, created_at, last_seen, auth_state, auth_at, auth_message, auth_expires, dtcs, ` +
	`signal_bars, signal_at, bad_signature_at, bad_signature_count, clock_skew_at, clock_skew_micros, checkin_refused_at, checkin_refused`

func scanVehicle(sc interface{ Scan(...any) error }) (server.Vehicle, error) {
	var v server.Vehicle
	var created, seen, authAt, authExp, signalAt, badAt, skewAt, skew, refusedAt int64
	err := sc.Scan(&v.VIN, &v.Model, &v.Year, &v.Region, &v.PublicKey, &created, &seen, &v.AuthState, &authAt, &v.AuthMessage, &authExp, &v.DTCs,
		&v.SignalBars, &signalAt, &badAt, &v.RequestFaults.BadSignatureCount, &skewAt, &skew, &refusedAt, &v.RequestFaults.CheckInRefused)
	v.RequestFaults.CheckInRefusedAt = fromMicros(refusedAt)
	v.CreatedAt, v.LastSeen, v.AuthAt, v.AuthExpires = fromMicros(created), fromMicros(seen), fromMicros(authAt), fromMicros(authExp)
	v.SignalAt, v.RequestFaults.BadSignatureAt, v.RequestFaults.ClockSkewAt = fromMicros(signalAt), fromMicros(badAt), fromMicros(skewAt)
	v.RequestFaults.ClockSkew = time.Duration(skew) * time.Microsecond
	return v, err
}

// RecordAuth implements server.Store.
func (s *Store) RecordAuth(ctx context.Context, vin string, a server.AuthRecord) error {
	_, err := s.exec(ctx, `UPDATE vehicles SET auth_state = ?, auth_at = ?, auth_message = ?, auth_expires = ? WHERE vin = ?`,
		a.State, micros(a.At), a.Message, micros(a.Expires), vin)
	return s.wrap("record auth of "+vin, err)
}

func (s *Store) loadECUs(ctx context.Context, vins []string) (map[string][]server.ECU, error) {
	out := map[string][]server.ECU{}
	if len(vins) == 0 {
		return out, nil
	}
	ph := strings.TrimSuffix(strings.Repeat("?, ", len(vins)), ", ")
	args := make([]any, len(vins))
	for i, v := range vins {
		args[i] = v
	}
	rows, err := s.query(ctx, `SELECT vin, serial, type, hardware_id, installed_target, installed_version, installed_sha256, reported_at
		FROM ecus WHERE vin IN (`+ph+`) ORDER BY vin, position`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var vin string
		var e server.ECU
		var rep int64
		if err := rows.Scan(&vin, &e.Serial, &e.Type, &e.HardwareID, &e.InstalledTarget, &e.InstalledVersion, &e.InstalledSHA256, &rep); err != nil {
			return nil, err
		}
		e.ReportedAt = fromMicros(rep)
		out[vin] = append(out[vin], e)
	}
	return out, rows.Err()
}

// Vehicle implements server.Store.
func (s *Store) Vehicle(ctx context.Context, vin string) (server.Vehicle, error) {
	v, err := scanVehicle(s.queryRow(ctx, `SELECT `+vehicleCols+` FROM vehicles WHERE vin = ?`, vin))
	if err != nil {
		return v, s.wrap("vehicle "+vin, err)
	}
	ecus, err := s.loadECUs(ctx, []string{vin})
	v.ECUs = ecus[vin]
	return v, s.wrap("vehicle "+vin, err)
}

// ListVehicles implements server.Store: keyset pagination by VIN, so every
// page is an index range scan however deep it is.
func (s *Store) ListVehicles(ctx context.Context, f server.VehicleFilter) ([]server.Vehicle, error) {
	if f.Limit <= 0 || f.Limit > 1000 {
		f.Limit = 100
	}
	var rows *sql.Rows
	var err error
	if f.HardwareID != "" {
		// Walks the (hardware_id, vin) index in order and stops at the limit.
		rows, err = s.query(ctx, `SELECT `+prefixCols("v.", vehicleCols)+` FROM ecus e JOIN vehicles v ON v.vin = e.vin
			WHERE e.hardware_id = ? AND e.vin > ? ORDER BY e.vin LIMIT ?`, f.HardwareID, f.After, f.Limit)
	} else {
		rows, err = s.query(ctx, `SELECT `+vehicleCols+` FROM vehicles WHERE vin > ? ORDER BY vin LIMIT ?`, f.After, f.Limit)
	}
	if err != nil {
		return nil, s.wrap("list vehicles", err)
	}
	defer rows.Close()
	var out []server.Vehicle
	var vins []string
	for rows.Next() {
		v, err := scanVehicle(rows)
		if err != nil {
			return nil, s.wrap("list vehicles", err)
		}
		if len(vins) > 0 && vins[len(vins)-1] == v.VIN {
			continue // two ECUs of one vehicle with that hardware ID
		}
		out = append(out, v)
		vins = append(vins, v.VIN)
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("list vehicles", err)
	}
	ecus, err := s.loadECUs(ctx, vins)
	if err != nil {
		return nil, s.wrap("list vehicles", err)
	}
	for i := range out {
		out[i].ECUs = ecus[out[i].VIN]
	}
	return out, nil
}

func prefixCols(p, cols string) string {
	parts := strings.Split(cols, ", ")
	for i := range parts {
		parts[i] = p + parts[i]
	}
	return strings.Join(parts, ", ")
}

// ReportECUs implements server.Store.
func (s *Store) ReportECUs(ctx context.Context, vin string, ecus []server.ECU, h server.Health, at time.Time) error {
	return s.wrap("report ECUs of "+vin, s.tx(ctx, func(tx *sql.Tx) error {
		q, args := `UPDATE vehicles SET last_seen = ?, dtcs = ?`, []any{micros(at), h.Active}
		if !h.SignalAt.IsZero() {
			q, args = q+`, signal_bars = ?, signal_at = ?`, append(args, h.SignalBars, micros(h.SignalAt))
		}
		res, err := s.txExec(ctx, tx, q+` WHERE vin = ?`, append(args, vin)...)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return sql.ErrNoRows
		}
		if len(h.Episodes) > 0 {
			if err := s.pruneEpisodes(ctx, tx, vin); err != nil {
				return err
			}
		}
		for _, e := range h.Episodes {
			if _, err := s.txExec(ctx, tx, `INSERT INTO dtc_episodes (vin, code, first_seen, last_seen, count, detail, cleared_at, signal_bars, reported_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (vin, code, first_seen) DO UPDATE SET last_seen = excluded.last_seen,
				count = excluded.count, detail = excluded.detail, cleared_at = excluded.cleared_at, signal_bars = excluded.signal_bars,
				reported_at = excluded.reported_at`,
				vin, e.Code, micros(e.FirstSeen), micros(e.LastSeen), e.Count, e.Detail, micros(e.ClearedAt), e.SignalBars, micros(at)); err != nil {
				return err
			}
		}
		for _, e := range ecus {
			res, err := s.txExec(ctx, tx, `UPDATE ecus SET installed_target = ?, installed_version = ?, installed_sha256 = ?, reported_at = ? WHERE vin = ? AND serial = ?`,
				e.InstalledTarget, e.InstalledVersion, e.InstalledSHA256, micros(at), vin, e.Serial)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				return fmt.Errorf("ECU %s: %w", e.Serial, sql.ErrNoRows)
			}
		}
		return nil
	}))
}

// pruneEpisodes keeps a vehicle's trouble code episodes under
// MaxEpisodesPerVehicle, with room for one more report: the least recently
// seen go first. A vehicle reports at most 32 per check-in, so no
// check-in, however hostile, grows the table past the cap.
func (s *Store) pruneEpisodes(ctx context.Context, tx *sql.Tx, vin string) error {
	const keep = server.MaxEpisodesPerVehicle - 32
	var n int
	if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM dtc_episodes WHERE vin = ?`), vin).Scan(&n); err != nil {
		return err
	}
	if n <= keep {
		return nil
	}
	_, err := s.txExec(ctx, tx, `DELETE FROM dtc_episodes WHERE vin = ? AND (code, first_seen) NOT IN
		(SELECT code, first_seen FROM dtc_episodes WHERE vin = ? ORDER BY last_seen DESC, first_seen DESC LIMIT ?)`, vin, vin, keep)
	return err
}

// UseNonce implements server.Store.
func (s *Store) UseNonce(ctx context.Context, vin, nonce string, at time.Time) error {
	_, err := s.exec(ctx, `INSERT INTO nonces (vin, nonce, used_at) VALUES (?, ?, ?)`, vin, nonce, micros(at))
	return s.wrap("nonce", err)
}

// PruneNonces implements server.Store.
func (s *Store) PruneNonces(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.exec(ctx, `DELETE FROM nonces WHERE used_at < ?`, micros(before))
	if err != nil {
		return 0, s.wrap("prune nonces", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// VehicleKey implements server.Store.
func (s *Store) VehicleKey(ctx context.Context, vin string) ([]byte, error) {
	var key []byte
	err := s.queryRow(ctx, `SELECT public_key FROM vehicles WHERE vin = ?`, vin).Scan(&key)
	return key, s.wrap("key of "+vin, err)
}

// --- jobs ---

const jobCols = `id, vin, ecu_serial, ecu_type, target_path, version, forced, reason, state, created_by, created_at, updated_at, attempts, max_attempts, next_attempt_at, cancel_requested, phase, origin, campaign_id, maintenance_window`

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
		j.CampaignID, window}
}

func scanJob(sc interface{ Scan(...any) error }) (server.Job, error) {
	var j server.Job
	var forced, cancel int
	var created, updated, next int64
	var window string
	err := sc.Scan(&j.ID, &j.VIN, &j.ECUSerial, &j.ECUType, &j.TargetPath, &j.Version, &forced, &j.Reason, &j.State, &j.CreatedBy,
		&created, &updated, &j.Attempts, &j.MaxAttempts, &next, &cancel, &j.Phase, &j.Origin, &j.CampaignID, &window)
	j.Forced, j.CancelRequested = forced == 1, cancel == 1
	j.CreatedAt, j.UpdatedAt, j.NextAttemptAt = fromMicros(created), fromMicros(updated), fromMicros(next)
	if window != "" {
		j.Window = &server.Window{}
		json.Unmarshal([]byte(window), j.Window)
	}
	return j, err
}

// execer is a database or a transaction.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func (s *Store) insertJob(ctx context.Context, db execer, j server.Job) error {
	if _, err := db.ExecContext(ctx, s.q(`INSERT INTO jobs (`+jobCols+`) VALUES (`+placeholders(20)+`)`), jobArgs(j)...); err != nil {
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

// CreateJob implements server.Store.
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
	}
	return out, nil
}

// Job implements server.Store.
func (s *Store) Job(ctx context.Context, id string) (server.Job, error) {
	js, err := s.jobs(ctx, "job "+id, `id = ?`, id)
	if err != nil {
		return server.Job{}, err
	}
	if len(js) == 0 {
		return server.Job{}, fmt.Errorf("job %s: %w", id, server.ErrNotFound)
	}
	return js[0], nil
}

// JobsByVIN implements server.Store.
func (s *Store) JobsByVIN(ctx context.Context, vin string) ([]server.Job, error) {
	return s.jobs(ctx, "jobs of "+vin, `vin = ? ORDER BY created_at, id`, vin)
}

// OpenJobs implements server.Store.
func (s *Store) OpenJobs(ctx context.Context, limit int) ([]server.Job, error) {
	return s.jobs(ctx, "open jobs", `state IN ('queued', 'in_progress') ORDER BY created_at, id LIMIT ?`, limit)
}

// UpdateJob implements server.Store.
func (s *Store) UpdateJob(ctx context.Context, j server.Job, from string) error {
	res, err := s.exec(ctx, `UPDATE jobs SET state = ?, updated_at = ?, attempts = ?, next_attempt_at = ?, cancel_requested = ?, phase = ?
		WHERE id = ? AND state = ?`,
		j.State, micros(j.UpdatedAt), j.Attempts, micros(j.NextAttemptAt), boolInt(j.CancelRequested), j.Phase, j.ID, from)
	if err != nil {
		return s.wrap("update job "+j.ID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("update job %s: not in state %s: %w", j.ID, from, server.ErrConflict)
	}
	return nil
}

// AddJobEvent implements server.Store.
func (s *Store) AddJobEvent(ctx context.Context, id string, e server.JobEvent) error {
	_, err := s.exec(ctx, `INSERT INTO job_events (job_id, at, kind, percent, message) VALUES (?, ?, ?, ?, ?)`,
		id, micros(e.At), e.Kind, e.Percent, e.Message)
	return s.wrap("job event", err)
}

// --- audit ---

// AppendAudit implements server.Store: the entry is chained after the
// last one. Two replicas appending at once both pick the same next seq;
// the unique index refuses one, which chains again after the other.
func (s *Store) AppendAudit(ctx context.Context, e server.AuditEntry) error {
	_, err := s.appendAudit(ctx, e, nil)
	return err
}

// AppendAuditGenesis appends the chain's genesis entry, its Detail made by
// seal from its place in the chain (seq, the hash before it) and the
// number of unchained entries before the chain, under the same lock as
// every append. It appends nothing and reports false when a genesis entry
// exists (replicas starting together).
func (s *Store) AppendAuditGenesis(ctx context.Context, e server.AuditEntry, seal func(seq int64, prevHash string, legacy int64) string) (bool, error) {
	e.Action = server.GenesisAction
	return s.appendAudit(ctx, e, seal)
}

var errGenesisExists = errors.New("the audit chain has its genesis entry")

func (s *Store) appendAudit(ctx context.Context, e server.AuditEntry, seal func(seq int64, prevHash string, legacy int64) string) (bool, error) {
	e.At = e.At.UTC().Truncate(time.Microsecond)
	var err error
	for range 10 {
		err = s.tx(ctx, func(tx *sql.Tx) error {
			if s.d.LockAudit != nil {
				if err := s.d.LockAudit(ctx, tx); err != nil {
					return err
				}
			}
			var prevSeq int64
			var prevHash string
			err := tx.QueryRowContext(ctx, s.q(`SELECT seq, hash FROM audit ORDER BY id DESC LIMIT 1`)).Scan(&prevSeq, &prevHash)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			e.Seq, e.PrevHash = prevSeq+1, prevHash
			if seal != nil {
				var n, legacy int64
				if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM audit WHERE action = ?`), server.GenesisAction).Scan(&n); err != nil {
					return err
				}
				if n > 0 {
					return errGenesisExists
				}
				if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM audit WHERE seq = 0`)).Scan(&legacy); err != nil {
					return err
				}
				e.Detail = seal(e.Seq, e.PrevHash, legacy)
			}
			e.Hash = server.AuditHash(e.PrevHash, e)
			_, err = tx.ExecContext(ctx, s.q(`INSERT INTO audit (at, actor_id, actor, role, action, subject, detail, seq, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
				micros(e.At), e.ActorID, e.Actor, e.Role, e.Action, e.Subject, e.Detail, e.Seq, e.PrevHash, e.Hash)
			return err
		})
		if err == nil || !s.d.IsUnique(err) {
			break
		}
	}
	if errors.Is(err, errGenesisExists) {
		return false, nil
	}
	return err == nil, s.wrap("audit", err)
}

// AddSoftwareRecord implements server.Store.
func (s *Store) AddSoftwareRecord(ctx context.Context, r server.SoftwareRecord) error {
	_, err := s.exec(ctx, `INSERT INTO software_record (vin, ecu_serial, ecu_type, at, from_version, from_sha256, to_version, to_sha256, via, job_id, campaign_id, outcome, detail)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.VIN, r.ECUSerial, r.ECUType, micros(r.At), r.FromVersion, r.FromSHA256, r.ToVersion, r.ToSHA256, r.Via, r.JobID, r.CampaignID, r.Outcome, r.Detail)
	return s.wrap("software record", err)
}

// AddUSBRecords implements server.Store.
func (s *Store) AddUSBRecords(ctx context.Context, vin string, recs []server.SoftwareRecord, perDay int, since time.Time) ([]server.SoftwareRecord, error) {
	var added []server.SoftwareRecord
	err := s.tx(ctx, func(tx *sql.Tx) error {
		added = nil // a retried transaction starts over
		var locked string
		if err := tx.QueryRowContext(ctx, s.q(`SELECT vin FROM vehicles WHERE vin = ?`+s.d.ForUpdate), vin).Scan(&locked); err != nil {
			return err
		}
		var today int
		if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM software_record WHERE vin = ? AND via = 'usb' AND at >= ?`), vin, micros(since)).Scan(&today); err != nil {
			return err
		}
		for _, r := range recs {
			if today >= perDay {
				return nil
			}
			var one int
			err := tx.QueryRowContext(ctx, s.q(`SELECT 1 FROM software_record WHERE vin = ? AND ecu_serial = ? AND via = 'usb' AND detail = ? LIMIT 1`),
				vin, r.ECUSerial, r.Detail).Scan(&one)
			if err == nil {
				continue // reported before
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			r.VIN, r.Via = vin, "usb"
			if _, err := s.txExec(ctx, tx, `INSERT INTO software_record (vin, ecu_serial, ecu_type, at, from_version, from_sha256, to_version, to_sha256, via, job_id, campaign_id, outcome, detail)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				r.VIN, r.ECUSerial, r.ECUType, micros(r.At), r.FromVersion, r.FromSHA256, r.ToVersion, r.ToSHA256, r.Via, r.JobID, r.CampaignID, r.Outcome, r.Detail); err != nil {
				return err
			}
			added = append(added, r)
			today++
		}
		return nil
	})
	return added, s.wrap("USB installs of "+vin, err)
}

// SoftwareRecords implements server.Store.
func (s *Store) SoftwareRecords(ctx context.Context, vin string, q server.RecordQuery) ([]server.SoftwareRecord, error) {
	q.Limit = min(max(q.Limit, 1), server.MaxRecordPage)
	where, args := `vin = ? AND id > ? ORDER BY id`, []any{vin, q.AfterID}
	if q.NewestFirst {
		before := q.BeforeID
		if before <= 0 {
			before = math.MaxInt64
		}
		where, args = `vin = ? AND id < ? ORDER BY id DESC`, []any{vin, before}
	}
	rows, err := s.query(ctx, `SELECT id, vin, ecu_serial, ecu_type, at, from_version, from_sha256, to_version, to_sha256, via, job_id, campaign_id, outcome, detail
		FROM software_record WHERE `+where+` LIMIT ?`, append(args, q.Limit)...)
	if err != nil {
		return nil, s.wrap("software record", err)
	}
	defer rows.Close()
	out := []server.SoftwareRecord{}
	for rows.Next() {
		var r server.SoftwareRecord
		var at int64
		if err := rows.Scan(&r.ID, &r.VIN, &r.ECUSerial, &r.ECUType, &at, &r.FromVersion, &r.FromSHA256, &r.ToVersion, &r.ToSHA256,
			&r.Via, &r.JobID, &r.CampaignID, &r.Outcome, &r.Detail); err != nil {
			return nil, s.wrap("software record", err)
		}
		r.At = fromMicros(at)
		out = append(out, r)
	}
	return out, s.wrap("software record", rows.Err())
}

// AuditHead implements server.Store.
func (s *Store) AuditHead(ctx context.Context) (int64, string, error) {
	var seq int64
	var hash string
	err := s.queryRow(ctx, `SELECT seq, hash FROM audit ORDER BY id DESC LIMIT 1`).Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", nil
	}
	return seq, hash, s.wrap("audit head", err)
}

// AddAuditCheckpoint implements server.Store. A checkpoint of a head
// already checkpointed replaces the older one (the leader signs the head
// every interval, grown or not, so that a stale checkpoint shows).
func (s *Store) AddAuditCheckpoint(ctx context.Context, c server.AuditCheckpoint) error {
	_, err := s.exec(ctx, `INSERT INTO audit_checkpoints (seq, hash, at, key_id, signature) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (seq) DO UPDATE SET hash = excluded.hash, at = excluded.at, key_id = excluded.key_id, signature = excluded.signature`,
		c.Seq, c.Hash, micros(c.At), c.KeyID, c.Signature)
	return s.wrap("audit checkpoint", err)
}

// AuditCheckpoints implements server.Store.
func (s *Store) AuditCheckpoints(ctx context.Context) ([]server.AuditCheckpoint, error) {
	rows, err := s.query(ctx, `SELECT seq, hash, at, key_id, signature FROM audit_checkpoints ORDER BY seq`)
	if err != nil {
		return nil, s.wrap("audit checkpoints", err)
	}
	defer rows.Close()
	var out []server.AuditCheckpoint
	for rows.Next() {
		var c server.AuditCheckpoint
		var at int64
		if err := rows.Scan(&c.Seq, &c.Hash, &at, &c.KeyID, &c.Signature); err != nil {
			return nil, s.wrap("audit checkpoints", err)
		}
		c.At = fromMicros(at)
		out = append(out, c)
	}
	return out, s.wrap("audit checkpoints", rows.Err())
}

// ListAudit implements server.Store.
func (s *Store) ListAudit(ctx context.Context, after int64, limit int) ([]server.AuditEntry, error) {
	return s.listAudit(ctx, `id > ? ORDER BY id`, after, limit)
}

// RecentAudit implements server.Store.
func (s *Store) RecentAudit(ctx context.Context, before int64, limit int) ([]server.AuditEntry, error) {
	if before <= 0 {
		before = math.MaxInt64
	}
	return s.listAudit(ctx, `id < ? ORDER BY id DESC`, before, limit)
}

func (s *Store) listAudit(ctx context.Context, where string, bound int64, limit int) ([]server.AuditEntry, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	rows, err := s.query(ctx, `SELECT id, at, actor_id, actor, role, action, subject, detail, seq, prev_hash, hash FROM audit WHERE `+where+` LIMIT ?`, bound, limit)
	if err != nil {
		return nil, s.wrap("audit", err)
	}
	defer rows.Close()
	var out []server.AuditEntry
	for rows.Next() {
		var e server.AuditEntry
		var at int64
		if err := rows.Scan(&e.ID, &at, &e.ActorID, &e.Actor, &e.Role, &e.Action, &e.Subject, &e.Detail, &e.Seq, &e.PrevHash, &e.Hash); err != nil {
			return nil, s.wrap("audit", err)
		}
		e.At = fromMicros(at)
		out = append(out, e)
	}
	return out, s.wrap("audit", rows.Err())
}

// --- director ---

// DirectorHead implements server.Store; a VIN never signed has a zero head.
func (s *Store) DirectorHead(ctx context.Context, vin string) (server.DirectorHead, error) {
	h := server.DirectorHead{VIN: vin}
	var exp int64
	err := s.queryRow(ctx, `SELECT targets_version, snapshot_version, timestamp_version, assignment_hash, timestamp_expires FROM director_heads WHERE vin = ?`, vin).
		Scan(&h.TargetsVersion, &h.SnapshotVersion, &h.TimestampVersion, &h.AssignmentHash, &exp)
	if errors.Is(err, sql.ErrNoRows) {
		return h, nil
	}
	h.TimestampExpires = fromMicros(exp)
	return h, s.wrap("director head "+vin, err)
}

// directorKeep is how many old versions of each director file are kept for
// vehicles in the middle of a refresh.
const directorKeep = 8

// SaveDirector implements server.Store.
func (s *Store) SaveDirector(ctx context.Context, prev, next server.DirectorHead, files []server.DirectorMeta) error {
	return s.wrap("save director metadata of "+next.VIN, s.tx(ctx, func(tx *sql.Tx) error {
		// The row may exist with version 0 (a USB bundle was counted first).
		res, err := s.txExec(ctx, tx, `INSERT INTO director_heads (vin, targets_version, snapshot_version, timestamp_version, assignment_hash, timestamp_expires) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (vin) DO UPDATE SET targets_version = excluded.targets_version, snapshot_version = excluded.snapshot_version,
			timestamp_version = excluded.timestamp_version, assignment_hash = excluded.assignment_hash, timestamp_expires = excluded.timestamp_expires
			WHERE director_heads.timestamp_version = ?`,
			next.VIN, next.TargetsVersion, next.SnapshotVersion, next.TimestampVersion, next.AssignmentHash, micros(next.TimestampExpires), prev.TimestampVersion)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return server.ErrConflict
		}
		for _, f := range files {
			if _, err := s.txExec(ctx, tx, `INSERT INTO director_files (vin, role, version, body, expires) VALUES (?, ?, ?, ?, ?)`,
				f.VIN, f.Role, f.Version, f.Body, micros(f.Expires)); err != nil {
				return err
			}
			if _, err := s.txExec(ctx, tx, `DELETE FROM director_files WHERE vin = ? AND role = ? AND version < ?`,
				f.VIN, f.Role, f.Version-directorKeep); err != nil {
				return err
			}
		}
		return nil
	}))
}

// NextBundleVersion implements server.Store.
func (s *Store) NextBundleVersion(ctx context.Context, vin string) (int64, error) {
	var v int64
	err := s.queryRow(ctx, `INSERT INTO director_heads (vin, targets_version, snapshot_version, timestamp_version, assignment_hash, timestamp_expires, bundle_version)
		VALUES (?, 0, 0, 0, '', 0, 1)
		ON CONFLICT (vin) DO UPDATE SET bundle_version = director_heads.bundle_version + 1
		RETURNING bundle_version`, vin).Scan(&v)
	return v, s.wrap("next bundle version of "+vin, err)
}

// DirectorFile implements server.Store.
func (s *Store) DirectorFile(ctx context.Context, vin, role string, version int64) (server.DirectorMeta, error) {
	m := server.DirectorMeta{VIN: vin, Role: role, Version: version}
	var exp int64
	err := s.queryRow(ctx, `SELECT body, expires FROM director_files WHERE vin = ? AND role = ? AND version = ?`, vin, role, version).Scan(&m.Body, &exp)
	m.Expires = fromMicros(exp)
	return m, s.wrap("director "+role+" v"+strconv.FormatInt(version, 10)+" of "+vin, err)
}

// --- leases ---

// AcquireLease implements server.Store: it takes the lease if it is free,
// expired, or already held by holder (renewal).
func (s *Store) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration, now time.Time) (bool, error) {
	res, err := s.exec(ctx, `INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
		WHERE leases.expires < ? OR leases.holder = ?`, name, holder, micros(now.Add(ttl)), micros(now), holder)
	if err != nil {
		return false, s.wrap("acquire lease "+name, err)
	}
	n, err := res.RowsAffected()
	return n == 1, s.wrap("acquire lease "+name, err)
}

// AcquireLeadership takes the named lease if it is free or expired, or
// renews it for its holder, and returns its epoch. The epoch grows each
// time the lease changes hands (or lapsed), so writes fenced by an older
// epoch fail.
func (s *Store) AcquireLeadership(ctx context.Context, name, holder string, ttl time.Duration, now time.Time) (int64, bool, error) {
	var epoch int64
	err := s.queryRow(ctx, `INSERT INTO leases (name, holder, expires, epoch) VALUES (?, ?, ?, 1)
		ON CONFLICT (name) DO UPDATE SET
			epoch = CASE WHEN leases.holder = excluded.holder AND leases.expires >= ? THEN leases.epoch ELSE leases.epoch + 1 END,
			holder = excluded.holder, expires = excluded.expires
		WHERE leases.expires < ? OR leases.holder = excluded.holder
		RETURNING epoch`, name, holder, micros(now.Add(ttl)), micros(now), micros(now)).Scan(&epoch)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	return epoch, err == nil, s.wrap("acquire leadership "+name, err)
}

// fenced runs fn in a transaction that first checks f still holds its
// lease at its epoch (locking the lease row, so the lease cannot change
// hands before the transaction ends); server.ErrFenced otherwise.
func (s *Store) fenced(ctx context.Context, f server.Fence, now time.Time, fn func(tx *sql.Tx) error) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var holder string
		var epoch, expires int64
		err := s.txQueryRow(ctx, tx, `SELECT holder, epoch, expires FROM leases WHERE name = ?`+s.d.ForUpdate, f.Name).Scan(&holder, &epoch, &expires)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && (holder != f.Holder || epoch != f.Epoch || expires < micros(now))) {
			return fmt.Errorf("lease %s (epoch %d): %w", f.Name, f.Epoch, server.ErrFenced)
		}
		if err != nil {
			return err
		}
		return fn(tx)
	})
}

// ReleaseLease implements server.Store.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	_, err := s.exec(ctx, `DELETE FROM leases WHERE name = ? AND holder = ?`, name, holder)
	return s.wrap("release lease "+name, err)
}

// --- owners ---

// SetLinkCode implements server.Store.
func (s *Store) SetLinkCode(ctx context.Context, vin, codeHash string, expires time.Time) error {
	_, err := s.exec(ctx, `INSERT INTO link_codes (vin, code_hash, expires) VALUES (?, ?, ?)
		ON CONFLICT (vin) DO UPDATE SET code_hash = excluded.code_hash, expires = excluded.expires`, vin, codeHash, micros(expires))
	return s.wrap("set link code", err)
}

// TakeLinkCode implements server.Store.
func (s *Store) TakeLinkCode(ctx context.Context, vin, codeHash string, now time.Time) error {
	res, err := s.exec(ctx, `DELETE FROM link_codes WHERE vin = ? AND code_hash = ? AND expires > ?`, vin, codeHash, micros(now))
	if err != nil {
		return s.wrap("take link code", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("link code for %s: %w", vin, server.ErrNotFound)
	}
	return nil
}

const linkCols = `vin, owner_id, linked_at, subscription_ends, pending_owner_id, pending_since`

func scanLink(sc interface{ Scan(...any) error }) (server.Link, error) {
	var l server.Link
	var linked, ends, since int64
	err := sc.Scan(&l.VIN, &l.OwnerID, &linked, &ends, &l.PendingOwnerID, &since)
	l.LinkedAt, l.SubscriptionEnds, l.PendingSince = fromMicros(linked), fromMicros(ends), fromMicros(since)
	return l, err
}

// Link implements server.Store.
func (s *Store) Link(ctx context.Context, vin string) (server.Link, error) {
	l, err := scanLink(s.queryRow(ctx, `SELECT `+linkCols+` FROM links WHERE vin = ?`, vin))
	return l, s.wrap("link of "+vin, err)
}

// LinksByOwner implements server.Store.
func (s *Store) LinksByOwner(ctx context.Context, owner string) ([]server.Link, error) {
	rows, err := s.query(ctx, `SELECT `+linkCols+` FROM links WHERE owner_id = ? ORDER BY vin`, owner)
	if err != nil {
		return nil, s.wrap("links", err)
	}
	defer rows.Close()
	var out []server.Link
	for rows.Next() {
		l, err := scanLink(rows)
		if err != nil {
			return nil, s.wrap("links", err)
		}
		out = append(out, l)
	}
	return out, s.wrap("links", rows.Err())
}

// SaveLink implements server.Store.
func (s *Store) SaveLink(ctx context.Context, l server.Link) error {
	_, err := s.exec(ctx, `INSERT INTO links (`+linkCols+`) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (vin) DO UPDATE SET owner_id = excluded.owner_id, linked_at = excluded.linked_at,
		subscription_ends = excluded.subscription_ends, pending_owner_id = excluded.pending_owner_id, pending_since = excluded.pending_since`,
		l.VIN, l.OwnerID, micros(l.LinkedAt), micros(l.SubscriptionEnds), l.PendingOwnerID, micros(l.PendingSince))
	return s.wrap("save link", err)
}

// DeleteLink implements server.Store.
func (s *Store) DeleteLink(ctx context.Context, vin string) error {
	_, err := s.exec(ctx, `DELETE FROM links WHERE vin = ?`, vin)
	return s.wrap("delete link", err)
}

// ReplaceECU implements server.Store.
func (s *Store) ReplaceECU(ctx context.Context, vin, oldSerial string, e server.ECU, key []byte) error {
	return s.wrap("replace ECU "+oldSerial+" of "+vin, s.tx(ctx, func(tx *sql.Tx) error {
		res, err := s.txExec(ctx, tx, `UPDATE ecus SET serial = ?, hardware_id = ?, installed_target = '', installed_version = '', installed_sha256 = '', reported_at = 0
			WHERE vin = ? AND serial = ?`, e.Serial, e.HardwareID, vin, oldSerial)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return sql.ErrNoRows
		}
		// The refused requests were signed with the old key's successor,
		// or by someone else: evidence about a key that is gone.
		_, err = s.txExec(ctx, tx, `UPDATE vehicles SET public_key = ?, bad_signature_at = 0, bad_signature_count = 0, checkin_refused_at = 0, checkin_refused = '' WHERE vin = ?`, key, vin)
		return err
	}))
}

// DTCEpisodes implements server.Store.
func (s *Store) DTCEpisodes(ctx context.Context, vin string, since time.Time) ([]server.DTCEpisode, error) {
	rows, err := s.query(ctx, `SELECT code, first_seen, last_seen, count, detail, cleared_at, signal_bars, reported_at
		FROM dtc_episodes WHERE vin = ? AND (cleared_at = 0 OR cleared_at >= ?) ORDER BY last_seen DESC LIMIT 100`, vin, micros(since))
	if err != nil {
		return nil, s.wrap("DTC episodes of "+vin, err)
	}
	defer rows.Close()
	var out []server.DTCEpisode
	for rows.Next() {
		var e server.DTCEpisode
		var first, last, cleared, reported int64
		if err := rows.Scan(&e.Code, &first, &last, &e.Count, &e.Detail, &cleared, &e.SignalBars, &reported); err != nil {
			return nil, s.wrap("DTC episodes of "+vin, err)
		}
		e.FirstSeen, e.LastSeen, e.ClearedAt, e.ReportedAt = fromMicros(first), fromMicros(last), fromMicros(cleared), fromMicros(reported)
		out = append(out, e)
	}
	return out, s.wrap("DTC episodes of "+vin, rows.Err())
}

// RecordRequestFault implements server.Store.
func (s *Store) RecordRequestFault(ctx context.Context, vin string, f server.RequestFault, at time.Time) error {
	var err error
	switch f.Kind {
	case server.FaultBadSignature:
		_, err = s.exec(ctx, `UPDATE vehicles SET bad_signature_at = ?, bad_signature_count = bad_signature_count + 1 WHERE vin = ?`, micros(at), vin)
	case server.FaultClockSkew:
		_, err = s.exec(ctx, `UPDATE vehicles SET clock_skew_at = ?, clock_skew_micros = ? WHERE vin = ?`, micros(at), f.Skew.Microseconds(), vin)
	case server.FaultCheckInRefused:
		_, err = s.exec(ctx, `UPDATE vehicles SET checkin_refused_at = ?, checkin_refused = ? WHERE vin = ?`, micros(at), truncate(f.Detail, 512), vin)
	default:
		return fmt.Errorf("request fault %q: want %s, %s or %s", f.Kind, server.FaultBadSignature, server.FaultClockSkew, server.FaultCheckInRefused)
	}
	return s.wrap("record "+f.Kind+" of "+vin, err)
}

// RecordFindings implements server.Store.
func (s *Store) RecordFindings(ctx context.Context, vin string, codes []string, at time.Time) (opened, resolved []string, err error) {
	err = s.wrap("record findings of "+vin, s.tx(ctx, func(tx *sql.Tx) error {
		opened, resolved = nil, nil
		rows, err := s.txQuery(ctx, tx, `SELECT code, first_seen FROM findings WHERE vin = ? AND resolved_at = 0`, vin)
		if err != nil {
			return err
		}
		open := map[string]int64{}
		for rows.Next() {
			var code string
			var first int64
			if err := rows.Scan(&code, &first); err != nil {
				rows.Close()
				return err
			}
			open[code] = first
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		now := micros(at)
		for _, code := range codes {
			if first, ok := open[code]; ok {
				delete(open, code)
				_, err = s.txExec(ctx, tx, `UPDATE findings SET last_seen = ? WHERE vin = ? AND code = ? AND first_seen = ?`, now, vin, code, first)
			} else {
				opened = append(opened, code)
				_, err = s.txExec(ctx, tx, `INSERT INTO findings (vin, code, first_seen, last_seen, resolved_at) VALUES (?, ?, ?, ?, 0)
					ON CONFLICT (vin, code, first_seen) DO NOTHING`, vin, code, now, now)
			}
			if err != nil {
				return err
			}
		}
		for code, first := range open {
			resolved = append(resolved, code)
			if _, err := s.txExec(ctx, tx, `UPDATE findings SET resolved_at = ? WHERE vin = ? AND code = ? AND first_seen = ?`, now, vin, code, first); err != nil {
				return err
			}
		}
		return nil
	}))
	sort.Strings(resolved)
	return opened, resolved, err
}

// Findings implements server.Store.
func (s *Store) Findings(ctx context.Context, vin string, limit int) ([]server.Finding, error) {
	rows, err := s.query(ctx, `SELECT code, first_seen, last_seen, resolved_at FROM findings WHERE vin = ? ORDER BY first_seen DESC LIMIT ?`, vin, limit)
	if err != nil {
		return nil, s.wrap("findings of "+vin, err)
	}
	defer rows.Close()
	var out []server.Finding
	for rows.Next() {
		f := server.Finding{VIN: vin}
		var first, last, resolved int64
		if err := rows.Scan(&f.Code, &first, &last, &resolved); err != nil {
			return nil, s.wrap("findings of "+vin, err)
		}
		f.FirstSeen, f.LastSeen, f.ResolvedAt = fromMicros(first), fromMicros(last), fromMicros(resolved)
		out = append(out, f)
	}
	return out, s.wrap("findings of "+vin, rows.Err())
}

// FindingCounts implements server.Store.
func (s *Store) FindingCounts(ctx context.Context, since time.Time) ([]server.FindingCount, error) {
	rows, err := s.query(ctx, `SELECT code, SUM(CASE WHEN resolved_at = 0 THEN 1 ELSE 0 END), SUM(CASE WHEN resolved_at > 0 THEN 1 ELSE 0 END)
		FROM findings WHERE resolved_at = 0 OR resolved_at >= ? GROUP BY code ORDER BY code`, micros(since))
	if err != nil {
		return nil, s.wrap("finding counts", err)
	}
	defer rows.Close()
	var out []server.FindingCount
	for rows.Next() {
		var c server.FindingCount
		if err := rows.Scan(&c.Code, &c.Open, &c.Resolved); err != nil {
			return nil, s.wrap("finding counts", err)
		}
		out = append(out, c)
	}
	return out, s.wrap("finding counts", rows.Err())
}

// JobStates implements server.Store.
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

// RepoVersion implements server.Store.
func (s *Store) RepoVersion(ctx context.Context) (int64, error) {
	var v int64
	err := s.queryRow(ctx, `SELECT version FROM repo_versions WHERE name = 'image'`).Scan(&v)
	return v, s.wrap("repository version", err)
}

// SetRepoVersion implements server.Store.
func (s *Store) SetRepoVersion(ctx context.Context, v int64) error {
	_, err := s.exec(ctx, `UPDATE repo_versions SET version = ? WHERE name = 'image' AND version < ?`, v, v)
	return s.wrap("raise repository version", err)
}

// truncate cuts s to at most n bytes (evidence text is bounded).
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
