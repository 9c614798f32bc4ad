// Package pgtest gives each test its own PostgreSQL schema on the local
// server (127.0.0.1:5432, database test, user postgres, trust auth; or
// $ROADSIGN_TEST_POSTGRES). `make test` sets ROADSIGN_REQUIRE_POSTGRES=1 so
// an unreachable server fails instead of skipping.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
)

// BaseURL is the server the tests use.
func BaseURL() string {
	if u := os.Getenv("ROADSIGN_TEST_POSTGRES"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// Schema creates a fresh schema for t, drops it when t ends, and returns a
// URL whose connections use it, so runs never collide.
func Schema(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	db, err := sql.Open("pgx", BaseURL())
	if err == nil {
		err = db.PingContext(ctx)
	}
	if err != nil {
		if db != nil {
			db.Close()
		}
		if os.Getenv("ROADSIGN_REQUIRE_POSTGRES") == "1" {
			t.Fatalf("PostgreSQL at %s: %v", BaseURL(), err)
		}
		t.Skipf("PostgreSQL not reachable at %s: %v", BaseURL(), err)
	}
	b := make([]byte, 6)
	rand.Read(b)
	schema := "rs_test_" + hex.EncodeToString(b)
	if _, err := db.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		db.Close()
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db.ExecContext(ctx, "DROP SCHEMA "+schema+" CASCADE")
		db.Close()
	})
	u, err := url.Parse(BaseURL())
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
