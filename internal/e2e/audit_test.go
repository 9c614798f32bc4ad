package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/roadsign/roadsign/server/postgres/pgtest"
	_ "github.com/roadsign/roadsign/server/sqlite" // the "sqlite" driver
)

// TestAuditLogIsTamperEvident, on SQLite and on PostgreSQL: with the
// server stopped, editing, deleting or reordering one audit row, or
// cutting entries off the end, makes roadsign-server audit verify exit 1
// naming that entry; undone, it exits 0 again.
func TestAuditLogIsTamperEvident(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		w := newWorld(t, "--audit-checkpoint-interval", "1s")
		db := "sqlite"
		dsn := "file:" + filepath.Join(w.data, "roadsign.db")
		testAuditTampering(t, w, db, dsn, []string{"--data", w.data})
	})
	t.Run("postgres", func(t *testing.T) {
		url := pgtest.Schema(t)
		w := newWorld(t, "--audit-checkpoint-interval", "1s", "--database", url)
		testAuditTampering(t, w, "pgx", url, []string{"--data", w.data, "--database", url})
	})
}

func testAuditTampering(t *testing.T, w *world, driver, dsn string, where []string) {
	for i := range 4 {
		w.account("dealer", fmt.Sprintf("dealer-%d", i))
	}
	verify := func() result { return serverCmd(t, append([]string{"audit", "verify"}, where...)...) }
	deadline := time.Now().Add(20 * time.Second)
	// Wait until a signed checkpoint covers the whole log.
	for {
		out := verify().stdout
		var head, latest int64
		for _, l := range strings.Split(out, "\n") {
			if i := strings.Index(l, "head seq "); i >= 0 {
				fmt.Sscan(l[i+len("head seq "):], &head)
			}
			if i := strings.Index(l, "the latest at seq "); i >= 0 {
				fmt.Sscan(l[i+len("the latest at seq "):], &latest)
			}
		}
		if head > 0 && latest == head {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no signed checkpoint of the head after 20 s: %s", verify())
		}
		time.Sleep(200 * time.Millisecond)
	}
	w.shutdown()
	if r := verify(); r.code != 0 || !strings.Contains(r.stdout, "audit log intact") {
		t.Fatalf("untouched log: %s", r)
	}

	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	q := func(s string) string { // ? placeholders for both drivers
		if driver != "pgx" {
			return s
		}
		for i := 1; strings.Contains(s, "?"); i++ {
			s = strings.Replace(s, "?", fmt.Sprintf("$%d", i), 1)
		}
		return s
	}
	exec := func(stmt string, args ...any) {
		t.Helper()
		if _, err := db.ExecContext(context.Background(), q(stmt), args...); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	var id, seq, lastSeq int64
	if err := db.QueryRow(q(`SELECT id, seq FROM audit WHERE seq = 2`)).Scan(&id, &seq); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(q(`SELECT MAX(seq) FROM audit`)).Scan(&lastSeq); err != nil {
		t.Fatal(err)
	}
	type row struct {
		at                                                        int64
		actorID, actor, role, action, subject, detail, prev, hash string
	}
	var r row
	if err := db.QueryRow(q(`SELECT at, actor_id, actor, role, action, subject, detail, prev_hash, hash FROM audit WHERE id = ?`), id).
		Scan(&r.at, &r.actorID, &r.actor, &r.role, &r.action, &r.subject, &r.detail, &r.prev, &r.hash); err != nil {
		t.Fatal(err)
	}
	// Reordering: rows X and X+1 trade places (their whole content; ids
	// are the storage order and PostgreSQL does not let ids be written).
	cols := `at, actor_id, actor, role, action, subject, detail, seq, prev_hash, hash`
	swap := func() {
		var a, b [10]any
		for i := range a {
			a[i], b[i] = new(any), new(any)
		}
		must := func(err error) {
			if err != nil {
				t.Fatal(err)
			}
		}
		must(db.QueryRow(q(`SELECT `+cols+` FROM audit WHERE id = ?`), id).Scan(a[:]...))
		must(db.QueryRow(q(`SELECT `+cols+` FROM audit WHERE id = ?`), id+1).Scan(b[:]...))
		set := `UPDATE audit SET at = ?, actor_id = ?, actor = ?, role = ?, action = ?, subject = ?, detail = ?, seq = ?, prev_hash = ?, hash = ? WHERE id = ?`
		exec(`UPDATE audit SET seq = -seq WHERE id = ?`, id+1)
		exec(set, append(deref(b[:]), id)...)
		exec(set, append(deref(a[:]), id+1)...)
	}
	var tail []row
	for _, tc := range []struct {
		name         string
		tamper, undo func()
		want         string
	}{
		{"edit", func() { exec(`UPDATE audit SET detail = detail || 'x' WHERE id = ?`, id) },
			func() { exec(`UPDATE audit SET detail = ? WHERE id = ?`, r.detail, id) },
			fmt.Sprintf("entry id %d (seq %d): its content does not match its hash (altered)", id, seq)},
		{"delete", func() { exec(`DELETE FROM audit WHERE id = ?`, id) },
			func() {
				override := "" // PostgreSQL's identity column takes an id only when told
				if driver == "pgx" {
					override = " OVERRIDING SYSTEM VALUE"
				}
				exec(`INSERT INTO audit (id, at, actor_id, actor, role, action, subject, detail, seq, prev_hash, hash)`+override+` VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
					id, r.at, r.actorID, r.actor, r.role, r.action, r.subject, r.detail, seq, r.prev, r.hash)
			},
			fmt.Sprintf("entry seq %d is missing before it (removed)", seq)},
		{"reorder", swap, swap, fmt.Sprintf("entry id %d (seq %d): it comes before seq %d (reordered)", id, seq+1, seq)},
		{"cut off the end", func() {
			rows, err := db.Query(q(`SELECT at, actor_id, actor, role, action, subject, detail, prev_hash, hash FROM audit WHERE seq = ?`), lastSeq)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var x row
				rows.Scan(&x.at, &x.actorID, &x.actor, &x.role, &x.action, &x.subject, &x.detail, &x.prev, &x.hash)
				tail = append(tail, x)
			}
			rows.Close()
			exec(`DELETE FROM audit WHERE seq = ?`, lastSeq)
		}, func() {
			x := tail[0]
			exec(`INSERT INTO audit (at, actor_id, actor, role, action, subject, detail, seq, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				x.at, x.actorID, x.actor, x.role, x.action, x.subject, x.detail, lastSeq, x.prev, x.hash)
		}, fmt.Sprintf("entry seq %d is missing from the end (removed)", lastSeq)},
	} {
		tc.tamper()
		if res := verify(); res.code != 1 || !strings.Contains(res.stderr, tc.want) {
			t.Errorf("%s: want exit 1 naming %q, got %s", tc.name, tc.want, res)
		}
		tc.undo()
		if res := verify(); res.code != 0 {
			t.Fatalf("%s undone: %s", tc.name, res)
		}
	}
}

func deref(ps []any) []any {
	out := make([]any, len(ps))
	for i, p := range ps {
		out[i] = *(p.(*any))
	}
	return out
}
