package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/roadsign/roadsign/server"
)

// AcquireLeadership takes the named lease if it is free or expired, or
// renews it for its holder, and returns its epoch. The epoch grows each
// time the lease changes hands (or lapsed), so writes fenced by an older
// epoch fail.
func (s *Store) AcquireLeadership(ctx context.Context, name, holder string, ttl time.Duration, now time.Time) (int64, bool, error) {
	var epoch int64
	err := s.queryRow(ctx, `INSERT INTO leases (name, holder, expires, epoch) VALUES (?, ?, ?, 1)
		ON CONFLICT (name) DO UPDATE SET
			epoch = CASE WHEN leases.holder = excluded.holder AND leases.expires >= ? THEN leases.epoch ELSE leases.epoch + 1 END,
			holder = excluded.holder, expires = excluded.expires
		WHERE leases.expires < ? OR leases.holder = excluded.holder
		RETURNING epoch`, name, holder, micros(now.Add(ttl)), micros(now), micros(now)).Scan(&epoch)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	return epoch, err == nil, s.wrap("acquire leadership "+name, err)
}

// fenced runs fn in a transaction that first checks f still holds its
// lease at its epoch (locking the lease row, so the lease cannot change
// hands before the transaction ends); server.ErrFenced otherwise.
func (s *Store) fenced(ctx context.Context, f server.Fence, now time.Time, fn func(tx *sql.Tx) error) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var holder string
		var epoch, expires int64
		err := s.txQueryRow(ctx, tx, `SELECT holder, epoch, expires FROM leases WHERE name = ?`+s.d.ForUpdate, f.Name).Scan(&holder, &epoch, &expires)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && (holder != f.Holder || epoch != f.Epoch || expires < micros(now))) {
			return fmt.Errorf("lease %s (epoch %d): %w", f.Name, f.Epoch, server.ErrFenced)
		}
		if err != nil {
			return err
		}
		return fn(tx)
	})
}

// ReleaseLease implements server.Leases.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	_, err := s.exec(ctx, `DELETE FROM leases WHERE name = ? AND holder = ?`, name, holder)
	return s.wrap("release lease "+name, err)
}
