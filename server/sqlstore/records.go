package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/roadsign/roadsign/server"
)

// AddSoftwareRecord implements server.Records.
const insertSoftwareRecord = `INSERT INTO software_record (vin, ecu_serial, ecu_type, at, from_version, from_sha256, to_version, to_sha256, via, job_id, campaign_id, outcome, detail, parts)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

func (s *Store) AddSoftwareRecord(ctx context.Context, r server.SoftwareRecord) error {
	_, err := s.exec(ctx, insertSoftwareRecord,
		r.VIN, r.ECUSerial, r.ECUType, micros(r.At), r.FromVersion, r.FromSHA256, r.ToVersion, r.ToSHA256, r.Via, r.JobID, r.CampaignID, r.Outcome, r.Detail, jsonOrEmpty(r.Parts))
	return s.wrap("software record", err)
}

// AddUSBRecords implements server.Records.
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

// SoftwareRecords implements server.Records.
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
	rows, err := s.query(ctx, `SELECT id, vin, ecu_serial, ecu_type, at, from_version, from_sha256, to_version, to_sha256, via, job_id, campaign_id, outcome, detail, parts
		FROM software_record WHERE `+where+` LIMIT ?`, append(args, q.Limit)...)
	if err != nil {
		return nil, s.wrap("software record", err)
	}
	defer rows.Close()
	out := []server.SoftwareRecord{}
	for rows.Next() {
		var r server.SoftwareRecord
		var at int64
		var parts string
		if err := rows.Scan(&r.ID, &r.VIN, &r.ECUSerial, &r.ECUType, &at, &r.FromVersion, &r.FromSHA256, &r.ToVersion, &r.ToSHA256,
			&r.Via, &r.JobID, &r.CampaignID, &r.Outcome, &r.Detail, &parts); err != nil {
			return nil, s.wrap("software record", err)
		}
		if parts != "" {
			if err := json.Unmarshal([]byte(parts), &r.Parts); err != nil {
				return nil, s.wrap("software record", fmt.Errorf("entry %d: its parts do not decode: %w", r.ID, err))
			}
		}
		r.At = fromMicros(at)
		out = append(out, r)
	}
	return out, s.wrap("software record", rows.Err())
}
