package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"time"
)

// Group commit. The writes every vehicle request makes (its nonce, its
// check-in's report) are small and many; on SQLite, one transaction each
// spent the server's time taking the one write lock and committing.
// Concurrent requests' writes are
// instead queued and run by one writer, many to a transaction: each
// caller still returns only once its write is committed (or has failed),
// so nothing is acknowledged that is not durable.

// maxGroup bounds how many writes share one transaction.
const maxGroup = 128

// groupTimeout bounds one group's transaction.
const groupTimeout = 30 * time.Second

// errClosed is what a write queued after Close gets.
var errClosed = errors.New("state store is closed")

// groupOp is one queued write.
type groupOp struct {
	ctx context.Context
	fn  func(ctx context.Context, tx *sql.Tx) error
	// isolated runs fn in a savepoint: its failure undoes only its own
	// statements (a write that fails halfway must not half-land), and
	// the group's other writes go on.
	isolated bool
	done     chan error
}

// writeGroup is the queue and its writer.
type writeGroup struct {
	mu      sync.Mutex
	queue   []*groupOp
	running bool
	closed  bool
	writer  sync.WaitGroup
}

// grouped runs fn inside a transaction shared with other concurrent
// grouped writes and returns once that transaction committed. fn must
// only use tx (and return an error to undo its own part when isolated;
// without isolation an error fails the whole group, so use it only for
// statements that cannot fail on their own, such as an INSERT ... ON
// CONFLICT DO NOTHING).
//
// Without the dialect's GroupCommit, fn runs in a transaction of its own.
func (s *Store) grouped(ctx context.Context, isolated bool, fn func(ctx context.Context, tx *sql.Tx) error) error {
	if !s.d.GroupCommit {
		return s.tx(ctx, func(tx *sql.Tx) error { return fn(ctx, tx) })
	}
	op := &groupOp{ctx: ctx, fn: fn, isolated: isolated, done: make(chan error, 1)}
	g := &s.group
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return errClosed
	}
	g.queue = append(g.queue, op)
	if !g.running {
		g.running = true
		g.writer.Add(1)
		go s.drainGroup()
	}
	g.mu.Unlock()
	select {
	case err := <-op.done:
		return err
	case <-ctx.Done():
		return ctx.Err() // the writer skips it if it has not started it yet
	}
}

// drainGroup runs queued writes, a group per transaction, until the
// queue is empty.
func (s *Store) drainGroup() {
	g := &s.group
	defer g.writer.Done()
	for {
		g.mu.Lock()
		n := min(len(g.queue), maxGroup)
		if n == 0 {
			g.running = false
			g.mu.Unlock()
			return
		}
		batch := g.queue[:n:n]
		g.queue = g.queue[n:]
		g.mu.Unlock()
		s.runGroup(batch)
	}
}

// runGroup runs one group's writes in one transaction and tells each
// caller how its write ended.
func (s *Store) runGroup(batch []*groupOp) {
	live := batch[:0]
	for _, op := range batch {
		if err := op.ctx.Err(); err != nil {
			op.done <- err // its caller has gone: nothing of it is written
			continue
		}
		live = append(live, op)
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), groupTimeout)
	defer cancel()
	results := make([]error, len(live))
	err := s.tx(ctx, func(tx *sql.Tx) error {
		for i, op := range live {
			if !op.isolated {
				if err := op.fn(ctx, tx); err != nil {
					return err
				}
				continue
			}
			if _, err := tx.ExecContext(ctx, "SAVEPOINT grouped"); err != nil {
				return err
			}
			if results[i] = op.fn(ctx, tx); results[i] != nil {
				if _, err := tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT grouped"); err != nil {
					return err
				}
			}
			if _, err := tx.ExecContext(ctx, "RELEASE SAVEPOINT grouped"); err != nil {
				return err
			}
		}
		return nil
	})
	for i, op := range live {
		if err != nil {
			op.done <- err
		} else {
			op.done <- results[i]
		}
	}
}

// closeGroup refuses new grouped writes and waits for the queued ones.
func (s *Store) closeGroup() {
	g := &s.group
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.writer.Wait()
}
