package sqlstore_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/postgres"
	"github.com/roadsign/roadsign/server/postgres/pgtest"
	"github.com/roadsign/roadsign/server/sqlite"
	"github.com/roadsign/roadsign/server/sqlstore"
)

// fleetSize is how many vehicles the plans are proven at.
const fleetSize = 100_000

// TestPerVehicleQueriesUseIndexesAt100k proves, by the databases' own
// query plans, that every statement a vehicle's requests run (check-in,
// director metadata, handshake, diagnosis, job progress) finds its rows
// through an index on SQLite and on PostgreSQL at 100 000 vehicles, each
// with two ECUs, a job, director metadata, nonces, findings and a trouble
// code. The statements are the ones the store really runs, recorded with
// their arguments, not a list kept beside them.
func TestPerVehicleQueriesUseIndexesAt100k(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			ctx := context.Background()
			var s *sqlstore.Store
			var err error
			explain, fullScan := "EXPLAIN QUERY PLAN ", regexp.MustCompile(`(?m)^SCAN (\w+)$`)
			if backend == "sqlite" {
				s, err = sqlite.Open(ctx, filepath.Join(t.TempDir(), "roadsign.db"))
			} else {
				s, err = postgres.Open(ctx, pgtest.Schema(t))
				explain, fullScan = "EXPLAIN ", regexp.MustCompile(`Seq Scan on (\w+)`)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			seedFleet(t, s.DB(), fleetSize)

			type stmt struct {
				query string
				args  []any
			}
			var ran []stmt
			s.TraceQueries(func(q string, args []any) { ran = append(ran, stmt{q, args}) })
			perVehicleRequests(t, s, fmt.Sprintf("VIN%d", fleetSize/2))
			s.TraceQueries(nil)
			if len(ran) < 15 {
				t.Fatalf("only %d statements recorded; the tracer misses some", len(ran))
			}

			seen := map[string]bool{}
			for _, st := range ran {
				if seen[st.query] {
					continue
				}
				seen[st.query] = true
				plan, err := planOf(ctx, s.DB(), explain+st.query, st.args)
				if err != nil {
					t.Errorf("explain %s: %v", oneLine(st.query), err)
					continue
				}
				// repo_versions holds a fixed handful of rows (one counter
				// per repository and the campaigns'): reading it whole is
				// what an index would cost, and PostgreSQL rightly does.
				for _, m := range fullScan.FindAllStringSubmatch(plan, -1) {
					if m[1] != "repo_versions" {
						t.Errorf("%s reads all of %s:\n%s", oneLine(st.query), m[1], plan)
					}
				}
			}
			if !t.Failed() {
				t.Logf("%d distinct statements, each through an index at %d vehicles", len(seen), fleetSize)
			}
		})
	}
}

// seedFleet fills the per-vehicle tables for n vehicles in a few
// statements, then has the database gather statistics (as autovacuum or
// SQLite's optimize would on a live server).
func seedFleet(t *testing.T, db *sql.DB, n int) {
	t.Helper()
	ctx := context.Background()
	gen := fmt.Sprintf("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %d) ", n)
	for _, q := range []string{
		`INSERT INTO vehicles (vin, model, year, region, public_key, created_at, last_seen) SELECT 'VIN' || i, 'Corolla', 2024, 'NA', 'k', 1, 1 FROM n`,
		`INSERT INTO ecus (serial, vin, type, hardware_id, position) SELECT 'HU' || i, 'VIN' || i, 'head-unit', 'HU-GEN5-NA', 0 FROM n`,
		`INSERT INTO ecus (serial, vin, type, hardware_id, position) SELECT 'DCM' || i, 'VIN' || i, 'dcm', 'DCM-4G-24MM', 1 FROM n`,
		`INSERT INTO nonces (vin, nonce, used_at) SELECT 'VIN' || i, 'nonce' || i, i FROM n`,
		`INSERT INTO jobs (id, vin, ecu_serial, ecu_type, target_path, version, forced, reason, state, created_by, created_at, updated_at, attempts, max_attempts, next_attempt_at, cancel_requested, phase)
			SELECT 'job' || i, 'VIN' || i, 'DCM' || i, 'dcm', 'dcm/x.img', '2.0.0', 0, 'seed', 'succeeded', 'seed', i, i, 1, 3, 0, 0, 'succeeded' FROM n`,
		`INSERT INTO job_events (job_id, at, kind, percent, message) SELECT 'job' || i, i, 'succeeded', 100, '' FROM n`,
		`INSERT INTO director_heads (vin, targets_version, snapshot_version, timestamp_version, assignment_hash, timestamp_expires) SELECT 'VIN' || i, 1, 1, 1, 'h', 1 FROM n`,
		`INSERT INTO director_files (vin, role, version, body, expires) SELECT 'VIN' || i, 'targets', 1, 'b', 1 FROM n`,
		`INSERT INTO director_files (vin, role, version, body, expires) SELECT 'VIN' || i, 'timestamp', 1, 'b', 1 FROM n`,
		`INSERT INTO findings (vin, code, first_seen, last_seen, resolved_at) SELECT 'VIN' || i, 'dcm_outdated', 1, 1, 2 FROM n`,
		`INSERT INTO dtc_episodes (vin, code, first_seen, last_seen, count, detail, cleared_at, signal_bars, reported_at) SELECT 'VIN' || i, 'U1100', 1, 1, 1, '', 2, 3, 1 FROM n`,
		`INSERT INTO links (vin, owner_id, linked_at, subscription_ends, pending_owner_id) SELECT 'VIN' || i, 'owner' || i, 1, 0, '' FROM n`,
		`INSERT INTO software_record (vin, ecu_serial, ecu_type, at, from_version, from_sha256, to_version, to_sha256, via, job_id, campaign_id, outcome, detail)
			SELECT 'VIN' || i, 'DCM' || i, 'dcm', i, '1.0.0', '', '2.0.0', '', 'usb', '', '', 'installed', 'dcm DCM' || i || ': 1.0.0 -> 2.0.0 from USB bundle' FROM n`,
		`INSERT INTO campaign_members (campaign_id, vin, ecu_serial, draw, wave, job_id, consent, joined_at) SELECT 'c1', 'VIN' || i, 'DCM' || i, i, 1, '', '', 1 FROM n`,
	} {
		if _, err := db.ExecContext(ctx, gen+q); err != nil {
			t.Fatalf("seed: %v\n%s", err, q)
		}
	}
	if _, err := db.ExecContext(ctx, "ANALYZE"); err != nil {
		t.Fatalf("analyze: %v", err)
	}
}

// perVehicleRequests makes the store calls one vehicle's requests make:
// a signed check-in, a director fetch, a handshake, diagnosis, and the
// progress of its job.
func perVehicleRequests(t *testing.T, s *sqlstore.Store, vin string) {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	n := strings.TrimPrefix(vin, "VIN")
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, err := s.VehicleKey(ctx, vin)
	must("vehicle key", err)
	must("nonce", s.UseNonce(ctx, vin, "fresh-nonce", now))
	v, err := s.Vehicle(ctx, vin)
	must("vehicle", err)
	ecus := v.ECUs
	for i := range ecus {
		ecus[i].InstalledVersion, ecus[i].ReportedAt = "2.0.0", now
	}
	two := 2
	must("report", s.ReportECUs(ctx, vin, ecus, server.Health{Active: "U1100", SignalBars: 2, SignalAt: now,
		Episodes: []server.DTCEpisode{{Code: "U1100", FirstSeen: now, LastSeen: now, Count: 1, SignalBars: &two, ReportedAt: now}}}, now))
	must("request fault", s.RecordRequestFault(ctx, vin, server.RequestFault{Kind: server.FaultClockSkew, Skew: time.Minute}, now))
	// A USB install reported at check-in, and the record read back.
	_, err = s.AddUSBRecords(ctx, vin, []server.SoftwareRecord{{ECUSerial: "DCM" + n, ECUType: "dcm", At: now, Outcome: "installed", Detail: "new"}}, 16, now.Add(-24*time.Hour))
	must("USB install", err)
	_, err = s.SoftwareRecords(ctx, vin, server.RecordQuery{NewestFirst: true, Limit: 11})
	must("recent software record", err)
	_, err = s.SoftwareRecords(ctx, vin, server.RecordQuery{AfterID: 0, Limit: 500})
	must("software record page", err)

	head, err := s.DirectorHead(ctx, vin)
	must("director head", err)
	jobs, err := s.JobsByVIN(ctx, vin)
	must("jobs by vin", err)
	if len(jobs) == 0 {
		t.Fatalf("no seeded job for %s", vin)
	}
	next := head
	next.TargetsVersion, next.SnapshotVersion, next.TimestampVersion, next.AssignmentHash = 2, 2, 2, "h2"
	must("save director", s.SaveDirector(ctx, head, next, []server.DirectorMeta{
		{VIN: vin, Role: "targets", Version: 2, Body: []byte("b"), Expires: now},
		{VIN: vin, Role: "timestamp", Version: 2, Body: []byte("b"), Expires: now},
	}))
	_, err = s.DirectorFile(ctx, vin, "targets", 2)
	must("director file", err)
	_, err = s.NextBundleVersion(ctx, vin)
	must("bundle version", err)

	_, err = s.Link(ctx, vin)
	must("link", err)
	must("auth", s.RecordAuth(ctx, vin, server.AuthRecord{State: "authorized", At: now, Expires: now.Add(time.Hour)}))
	_, _, err = s.RecordFindings(ctx, vin, []string{"dcm_outdated"}, now)
	must("findings", err)
	_, err = s.Findings(ctx, vin, 20)
	must("list findings", err)
	_, err = s.DTCEpisodes(ctx, vin, now.Add(-time.Hour))
	must("dtc episodes", err)

	job := server.Job{ID: "job-new-" + n, VIN: vin, ECUSerial: "DCM" + n, ECUType: "dcm", TargetPath: "dcm/y.img", Version: "3.0.0",
		Origin: "dealer", Reason: "plan test", State: server.JobQueued, CreatedBy: "dealer", CreatedAt: now, UpdatedAt: now, MaxAttempts: 3}
	must("create job", s.CreateJob(ctx, job))
	j, err := s.Job(ctx, job.ID)
	must("job", err)
	from := j.State
	j.State, j.UpdatedAt = server.JobInProgress, now
	must("update job", s.UpdateJob(ctx, j, from))
	must("job event", s.AddJobEvent(ctx, j.ID, server.JobEvent{At: now, Kind: "downloading", Percent: 50}))
}

// planOf is the database's plan for query, one line per step.
func planOf(ctx context.Context, db *sql.DB, query string, args []any) (string, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return "", err
	}
	var lines []string
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return "", err
		}
		// SQLite: id, parent, notused, detail; PostgreSQL: one text column.
		lines = append(lines, strings.TrimSpace(fmt.Sprint(vals[len(vals)-1])))
	}
	return strings.Join(lines, "\n"), rows.Err()
}

func oneLine(q string) string { return strings.Join(strings.Fields(q), " ") }
