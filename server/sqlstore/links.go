package sqlstore

import (
	"context"
	"time"

	"github.com/roadsign/roadsign/server"
)

// SetLinkCode implements server.Links.
func (s *Store) SetLinkCode(ctx context.Context, vin, codeHash string, expires time.Time) error {
	_, err := s.exec(ctx, `INSERT INTO link_codes (vin, code_hash, expires) VALUES (?, ?, ?)
		ON CONFLICT (vin) DO UPDATE SET code_hash = excluded.code_hash, expires = excluded.expires`, vin, codeHash, micros(expires))
	return s.wrap("set link code", err)
}

// TakeLinkCode implements server.Links.
func (s *Store) TakeLinkCode(ctx context.Context, vin, codeHash string, now time.Time) error {
	res, err := s.exec(ctx, `DELETE FROM link_codes WHERE vin = ? AND code_hash = ? AND expires > ?`, vin, codeHash, micros(now))
	if err != nil {
		return s.wrap("take link code", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return server.Errorf(server.KindNotFound, "no valid link code for %s", vin)
	}
	return nil
}

const linkCols = `vin, owner_id, linked_at, subscription_ends, pending_owner_id, pending_since`

func scanLink(sc interface{ Scan(...any) error }) (server.Link, error) {
	var l server.Link
	var linked, ends, since int64
	err := sc.Scan(&l.VIN, &l.OwnerID, &linked, &ends, &l.PendingOwnerID, &since)
	l.LinkedAt, l.SubscriptionEnds, l.PendingSince = fromMicros(linked), fromMicros(ends), fromMicros(since)
	return l, err
}

// Link implements server.Links.
func (s *Store) Link(ctx context.Context, vin string) (server.Link, error) {
	l, err := scanLink(s.queryRow(ctx, `SELECT `+linkCols+` FROM links WHERE vin = ?`, vin))
	return l, s.wrap("link of "+vin, err)
}

// LinksByOwner implements server.Links.
func (s *Store) LinksByOwner(ctx context.Context, owner string) ([]server.Link, error) {
	rows, err := s.query(ctx, `SELECT `+linkCols+` FROM links WHERE owner_id = ? ORDER BY vin`, owner)
	if err != nil {
		return nil, s.wrap("links", err)
	}
	defer rows.Close()
	var out []server.Link
	for rows.Next() {
		l, err := scanLink(rows)
		if err != nil {
			return nil, s.wrap("links", err)
		}
		out = append(out, l)
	}
	return out, s.wrap("links", rows.Err())
}

// SaveLink implements server.Links.
func (s *Store) SaveLink(ctx context.Context, l server.Link) error {
	_, err := s.exec(ctx, `INSERT INTO links (`+linkCols+`) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (vin) DO UPDATE SET owner_id = excluded.owner_id, linked_at = excluded.linked_at,
		subscription_ends = excluded.subscription_ends, pending_owner_id = excluded.pending_owner_id, pending_since = excluded.pending_since`,
		l.VIN, l.OwnerID, micros(l.LinkedAt), micros(l.SubscriptionEnds), l.PendingOwnerID, micros(l.PendingSince))
	return s.wrap("save link", err)
}

// DeleteLink implements server.Links.
func (s *Store) DeleteLink(ctx context.Context, vin string) error {
	_, err := s.exec(ctx, `DELETE FROM links WHERE vin = ?`, vin)
	return s.wrap("delete link", err)
}
