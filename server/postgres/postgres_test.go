package postgres_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/postgres"
	"github.com/roadsign/roadsign/server/postgres/pgtest"
	"github.com/roadsign/roadsign/server/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) server.Store {
		s, err := postgres.Open(context.Background(), pgtest.Schema(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestConcurrentMigrations: several replicas starting at once migrate once.
func TestConcurrentMigrations(t *testing.T) {
	url := pgtest.Schema(t)
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			s, err := postgres.Open(context.Background(), url)
			if err == nil {
				s.Close()
			}
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestStalledTransactionsAreEnded: a replica that stalls inside a
// transaction (holding the leader lease's row lock, say) is cut off by
// PostgreSQL instead of blocking the other replicas.
func TestStalledTransactionsAreEnded(t *testing.T) {
	s, err := postgres.Open(context.Background(), pgtest.Schema(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var v string
	if err := s.DB().QueryRow("SHOW idle_in_transaction_session_timeout").Scan(&v); err != nil || v != "10s" {
		t.Fatalf("idle_in_transaction_session_timeout = %q (%v), want 10s", v, err)
	}
}

// TestUnavailableErrors: what PostgreSQL says while it is lost, shutting
// down or a read-only standby is "retry" (503), not "internal" (500); a
// request's own fault is neither.
func TestUnavailableErrors(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{&pgconn.PgError{Code: "57P01"}, true}, // admin shutdown
		{&pgconn.PgError{Code: "08006"}, true}, // connection failure
		{&pgconn.PgError{Code: "25006"}, true}, // read-only transaction (a standby)
		{&pgconn.PgError{Code: "23505"}, false},
		{&pgconn.PgError{Code: "42P01"}, false},
		{errors.New("something else"), false},
	} {
		if got := postgres.Dialect.IsUnavailable(tt.err); got != tt.want {
			t.Errorf("IsUnavailable(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
