// Package auditlog keeps the audit log tamper-evident: it signs
// checkpoints of the hash chain's head with the server's online key, and
// verifies the whole chain and every checkpoint (roadsign-server audit
// verify).
package auditlog

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"time"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/signer/keys"
)

// Store is what the audit log needs of the state store.
type Store interface {
	ListAudit(ctx context.Context, afterID int64, limit int) ([]server.AuditEntry, error)
	AuditHead(ctx context.Context) (int64, string, error)
	AddAuditCheckpoint(ctx context.Context, c server.AuditCheckpoint) error
	AuditCheckpoints(ctx context.Context) ([]server.AuditCheckpoint, error)
}

// Checkpoint signs the chain's head with key when it moved since the last
// checkpoint. It reports whether it signed one.
func Checkpoint(ctx context.Context, s Store, key *keys.Key, now time.Time) (bool, error) {
	seq, hash, err := s.AuditHead(ctx)
	if err != nil || seq == 0 {
		return false, err
	}
	cps, err := s.AuditCheckpoints(ctx)
	if err != nil {
		return false, err
	}
	if len(cps) > 0 && cps[len(cps)-1].Seq >= seq {
		return false, nil
	}
	err = s.AddAuditCheckpoint(ctx, server.SignAuditCheckpoint(seq, hash, now, key.ID, key.Private))
	if err != nil {
		return false, fmt.Errorf("audit checkpoint: %w", err)
	}
	return true, nil
}

// Report is what a verification found.
type Report struct {
	Entries, Legacy   int64
	HeadSeq           int64
	Checkpoints       int
	SignaturesChecked bool
	LatestCheckpoint  server.AuditCheckpoint
}

// Verify walks the whole log and every checkpoint. A broken chain is a
// *server.AuditBreak naming the first entry affected. With pub nil the
// checkpoints' signatures are not checked (Report says so).
func Verify(ctx context.Context, s Store, pub ed25519.PublicKey) (Report, error) {
	var v server.AuditVerifier
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
	r := Report{Entries: v.Entries, Legacy: v.Legacy, SignaturesChecked: pub != nil}
	r.HeadSeq, _ = v.Head()
	cps, err := s.AuditCheckpoints(ctx)
	if err != nil {
		return r, err
	}
	for _, c := range cps {
		if err := v.Checkpoint(c, pub); err != nil {
			return r, err
		}
	}
	r.Checkpoints = len(cps)
	if len(cps) > 0 {
		r.LatestCheckpoint = cps[len(cps)-1]
	}
	return r, nil
}
