// Package sqlite is the embedded state store: SQLite (pure Go, no cgo) in
// WAL mode, the default for a single-process server.
package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"strings"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/roadsign/roadsign/server/sqlstore"
)

// Dialect is SQLite's.
var Dialect = sqlstore.Dialect{
	Name:        "sqlite",
	AutoID:      "INTEGER PRIMARY KEY AUTOINCREMENT",
	Blob:        "BLOB",
	GroupCommit: true,
	IsUnique: func(err error) bool {
		return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
	},
}

// Open opens (creating if needed) the database file at path and migrates
// it. The file is readable by its owner only (SQLite gives its WAL and
// shared-memory files the same mode): it holds token hashes and sessions.
func Open(ctx context.Context, path string) (*sqlstore.Store, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	f.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	}
	q := url.Values{}
	// Each connection caches up to 32 MiB of pages (SQLite's default is
	// 2 MiB): at 100 000 vehicles the per-vehicle tables outgrow the
	// default, and every check-in then rereads its pages from the OS.
	// A writer waits up to 30 s for SQLite's one write lock before it
	// gives up with SQLITE_BUSY (a burst of registrations on a loaded
	// machine queued past 10 s).
	for _, p := range []string{"journal_mode(WAL)", "busy_timeout(30000)", "foreign_keys(1)", "synchronous(NORMAL)", "cache_size(-32768)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate") // writers queue on BEGIN instead of failing on upgrade
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	// One writer at a time is SQLite's model; a small pool keeps readers
	// concurrent under WAL without piling up busy writers.
	// Every connection stays open: database/sql keeps only two idle by
	// default, and a connection closed and reopened under load lost its
	// prepared statements and page cache (a fifth of the server's CPU
	// went to reopening them).
	db.SetMaxOpenConns(4)
	db.SetMaxIdleConns(4)
	s := sqlstore.New(db, Dialect)
	if err := s.Migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	}
	return s, nil
}

// Snapshot writes a consistent copy of the database at path to out with
// VACUUM INTO, while other processes (a running server) keep using it.
func Snapshot(ctx context.Context, path, out string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("sqlite database: %w", err)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(30000)")
	if err != nil {
		return fmt.Errorf("open sqlite %s: %w", path, err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "VACUUM INTO ?", out); err != nil {
		return fmt.Errorf("snapshot sqlite %s: %w", path, err)
	}
	return nil
}
