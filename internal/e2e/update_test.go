package e2e

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/signer/meta"
)

func TestUpdateMovesBothECUsToNewest(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v := w.vehicle(1)
	if got := versions(t, v); got["head-unit"] != "1.0.0" || got["dcm"] != "1.0.0" {
		t.Fatalf("before: %v", got)
	}
	r := agent(t, "update", "--state", v.dir)
	if r.code != 0 {
		t.Fatalf("update: %s", r)
	}
	if got := versions(t, v); got["head-unit"] != "2.0.0" || got["dcm"] != "2.0.0" {
		t.Fatalf("after: %v\n%s", got, r)
	}
	st := status(t, v)
	for typ, e := range st {
		if e.ActiveSlot != "b" || e.Slots["a"] == nil || e.Slots["a"].Version != "1.0.0" {
			t.Errorf("%s: want 2.0.0 active in slot b and 1.0.0 kept in slot a, got %+v", typ, e)
		}
	}
	activeBytes(t, v) // checks bytes against the recorded hashes

	// Up to date now: exit 0, nothing changes.
	before := activeBytes(t, v)
	r = agent(t, "update", "--state", v.dir)
	if r.code != 0 || !strings.Contains(r.stdout, "up to date") {
		t.Fatalf("second update: %s", r)
	}
	if after := activeBytes(t, v); !maps.Equal(before, after) {
		t.Fatalf("second update changed slots: %v -> %v", before, after)
	}
}

func TestUpdateOnlyPicksCompatibleHardwareAndHigherCounters(t *testing.T) {
	w := newWorld(t)
	// Only 1.1.0 for our hardware, but 2.0.0 for the other hardware IDs.
	w.setup(func(s sample) bool {
		if s.HardwareID == huHW || s.HardwareID == dcmHW {
			return s.Version != "2.0.0"
		}
		return true
	})
	v := w.vehicle(1)
	if r := agent(t, "update", "--state", v.dir); r.code != 0 {
		t.Fatalf("update: %s", r)
	}
	if got := versions(t, v); got["head-unit"] != "1.1.0" || got["dcm"] != "1.1.0" {
		t.Fatalf("want 1.1.0 (newest for our hardware), got %v", got)
	}
}

func TestPublishIsIdempotent(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	ts := w.readBlob("repo/timestamp.json")
	r := w.publish()
	if !strings.Contains(r.stdout, "uploaded 0 target file(s)") || !strings.Contains(r.stdout, "nothing changed") {
		t.Fatalf("second publish: %s", r)
	}
	if string(w.readBlob("repo/timestamp.json")) != string(ts) {
		t.Fatal("second publish changed the timestamp")
	}
}

// servedSnapshot is the snapshot the current timestamp names, and its
// version.
func (w *world) servedSnapshot(t *testing.T) (*metadata.Metadata[metadata.SnapshotType], int64) {
	t.Helper()
	snapV := w.timestamp().Signed.Meta["snapshot.json"].Version
	snap, err := metadata.Snapshot().FromBytes(w.readBlob(fmt.Sprintf("repo/%d.snapshot.json", snapV)))
	if err != nil {
		t.Fatal(err)
	}
	return snap, snapV
}

// refusalCase tampers with the served repository after the vehicle was
// provisioned (and, for rollback, after it saw a newer timestamp).
func TestAgentRefusesTamperedRepository(t *testing.T) {
	tests := []struct {
		name    string
		tamper  func(t *testing.T, w *world, v vehicleState)
		wantMsg string
	}{
		{
			name: "target byte flipped in the blob store",
			tamper: func(t *testing.T, w *world, v vehicleState) {
				s := findSample(t, dcmHW, "2.0.0")
				b, err := os.ReadFile(filepath.Join(samplesDir(), s.File))
				if err != nil {
					t.Fatal(err)
				}
				sum := sha256hex(b)
				key := fmt.Sprintf("repo/targets/dcm/%s.%s", sum, s.File)
				blob := w.readBlob(key)
				blob[len(blob)/3] ^= 0x01
				w.writeBlob(key, blob)
			},
			wantMsg: "sha256 mismatch",
		},
		{
			name: "targets signed by a key root does not list",
			tamper: func(t *testing.T, w *world, v vehicleState) {
				snap, _ := w.servedSnapshot(t)
				tv := snap.Signed.Meta["targets.json"].Version
				targets, err := metadata.Targets().FromBytes(w.readBlob(fmt.Sprintf("repo/%d.targets.json", tv)))
				if err != nil {
					t.Fatal(err)
				}
				targets.Signed.Version = tv + 1
				_, priv, _ := ed25519.GenerateKey(rand.Reader)
				rogue, err := signature.LoadED25519Signer(priv)
				if err != nil {
					t.Fatal(err)
				}
				targets.ClearSignatures()
				if _, err := targets.Sign(rogue); err != nil {
					t.Fatal(err)
				}
				raw, err := targets.ToBytes(false)
				if err != nil {
					t.Fatal(err)
				}
				w.writeBlob(fmt.Sprintf("repo/%d.targets.json", tv+1), raw)
				w.forgeSnapshotAndTimestamp(tv+1, meta.Expires(time.Now(), time.Hour))
			},
			wantMsg: "signature",
		},
		{
			// A freeze attack: the vehicle's network serves a timestamp
			// that has run out (signed with the online key). A restarted
			// server would re-sign an expired timestamp at once, so the
			// attacker sits in the network, not in storage.
			name: "timestamp expired",
			tamper: func(t *testing.T, w *world, v vehicleState) {
				k := w.onlineKeys()
				ts := w.timestamp()
				ts.Signed.Version++
				ts.Signed.Expires = meta.Expires(time.Now(), -time.Hour)
				if err := meta.Sign(ts, k.ImageTimestamp); err != nil {
					t.Fatal(err)
				}
				raw, _ := ts.ToBytes(false)
				w.intercept(t, v, map[string][]byte{"/repo/timestamp.json": raw})
			},
			wantMsg: "expired",
		},
		{
			// Endless data: the network answers timestamp.json with far
			// more bytes than any timestamp has; the client stops reading
			// at its length limit.
			name: "endless timestamp",
			tamper: func(t *testing.T, w *world, v vehicleState) {
				w.intercept(t, v, map[string][]byte{"/repo/timestamp.json": bytes.Repeat([]byte(" "), 32<<20)})
			},
			wantMsg: "timestamp.json is more than the 16384 bytes allowed",
		},
		{
			// Mix and match: a snapshot, validly signed with the online
			// key, that pairs the current timestamp with another targets
			// version. The timestamp names the snapshot's exact hash.
			name: "snapshot mixed with another targets version",
			tamper: func(t *testing.T, w *world, v vehicleState) {
				snap, snapV := w.servedSnapshot(t)
				snap.Signed.Meta["targets.json"].Version++
				if err := meta.Sign(snap, w.onlineKeys().ImageSnapshot); err != nil {
					t.Fatal(err)
				}
				raw, _ := snap.ToBytes(false)
				w.intercept(t, v, map[string][]byte{fmt.Sprintf("/repo/%d.snapshot.json", snapV): raw})
			},
			wantMsg: "hash verification failed",
		},
		{
			name: "older timestamp after a newer one was seen",
			tamper: func(t *testing.T, w *world, v vehicleState) {
				old := w.readBlob("repo/timestamp.json")
				// The vehicle sees a newer timestamp (nothing new to install)...
				w.forgeSnapshotAndTimestamp(currentTargetsVersion(t, w), meta.Expires(time.Now(), time.Hour))
				w.restart()
				if r := agent(t, "update", "--state", v.dir, "--simulate", "network-drop:1"); r.code != 1 {
					t.Fatalf("priming update: want exit 1 from the simulated drop, got %s", r)
				}
				// ...then the attacker replays the old one.
				w.writeBlob("repo/timestamp.json", old)
			},
			wantMsg: "rollback",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			w.setup(nil)
			v := w.vehicle(1)
			before := activeBytes(t, v)
			tt.tamper(t, w, v)
			// The server keeps the repository's head in memory and rereads
			// storage on a publish; a restart makes it serve what the
			// attacker left in storage, as a fresh replica would.
			w.restart()
			r := agent(t, "update", "--state", v.dir)
			t.Logf("agent said: %s", r.stderr)
			if r.code != 3 {
				t.Fatalf("want exit 3 (refused), got %s", r)
			}
			if !strings.Contains(r.stderr, tt.wantMsg) || !strings.Contains(r.stderr, "refused") {
				t.Errorf("stderr should say refused and mention %q:\n%s", tt.wantMsg, r.stderr)
			}
			if after := activeBytes(t, v); !maps.Equal(before, after) {
				t.Fatalf("active slots changed: %v -> %v", before, after)
			}
			if got := versions(t, v); got["head-unit"] != "1.0.0" || got["dcm"] != "1.0.0" {
				t.Fatalf("versions changed: %v", got)
			}
		})
	}
}

// intercept puts a network attacker between v and the server: the
// vehicle talks to a proxy that answers the given paths with forged
// bytes and passes everything else through.
func (w *world) intercept(t *testing.T, v vehicleState, forged map[string][]byte) {
	t.Helper()
	target, err := url.Parse(w.url)
	if err != nil {
		t.Fatal(err)
	}
	pass := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if b, ok := forged[r.URL.Path]; ok {
			rw.Write(b)
			return
		}
		pass.ServeHTTP(rw, r)
	}))
	t.Cleanup(proxy.Close)
	cfgPath := filepath.Join(v.dir, "vehicle.json")
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["server"] = proxy.URL
	raw, _ = json.Marshal(cfg)
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

func currentTargetsVersion(t *testing.T, w *world) int64 {
	t.Helper()
	ts := w.timestamp()
	snap, err := metadata.Snapshot().FromBytes(w.readBlob(fmt.Sprintf("repo/%d.snapshot.json", ts.Signed.Meta["snapshot.json"].Version)))
	if err != nil {
		t.Fatal(err)
	}
	return snap.Signed.Meta["targets.json"].Version
}

func TestImageFailingBootCheckRollsBack(t *testing.T) {
	w := newWorld(t)
	w.signerInit()
	w.add(findSample(t, huHW, "1.1.0"))
	for _, s := range loadSamples(t) {
		if !s.Bootable {
			w.add(s) // verifies, but does not boot
		}
	}
	w.publish()
	v := w.vehicle(1)
	r := agent(t, "update", "--state", v.dir)
	if r.code != 4 {
		t.Fatalf("want exit 4 (rolled back), got %s", r)
	}
	st := status(t, v)
	dcm := st["dcm"]
	if dcm.ActiveSlot != "a" || dcm.Version != "1.0.0" {
		t.Fatalf("DCM should be back on slot a with 1.0.0: %+v", dcm)
	}
	if !strings.Contains(dcm.LastResult, "rolled back") {
		t.Errorf("lastResult should say rolled back: %q", dcm.LastResult)
	}
	if hu := st["head-unit"]; hu.Version != "1.1.0" {
		t.Errorf("head unit should have installed 1.1.0 regardless: %+v", hu)
	}
	activeBytes(t, v)
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
