package auditlog

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/roadsign/roadsign/server"
)

// The audit log is a hash chain: each entry carries its sequence number,
// the hash of the entry before it and its own hash over both and its
// content, so editing, removing or reordering an entry breaks the chain
// at that entry. Signed checkpoints of the chain's head (the server's
// online key) also catch entries removed from the end.

// Hash is the hash of entry e chained after prev.
func Hash(prev string, e server.AuditEntry) string {
	at := int64(0) // as the stores keep a zero time
	if !e.At.IsZero() {
		at = e.At.UnixMicro()
	}
	b, _ := json.Marshal(struct {
		Seq                                           int64
		Prev                                          string
		At                                            int64
		ActorID, Actor, Role, Action, Subject, Detail string
	}{e.Seq, prev, at, e.ActorID, e.Actor, e.Role, e.Action, e.Subject, e.Detail})
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// The chain starts with a genesis entry signed by the server's key: it
// names its own place (seq and the hash before it) and how many unchained
// entries (from before the chain existed) precede it. After it, and
// without it, no unchained entry is accepted, so blanking chain fields,
// dropping the start of the chain or moving the genesis all show.

// GenesisAction is the action of the chain's genesis entry.
const GenesisAction = "audit.genesis"

// Genesis is a genesis entry's Detail (JSON).
type Genesis struct {
	// LegacyEntries is how many unchained entries come before it.
	LegacyEntries int64  `json:"legacyEntries"`
	KeyID         string `json:"keyId"`
	Signature     string `json:"signature"` // hex ed25519 over GenesisMessage
}

// GenesisMessage is what a genesis entry's signature covers.
func GenesisMessage(seq int64, prevHash string, legacy int64, at time.Time) []byte {
	return []byte(fmt.Sprintf("roadsign-audit-genesis:v1:%d:%s:%d:%d", seq, prevHash, legacy, at.UnixMicro()))
}

// SealGenesis is the Detail of a genesis entry at seq after prevHash, with
// legacy unchained entries before it, made at at.
func SealGenesis(seq int64, prevHash string, legacy int64, at time.Time, keyID string, key ed25519.PrivateKey) string {
	g := Genesis{LegacyEntries: legacy, KeyID: keyID,
		Signature: hex.EncodeToString(ed25519.Sign(key, GenesisMessage(seq, prevHash, legacy, at)))}
	b, _ := json.Marshal(g)
	return string(b)
}

// SignCheckpoint signs the head (seq, hash) at now.
func SignCheckpoint(seq int64, hash string, now time.Time, keyID string, key ed25519.PrivateKey) server.AuditCheckpoint {
	c := server.AuditCheckpoint{Seq: seq, Hash: hash, At: now.UTC().Truncate(time.Microsecond), KeyID: keyID}
	c.Signature = hex.EncodeToString(ed25519.Sign(key, c.Message()))
	return c
}

// Break names the first entry where the chain breaks.
type Break struct {
	ID, Seq int64
	Reason  string
}

func (b *Break) Error() string {
	if b.ID == 0 {
		return "audit log broken: " + b.Reason
	}
	return fmt.Sprintf("audit log broken at entry id %d (seq %d): %s", b.ID, b.Seq, b.Reason)
}

// Verifier walks the log in storage order (by ID).
type Verifier struct {
	// Pub, if set, checks the genesis entry's signature.
	Pub     ed25519.PublicKey
	prev    server.AuditEntry
	chained bool
	// Genesis is the genesis entry's seq (0 until seen).
	Genesis int64
	// Entries counts entries seen; Legacy those from before the chain
	// existed (no hash), allowed only before the first chained entry.
	Entries, Legacy int64
	hashes          map[int64]string // seq -> hash, for the checkpoints
	// gap is a seq jump not yet judged: removed entries, unless the
	// missing seq comes next (then the jumped entry was moved).
	gap     *Break
	gapWant int64
}

// Add checks the next entry.
func (v *Verifier) Add(e server.AuditEntry) error {
	if v.gap != nil {
		g := v.gap
		if e.Seq == v.gapWant {
			return &Break{g.ID, g.Seq, fmt.Sprintf("it comes before seq %d (reordered)", e.Seq)}
		}
		return g
	}
	v.Entries++
	if v.hashes == nil {
		v.hashes = map[int64]string{}
	}
	if e.Hash == "" && e.Seq == 0 && !v.chained {
		v.Legacy++
		return nil
	}
	want := v.prev.Seq + 1
	switch {
	case e.Hash == "" || e.Seq <= 0:
		return &Break{e.ID, e.Seq, "its chain fields were removed (altered)"}
	case v.chained && e.Seq < want:
		return &Break{e.ID, e.Seq, fmt.Sprintf("it is out of order: seq %d comes after seq %d (reordered)", e.Seq, v.prev.Seq)}
	case v.chained && e.Seq > want:
		v.gap, v.gapWant = &Break{e.ID, e.Seq, fmt.Sprintf("%s missing before it (removed)", seqRange(want, e.Seq-1))}, want
		return nil
	case !v.chained && e.Seq != 1:
		return &Break{e.ID, e.Seq, fmt.Sprintf("the chain starts at seq %d, not 1: entries seq 1 to %d are missing (removed)", e.Seq, e.Seq-1)}
	case Hash(e.PrevHash, e) != e.Hash:
		return &Break{e.ID, e.Seq, "its content does not match its hash (altered)"}
	case v.chained && e.PrevHash != v.prev.Hash:
		return &Break{e.ID, e.Seq, fmt.Sprintf("it does not chain to entry seq %d before it (altered or reordered)", v.prev.Seq)}
	case !v.chained && e.PrevHash != "":
		return &Break{e.ID, e.Seq, "the first chained entry names a predecessor (altered)"}
	}
	if e.Action == GenesisAction && v.Genesis == 0 {
		if err := v.genesis(e); err != nil {
			return err
		}
	}
	v.prev, v.chained = e, true
	v.hashes[e.Seq] = e.Hash
	return nil
}

// genesis checks the chain's genesis entry: its signature over its place
// in the chain, and the unchained entries before it.
func (v *Verifier) genesis(e server.AuditEntry) error {
	var g Genesis
	if err := json.Unmarshal([]byte(e.Detail), &g); err != nil {
		return &Break{e.ID, e.Seq, "the genesis entry's signature is unreadable (altered)"}
	}
	if v.Pub != nil {
		sig, err := hex.DecodeString(g.Signature)
		if err != nil || !ed25519.Verify(v.Pub, GenesisMessage(e.Seq, e.PrevHash, g.LegacyEntries, e.At), sig) {
			return &Break{e.ID, e.Seq, "the genesis entry is not signed by the server's key for its place in the chain (forged, moved, or entries before it altered)"}
		}
	}
	if g.LegacyEntries != v.Legacy {
		return &Break{e.ID, e.Seq, fmt.Sprintf("the genesis entry was signed after %d unchained entries, and %d come before it (chain fields blanked, or entries removed)", g.LegacyEntries, v.Legacy)}
	}
	v.Genesis = e.Seq
	return nil
}

// Finish reports a break found at the last entry, once all are added: a
// gap at the end, or a log with entries and no genesis.
func (v *Verifier) Finish() error {
	if v.gap != nil {
		return v.gap
	}
	if v.Entries > 0 && v.Genesis == 0 {
		return &Break{0, 0, "no signed genesis entry: the start of the chain was removed or the entries' chain fields blanked (a server of this version writes one when it first starts)"}
	}
	return nil
}

// Head is the last chained entry's seq and hash.
func (v *Verifier) Head() (int64, string) { return v.prev.Seq, v.prev.Hash }

// Checkpoint checks a signed checkpoint against the walked chain: its
// signature (with pub, if given), and that the chain still holds the
// entry it names with the same hash.
func (v *Verifier) Checkpoint(c server.AuditCheckpoint, pub ed25519.PublicKey) error {
	if pub != nil {
		sig, err := hex.DecodeString(c.Signature)
		if err != nil || !ed25519.Verify(pub, c.Message(), sig) {
			return &Break{0, c.Seq, fmt.Sprintf("the checkpoint of seq %d at %s is not signed by the server's key %s (forged or altered checkpoint)", c.Seq, c.At.Format(time.RFC3339), c.KeyID)}
		}
	}
	if c.Seq > v.prev.Seq {
		return &Break{0, c.Seq, fmt.Sprintf("%s missing from the end (removed); a checkpoint signed at %s names seq %d", seqRange(v.prev.Seq+1, c.Seq), c.At.Format(time.RFC3339), c.Seq)}
	}
	if h, ok := v.hashes[c.Seq]; !ok || h != c.Hash {
		return &Break{0, c.Seq, fmt.Sprintf("entry seq %d differs from the one a checkpoint signed at %s (altered)", c.Seq, c.At.Format(time.RFC3339))}
	}
	return nil
}

// seqRange names entries a to b: "entry seq 7 is" or "entries seq 7 to 9 are".
func seqRange(a, b int64) string {
	if a == b {
		return fmt.Sprintf("entry seq %d is", a)
	}
	return fmt.Sprintf("entries seq %d to %d are", a, b)
}
