package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"time"

	"github.com/roadsign/roadsign/server"
)

type scanner interface{ Scan(...any) error }

// --- API tokens ---

const apiTokenCols = `id, account_id, name, roles, token_hash, created_at, expires_at, revoked_at, last_used_at, last_used_from`

func scanAPIToken(sc scanner) (server.APIToken, error) {
	var t server.APIToken
	var roles string
	var created, expires, revoked, used int64
	err := sc.Scan(&t.ID, &t.AccountID, &t.Name, &roles, &t.TokenHash, &created, &expires, &revoked, &used, &t.LastUsedFrom)
	t.Roles, t.CreatedAt, t.ExpiresAt, t.RevokedAt, t.LastUsedAt = server.ParseRoles(roles), fromMicros(created), fromMicros(expires), fromMicros(revoked), fromMicros(used)
	return t, err
}

// CreateAPIToken implements server.APITokens.
func (s *Store) CreateAPIToken(ctx context.Context, t server.APIToken) error {
	_, err := s.exec(ctx, `INSERT INTO api_tokens (`+apiTokenCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, '')`,
		t.ID, t.AccountID, t.Name, t.Roles.String(), t.TokenHash, micros(t.CreatedAt), micros(t.ExpiresAt))
	return s.wrap("create API token", err)
}

// APITokenByHash implements server.APITokens.
func (s *Store) APITokenByHash(ctx context.Context, hash string) (server.APIToken, error) {
	t, err := scanAPIToken(s.queryRow(ctx, `SELECT `+apiTokenCols+` FROM api_tokens WHERE token_hash = ?`, hash))
	return t, s.wrap("API token", err)
}

// APIToken implements server.APITokens.
func (s *Store) APIToken(ctx context.Context, id string) (server.APIToken, error) {
	t, err := scanAPIToken(s.queryRow(ctx, `SELECT `+apiTokenCols+` FROM api_tokens WHERE id = ?`, id))
	return t, s.wrap("API token", err)
}

// APITokens implements server.APITokens.
func (s *Store) APITokens(ctx context.Context, accountID string) ([]server.APIToken, error) {
	q, args := `SELECT `+apiTokenCols+` FROM api_tokens ORDER BY created_at DESC, id`, []any{}
	if accountID != "" {
		q, args = `SELECT `+apiTokenCols+` FROM api_tokens WHERE account_id = ? ORDER BY created_at DESC, id`, []any{accountID}
	}
	return list(ctx, s, "list API tokens", q, args, scanAPIToken)
}

// RevokeAPIToken implements server.APITokens.
func (s *Store) RevokeAPIToken(ctx context.Context, id string, at time.Time) error {
	res, err := s.exec(ctx, `UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at = 0`, micros(at), id)
	return s.changedOne("revoke API token "+id, res, err)
}

// TouchAPIToken implements server.APITokens.
func (s *Store) TouchAPIToken(ctx context.Context, id string, at time.Time, from string) error {
	_, err := s.exec(ctx, `UPDATE api_tokens SET last_used_at = ?, last_used_from = ? WHERE id = ?`, micros(at), from, id)
	return s.wrap("note API token use", err)
}

// changedOne is oneRow for an update of a row that may not exist: no row
// touched is ErrNotFound.
func (s *Store) changedOne(what string, res sql.Result, err error) error {
	if err := s.oneRow(res, err); errors.Is(err, server.ErrConflict) {
		return server.ErrNotFound
	} else if err != nil {
		return s.wrap(what, err)
	}
	return nil
}

// list runs a query and scans every row.
func list[T any](ctx context.Context, s *Store, what, q string, args []any, scan func(scanner) (T, error)) ([]T, error) {
	rows, err := s.query(ctx, q, args...)
	if err != nil {
		return nil, s.wrap(what, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, s.wrap(what, err)
		}
		out = append(out, v)
	}
	return out, s.wrap(what, rows.Err())
}

// --- approvals ---

const approvalCols = `id, action, subject, what, fingerprint, state, requested_by_id, requested_by, requested_at, decided_by_id, decided_by, reason, decided_at`

func scanApproval(sc scanner) (server.Approval, error) {
	var a server.Approval
	var req, dec int64
	err := sc.Scan(&a.ID, &a.Action, &a.Subject, &a.What, &a.Fingerprint, &a.State, &a.RequestedByID, &a.RequestedBy, &req,
		&a.DecidedByID, &a.DecidedBy, &a.Reason, &dec)
	a.RequestedAt, a.DecidedAt = fromMicros(req), fromMicros(dec)
	return a, err
}

// CreateApproval implements server.Approvals.
func (s *Store) CreateApproval(ctx context.Context, a server.Approval) error {
	_, err := s.exec(ctx, `INSERT INTO approvals (`+approvalCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		a.ID, a.Action, a.Subject, a.What, a.Fingerprint, a.State, a.RequestedByID, a.RequestedBy, micros(a.RequestedAt),
		a.DecidedByID, a.DecidedBy, a.Reason, micros(a.DecidedAt))
	return s.wrap("create approval", err)
}

// Approval implements server.Approvals.
func (s *Store) Approval(ctx context.Context, id string) (server.Approval, error) {
	a, err := scanApproval(s.queryRow(ctx, `SELECT `+approvalCols+` FROM approvals WHERE id = ?`, id))
	return a, s.wrap("approval", err)
}

// ApprovalsOf implements server.Approvals.
func (s *Store) ApprovalsOf(ctx context.Context, subject string) ([]server.Approval, error) {
	return list(ctx, s, "list approvals", `SELECT `+approvalCols+` FROM approvals WHERE subject = ? ORDER BY requested_at DESC, id`, []any{subject}, scanApproval)
}

// ApprovalsIn implements server.Approvals.
func (s *Store) ApprovalsIn(ctx context.Context, limit int, states ...string) ([]server.Approval, error) {
	args := make([]any, 0, len(states)+1)
	for _, st := range states {
		args = append(args, st)
	}
	args = append(args, limit)
	q := `SELECT ` + approvalCols + ` FROM approvals WHERE state IN (?` + strings.Repeat(", ?", len(states)-1) + `) ORDER BY requested_at DESC, id LIMIT ?`
	return list(ctx, s, "list approvals", q, args, scanApproval)
}

// SetApprovalState implements server.Approvals.
func (s *Store) SetApprovalState(ctx context.Context, a server.Approval, from string) error {
	res, err := s.exec(ctx, `UPDATE approvals SET state = ?, decided_by_id = ?, decided_by = ?, reason = ?, decided_at = ? WHERE id = ? AND state = ?`,
		a.State, a.DecidedByID, a.DecidedBy, a.Reason, micros(a.DecidedAt), a.ID, from)
	return s.wrap("approval "+a.ID, s.oneRow(res, err)) // no row: decided meanwhile (ErrConflict)
}

// --- webhooks ---

const webhookCols = `id, url, events, secret, created_by, created_at, disabled`

func scanWebhook(sc scanner) (server.Webhook, error) {
	var w server.Webhook
	var events string
	var created int64
	var disabled int
	err := sc.Scan(&w.ID, &w.URL, &events, &w.Secret, &w.CreatedBy, &created, &disabled)
	w.Events, w.CreatedAt, w.Disabled = splitList(events), fromMicros(created), disabled == 1
	return w, err
}

// CreateWebhook implements server.Webhooks.
func (s *Store) CreateWebhook(ctx context.Context, w server.Webhook) error {
	_, err := s.exec(ctx, `INSERT INTO webhooks (`+webhookCols+`) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		w.ID, w.URL, strings.Join(w.Events, ","), w.Secret, w.CreatedBy, micros(w.CreatedAt), boolInt(w.Disabled))
	return s.wrap("create webhook", err)
}

// Webhook implements server.Webhooks.
func (s *Store) Webhook(ctx context.Context, id string) (server.Webhook, error) {
	w, err := scanWebhook(s.queryRow(ctx, `SELECT `+webhookCols+` FROM webhooks WHERE id = ?`, id))
	return w, s.wrap("webhook", err)
}

// ListWebhooks implements server.Webhooks.
func (s *Store) ListWebhooks(ctx context.Context) ([]server.Webhook, error) {
	return list(ctx, s, "list webhooks", `SELECT `+webhookCols+` FROM webhooks ORDER BY created_at, id`, nil, scanWebhook)
}

// DeleteWebhook implements server.Webhooks: the subscription and its
// deliveries not yet made.
func (s *Store) DeleteWebhook(ctx context.Context, id string) error {
	return s.wrap("delete webhook", s.tx(ctx, func(tx *sql.Tx) error {
		res, err := s.txExec(ctx, tx, `DELETE FROM webhooks WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return server.ErrNotFound
		}
		_, err = s.txExec(ctx, tx, `DELETE FROM webhook_deliveries WHERE webhook_id = ? AND state = ?`, id, server.DeliveryPending)
		return err
	}))
}

const deliveryCols = `id, webhook_id, event, body, state, attempts, created_at, next_at, last_status, last_error, delivered_at`

func scanDelivery(sc scanner) (server.Delivery, error) {
	var d server.Delivery
	var created, next, delivered int64
	err := sc.Scan(&d.ID, &d.WebhookID, &d.Event, &d.Body, &d.State, &d.Attempts, &created, &next, &d.LastStatus, &d.LastError, &delivered)
	d.CreatedAt, d.NextAt, d.DeliveredAt = fromMicros(created), fromMicros(next), fromMicros(delivered)
	return d, err
}

// EnqueueDeliveries implements server.Webhooks.
func (s *Store) EnqueueDeliveries(ctx context.Context, ds []server.Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	return s.wrap("queue webhook deliveries", s.tx(ctx, func(tx *sql.Tx) error {
		for _, d := range ds {
			if _, err := s.txExec(ctx, tx, `INSERT INTO webhook_deliveries (`+deliveryCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				d.ID, d.WebhookID, d.Event, d.Body, d.State, d.Attempts, micros(d.CreatedAt), micros(d.NextAt), d.LastStatus, d.LastError, micros(d.DeliveredAt)); err != nil {
				return err
			}
		}
		return nil
	}))
}

// DueDeliveries implements server.Webhooks: the rows are claimed in one
// transaction (moving next_at to holdUntil), so replicas never share one.
func (s *Store) DueDeliveries(ctx context.Context, now, holdUntil time.Time, limit int) ([]server.Delivery, error) {
	var out []server.Delivery
	err := s.tx(ctx, func(tx *sql.Tx) error {
		rows, err := s.txQuery(ctx, tx, `SELECT `+deliveryCols+` FROM webhook_deliveries WHERE state = ? AND next_at <= ? ORDER BY next_at, id LIMIT ?`+s.d.ForUpdate,
			server.DeliveryPending, micros(now), limit)
		if err != nil {
			return err
		}
		for rows.Next() {
			d, err := scanDelivery(rows)
			if err != nil {
				rows.Close()
				return err
			}
			out = append(out, d)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for i := range out {
			if _, err := s.txExec(ctx, tx, `UPDATE webhook_deliveries SET next_at = ? WHERE id = ?`, micros(holdUntil), out[i].ID); err != nil {
				return err
			}
			out[i].NextAt = holdUntil
		}
		return nil
	})
	return out, s.wrap("claim webhook deliveries", err)
}

// UpdateDelivery implements server.Webhooks.
func (s *Store) UpdateDelivery(ctx context.Context, d server.Delivery) error {
	_, err := s.exec(ctx, `UPDATE webhook_deliveries SET state = ?, attempts = ?, next_at = ?, last_status = ?, last_error = ?, delivered_at = ? WHERE id = ?`,
		d.State, d.Attempts, micros(d.NextAt), d.LastStatus, d.LastError, micros(d.DeliveredAt), d.ID)
	return s.wrap("update webhook delivery", err)
}

// Deliveries implements server.Webhooks.
func (s *Store) Deliveries(ctx context.Context, webhookID string, limit int) ([]server.Delivery, error) {
	q, args := `SELECT `+deliveryCols+` FROM webhook_deliveries ORDER BY created_at DESC, id LIMIT ?`, []any{limit}
	if webhookID != "" {
		q, args = `SELECT `+deliveryCols+` FROM webhook_deliveries WHERE webhook_id = ? ORDER BY created_at DESC, id LIMIT ?`, []any{webhookID, limit}
	}
	return list(ctx, s, "list webhook deliveries", q, args, scanDelivery)
}
