package sqlstore

import (
	"context"
	"database/sql"
	"sync"
	"time"
)

// maxCachedStatements bounds the statement cache: queries built with a
// varying number of placeholders (IN lists) beyond it are prepared per
// use.
const maxCachedStatements = 256

// stmts caches prepared statements by query text, so the hot queries are
// parsed and planned once per connection instead of on every call (on
// SQLite, re-preparing cost a fifth of the server's CPU).
type stmts struct {
	mu      sync.Mutex
	m       map[string]*sql.Stmt
	warming map[string]bool // being prepared for a transaction's next use
	closed  bool
	// warmers counts the goroutines preparing statements off a
	// transaction's path; Close waits for them, so none opens a
	// connection (and re-creates the database file) after the store
	// is closed.
	warmers sync.WaitGroup
	// base is the warmers' context, canceled by Close: they give up.
	base   context.Context
	cancel context.CancelFunc
}

// prepared returns the cached statement for query (already rewritten for
// the dialect), preparing it on first use; done releases a statement that
// was not cached.
func (s *Store) prepared(ctx context.Context, query string) (stmt *sql.Stmt, done func(), err error) {
	s.stmts.mu.Lock()
	stmt, ok := s.stmts.m[query]
	s.stmts.mu.Unlock()
	if ok {
		return stmt, func() {}, nil
	}
	stmt, err = s.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, nil, err
	}
	s.stmts.mu.Lock()
	defer s.stmts.mu.Unlock()
	if s.stmts.closed {
		return stmt, func() { stmt.Close() }, nil
	}
	if prev, ok := s.stmts.m[query]; ok { // another caller won the race
		stmt.Close()
		return prev, func() {}, nil
	}
	if len(s.stmts.m) >= maxCachedStatements {
		return stmt, func() { stmt.Close() }, nil
	}
	if s.stmts.m == nil {
		s.stmts.m = map[string]*sql.Stmt{}
	}
	s.stmts.m[query] = stmt
	return stmt, func() {}, nil
}

// traced rewrites query for the dialect and shows it to the tracer.
func (s *Store) traced(query string, args []any) string {
	query = s.q(query)
	if s.trace != nil {
		s.trace(query, args)
	}
	return query
}

// exec runs a statement outside a transaction.
func (s *Store) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	stmt, done, err := s.prepared(ctx, s.traced(query, args))
	if err != nil {
		return nil, err
	}
	defer done()
	return stmt.ExecContext(ctx, args...)
}

// query runs a query outside a transaction; closing the rows releases a
// statement that was not cached.
func (s *Store) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	stmt, done, err := s.prepared(ctx, s.traced(query, args))
	if err != nil {
		return nil, err
	}
	rows, err := stmt.QueryContext(ctx, args...)
	done() // database/sql keeps a closed statement alive until its rows close
	return rows, err
}

// queryRow runs a single-row query outside a transaction.
func (s *Store) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	query = s.traced(query, args)
	stmt, done, err := s.prepared(ctx, query)
	if err != nil {
		return s.db.QueryRowContext(ctx, query, args...) // carries the error to Scan
	}
	defer done()
	return stmt.QueryRowContext(ctx, args...)
}

// cached returns the cached statement for query, if there is one. A
// transaction must not prepare on the pool: preparing takes a second
// connection, and with the pool full of transactions waiting for the
// write lock this one holds, that deadlocks. So a transaction uses the
// cache when it can, and otherwise runs the query unprepared and has it
// prepared for next time, off its path.
func (s *Store) cached(query string) (*sql.Stmt, bool) {
	s.stmts.mu.Lock()
	defer s.stmts.mu.Unlock()
	st, ok := s.stmts.m[query]
	if !ok && !s.stmts.closed && !s.stmts.warming[query] && len(s.stmts.m) < maxCachedStatements {
		if s.stmts.warming == nil {
			s.stmts.warming = map[string]bool{}
		}
		s.stmts.warming[query] = true
		if s.stmts.base == nil {
			s.stmts.base, s.stmts.cancel = context.WithCancel(context.Background())
		}
		base := s.stmts.base
		s.stmts.warmers.Add(1)
		go func() {
			defer s.stmts.warmers.Done()
			ctx, cancel := context.WithTimeout(base, 10*time.Second)
			defer cancel()
			if _, done, err := s.prepared(ctx, query); err == nil {
				done()
			}
			s.stmts.mu.Lock()
			delete(s.stmts.warming, query)
			s.stmts.mu.Unlock()
		}()
	}
	return st, ok
}

// txExec, txQuery and txQueryRow run a statement in tx.
func (s *Store) txExec(ctx context.Context, tx *sql.Tx, query string, args ...any) (sql.Result, error) {
	query = s.traced(query, args)
	if st, ok := s.cached(query); ok {
		return tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return tx.ExecContext(ctx, query, args...)
}

func (s *Store) txQuery(ctx context.Context, tx *sql.Tx, query string, args ...any) (*sql.Rows, error) {
	query = s.traced(query, args)
	if st, ok := s.cached(query); ok {
		return tx.StmtContext(ctx, st).QueryContext(ctx, args...)
	}
	return tx.QueryContext(ctx, query, args...)
}

func (s *Store) txQueryRow(ctx context.Context, tx *sql.Tx, query string, args ...any) *sql.Row {
	query = s.traced(query, args)
	if st, ok := s.cached(query); ok {
		return tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return tx.QueryRowContext(ctx, query, args...)
}

// closeStatements stops the warmers, waits for them and closes every
// cached statement.
func (s *Store) closeStatements() {
	s.stmts.mu.Lock()
	if s.stmts.closed {
		s.stmts.mu.Unlock()
		return
	}
	s.stmts.closed = true
	if s.stmts.cancel != nil {
		s.stmts.cancel()
	}
	s.stmts.mu.Unlock()
	s.stmts.warmers.Wait()
	s.stmts.mu.Lock()
	defer s.stmts.mu.Unlock()
	for _, st := range s.stmts.m {
		st.Close()
	}
	s.stmts.m = nil
}
