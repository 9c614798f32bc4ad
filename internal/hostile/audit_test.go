package hostile

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	rs "github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/auditlog"
	_ "github.com/roadsign/roadsign/server/sqlite" // the "sqlite" driver
)

// TestAuditRewritesNeedTheKey: someone who can write the database but
// holds no key rewrites the audit log three ways the review found. Each
// passes a check of the database alone (except the blanked chain, which
// the genesis entry now catches) and fails `audit verify --checkpoints`
// against the file the leader appends checkpoints to; and a checkpoint
// file whose newest entry is older than two intervals fails too.
func TestAuditRewritesNeedTheKey(t *testing.T) {
	cpFile := filepath.Join(t.TempDir(), "checkpoints.jsonl")
	s := start(t, "--audit-checkpoint-interval", "1s", "--audit-checkpoint-file", cpFile)
	for i := range 6 {
		s.account(t, "dealer", fmt.Sprintf("dealer-%d", i))
	}
	db := filepath.Join(s.data, "roadsign.db")
	head := func(path string) int64 {
		d := openDB(t, path)
		defer d.Close()
		var n int64
		d.QueryRow(`SELECT MAX(seq) FROM audit`).Scan(&n)
		return n
	}
	want := head(db)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(readFile(t, cpFile), fmt.Sprintf(`"seq":%d,`, want)) {
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint of seq %d in the file after 20 s:\n%s", want, readFile(t, cpFile))
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.stop()

	verify := func(data string, extra ...string) (int, string) {
		return run(t, "roadsign-server", append([]string{"audit", "verify", "--data", data, "--audit-checkpoint-interval", "1m"}, extra...)...)
	}
	if code, out := verify(s.data, "--checkpoints", cpFile); code != 0 {
		t.Fatalf("untouched log: exit %d\n%s", code, out)
	}
	tests := []struct {
		name       string
		tamper     func(t *testing.T, d *sql.DB)
		dbOnlyPass bool   // whether a check of the database alone still passes
		want       string // what verify --checkpoints names
	}{
		{"an entry edited, later hashes recomputed, checkpoints from there deleted", func(t *testing.T, d *sql.DB) {
			execSQL(t, d, `UPDATE audit SET detail = 'nothing happened' WHERE seq = 3`)
			rechain(t, d)
			execSQL(t, d, `DELETE FROM audit_checkpoints WHERE seq >= 3`)
		}, true, "differs from the one a checkpoint signed"},
		{"the last entries and their checkpoints deleted", func(t *testing.T, d *sql.DB) {
			execSQL(t, d, `DELETE FROM audit WHERE seq > ?`, want-2)
			execSQL(t, d, `DELETE FROM audit_checkpoints WHERE seq > ?`, want-2)
		}, true, "missing from the end (removed)"},
		{"every entry's chain fields blanked", func(t *testing.T, d *sql.DB) {
			execSQL(t, d, `UPDATE audit SET seq = 0, prev_hash = '', hash = ''`)
			execSQL(t, d, `DELETE FROM audit_checkpoints`)
		}, false, "no signed genesis entry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := copyData(t, s.data)
			d := openDB(t, filepath.Join(data, "roadsign.db"))
			tt.tamper(t, d)
			d.Close()
			code, out := verify(data)
			if tt.dbOnlyPass && code != 0 {
				t.Fatalf("the rewrite no longer passes a check of the database alone (the case is stale): exit %d\n%s", code, out)
			}
			if !tt.dbOnlyPass && code != 1 {
				t.Fatalf("database alone: exit %d, want 1\n%s", code, out)
			}
			code, out = verify(data, "--checkpoints", cpFile)
			if code != 1 || !strings.Contains(out, tt.want) {
				t.Fatalf("with --checkpoints: exit %d, want 1 naming %q\n%s", code, tt.want, out)
			}
			t.Logf("detected: %s", strings.TrimSpace(out))
		})
	}
	t.Run("the newest checkpoint older than two intervals", func(t *testing.T) {
		time.Sleep(2500 * time.Millisecond)
		code, out := run(t, "roadsign-server", "audit", "verify", "--data", s.data, "--checkpoints", cpFile, "--audit-checkpoint-interval", "1s")
		if code != 1 || !strings.Contains(out, "newest audit checkpoint is too old") {
			t.Fatalf("exit %d, want 1 naming a stale checkpoint\n%s", code, out)
		}
	})
	t.Run("export-checkpoints writes what verify reads", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "exported.jsonl")
		if code, msg := run(t, "roadsign-server", "audit", "export-checkpoints", "--data", s.data, "--out", out); code != 0 {
			t.Fatalf("export: exit %d\n%s", code, msg)
		}
		if code, msg := verify(s.data, "--checkpoints", out); code != 0 {
			t.Fatalf("verify with the export: exit %d\n%s", code, msg)
		}
	})
}

func openDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	d, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func execSQL(t *testing.T, d *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := d.ExecContext(context.Background(), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// rechain recomputes every entry's hash in order, as a keyless attacker
// can.
func rechain(t *testing.T, d *sql.DB) {
	t.Helper()
	rows, err := d.Query(`SELECT id, seq, at, actor_id, actor, role, action, subject, detail FROM audit ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var es []rs.AuditEntry
	for rows.Next() {
		var e rs.AuditEntry
		var at int64
		if err := rows.Scan(&e.ID, &e.Seq, &at, &e.ActorID, &e.Actor, &e.Role, &e.Action, &e.Subject, &e.Detail); err != nil {
			t.Fatal(err)
		}
		e.At = time.UnixMicro(at).UTC()
		es = append(es, e)
	}
	rows.Close()
	prev := ""
	for _, e := range es {
		h := auditlog.Hash(prev, e)
		execSQL(t, d, `UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?`, prev, h, e.ID)
		prev = h
	}
}

// copyData copies a stopped server's database and public keys.
func copyData(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	for _, f := range []string{"roadsign.db", "roadsign.db-wal", "roadsign.db-shm", "online-keys.json"} {
		b, err := os.ReadFile(filepath.Join(from, f))
		if os.IsNotExist(err) && strings.HasPrefix(f, "roadsign.db-") {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, _ := os.ReadFile(path)
	return string(b)
}
