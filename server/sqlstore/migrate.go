package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// migrations are applied in order, once each, and never edited after they
// ship: add a new one instead. {{AUTOID}} and {{BLOB}} are per dialect.
var migrations = []string{
	// 1: registry, jobs, audit, director.
	`CREATE TABLE accounts (
		id TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL UNIQUE,
		password_hash TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL);
	CREATE TABLE vehicles (
		vin TEXT PRIMARY KEY, model TEXT NOT NULL, year INTEGER NOT NULL, region TEXT NOT NULL,
		public_key {{BLOB}} NOT NULL, created_at BIGINT NOT NULL, last_seen BIGINT NOT NULL);
	CREATE TABLE ecus (
		serial TEXT PRIMARY KEY, vin TEXT NOT NULL REFERENCES vehicles(vin), type TEXT NOT NULL,
		hardware_id TEXT NOT NULL, installed_target TEXT NOT NULL DEFAULT '', installed_version TEXT NOT NULL DEFAULT '',
		installed_sha256 TEXT NOT NULL DEFAULT '', reported_at BIGINT NOT NULL DEFAULT 0, position INTEGER NOT NULL);
	CREATE INDEX ecus_vin ON ecus (vin);
	CREATE INDEX ecus_hardware_vin ON ecus (hardware_id, vin);
	CREATE TABLE nonces (vin TEXT NOT NULL, nonce TEXT NOT NULL, used_at BIGINT NOT NULL, PRIMARY KEY (vin, nonce));
	CREATE TABLE jobs (
		id TEXT PRIMARY KEY, vin TEXT NOT NULL, ecu_serial TEXT NOT NULL, ecu_type TEXT NOT NULL,
		target_path TEXT NOT NULL, version TEXT NOT NULL, forced INTEGER NOT NULL, reason TEXT NOT NULL,
		state TEXT NOT NULL, created_by TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
		attempts INTEGER NOT NULL, max_attempts INTEGER NOT NULL, next_attempt_at BIGINT NOT NULL,
		cancel_requested INTEGER NOT NULL, phase TEXT NOT NULL);
	CREATE INDEX jobs_vin ON jobs (vin, created_at);
	CREATE INDEX jobs_state ON jobs (state, created_at);
	CREATE TABLE job_events (
		id {{AUTOID}}, job_id TEXT NOT NULL, at BIGINT NOT NULL, kind TEXT NOT NULL,
		percent INTEGER NOT NULL, message TEXT NOT NULL);
	CREATE INDEX job_events_job ON job_events (job_id, id);
	CREATE TABLE audit (
		id {{AUTOID}}, at BIGINT NOT NULL, actor TEXT NOT NULL, role TEXT NOT NULL,
		action TEXT NOT NULL, subject TEXT NOT NULL, detail TEXT NOT NULL);
	CREATE TABLE director_heads (
		vin TEXT PRIMARY KEY, targets_version BIGINT NOT NULL, snapshot_version BIGINT NOT NULL,
		timestamp_version BIGINT NOT NULL, assignment_hash TEXT NOT NULL, timestamp_expires BIGINT NOT NULL);
	CREATE TABLE director_files (
		vin TEXT NOT NULL, role TEXT NOT NULL, version BIGINT NOT NULL, body {{BLOB}} NOT NULL,
		expires BIGINT NOT NULL, PRIMARY KEY (vin, role, version));`,
	// 2: leases, so one replica at a time signs the image repository.
	`CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires BIGINT NOT NULL);`,
	// 3: owners' vehicle links with subscriptions, one-time link codes.
	`CREATE TABLE links (
		vin TEXT PRIMARY KEY REFERENCES vehicles(vin), owner_id TEXT NOT NULL, linked_at BIGINT NOT NULL,
		subscription_ends BIGINT NOT NULL, pending_owner_id TEXT NOT NULL);
	CREATE INDEX links_owner ON links (owner_id);
	CREATE TABLE link_codes (vin TEXT PRIMARY KEY, code_hash TEXT NOT NULL, expires BIGINT NOT NULL);
	ALTER TABLE vehicles ADD COLUMN auth_state TEXT NOT NULL DEFAULT '';
	ALTER TABLE vehicles ADD COLUMN auth_at BIGINT NOT NULL DEFAULT 0;
	ALTER TABLE vehicles ADD COLUMN dtcs TEXT NOT NULL DEFAULT '';`,
	// 4: audit entries name the account ID; the last handshake keeps its
	// message and token expiry; jobs say where they came from; each VIN
	// counts the USB bundles issued for it.
	`ALTER TABLE audit ADD COLUMN actor_id TEXT NOT NULL DEFAULT '';
	ALTER TABLE vehicles ADD COLUMN auth_message TEXT NOT NULL DEFAULT '';
	ALTER TABLE vehicles ADD COLUMN auth_expires BIGINT NOT NULL DEFAULT 0;
	ALTER TABLE jobs ADD COLUMN origin TEXT NOT NULL DEFAULT 'dealer';
	CREATE UNIQUE INDEX jobs_one_open_auto ON jobs (vin, ecu_serial) WHERE origin = 'auto-assign' AND state IN ('queued', 'in_progress');
	ALTER TABLE director_heads ADD COLUMN bundle_version BIGINT NOT NULL DEFAULT 0;`,
	// 5: accounts can be disabled; portal sessions live on the server, so
	// logout, a password change or disabling the account ends them; an
	// ownership claim keeps when it was made.
	`ALTER TABLE accounts ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
	CREATE TABLE sessions (
		id_hash TEXT PRIMARY KEY, account_id TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL);
	CREATE INDEX sessions_account ON sessions (account_id);
	CREATE INDEX sessions_expires ON sessions (expires_at);
	ALTER TABLE links ADD COLUMN pending_since BIGINT NOT NULL DEFAULT 0;`,
	// 6: leases carry an epoch that fences a leader's writes; campaigns,
	// their members (fixed at start, in a stable random order: draw) and
	// the jobs they assign.
	`ALTER TABLE leases ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
	CREATE TABLE campaigns (
		id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, config TEXT NOT NULL,
		halt_reason TEXT NOT NULL, seed BIGINT NOT NULL,
		open_waves INTEGER NOT NULL, wave_opened TEXT NOT NULL, created_by TEXT NOT NULL, created_at BIGINT NOT NULL,
		updated_at BIGINT NOT NULL, started_at BIGINT NOT NULL, assign_clock BIGINT NOT NULL);
	CREATE INDEX campaigns_state ON campaigns (state);
	CREATE TABLE campaign_members (
		campaign_id TEXT NOT NULL, vin TEXT NOT NULL, ecu_serial TEXT NOT NULL, draw BIGINT NOT NULL,
		wave INTEGER NOT NULL, job_id TEXT NOT NULL, consent TEXT NOT NULL, joined_at BIGINT NOT NULL,
		PRIMARY KEY (campaign_id, vin, ecu_serial));
	CREATE INDEX campaign_members_order ON campaign_members (campaign_id, wave, draw);
	CREATE INDEX campaign_members_ecu ON campaign_members (vin, ecu_serial);
	ALTER TABLE jobs ADD COLUMN campaign_id TEXT NOT NULL DEFAULT '';
	ALTER TABLE jobs ADD COLUMN maintenance_window TEXT NOT NULL DEFAULT '';
	CREATE INDEX jobs_campaign ON jobs (campaign_id, state);`,
	// 7: evidence for the diagnosis: the vehicle's signal, its refused
	// requests, its trouble code episodes; and the findings, open and
	// resolved.
	`ALTER TABLE vehicles ADD COLUMN signal_bars INTEGER NOT NULL DEFAULT -1;
	ALTER TABLE vehicles ADD COLUMN signal_at BIGINT NOT NULL DEFAULT 0;
	ALTER TABLE vehicles ADD COLUMN bad_signature_at BIGINT NOT NULL DEFAULT 0;
	ALTER TABLE vehicles ADD COLUMN bad_signature_count INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE vehicles ADD COLUMN clock_skew_at BIGINT NOT NULL DEFAULT 0;
	ALTER TABLE vehicles ADD COLUMN clock_skew_micros BIGINT NOT NULL DEFAULT 0;
	CREATE TABLE dtc_episodes (
		vin TEXT NOT NULL, code TEXT NOT NULL, first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL,
		count INTEGER NOT NULL, detail TEXT NOT NULL, cleared_at BIGINT NOT NULL, signal_bars INTEGER NOT NULL,
		reported_at BIGINT NOT NULL, PRIMARY KEY (vin, code, first_seen));
	CREATE TABLE findings (
		vin TEXT NOT NULL, code TEXT NOT NULL, first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL,
		resolved_at BIGINT NOT NULL, PRIMARY KEY (vin, code, first_seen));
	CREATE INDEX findings_open ON findings (resolved_at, code);`,
	// 8: used nonces are pruned in one sweep by age, off the request path.
	`CREATE INDEX nonces_used_at ON nonces (used_at);`,
	// 9: the image repository's version row: replicas notice a publish by
	// reading it, not the blob store.
	`CREATE TABLE repo_versions (name TEXT PRIMARY KEY, version BIGINT NOT NULL);
	INSERT INTO repo_versions (name, version) VALUES ('image', 0);`,
	// 10: the audit log becomes a hash chain (entries from before stay
	// unchained, before the first chained one), with signed checkpoints.
	`ALTER TABLE audit ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
	ALTER TABLE audit ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
	ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT '';
	CREATE UNIQUE INDEX audit_seq ON audit (seq) WHERE seq > 0;
	CREATE TABLE audit_checkpoints (
		seq BIGINT PRIMARY KEY, hash TEXT NOT NULL, at BIGINT NOT NULL, key_id TEXT NOT NULL, signature TEXT NOT NULL);`,
	// 11: each vehicle's software record: every install attempt per ECU.
	`CREATE TABLE software_record (
		id {{AUTOID}}, vin TEXT NOT NULL, ecu_serial TEXT NOT NULL, ecu_type TEXT NOT NULL, at BIGINT NOT NULL,
		from_version TEXT NOT NULL, from_sha256 TEXT NOT NULL, to_version TEXT NOT NULL, to_sha256 TEXT NOT NULL,
		via TEXT NOT NULL, job_id TEXT NOT NULL, campaign_id TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL);
	CREATE INDEX software_record_vin ON software_record (vin, id);`,
	// 12: the audit chain's genesis entry is found by its action.
	`CREATE INDEX audit_action ON audit (action);`,
	// 13: the vehicle's last refused check-in, evidence for the diagnosis.
	`ALTER TABLE vehicles ADD COLUMN checkin_refused_at BIGINT NOT NULL DEFAULT 0;
	ALTER TABLE vehicles ADD COLUMN checkin_refused TEXT NOT NULL DEFAULT '';`,
	// 14: what a VIN's director assignment was decided from, so a poll of
	// unchanged metadata is answered from the stored timestamp: each
	// vehicle counts the changes to its own inputs (jobs, installed
	// images, ECUs), one row counts changes to any campaign, and a head
	// keeps the basis it was last decided on.
	`ALTER TABLE vehicles ADD COLUMN director_gen BIGINT NOT NULL DEFAULT 0;
	ALTER TABLE director_heads ADD COLUMN basis TEXT NOT NULL DEFAULT '';
	INSERT INTO repo_versions (name, version) VALUES ('campaigns', 0);`,
	// 15: update sets: a job installing on several ECUs together keeps
	// its parts (JSON, install order), and so does its software record
	// entry; '' for one ECU.
	`ALTER TABLE jobs ADD COLUMN parts TEXT NOT NULL DEFAULT '';
	ALTER TABLE software_record ADD COLUMN parts TEXT NOT NULL DEFAULT '';`,
	// 16: ECUs with keys of their own (Uptane): the key (base64, '' for
	// a vehicle registered without ECU keys), the counter of the last
	// accepted signed version report, and the last refusal it reported.
	`ALTER TABLE ecus ADD COLUMN public_key TEXT NOT NULL DEFAULT '';
	ALTER TABLE ecus ADD COLUMN report_counter BIGINT NOT NULL DEFAULT 0;
	ALTER TABLE ecus ADD COLUMN attack TEXT NOT NULL DEFAULT '';
	ALTER TABLE ecus ADD COLUMN attack_at BIGINT NOT NULL DEFAULT 0;`,
	// 17: an ECU's X25519 encryption key (base64, '' until registered or
	// first reported), to which the files keys of encrypted images are
	// wrapped.
	`ALTER TABLE ecus ADD COLUMN encryption_key TEXT NOT NULL DEFAULT '';`,
	// 18: why the vehicle held no trusted time at its last check-in ('':
	// it did), for the diagnosis.
	`ALTER TABLE vehicles ADD COLUMN time_untrusted TEXT NOT NULL DEFAULT '';`,
	// 19: log-in throttling, shared by every replica (a token bucket per
	// client address, failures and a lock per account name).
	`CREATE TABLE login_throttle (
		name TEXT PRIMARY KEY, tokens_milli BIGINT NOT NULL, last_at BIGINT NOT NULL,
		failures INTEGER NOT NULL, locked_until BIGINT NOT NULL);
	CREATE INDEX login_throttle_last ON login_throttle (last_at);`,
	// 20: operators. An account's role column holds its roles, comma-
	// separated; a dealer's regions scope it; subject names a single
	// sign-on account ("ISSUER SUBJECT", '' for a local one). Scoped API tokens, four-eyes
	// approvals, webhook subscriptions and their delivery queue.
	`ALTER TABLE accounts ADD COLUMN regions TEXT NOT NULL DEFAULT '';
	ALTER TABLE accounts ADD COLUMN subject TEXT NOT NULL DEFAULT '';
	CREATE INDEX accounts_subject ON accounts (subject);
	CREATE TABLE api_tokens (
		id TEXT PRIMARY KEY, account_id TEXT NOT NULL, name TEXT NOT NULL, roles TEXT NOT NULL,
		token_hash TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL,
		revoked_at BIGINT NOT NULL DEFAULT 0, last_used_at BIGINT NOT NULL DEFAULT 0, last_used_from TEXT NOT NULL DEFAULT '');
	CREATE INDEX api_tokens_account ON api_tokens (account_id, created_at);
	CREATE TABLE approvals (
		id TEXT PRIMARY KEY, action TEXT NOT NULL, subject TEXT NOT NULL, what TEXT NOT NULL, fingerprint TEXT NOT NULL,
		state TEXT NOT NULL, requested_by_id TEXT NOT NULL, requested_by TEXT NOT NULL, requested_at BIGINT NOT NULL,
		decided_by_id TEXT NOT NULL DEFAULT '', decided_by TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
		decided_at BIGINT NOT NULL DEFAULT 0);
	CREATE INDEX approvals_subject ON approvals (subject, requested_at);
	CREATE INDEX approvals_state ON approvals (state, requested_at);
	CREATE TABLE webhooks (
		id TEXT PRIMARY KEY, url TEXT NOT NULL, events TEXT NOT NULL, secret TEXT NOT NULL,
		created_by TEXT NOT NULL, created_at BIGINT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0);
	CREATE TABLE webhook_deliveries (
		id TEXT PRIMARY KEY, webhook_id TEXT NOT NULL, event TEXT NOT NULL, body TEXT NOT NULL, state TEXT NOT NULL,
		attempts INTEGER NOT NULL, created_at BIGINT NOT NULL, next_at BIGINT NOT NULL,
		last_status INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '', delivered_at BIGINT NOT NULL DEFAULT 0);
	CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_at);
	CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (webhook_id, created_at);`,
}

// Migrate applies the migrations not yet applied and records them in
// schema_migrations, all in one transaction under the dialect's migration
// lock, so replicas starting together neither race nor half-migrate.
func (s *Store) Migrate(ctx context.Context) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if s.d.LockMigrations != nil {
			if err := s.d.LockMigrations(ctx, tx); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`); err != nil {
			return err
		}
		for i, m := range migrations {
			v := i + 1
			var n int
			if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM schema_migrations WHERE version = ?`), v).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				continue
			}
			ddl := strings.NewReplacer("{{AUTOID}}", s.d.AutoID, "{{BLOB}}", s.d.Blob).Replace(m)
			for _, stmt := range strings.Split(ddl, ";") {
				if strings.TrimSpace(stmt) == "" {
					continue
				}
				if _, err := tx.ExecContext(ctx, stmt); err != nil {
					return fmt.Errorf("migration %d: %s: %w", v, strings.Join(strings.Fields(stmt)[:3], " "), err)
				}
			}
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`), v, time.Now().UnixMicro()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}
