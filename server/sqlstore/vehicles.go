package sqlstore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/server"
)

// CreateVehicle implements server.Vehicles.
func (s *Store) CreateVehicle(ctx context.Context, v server.Vehicle) error {
	return s.wrap("create vehicle "+v.VIN, s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := s.txExec(ctx, tx, `INSERT INTO vehicles (vin, model, year, region, public_key, created_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, 0)`,
			v.VIN, v.Model, v.Year, v.Region, v.PublicKey, micros(v.CreatedAt)); err != nil {
			return err
		}
		for i, e := range v.ECUs {
			if _, err := s.txExec(ctx, tx, `INSERT INTO ecus (serial, vin, type, hardware_id, position, public_key, encryption_key) VALUES (?, ?, ?, ?, ?, ?, ?)`,
				e.Serial, v.VIN, e.Type, e.HardwareID, i, encodeKey(e.PublicKey), encodeKey(e.EncryptionKey)); err != nil {
				return err
			}
		}
		return nil
	}))
}

const vehicleCols = `vin, model, year, region, public_key, created_at, last_seen, auth_state, auth_at, auth_message, auth_expires, dtcs, ` +
	`signal_bars, signal_at, bad_signature_at, bad_signature_count, clock_skew_at, clock_skew_micros, checkin_refused_at, checkin_refused, time_untrusted`

func scanVehicle(sc interface{ Scan(...any) error }) (server.Vehicle, error) {
	var v server.Vehicle
	var created, seen, authAt, authExp, signalAt, badAt, skewAt, skew, refusedAt int64
	err := sc.Scan(&v.VIN, &v.Model, &v.Year, &v.Region, &v.PublicKey, &created, &seen, &v.AuthState, &authAt, &v.AuthMessage, &authExp, &v.DTCs,
		&v.SignalBars, &signalAt, &badAt, &v.RequestFaults.BadSignatureCount, &skewAt, &skew, &refusedAt, &v.RequestFaults.CheckInRefused, &v.TimeUntrusted)
	v.RequestFaults.CheckInRefusedAt = fromMicros(refusedAt)
	v.CreatedAt, v.LastSeen, v.AuthAt, v.AuthExpires = fromMicros(created), fromMicros(seen), fromMicros(authAt), fromMicros(authExp)
	v.SignalAt, v.RequestFaults.BadSignatureAt, v.RequestFaults.ClockSkewAt = fromMicros(signalAt), fromMicros(badAt), fromMicros(skewAt)
	v.RequestFaults.ClockSkew = time.Duration(skew) * time.Microsecond
	return v, err
}

// ecuCols are an ECU's columns, as ecuRow scans them.
const ecuCols = `serial, type, hardware_id, installed_target, installed_version, installed_sha256, reported_at, public_key, report_counter, attack, attack_at, encryption_key`

// ecuRow scans ecuCols; every column may be NULL (a vehicle without
// ECUs, joined).
type ecuRow struct {
	serial, typ, hw, target, version, sum, key, attack, enc sql.NullString
	rep, counter, attackAt                                  sql.NullInt64
}

func (r *ecuRow) dest() []any {
	return []any{&r.serial, &r.typ, &r.hw, &r.target, &r.version, &r.sum, &r.rep, &r.key, &r.counter, &r.attack, &r.attackAt, &r.enc}
}

func (r *ecuRow) ecu() server.ECU {
	e := server.ECU{Serial: r.serial.String, Type: r.typ.String, HardwareID: r.hw.String, InstalledTarget: r.target.String,
		InstalledVersion: r.version.String, InstalledSHA256: r.sum.String, ReportedAt: fromMicros(r.rep.Int64),
		ReportCounter: r.counter.Int64, Attack: r.attack.String, AttackAt: fromMicros(r.attackAt.Int64)}
	if r.key.String != "" {
		e.PublicKey, _ = base64.StdEncoding.DecodeString(r.key.String)
	}
	if r.enc.String != "" {
		e.EncryptionKey, _ = base64.StdEncoding.DecodeString(r.enc.String)
	}
	return e
}

// encodeKey is how an ECU's key is stored: base64, ” for none.
func encodeKey(k []byte) string {
	if len(k) == 0 {
		return ""
	}
	return base64.StdEncoding.EncodeToString(k)
}

// RecordAuth implements server.Vehicles.
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
	rows, err := s.query(ctx, `SELECT vin, `+ecuCols+`
		FROM ecus WHERE vin IN (`+ph+`) ORDER BY vin, position`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var vin string
		var e ecuRow
		if err := rows.Scan(append([]any{&vin}, e.dest()...)...); err != nil {
			return nil, err
		}
		out[vin] = append(out[vin], e.ecu())
	}
	return out, rows.Err()
}

// Vehicle implements server.Vehicles.
// The vehicle and its ECUs are one query (every director poll loads them).
func (s *Store) Vehicle(ctx context.Context, vin string) (server.Vehicle, error) {
	rows, err := s.query(ctx, `SELECT `+prefixCols("v.", vehicleCols)+`, `+prefixCols("e.", ecuCols)+`
		FROM vehicles v LEFT JOIN ecus e ON e.vin = v.vin WHERE v.vin = ? ORDER BY e.position`, vin)
	if err != nil {
		return server.Vehicle{}, s.wrap("vehicle "+vin, err)
	}
	defer rows.Close()
	var v server.Vehicle
	found := false
	for rows.Next() {
		var e ecuRow
		row, err := scanVehicle(scanWith{rows, e.dest()})
		if err != nil {
			return server.Vehicle{}, s.wrap("vehicle "+vin, err)
		}
		if !found {
			v, found = row, true
		}
		if e.serial.Valid {
			v.ECUs = append(v.ECUs, e.ecu())
		}
	}
	if err := rows.Err(); err != nil {
		return server.Vehicle{}, s.wrap("vehicle "+vin, err)
	}
	if !found {
		return v, server.NoVehicle(vin)
	}
	return v, nil
}

// ListVehicles implements server.Vehicles: keyset pagination by VIN, so every
// page is an index range scan however deep it is.
func (s *Store) ListVehicles(ctx context.Context, f server.VehicleFilter) ([]server.Vehicle, error) {
	if f.Limit <= 0 || f.Limit > 1000 {
		f.Limit = 100
	}
	var rows *sql.Rows
	var err error
	region, regionArgs := "", []any{}
	if len(f.Regions) > 0 {
		region = ` AND v.region IN (` + placeholders(len(f.Regions)) + `)`
		for _, r := range f.Regions {
			regionArgs = append(regionArgs, r)
		}
	}
	if f.HardwareID != "" {
		// Walks the (hardware_id, vin) index in order and stops at the limit.
		args := append(append([]any{f.HardwareID, f.After}, regionArgs...), f.Limit)
		rows, err = s.query(ctx, `SELECT `+prefixCols("v.", vehicleCols)+` FROM ecus e JOIN vehicles v ON v.vin = e.vin
			WHERE e.hardware_id = ? AND e.vin > ?`+region+` ORDER BY e.vin LIMIT ?`, args...)
	} else {
		args := append(append([]any{f.After}, regionArgs...), f.Limit)
		rows, err = s.query(ctx, `SELECT `+prefixCols("v.", vehicleCols)+` FROM vehicles v WHERE v.vin > ?`+region+` ORDER BY v.vin LIMIT ?`, args...)
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

// ReportECUs implements server.Vehicles.
// Every check-in makes one, so they are group-committed where the dialect
// does (SQLite), each in a savepoint of its own.
func (s *Store) ReportECUs(ctx context.Context, vin string, ecus []server.ECU, h server.Health, at time.Time) error {
	return s.wrap("report ECUs of "+vin, s.grouped(ctx, true, func(ctx context.Context, tx *sql.Tx) error {
		q, args := `UPDATE vehicles SET last_seen = ?, dtcs = ?, time_untrusted = ?`, []any{micros(at), h.Active, truncate(h.TimeUntrusted, 512)}
		if !h.SignalAt.IsZero() {
			q, args = q+`, signal_bars = ?, signal_at = ?`, append(args, h.SignalBars, micros(h.SignalAt))
		}
		if len(ecus) > 0 {
			// A report changes the assignment's inputs when an ECU reports
			// for the first time or runs another image than it last said
			// (the ECU rows are still the old ones here).
			var when strings.Builder
			in, cases := make([]any, 0, len(ecus)), make([]any, 0, 2*len(ecus))
			for _, e := range ecus {
				when.WriteString(` WHEN ? THEN ?`)
				in, cases = append(in, e.Serial), append(cases, e.Serial, e.InstalledSHA256)
			}
			q += `, director_gen = director_gen + CASE WHEN EXISTS (SELECT 1 FROM ecus e WHERE e.vin = vehicles.vin AND e.serial IN (` + placeholders(len(ecus)) +
				`) AND (e.reported_at = 0 OR e.installed_sha256 <> CASE e.serial` + when.String() + ` END)) THEN 1 ELSE 0 END`
			args = append(append(args, in...), cases...)
		}
		where := ` WHERE vin = ?`
		if h.Unsigned {
			where += ` AND NOT EXISTS (SELECT 1 FROM ecus k WHERE k.vin = vehicles.vin AND k.public_key <> '')`
		}
		res, err := s.txExec(ctx, tx, q+where, append(args, vin)...)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			var one int
			if h.Unsigned && tx.QueryRowContext(ctx, s.q(`SELECT 1 FROM vehicles WHERE vin = ?`), vin).Scan(&one) == nil {
				return server.CodedErrorf(server.KindConflict, errcode.ECUMissing, "%s's ECUs have keys of their own, and the check-in carries no report signed by them", vin)
			}
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
				vin, e.Code, micros(e.FirstSeen), micros(e.LastSeen), e.Count, e.Detail, micros(e.ClearedAt), barsOrUnknown(e.SignalBars), micros(at)); err != nil {
				return err
			}
		}
		for _, e := range ecus {
			q, args := `UPDATE ecus SET installed_target = ?, installed_version = ?, installed_sha256 = ?, reported_at = ?`,
				[]any{e.InstalledTarget, e.InstalledVersion, e.InstalledSHA256, micros(at)}
			if e.Attack != "" {
				q, args = q+`, attack = ?, attack_at = ?`, append(args, truncate(e.Attack, 512), micros(at))
			}
			where, wargs := ` WHERE vin = ? AND serial = ?`, []any{vin, e.Serial}
			if e.ReportCounter > 0 {
				// A signed report's counter only rises: a report played
				// back from an earlier cycle changes nothing.
				q, args = q+`, report_counter = ?`, append(args, e.ReportCounter)
				where, wargs = where+` AND report_counter < ?`, append(wargs, e.ReportCounter)
			}
			res, err := s.txExec(ctx, tx, q+where, append(args, wargs...)...)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				var one int
				if e.ReportCounter > 0 && tx.QueryRowContext(ctx, s.q(`SELECT 1 FROM ecus WHERE vin = ? AND serial = ?`), vin, e.Serial).Scan(&one) == nil {
					return server.CodedErrorf(server.KindConflict, errcode.ECUReportReplayed, "ECU %s: report counter %d is not above the last accepted one", e.Serial, e.ReportCounter)
				}
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

// UseNonce implements server.Vehicles.
// Every signed vehicle request uses one, so they are group-committed
// where the dialect does (SQLite).
func (s *Store) UseNonce(ctx context.Context, vin, nonce string, at time.Time) error {
	const insert = `INSERT INTO nonces (vin, nonce, used_at) VALUES (?, ?, ?) ON CONFLICT (vin, nonce) DO NOTHING`
	used := false
	took := func(res sql.Result, err error) error {
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		used = n == 0
		return err
	}
	var err error
	if s.d.GroupCommit {
		err = s.grouped(ctx, false, func(ctx context.Context, tx *sql.Tx) error {
			return took(s.txExec(ctx, tx, insert, vin, nonce, micros(at)))
		})
	} else {
		err = took(s.exec(ctx, insert, vin, nonce, micros(at))) // one statement: no transaction to wrap it in
	}
	if err == nil && used {
		return server.Errorf(server.KindConflict, "nonce: already used")
	}
	return s.wrap("nonce", err)
}

// PruneNonces implements server.Vehicles.
func (s *Store) PruneNonces(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.exec(ctx, `DELETE FROM nonces WHERE used_at < ?`, micros(before))
	if err != nil {
		return 0, s.wrap("prune nonces", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// VehicleKey implements server.Vehicles.
func (s *Store) VehicleKey(ctx context.Context, vin string) ([]byte, error) {
	var key []byte
	err := s.queryRow(ctx, `SELECT public_key FROM vehicles WHERE vin = ?`, vin).Scan(&key)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, server.NoVehicle(vin)
	}
	return key, s.wrap("key of "+vin, err)
}

// ReplaceECU implements server.Vehicles.
func (s *Store) ReplaceECU(ctx context.Context, vin, oldSerial string, e server.ECU, key []byte) error {
	return s.wrap("replace ECU "+oldSerial+" of "+vin, s.tx(ctx, func(tx *sql.Tx) error {
		res, err := s.txExec(ctx, tx, `UPDATE ecus SET serial = ?, hardware_id = ?, installed_target = '', installed_version = '', installed_sha256 = '', reported_at = 0,
			public_key = ?, report_counter = 0, attack = '', attack_at = 0, encryption_key = ? WHERE vin = ? AND serial = ?`,
			e.Serial, e.HardwareID, encodeKey(e.PublicKey), encodeKey(e.EncryptionKey), vin, oldSerial)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return sql.ErrNoRows
		}
		// The refused requests were signed with the old key's successor,
		// or by someone else: evidence about a key that is gone. The
		// new ECU changes the assignment's inputs.
		if key == nil { // a secondary's own key changed: the vehicle's stays
			_, err = s.txExec(ctx, tx, `UPDATE vehicles SET checkin_refused_at = 0, checkin_refused = '', director_gen = director_gen + 1 WHERE vin = ?`, vin)
			return err
		}
		_, err = s.txExec(ctx, tx, `UPDATE vehicles SET public_key = ?, bad_signature_at = 0, bad_signature_count = 0, checkin_refused_at = 0, checkin_refused = '',
			director_gen = director_gen + 1 WHERE vin = ?`, key, vin)
		return err
	}))
}

// SetEncryptionKey implements server.Vehicles.
func (s *Store) SetEncryptionKey(ctx context.Context, vin, serial string, key []byte) (bool, error) {
	res, err := s.exec(ctx, `UPDATE ecus SET encryption_key = ? WHERE vin = ? AND serial = ? AND encryption_key = ''`, encodeKey(key), vin, serial)
	if err != nil {
		return false, s.wrap("encryption key of "+serial, err)
	}
	n, _ := res.RowsAffected()
	if n > 0 {
		_, err = s.exec(ctx, `UPDATE vehicles SET director_gen = director_gen + 1 WHERE vin = ?`, vin)
	}
	return n > 0, s.wrap("encryption key of "+serial, err)
}

// RecordRequestFault implements server.Vehicles.
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

// barsOrUnknown is how an episode's signal is stored: 0 to 5, or -1 for
// unknown (nil).
func barsOrUnknown(bars *int) int {
	if bars == nil {
		return -1
	}
	return *bars
}
