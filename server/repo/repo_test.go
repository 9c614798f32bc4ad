package repo_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/fsblob"
	"github.com/roadsign/roadsign/server/repo"
	"github.com/roadsign/roadsign/server/sqlite"
	"github.com/roadsign/roadsign/signer"
)

// published returns a blob store holding a published repository and the
// online keys that signed it.
func published(t testing.TB) (server.BlobStore, *repo.OnlineKeys, string) {
	t.Helper()
	dir := t.TempDir()
	keys, _, err := repo.InitKeys(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	ws, err := signer.Init(filepath.Join(dir, "ws"), signer.InitOptions{OnlineKeys: keys.Public(), RootKeys: 1, RootThreshold: 1,
		RootExpiry: time.Hour, TargetsExpiry: time.Hour}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	blobs, err := fsblob.New(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	roots, _ := ws.RootChain(signer.Image)
	droots, _ := ws.RootChain(signer.Director)
	_, targets, _ := ws.Targets()
	req := repo.PublishRequest{Targets: targets}
	for _, r := range roots {
		req.ImageRoots = append(req.ImageRoots, json.RawMessage(r))
	}
	for _, r := range droots {
		req.DirectorRoots = append(req.DirectorRoots, json.RawMessage(r))
	}
	r, err := repo.New(blobs, keys, repo.Config{}, time.Now, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Publish(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	return blobs, keys, dir
}

// TestReplicasReSignInTurns runs two Repo instances (two replicas) over one
// blob store and one lease table, re-signing concurrently with a clock that
// always asks for it. Every timestamp must then name a snapshot whose bytes
// match its hash, and versions must never be reused.
func TestReplicasReSignInTurns(t *testing.T) {
	blobs, keys, dir := published(t)
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var tick atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(tick.Add(1)) * time.Hour) } // always past half-life
	var replicas []*repo.Repo
	for i := range 2 {
		r, err := repo.New(blobs, keys, repo.Config{TimestampExpiry: time.Hour, SnapshotExpiry: time.Hour, Leases: st, Holder: fmt.Sprint("replica-", i)},
			now, slog.New(slog.DiscardHandler), nil)
		if err != nil {
			t.Fatal(err)
		}
		replicas = append(replicas, r)
	}
	seen := map[int64][32]byte{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, r := range replicas {
		wg.Go(func() {
			for range 25 {
				if _, err := r.ResignIfNeeded(context.Background()); err != nil {
					t.Error(err)
					return
				}
				raw, err := server.ReadBlob(context.Background(), blobs, "repo/timestamp.json", 1<<20)
				if err != nil {
					t.Error(err)
					return
				}
				ts, err := metadata.Timestamp().FromBytes(raw)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if prev, ok := seen[ts.Signed.Version]; ok && prev != sha256.Sum256(raw) {
					t.Errorf("timestamp version %d was signed twice with different content", ts.Signed.Version)
				}
				seen[ts.Signed.Version] = sha256.Sum256(raw)
				mu.Unlock()
				mf := ts.Signed.Meta["snapshot.json"]
				snap, err := server.ReadBlob(context.Background(), blobs, fmt.Sprintf("repo/%d.snapshot.json", mf.Version), 1<<20)
				if err != nil {
					t.Error(err)
					return
				}
				if err := mf.VerifyLengthHashes(snap); err != nil {
					t.Errorf("timestamp v%d names snapshot v%d whose bytes do not match: %v", ts.Signed.Version, mf.Version, err)
				}
			}
		})
	}
	wg.Wait()
}
