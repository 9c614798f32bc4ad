// Package sqlstore implements server.Store in portable SQL over
// database/sql. The sqlite and postgres packages open the database and
// supply a Dialect (placeholders, DDL types, error codes, locking); the
// queries themselves are shared so both backends behave the same.
package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
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
	// IsUnavailable (may be nil) reports an error that says the database
	// cannot take the request now (lost, shutting down, read-only during
	// a failover) rather than that the request is wrong.
	IsUnavailable func(error) bool
	// LockMigrations serializes migrations across processes (may be nil).
	LockMigrations func(ctx context.Context, tx *sql.Tx) error
	// LockAudit serializes audit appends across processes (nil where a
	// write transaction locks the whole database, as SQLite's does).
	LockAudit func(ctx context.Context, tx *sql.Tx) error
	// ForUpdate locks selected rows to the transaction (" FOR UPDATE");
	// empty where transactions lock the whole database for writing anyway.
	ForUpdate string
	// GroupCommit makes concurrent requests' small writes share one
	// transaction (see grouped): where one writer at a time is the
	// model (SQLite), that is fewer turns of the write lock. PostgreSQL
	// runs concurrent transactions in parallel and flushes its WAL for
	// many commits at once by itself; one writer there was a bottleneck.
	GroupCommit bool
}

// Store is a server.Store on a *sql.DB.
type Store struct {
	db    *sql.DB
	d     Dialect
	stmts stmts
	group writeGroup
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
		return server.Errorf(server.KindNotFound, "%s: not found", what)
	case s.d.IsUnique(err):
		return server.Errorf(server.KindConflict, "%s: already exists", what)
	case errors.Is(err, server.ErrNotFound), errors.Is(err, server.ErrConflict):
		return err // made below with its own words
	case s.unavailable(err):
		// 503 with Retry-After, not 500: the client should try again.
		// The client hears the kind; the cause (hosts, ports) is for the log.
		return fmt.Errorf("%w: %w", server.Errorf(server.KindUnavailable, "%s: the database is not available right now; retry shortly", what), err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// unavailable says err is the database's absence, not the request's
// fault: a broken connection, or what the dialect says.
func (s *Store) unavailable(err error) bool {
	var ne net.Error
	switch {
	case errors.As(err, &ne), errors.Is(err, driver.ErrBadConn), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return true
	}
	return s.d.IsUnavailable != nil && s.d.IsUnavailable(err)
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
	s.closeGroup()
	s.closeStatements()
	return s.db.Close()
}

// truncate cuts s to at most n bytes (evidence text is bounded).
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
