package server

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// The audit log is a hash chain: each entry carries its sequence number,
// the hash of the entry before it and its own hash over both and its
// content, so editing, removing or reordering an entry breaks the chain
// at that entry. Signed checkpoints of the chain's head (the server's
// online key) also catch entries removed from the end.

// AuditHash is the hash of entry e chained after prev.
func AuditHash(prev string, e AuditEntry) string {
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

// AuditCheckpoint is a signed statement of the chain's head.
type AuditCheckpoint struct {
	Seq       int64     `json:"seq"`
	Hash      string    `json:"hash"`
	At        time.Time `json:"at"`
	KeyID     string    `json:"keyId"`
	Signature string    `json:"signature"` // hex ed25519 over Message()
}

// Message is what a checkpoint's signature covers.
func (c AuditCheckpoint) Message() []byte {
	return []byte("roadsign-audit-checkpoint:" + strconv.FormatInt(c.Seq, 10) + ":" + c.Hash + ":" + strconv.FormatInt(c.At.UnixMicro(), 10))
}

// SignAuditCheckpoint signs the head (seq, hash) at now.
func SignAuditCheckpoint(seq int64, hash string, now time.Time, keyID string, key ed25519.PrivateKey) AuditCheckpoint {
	c := AuditCheckpoint{Seq: seq, Hash: hash, At: now.UTC().Truncate(time.Microsecond), KeyID: keyID}
	c.Signature = hex.EncodeToString(ed25519.Sign(key, c.Message()))
	return c
}

// AuditBreak names the first entry where the chain breaks.
type AuditBreak struct {
	ID, Seq int64
	Reason  string
}

func (b *AuditBreak) Error() string {
	if b.ID == 0 {
		return "audit log broken: " + b.Reason
	}
	return fmt.Sprintf("audit log broken at entry id %d (seq %d): %s", b.ID, b.Seq, b.Reason)
}

// AuditVerifier walks the log in storage order (by ID).
type AuditVerifier struct {
	prev    AuditEntry
	chained bool
	// Entries counts entries seen; Legacy those from before the chain
	// existed (no hash), allowed only before the first chained entry.
	Entries, Legacy int64
	hashes          map[int64]string // seq -> hash, for the checkpoints
	// gap is a seq jump not yet judged: removed entries, unless the
	// missing seq comes next (then the jumped entry was moved).
	gap     *AuditBreak
	gapWant int64
}

// Add checks the next entry.
func (v *AuditVerifier) Add(e AuditEntry) error {
	if v.gap != nil {
		g := v.gap
		if e.Seq == v.gapWant {
			return &AuditBreak{g.ID, g.Seq, fmt.Sprintf("it comes before seq %d (reordered)", e.Seq)}
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
		return &AuditBreak{e.ID, e.Seq, "its chain fields were removed (altered)"}
	case v.chained && e.Seq < want:
		return &AuditBreak{e.ID, e.Seq, fmt.Sprintf("it is out of order: seq %d comes after seq %d (reordered)", e.Seq, v.prev.Seq)}
	case v.chained && e.Seq > want:
		v.gap, v.gapWant = &AuditBreak{e.ID, e.Seq, fmt.Sprintf("entries seq %d to %d before it are missing (removed)", want, e.Seq-1)}, want
		return nil
	case !v.chained && e.Seq != 1:
		return &AuditBreak{e.ID, e.Seq, fmt.Sprintf("the chain starts at seq %d, not 1: entries seq 1 to %d are missing (removed)", e.Seq, e.Seq-1)}
	case AuditHash(e.PrevHash, e) != e.Hash:
		return &AuditBreak{e.ID, e.Seq, "its content does not match its hash (altered)"}
	case v.chained && e.PrevHash != v.prev.Hash:
		return &AuditBreak{e.ID, e.Seq, fmt.Sprintf("it does not chain to entry seq %d before it (altered or reordered)", v.prev.Seq)}
	case !v.chained && e.PrevHash != "":
		return &AuditBreak{e.ID, e.Seq, "the first chained entry names a predecessor (altered)"}
	}
	v.prev, v.chained = e, true
	v.hashes[e.Seq] = e.Hash
	return nil
}

// Finish reports a break found at the last entry, once all are added.
func (v *AuditVerifier) Finish() error {
	if v.gap != nil {
		return v.gap
	}
	return nil
}

// Head is the last chained entry's seq and hash.
func (v *AuditVerifier) Head() (int64, string) { return v.prev.Seq, v.prev.Hash }

// Checkpoint checks a signed checkpoint against the walked chain: its
// signature (with pub, if given), and that the chain still holds the
// entry it names with the same hash.
func (v *AuditVerifier) Checkpoint(c AuditCheckpoint, pub ed25519.PublicKey) error {
	if pub != nil {
		sig, err := hex.DecodeString(c.Signature)
		if err != nil || !ed25519.Verify(pub, c.Message(), sig) {
			return &AuditBreak{0, c.Seq, fmt.Sprintf("the checkpoint of seq %d at %s is not signed by the server's key %s (forged or altered checkpoint)", c.Seq, c.At.Format(time.RFC3339), c.KeyID)}
		}
	}
	if c.Seq > v.prev.Seq {
		return &AuditBreak{0, c.Seq, fmt.Sprintf("entries seq %d to %d are missing from the end (removed); a checkpoint signed at %s names seq %d", v.prev.Seq+1, c.Seq, c.At.Format(time.RFC3339), c.Seq)}
	}
	if h, ok := v.hashes[c.Seq]; !ok || h != c.Hash {
		return &AuditBreak{0, c.Seq, fmt.Sprintf("entry seq %d differs from the one a checkpoint signed at %s (altered)", c.Seq, c.At.Format(time.RFC3339))}
	}
	return nil
}
