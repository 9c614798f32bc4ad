package sqlite_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/sqlite"
	"github.com/roadsign/roadsign/server/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) server.Store {
		s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "roadsign.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestMigrateTwice: opening an existing database applies nothing again.
func TestMigrateTwice(t *testing.T) {
	p := filepath.Join(t.TempDir(), "roadsign.db")
	for range 2 {
		s, err := sqlite.Open(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
}

// TestQueriesUseIndexes checks the plans of the queries that must stay fast
// at a million vehicles.
func TestQueriesUseIndexes(t *testing.T) {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "roadsign.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, q := range []string{
		`SELECT vin FROM vehicles WHERE vin > 'A' ORDER BY vin LIMIT 100`,
		`SELECT v.vin FROM ecus e JOIN vehicles v ON v.vin = e.vin WHERE e.hardware_id = 'X' AND e.vin > 'A' ORDER BY e.vin LIMIT 100`,
		`SELECT id FROM jobs WHERE vin = 'X' ORDER BY created_at`,
		`SELECT id FROM jobs WHERE state IN ('queued', 'in_progress') ORDER BY created_at LIMIT 10`,
		`SELECT body FROM director_files WHERE vin = 'X' AND role = 'targets' AND version = 3`,
	} {
		rows, err := s.DB().Query("EXPLAIN QUERY PLAN " + q)
		if err != nil {
			t.Fatal(err)
		}
		plan := ""
		for rows.Next() {
			var id, parent, notused int
			var detail string
			rows.Scan(&id, &parent, &notused, &detail)
			plan += detail + "; "
		}
		rows.Close()
		if !containsAny(plan, "USING INDEX", "USING PRIMARY KEY", "USING COVERING INDEX", "USING INTEGER PRIMARY KEY") {
			t.Errorf("%s\n  plan: %s (no index)", q, plan)
		}
	}
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// TestDatabaseFileIsPrivate: the database (token hashes, sessions) is
// readable by its owner only, and an older, wider file is tightened.
func TestDatabaseFileIsPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "roadsign.db")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, p := range []string{path, path + "-wal"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", filepath.Base(p), fi.Mode().Perm())
		}
	}
}
