// Package postgres is the fleet-scale state store: PostgreSQL through pgx,
// shared by several server replicas.
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver

	"github.com/roadsign/roadsign/server/sqlstore"
)

// migrationLock is the advisory lock key that serializes migrations when
// several replicas start at once.
const migrationLock = 0x526f6164 // "Road"

// auditLock is the advisory lock key of audit appends.
const auditLock = 0x41756469 // "Audi"

// Dialect is PostgreSQL's.
var Dialect = sqlstore.Dialect{
	Name:        "postgres",
	Placeholder: func(n int) string { return "$" + strconv.Itoa(n) },
	AutoID:      "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
	Blob:        "BYTEA",
	IsUnique: func(err error) bool {
		var pe *pgconn.PgError
		return errors.As(err, &pe) && pe.Code == "23505"
	},
	// Connection exceptions (class 08), a server shutting down or not yet
	// accepting connections (57P01-57P03), a read-only transaction on a
	// standby (25006), or no host of the URL taking writes.
	IsUnavailable: func(err error) bool {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return strings.HasPrefix(pe.Code, "08") || pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03" || pe.Code == "25006"
		}
		var ce *pgconn.ConnectError
		return errors.As(err, &ce) || pgconn.SafeToRetry(err) || pgconn.Timeout(err)
	},
	ForUpdate: " FOR UPDATE",
	LockMigrations: func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock)
		return err
	},
	// Replicas append to the audit chain one at a time (each entry names
	// the one before it); the lock is held only for the append.
	LockAudit: func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", auditLock)
		return err
	},
}

// connect pings db until it answers, with backoff (250 ms doubling to
// 5 s), for at most patience; onRetry, if set, hears each failure.
func connect(ctx context.Context, db *sql.DB, patience time.Duration, onRetry func(error)) error {
	deadline := time.Now().Add(patience)
	wait := 250 * time.Millisecond
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := db.PingContext(pctx)
		cancel()
		if err == nil || ctx.Err() != nil || time.Now().Add(wait).After(deadline) {
			return err
		}
		if onRetry != nil {
			onRetry(err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// Open connects to url (postgres://...) and migrates the schema; it fails
// at once when no host of url takes writes.
func Open(ctx context.Context, rawURL string) (*sqlstore.Store, error) {
	return OpenWaiting(ctx, rawURL, 0, nil)
}

// OpenWaiting is Open that keeps trying to connect for up to patience
// (onRetry hears each failure): a replica started, or restarted by its
// supervisor, while the primary is lost and the standby not yet promoted
// waits for the promotion instead of exiting.
func OpenWaiting(ctx context.Context, rawURL string, patience time.Duration, onRetry func(error)) (*sqlstore.Store, error) {
	// A replica that stalls inside a transaction (paused, swapped out) must
	// not hold its locks, the leader's lease row among them, for long:
	// PostgreSQL ends such a session after 10 s.
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("postgres URL: %w", err)
	}
	q := u.Query()
	if q.Get("idle_in_transaction_session_timeout") == "" {
		q.Set("idle_in_transaction_session_timeout", "10000")
	}
	u.RawQuery = q.Encode()
	db, err := sql.Open("pgx", u.String())
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	// Keep the pool's connections open: database/sql keeps 2 idle by
	// default, so a burst opened (and closed) a connection per request.
	db.SetMaxOpenConns(20)
	db.SetMaxIdleConns(20)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := connect(ctx, db, patience, onRetry); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	s := sqlstore.New(db, Dialect)
	if err := s.Migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	return s, nil
}
