package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"math"
	"time"

	"github.com/roadsign/roadsign/server"
)

// Tokens are kept in thousandths, as integers in both dialects.
const milli = 1000

func scanThrottle(row *sql.Row) (server.ThrottleEntry, error) {
	var e server.ThrottleEntry
	var tokens, last, until int64
	err := row.Scan(&tokens, &last, &e.Failures, &until)
	if errors.Is(err, sql.ErrNoRows) {
		return server.ThrottleEntry{}, nil
	}
	e.Tokens, e.Last, e.Until = float64(tokens)/milli, fromMicros(last), fromMicros(until)
	return e, err
}

// ThrottleEntry implements server.Throttles.
func (s *Store) ThrottleEntry(ctx context.Context, key string) (server.ThrottleEntry, error) {
	e, err := scanThrottle(s.queryRow(ctx, `SELECT tokens_milli, last_at, failures, locked_until FROM login_throttle WHERE name = ?`, key))
	return e, s.wrap("read log-in throttle", err)
}

// UpdateThrottle implements server.Throttles: the row is created if
// missing and then locked, so replicas updating the same key queue.
func (s *Store) UpdateThrottle(ctx context.Context, key string, fn func(server.ThrottleEntry) server.ThrottleEntry) (server.ThrottleEntry, error) {
	var out server.ThrottleEntry
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := s.txExec(ctx, tx, `INSERT INTO login_throttle (name, tokens_milli, last_at, failures, locked_until)
			VALUES (?, 0, 0, 0, 0) ON CONFLICT (name) DO NOTHING`, key); err != nil {
			return err
		}
		e, err := scanThrottle(s.txQueryRow(ctx, tx, `SELECT tokens_milli, last_at, failures, locked_until FROM login_throttle WHERE name = ?`+s.d.ForUpdate, key))
		if err != nil {
			return err
		}
		out = fn(e)
		if out == (server.ThrottleEntry{}) {
			_, err = s.txExec(ctx, tx, `DELETE FROM login_throttle WHERE name = ?`, key)
			return err
		}
		_, err = s.txExec(ctx, tx, `UPDATE login_throttle SET tokens_milli = ?, last_at = ?, failures = ?, locked_until = ? WHERE name = ?`,
			int64(math.Round(out.Tokens*milli)), micros(out.Last), out.Failures, micros(out.Until), key)
		return err
	})
	return out, s.wrap("update log-in throttle", err)
}

// PruneThrottles implements server.Throttles.
func (s *Store) PruneThrottles(ctx context.Context, idle, now time.Time, keep int) error {
	if _, err := s.exec(ctx, `DELETE FROM login_throttle WHERE last_at < ? AND locked_until < ?`, micros(idle), micros(now)); err != nil {
		return s.wrap("prune log-in throttle", err)
	}
	// Beyond keep entries, those used before the keep-th most recent go.
	var cut int64
	err := s.queryRow(ctx, `SELECT last_at FROM login_throttle ORDER BY last_at DESC LIMIT 1 OFFSET ?`, keep).Scan(&cut)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err == nil {
		_, err = s.exec(ctx, `DELETE FROM login_throttle WHERE last_at <= ?`, cut)
	}
	return s.wrap("prune log-in throttle", err)
}
