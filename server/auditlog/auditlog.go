// Package auditlog keeps the audit log tamper-evident: it seals the hash
// chain's start with a signed genesis entry, signs checkpoints of the
// chain's head with the server's online key (also appended to a file
// outside the database, where whoever can rewrite the database cannot
// reach), and verifies the whole chain against every checkpoint
// (roadsign-server audit verify).
package auditlog

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/roadsign/roadsign/internal/atomicfile"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/server"
)

// Store is what the audit log needs of the state store.
type Store interface {
	ListAudit(ctx context.Context, afterID int64, limit int) ([]server.AuditEntry, error)
	AuditHead(ctx context.Context) (int64, string, error)
	AddAuditCheckpoint(ctx context.Context, c server.AuditCheckpoint) error
	AuditCheckpoints(ctx context.Context) ([]server.AuditCheckpoint, error)
	AppendAuditGenesis(ctx context.Context, e server.AuditEntry, seal func(seq int64, prevHash string, legacy int64) string) (bool, error)
}

// EnsureGenesis appends the chain's signed genesis entry unless it has
// one. The server calls it before it serves.
func EnsureGenesis(ctx context.Context, s Store, key *keys.Key, now time.Time) (bool, error) {
	at := now.UTC().Truncate(time.Microsecond)
	e := server.AuditEntry{At: at, ActorID: "server", Actor: "roadsign-server", Role: "system", Subject: "audit"}
	added, err := s.AppendAuditGenesis(ctx, e, func(seq int64, prevHash string, legacy int64) string {
		return SealGenesis(seq, prevHash, legacy, at, key.ID, key.Private)
	})
	if err != nil {
		return false, fmt.Errorf("audit genesis: %w", err)
	}
	return added, nil
}

// Checkpoint signs the chain's head with key, whether or not it moved
// since the last checkpoint: a recent checkpoint is how a verifier knows
// that nothing was cut off the end since. It returns the checkpoint (zero
// when the log is empty).
func Checkpoint(ctx context.Context, s Store, key *keys.Key, now time.Time) (server.AuditCheckpoint, error) {
	seq, hash, err := s.AuditHead(ctx)
	if err != nil || seq == 0 {
		return server.AuditCheckpoint{}, err
	}
	c := SignCheckpoint(seq, hash, now, key.ID, key.Private)
	if err := s.AddAuditCheckpoint(ctx, c); err != nil {
		return c, fmt.Errorf("audit checkpoint: %w", err)
	}
	return c, nil
}

// AppendFile appends a checkpoint to a file of checkpoints (one JSON
// object a line), synced before it returns.
func AppendFile(path string, c server.AuditCheckpoint) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit checkpoint file: %w", err)
	}
	b, _ := json.Marshal(c)
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("audit checkpoint file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("audit checkpoint file %s: %w", path, err)
	}
	return f.Close()
}

// Export writes every checkpoint the store holds to path, one a line,
// through a temporary file renamed at the end.
func Export(ctx context.Context, s Store, path string) (int, error) {
	cps, err := s.AuditCheckpoints(ctx)
	if err != nil {
		return 0, err
	}
	var b []byte
	for _, c := range cps {
		line, _ := json.Marshal(c)
		b = append(append(b, line...), '\n')
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return 0, fmt.Errorf("export checkpoints: %w", err)
	}
	return len(cps), nil
}

// maxCheckpointLine bounds one line of a checkpoint file.
const maxCheckpointLine = 4 << 10

// ReadFile reads a file of checkpoints (AppendFile's or Export's).
func ReadFile(path string) ([]server.AuditCheckpoint, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: %w", err)
	}
	defer f.Close()
	return read(f, path)
}

func read(r io.Reader, name string) ([]server.AuditCheckpoint, error) {
	var out []server.AuditCheckpoint
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, maxCheckpointLine), maxCheckpointLine)
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var c server.AuditCheckpoint
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil || c.Seq <= 0 || c.Hash == "" {
			return nil, fmt.Errorf("%s line %d: not an audit checkpoint", name, n)
		}
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}

// Report is what a verification found.
type Report struct {
	Entries, Legacy   int64
	HeadSeq           int64
	GenesisSeq        int64
	Checkpoints       int
	External          int
	SignaturesChecked bool
	LatestCheckpoint  server.AuditCheckpoint
}

// Options are what a verification checks beyond the chain itself.
type Options struct {
	// Pub checks the genesis entry's and the checkpoints' signatures
	// (nil: not checked, and Report says so).
	Pub ed25519.PublicKey
	// External are checkpoints kept outside the database (exported, or
	// appended by the leader to --audit-checkpoint-file): each must still
	// match the chain.
	External []server.AuditCheckpoint
	// MaxAge, with External, is how old the newest checkpoint may be at
	// Now: an older one means the leader stopped signing, or the newest
	// were removed from the files too.
	MaxAge time.Duration
	Now    time.Time
}

// ErrStale is a newest checkpoint older than Options.MaxAge.
var ErrStale = errors.New("the newest audit checkpoint is too old")

// Verify walks the whole log, then every checkpoint in the database and
// every external one. A broken chain is a *Break naming the
// first entry affected.
func Verify(ctx context.Context, s Store, o Options) (Report, error) {
	v := Verifier{Pub: o.Pub}
	var after int64
	for {
		page, err := s.ListAudit(ctx, after, 1000)
		if err != nil {
			return Report{}, err
		}
		for _, e := range page {
			if err := v.Add(e); err != nil {
				return Report{}, err
			}
			after = e.ID
		}
		if len(page) < 1000 {
			break
		}
	}
	if err := v.Finish(); err != nil {
		return Report{}, err
	}
	r := Report{Entries: v.Entries, Legacy: v.Legacy, GenesisSeq: v.Genesis, SignaturesChecked: o.Pub != nil}
	r.HeadSeq, _ = v.Head()
	cps, err := s.AuditCheckpoints(ctx)
	if err != nil {
		return r, err
	}
	r.Checkpoints, r.External = len(cps), len(o.External)
	all := append(cps, o.External...)
	for _, c := range all {
		if err := v.Checkpoint(c, o.Pub); err != nil {
			return r, err
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].At.Before(all[j].At) })
	if len(all) > 0 {
		r.LatestCheckpoint = all[len(all)-1]
	}
	if len(o.External) > 0 && o.MaxAge > 0 {
		newest := o.External[0]
		for _, c := range o.External {
			if c.At.After(newest.At) {
				newest = c
			}
		}
		if age := o.Now.Sub(newest.At); age > o.MaxAge {
			return r, fmt.Errorf("%w: the newest outside the database was signed %s ago (at %s, seq %d), more than %s: the leader stopped signing, or the latest were removed",
				ErrStale, age.Round(time.Second), newest.At.Format(time.RFC3339), newest.Seq, o.MaxAge)
		}
	}
	return r, nil
}

// Appender appends to the audit log.
type Appender interface {
	AppendAudit(ctx context.Context, e server.AuditEntry) error
}

// Record appends an audit record for an action by p, naming p by ID (an
// account's UUID, "bootstrap-admin", a vehicle's VIN, or "server") as
// well as by name and role.
func Record(ctx context.Context, store Appender, now time.Time, p server.Principal, action, subject, detail string) error {
	id, actor, role := p.ID, p.Name, p.Roles.String()
	if p.IsVehicle() {
		id, actor, role = p.VIN, p.VIN, "vehicle"
	}
	if p.TokenID != "" {
		detail += " (API token " + p.TokenID + ")"
	}
	return store.AppendAudit(ctx, server.AuditEntry{At: now.UTC(), ActorID: id, Actor: actor, Role: role, Action: action, Subject: subject, Detail: detail})
}
