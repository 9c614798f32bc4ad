package auditlog

import (
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/server"
)

var testPub, testKey, _ = ed25519.GenerateKey(rand.Reader)

// chain is n entries, the first the signed genesis (after legacy
// unchained entries).
func chain(n int) []server.AuditEntry { return chainAfter(n, 0) }

func chainAfter(n int, legacy int64) []server.AuditEntry {
	var out []server.AuditEntry
	prev := ""
	for i := range n {
		e := server.AuditEntry{ID: int64(i + 1), Seq: int64(i + 1), At: time.Unix(1764500000+int64(i), 0), ActorID: "a", Actor: "a", Role: "admin", Action: "act", Subject: "s"}
		if i == 0 {
			e.Action, e.Detail = GenesisAction, SealGenesis(e.Seq, prev, legacy, e.At, "k", testKey)
		}
		e.PrevHash, e.Hash = prev, Hash(prev, e)
		prev = e.Hash
		out = append(out, e)
	}
	return out
}

// rehash recomputes every hash from entry i on, as someone who can write
// the database but holds no key could.
func rehash(c []server.AuditEntry, i int) []server.AuditEntry {
	prev := ""
	if i > 0 {
		prev = c[i-1].Hash
	}
	for ; i < len(c); i++ {
		c[i].PrevHash, c[i].Hash = prev, Hash(prev, c[i])
		prev = c[i].Hash
	}
	return c
}

func TestAuditVerifier(t *testing.T) {
	legacy := server.AuditEntry{ID: 1}
	for _, tc := range []struct {
		name string
		edit func([]server.AuditEntry) []server.AuditEntry
		want string
	}{
		{"intact", func(c []server.AuditEntry) []server.AuditEntry { return c }, ""},
		{"legacy prefix named by the genesis", func([]server.AuditEntry) []server.AuditEntry {
			c := chainAfter(5, 1)
			for i := range c {
				c[i].ID++
			}
			return append([]server.AuditEntry{legacy}, c...)
		}, ""},
		{"legacy prefix the genesis does not name", func(c []server.AuditEntry) []server.AuditEntry {
			for i := range c {
				c[i].ID++
			}
			return append([]server.AuditEntry{legacy}, c...)
		}, "signed after 0 unchained entries, and 1 come before it"},
		{"every entry's chain fields blanked", func(c []server.AuditEntry) []server.AuditEntry {
			for i := range c {
				c[i].Seq, c[i].PrevHash, c[i].Hash = 0, "", ""
			}
			return c
		}, "no signed genesis entry"},
		{"genesis removed and the rest re-chained", func(c []server.AuditEntry) []server.AuditEntry {
			c = c[1:]
			for i := range c {
				c[i].Seq--
			}
			return rehash(c, 0)
		}, "no signed genesis entry"},
		{"genesis moved after blanked entries", func(c []server.AuditEntry) []server.AuditEntry {
			g := c[0]
			rest := c[1:]
			for i := range rest {
				rest[i].Seq, rest[i].PrevHash, rest[i].Hash = 0, "", ""
			}
			return append(rest, g)
		}, "signed after 0 unchained entries, and 4 come before it"},
		{"genesis forged", func(c []server.AuditEntry) []server.AuditEntry {
			_, other, _ := ed25519.GenerateKey(rand.Reader)
			c[0].Detail = SealGenesis(1, "", 0, c[0].At, "k", other)
			return rehash(c, 0)
		}, "not signed by the server's key"},
		{"entry after the genesis edited and re-chained (only checkpoints show it)", func(c []server.AuditEntry) []server.AuditEntry {
			c[2].Detail = "x"
			return rehash(c, 2)
		}, ""},
		{"edited", func(c []server.AuditEntry) []server.AuditEntry { c[2].Detail = "x"; return c }, "entry id 3 (seq 3): its content does not match its hash (altered)"},
		{"removed", func(c []server.AuditEntry) []server.AuditEntry { return append(c[:2], c[3:]...) }, "entry id 4 (seq 4): entry seq 3 is missing before it (removed)"},
		{"removed first", func(c []server.AuditEntry) []server.AuditEntry { return c[1:] }, "the chain starts at seq 2"},
		{"reordered", func(c []server.AuditEntry) []server.AuditEntry { c[1], c[2] = c[2], c[1]; return c }, "(seq 3): it comes before seq 2 (reordered)"},
		{"removed last but one", func(c []server.AuditEntry) []server.AuditEntry { return append(c[:3], c[4]) }, "(seq 5): entry seq 4 is missing before it (removed)"},
		{"chain fields blanked", func(c []server.AuditEntry) []server.AuditEntry { c[3].Hash, c[3].Seq = "", 0; return c }, "its chain fields were removed"},
		{"rehashed without its predecessor", func(c []server.AuditEntry) []server.AuditEntry {
			c[2].PrevHash = "forged"
			c[2].Hash = Hash("forged", c[2])
			return c
		}, "does not chain to entry seq 2"},
	} {
		v := Verifier{Pub: testPub}
		var err error
		for _, e := range tc.edit(chain(5)) {
			if err = v.Add(e); err != nil {
				break
			}
		}
		if err == nil {
			err = v.Finish()
		}
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestAuditCheckpoints(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	c := chain(5)
	var v Verifier
	for _, e := range c[:4] { // the last entry was cut off
		if err := v.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	good := SignCheckpoint(3, c[2].Hash, time.Now(), "k", priv)
	if err := v.Checkpoint(good, pub); err != nil {
		t.Errorf("good checkpoint: %v", err)
	}
	beyond := SignCheckpoint(5, c[4].Hash, time.Now(), "k", priv)
	if err := v.Checkpoint(beyond, pub); err == nil || !strings.Contains(err.Error(), "entry seq 5 is missing from the end") {
		t.Errorf("checkpoint beyond the end: %v", err)
	}
	forged := good
	forged.Seq = 2
	if err := v.Checkpoint(forged, pub); err == nil || !strings.Contains(err.Error(), "not signed by the server's key") {
		t.Errorf("altered checkpoint: %v", err)
	}
	other := SignCheckpoint(2, "0000", time.Now(), "k", priv)
	if err := v.Checkpoint(other, pub); err == nil || !strings.Contains(err.Error(), "entry seq 2 differs") {
		t.Errorf("checkpoint of another entry: %v", err)
	}
}
