package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"math"
	"time"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/auditlog"
)

// AppendAudit implements server.Audit: the entry is chained after the
// last one. Two replicas appending at once both pick the same next seq;
// the unique index refuses one, which chains again after the other.
func (s *Store) AppendAudit(ctx context.Context, e server.AuditEntry) error {
	_, err := s.appendAudit(ctx, e, nil)
	return err
}

// AppendAuditGenesis appends the chain's genesis entry, its Detail made by
// seal from its place in the chain (seq, the hash before it) and the
// number of unchained entries before the chain, under the same lock as
// every append. It appends nothing and reports false when a genesis entry
// exists (replicas starting together).
func (s *Store) AppendAuditGenesis(ctx context.Context, e server.AuditEntry, seal func(seq int64, prevHash string, legacy int64) string) (bool, error) {
	e.Action = auditlog.GenesisAction
	return s.appendAudit(ctx, e, seal)
}

var errGenesisExists = errors.New("the audit chain has its genesis entry")

func (s *Store) appendAudit(ctx context.Context, e server.AuditEntry, seal func(seq int64, prevHash string, legacy int64) string) (bool, error) {
	e.At = e.At.UTC().Truncate(time.Microsecond)
	var err error
	for range 10 {
		err = s.tx(ctx, func(tx *sql.Tx) error {
			if s.d.LockAudit != nil {
				if err := s.d.LockAudit(ctx, tx); err != nil {
					return err
				}
			}
			var prevSeq int64
			var prevHash string
			err := tx.QueryRowContext(ctx, s.q(`SELECT seq, hash FROM audit ORDER BY id DESC LIMIT 1`)).Scan(&prevSeq, &prevHash)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			e.Seq, e.PrevHash = prevSeq+1, prevHash
			if seal != nil {
				var n, legacy int64
				if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM audit WHERE action = ?`), auditlog.GenesisAction).Scan(&n); err != nil {
					return err
				}
				if n > 0 {
					return errGenesisExists
				}
				if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM audit WHERE seq = 0`)).Scan(&legacy); err != nil {
					return err
				}
				e.Detail = seal(e.Seq, e.PrevHash, legacy)
			}
			e.Hash = auditlog.Hash(e.PrevHash, e)
			_, err = tx.ExecContext(ctx, s.q(`INSERT INTO audit (at, actor_id, actor, role, action, subject, detail, seq, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
				micros(e.At), e.ActorID, e.Actor, e.Role, e.Action, e.Subject, e.Detail, e.Seq, e.PrevHash, e.Hash)
			return err
		})
		if err == nil || !s.d.IsUnique(err) {
			break
		}
	}
	if errors.Is(err, errGenesisExists) {
		return false, nil
	}
	return err == nil, s.wrap("audit", err)
}

// AuditHead implements server.Audit.
func (s *Store) AuditHead(ctx context.Context) (int64, string, error) {
	var seq int64
	var hash string
	err := s.queryRow(ctx, `SELECT seq, hash FROM audit ORDER BY id DESC LIMIT 1`).Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", nil
	}
	return seq, hash, s.wrap("audit head", err)
}

// AddAuditCheckpoint implements server.Audit. A checkpoint of a head
// already checkpointed replaces the older one (the leader signs the head
// every interval, grown or not, so that a stale checkpoint shows).
func (s *Store) AddAuditCheckpoint(ctx context.Context, c server.AuditCheckpoint) error {
	_, err := s.exec(ctx, `INSERT INTO audit_checkpoints (seq, hash, at, key_id, signature) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (seq) DO UPDATE SET hash = excluded.hash, at = excluded.at, key_id = excluded.key_id, signature = excluded.signature`,
		c.Seq, c.Hash, micros(c.At), c.KeyID, c.Signature)
	return s.wrap("audit checkpoint", err)
}

// AuditCheckpoints implements server.Audit.
func (s *Store) AuditCheckpoints(ctx context.Context) ([]server.AuditCheckpoint, error) {
	rows, err := s.query(ctx, `SELECT seq, hash, at, key_id, signature FROM audit_checkpoints ORDER BY seq`)
	if err != nil {
		return nil, s.wrap("audit checkpoints", err)
	}
	defer rows.Close()
	var out []server.AuditCheckpoint
	for rows.Next() {
		var c server.AuditCheckpoint
		var at int64
		if err := rows.Scan(&c.Seq, &c.Hash, &at, &c.KeyID, &c.Signature); err != nil {
			return nil, s.wrap("audit checkpoints", err)
		}
		c.At = fromMicros(at)
		out = append(out, c)
	}
	return out, s.wrap("audit checkpoints", rows.Err())
}

// ListAudit implements server.Audit.
func (s *Store) ListAudit(ctx context.Context, after int64, limit int) ([]server.AuditEntry, error) {
	return s.listAudit(ctx, `id > ? ORDER BY id`, after, limit)
}

// RecentAudit implements server.Audit.
func (s *Store) RecentAudit(ctx context.Context, before int64, limit int) ([]server.AuditEntry, error) {
	if before <= 0 {
		before = math.MaxInt64
	}
	return s.listAudit(ctx, `id < ? ORDER BY id DESC`, before, limit)
}

func (s *Store) listAudit(ctx context.Context, where string, bound int64, limit int) ([]server.AuditEntry, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	rows, err := s.query(ctx, `SELECT id, at, actor_id, actor, role, action, subject, detail, seq, prev_hash, hash FROM audit WHERE `+where+` LIMIT ?`, bound, limit)
	if err != nil {
		return nil, s.wrap("audit", err)
	}
	defer rows.Close()
	var out []server.AuditEntry
	for rows.Next() {
		var e server.AuditEntry
		var at int64
		if err := rows.Scan(&e.ID, &at, &e.ActorID, &e.Actor, &e.Role, &e.Action, &e.Subject, &e.Detail, &e.Seq, &e.PrevHash, &e.Hash); err != nil {
			return nil, s.wrap("audit", err)
		}
		e.At = fromMicros(at)
		out = append(out, e)
	}
	return out, s.wrap("audit", rows.Err())
}
