package sqlstore

import (
	"context"
	"database/sql"
	"strconv"

	"github.com/roadsign/roadsign/server"
)

// DirectorHead implements server.DirectorMetadata; a VIN never signed has
// a zero head (with the vehicle's and the campaigns' generations).
func (s *Store) DirectorHead(ctx context.Context, vin string) (server.DirectorHead, error) {
	h := server.DirectorHead{VIN: vin}
	var tv, sv, tsv, exp, gen sql.NullInt64
	var hash, basis sql.NullString
	err := s.queryRow(ctx, `SELECT h.targets_version, h.snapshot_version, h.timestamp_version, h.assignment_hash, h.timestamp_expires, h.basis, f.body,
		v.director_gen, repo_versions.version
		FROM repo_versions LEFT JOIN vehicles v ON v.vin = ? LEFT JOIN director_heads h ON h.vin = ?
		LEFT JOIN director_files f ON f.vin = h.vin AND f.role = 'timestamp' AND f.version = h.timestamp_version
		WHERE repo_versions.name = 'campaigns'`, vin, vin).
		Scan(&tv, &sv, &tsv, &hash, &exp, &basis, &h.Timestamp, &gen, &h.CampaignGen)
	h.TargetsVersion, h.SnapshotVersion, h.TimestampVersion = tv.Int64, sv.Int64, tsv.Int64
	h.AssignmentHash, h.Basis, h.VehicleGen = hash.String, basis.String, gen.Int64
	if exp.Valid {
		h.TimestampExpires = fromMicros(exp.Int64)
	}
	return h, s.wrap("director head "+vin, err)
}

// SaveDirectorBasis implements server.DirectorMetadata.
func (s *Store) SaveDirectorBasis(ctx context.Context, vin string, version int64, basis string) error {
	return s.wrap("save director basis of "+vin, s.grouped(ctx, false, func(ctx context.Context, tx *sql.Tx) error {
		_, err := s.txExec(ctx, tx, `UPDATE director_heads SET basis = ? WHERE vin = ? AND timestamp_version = ?`, basis, vin, version)
		return err
	}))
}

// directorKeep is how many old versions of each director file are kept for
// vehicles in the middle of a refresh.
const directorKeep = 8

// SaveDirector implements server.DirectorMetadata.
// A fleet's first cycle signs metadata for every vehicle, so saves are
// group-committed where the dialect does (SQLite), each in a savepoint of
// its own.
func (s *Store) SaveDirector(ctx context.Context, prev, next server.DirectorHead, files []server.DirectorMeta) error {
	return s.wrap("save director metadata of "+next.VIN, s.grouped(ctx, true, func(ctx context.Context, tx *sql.Tx) error {
		// The row may exist with version 0 (a USB bundle was counted first).
		res, err := s.txExec(ctx, tx, `INSERT INTO director_heads (vin, targets_version, snapshot_version, timestamp_version, assignment_hash, timestamp_expires, basis) VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (vin) DO UPDATE SET targets_version = excluded.targets_version, snapshot_version = excluded.snapshot_version,
			timestamp_version = excluded.timestamp_version, assignment_hash = excluded.assignment_hash, timestamp_expires = excluded.timestamp_expires,
			basis = excluded.basis
			WHERE director_heads.timestamp_version = ?`,
			next.VIN, next.TargetsVersion, next.SnapshotVersion, next.TimestampVersion, next.AssignmentHash, micros(next.TimestampExpires), next.Basis, prev.TimestampVersion)
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

// NextBundleVersion implements server.DirectorMetadata.
func (s *Store) NextBundleVersion(ctx context.Context, vin string) (int64, error) {
	var v int64
	err := s.queryRow(ctx, `INSERT INTO director_heads (vin, targets_version, snapshot_version, timestamp_version, assignment_hash, timestamp_expires, bundle_version)
		VALUES (?, 0, 0, 0, '', 0, 1)
		ON CONFLICT (vin) DO UPDATE SET bundle_version = director_heads.bundle_version + 1
		RETURNING bundle_version`, vin).Scan(&v)
	return v, s.wrap("next bundle version of "+vin, err)
}

// DirectorFile implements server.DirectorMetadata.
func (s *Store) DirectorFile(ctx context.Context, vin, role string, version int64) (server.DirectorMeta, error) {
	m := server.DirectorMeta{VIN: vin, Role: role, Version: version}
	var exp int64
	err := s.queryRow(ctx, `SELECT body, expires FROM director_files WHERE vin = ? AND role = ? AND version = ?`, vin, role, version).Scan(&m.Body, &exp)
	m.Expires = fromMicros(exp)
	return m, s.wrap("director "+role+" v"+strconv.FormatInt(version, 10)+" of "+vin, err)
}

// RepoVersion implements server.DirectorMetadata.
func (s *Store) RepoVersion(ctx context.Context) (int64, error) {
	var v int64
	err := s.queryRow(ctx, `SELECT version FROM repo_versions WHERE name = 'image'`).Scan(&v)
	return v, s.wrap("repository version", err)
}

// SetRepoVersion implements server.DirectorMetadata.
func (s *Store) SetRepoVersion(ctx context.Context, v int64) error {
	_, err := s.exec(ctx, `UPDATE repo_versions SET version = ? WHERE name = 'image' AND version < ?`, v, v)
	return s.wrap("raise repository version", err)
}
