package sqlstore

import (
	"context"
	"strings"

	"github.com/roadsign/roadsign/server"
)

// CreateAccount implements server.Accounts.
func (s *Store) CreateAccount(ctx context.Context, a server.Account) error {
	_, err := s.exec(ctx, `INSERT INTO accounts (id, role, name, password_hash, token_hash, created_at, disabled, regions, subject) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		a.ID, a.Roles.String(), a.Name, a.PasswordHash, a.TokenHash, micros(a.CreatedAt), boolInt(a.Disabled), strings.Join(a.Regions, ","), a.Subject)
	return s.wrap("create account "+a.Name, err)
}

const accountCols = `id, role, name, password_hash, token_hash, created_at, disabled, regions, subject`

func scanAccount(sc interface{ Scan(...any) error }) (server.Account, error) {
	var a server.Account
	var roles, regions string
	var created int64
	var disabled int
	err := sc.Scan(&a.ID, &roles, &a.Name, &a.PasswordHash, &a.TokenHash, &created, &disabled, &regions, &a.Subject)
	a.Roles, a.CreatedAt, a.Disabled, a.Regions = server.ParseRoles(roles), fromMicros(created), disabled == 1, splitList(regions)
	return a, err
}

// splitList splits a comma-separated column ("" is none).
func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func (s *Store) account(ctx context.Context, where string, arg any) (server.Account, error) {
	a, err := scanAccount(s.queryRow(ctx, `SELECT `+accountCols+` FROM accounts WHERE `+where+` = ?`, arg))
	return a, s.wrap("account", err)
}

// ListAccounts returns every account, by name.
func (s *Store) ListAccounts(ctx context.Context) ([]server.Account, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+accountCols+` FROM accounts ORDER BY name`)
	if err != nil {
		return nil, s.wrap("list accounts", err)
	}
	defer rows.Close()
	var out []server.Account
	for rows.Next() {
		a, err := scanAccount(rows)
		if err != nil {
			return nil, s.wrap("list accounts", err)
		}
		out = append(out, a)
	}
	return out, s.wrap("list accounts", rows.Err())
}

func (s *Store) updateAccount(ctx context.Context, id, set string, arg any) error {
	res, err := s.exec(ctx, `UPDATE accounts SET `+set+` = ? WHERE id = ?`, arg, id)
	if err != nil {
		return s.wrap("update account "+id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return server.Errorf(server.KindNotFound, "no account %s", id)
	}
	return nil
}

// AdminExists implements server.Accounts. Roles are stored comma-
// separated, so admin is the whole column, its first, last or a middle
// item.
func (s *Store) AdminExists(ctx context.Context) (bool, error) {
	var n int
	err := s.queryRow(ctx, `SELECT COUNT(*) FROM (SELECT 1 FROM accounts WHERE disabled = 0 AND
		(role = 'admin' OR role LIKE 'admin,%' OR role LIKE '%,admin' OR role LIKE '%,admin,%') LIMIT 1) a`).Scan(&n)
	return n > 0, s.wrap("find an admin account", err)
}

// AccountBySubject implements server.Accounts.
func (s *Store) AccountBySubject(ctx context.Context, subject string) (server.Account, error) {
	return s.account(ctx, "subject", subject)
}

// SetAccountRoles implements server.Accounts.
func (s *Store) SetAccountRoles(ctx context.Context, id string, roles server.Roles, regions []string) error {
	res, err := s.exec(ctx, `UPDATE accounts SET role = ?, regions = ? WHERE id = ?`, roles.String(), strings.Join(regions, ","), id)
	return s.changedOne("account "+id, res, err)
}

// SetAccountDisabled disables or enables an account.
func (s *Store) SetAccountDisabled(ctx context.Context, id string, disabled bool) error {
	return s.updateAccount(ctx, id, "disabled", boolInt(disabled))
}

// SetAccountToken replaces an account's token hash (the old token stops working).
func (s *Store) SetAccountToken(ctx context.Context, id, tokenHash string) error {
	return s.updateAccount(ctx, id, "token_hash", tokenHash)
}

// SetAccountPassword replaces an account's password hash.
func (s *Store) SetAccountPassword(ctx context.Context, id, passwordHash string) error {
	return s.updateAccount(ctx, id, "password_hash", passwordHash)
}

// CreateSession stores a portal session (and prunes expired ones).
func (s *Store) CreateSession(ctx context.Context, se server.Session) error {
	if _, err := s.exec(ctx, `DELETE FROM sessions WHERE expires_at < ?`, micros(se.CreatedAt)); err != nil {
		return s.wrap("prune sessions", err)
	}
	_, err := s.exec(ctx, `INSERT INTO sessions (id_hash, account_id, created_at, expires_at) VALUES (?, ?, ?, ?)`,
		se.IDHash, se.AccountID, micros(se.CreatedAt), micros(se.ExpiresAt))
	return s.wrap("create session", err)
}

// Session returns a session by its ID's hash.
func (s *Store) Session(ctx context.Context, idHash string) (server.Session, error) {
	se := server.Session{IDHash: idHash}
	var created, expires int64
	err := s.queryRow(ctx, `SELECT account_id, created_at, expires_at FROM sessions WHERE id_hash = ?`, idHash).
		Scan(&se.AccountID, &created, &expires)
	se.CreatedAt, se.ExpiresAt = fromMicros(created), fromMicros(expires)
	return se, s.wrap("session", err)
}

// DeleteSession ends one session.
func (s *Store) DeleteSession(ctx context.Context, idHash string) error {
	_, err := s.exec(ctx, `DELETE FROM sessions WHERE id_hash = ?`, idHash)
	return s.wrap("delete session", err)
}

// DeleteSessions ends every session of an account.
func (s *Store) DeleteSessions(ctx context.Context, accountID string) error {
	_, err := s.exec(ctx, `DELETE FROM sessions WHERE account_id = ?`, accountID)
	return s.wrap("delete sessions of "+accountID, err)
}

// AccountByTokenHash implements server.Accounts.
func (s *Store) AccountByTokenHash(ctx context.Context, h string) (server.Account, error) {
	return s.account(ctx, "token_hash", h)
}

// AccountByID implements server.Accounts.
func (s *Store) AccountByID(ctx context.Context, id string) (server.Account, error) {
	return s.account(ctx, "id", id)
}

// AccountByName implements server.Accounts.
func (s *Store) AccountByName(ctx context.Context, name string) (server.Account, error) {
	return s.account(ctx, "name", name)
}
