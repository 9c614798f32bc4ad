package sqlstore

import (
	"context"
	"database/sql"
	"sort"
	"time"

	"github.com/roadsign/roadsign/server"
)

// DTCEpisodes implements server.Findings.
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
		bars := -1
		if err := rows.Scan(&e.Code, &first, &last, &e.Count, &e.Detail, &cleared, &bars, &reported); err != nil {
			return nil, s.wrap("DTC episodes of "+vin, err)
		}
		if bars >= 0 {
			e.SignalBars = &bars
		}
		e.FirstSeen, e.LastSeen, e.ClearedAt, e.ReportedAt = fromMicros(first), fromMicros(last), fromMicros(cleared), fromMicros(reported)
		out = append(out, e)
	}
	return out, s.wrap("DTC episodes of "+vin, rows.Err())
}

// RecordFindings implements server.Findings.
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

// Findings implements server.Findings.
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

// FindingCounts implements server.Findings.
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
