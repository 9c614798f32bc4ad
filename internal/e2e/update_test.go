package e2e

import (
	"bytes"
	"context"
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

	agentcli "github.com/roadsign/roadsign/client/cli"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/meta"
)

func TestUpdateMovesBothECUsToNewest(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v := w.vehicle(1)
	if got := versions(t, v); got["head-unit"] != "1.0.0" || got["dcm"] != "1.0.0" {
		t.Fatalf("before: %v", got)
	}
	r := update(t, v.dir, 0)
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
	update(t, v.dir, 0)
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
			// Keys compromised below threshold: the attacker holds one of
			// the three image root keys (threshold 2) and makes root v2
			// list a targets key of their own. The server refuses it on
			// publish; served to the vehicle, the vehicle refuses it.
			name: "root rotation signed by one of the two root keys it needs",
			tamper: func(t *testing.T, w *world, v vehicleState) {
				stolen, err := keys.Load(filepath.Join(w.ws, "keys", "image-root-1.key"))
				if err != nil {
					t.Fatal(err)
				}
				rogue, err := keys.Generate(filepath.Join(t.TempDir(), "rogue.key"))
				if err != nil {
					t.Fatal(err)
				}
				root, err := metadata.Root().FromBytes(w.readBlob("repo/1.root.json"))
				if err != nil {
					t.Fatal(err)
				}
				root.Signed.Version = 2
				for _, id := range root.Signed.Roles[metadata.TARGETS].KeyIDs {
					if err := root.Signed.RevokeKey(id, metadata.TARGETS); err != nil {
						t.Fatal(err)
					}
				}
				if err := root.Signed.AddKey(rogue.Public, metadata.TARGETS); err != nil {
					t.Fatal(err)
				}
				if err := meta.Sign(root, stolen); err != nil {
					t.Fatal(err)
				}
				raw, _ := root.ToBytes(false)
				body := map[string]any{"imageRoots": []json.RawMessage{w.readBlob("repo/1.root.json"), raw}}
				if code, errCode := w.publishRaw(body); code != http.StatusBadRequest || errCode != "bad_signature" {
					t.Errorf("publishing a root signed below threshold: got %d %s, want 400 bad_signature", code, errCode)
				}
				// The server never serves it; an attacker in the network does.
				w.intercept(t, v, map[string][]byte{"/repo/2.root.json": raw})
			},
			wantMsg: "signature",
		},
		{
			name: "older timestamp after a newer one was seen",
			tamper: func(t *testing.T, w *world, v vehicleState) {
				old := w.readBlob("repo/timestamp.json")
				// The vehicle sees a newer timestamp (nothing new to install)...
				w.forgeSnapshotAndTimestamp(currentTargetsVersion(t, w), meta.Expires(time.Now(), time.Hour))
				w.restart()
				update(t, v.dir, 1, "--simulate", "network-drop:1")
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
	w.routeVia(t, v, func(pass http.Handler) http.Handler {
		return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			if b, ok := forged[r.URL.Path]; ok {
				rw.Write(b)
				return
			}
			pass.ServeHTTP(rw, r)
		})
	})
}

// routeVia points v at a proxy to the server built by wrap (given the
// pass-through proxy). It returns a function that points v back.
func (w *world) routeVia(t *testing.T, v vehicleState, wrap func(pass http.Handler) http.Handler) func() {
	t.Helper()
	target, err := url.Parse(w.url)
	if err != nil {
		t.Fatal(err)
	}
	pass := httputil.NewSingleHostReverseProxy(target)
	pass.FlushInterval = -1
	proxy := httptest.NewServer(wrap(pass))
	t.Cleanup(proxy.Close)
	cfgPath := filepath.Join(v.dir, "vehicle.json")
	setServer := func(u string) {
		raw, err := os.ReadFile(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		var cfg map[string]any
		if err := json.Unmarshal(raw, &cfg); err != nil {
			t.Fatal(err)
		}
		cfg["server"] = u
		raw, _ = json.Marshal(cfg)
		if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	setServer(proxy.URL)
	return func() { setServer(w.url) }
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

// TestImageFailingBootCheckRollsBack: a DCM image that verifies but
// fails its boot check rolls back, and takes the head unit's install of
// the same cycle back with it (one update set).
func TestImageFailingBootCheckRollsBack(t *testing.T) {
	w := newWorld(t, "--job-retry", "1ms") // the head unit's failed attempt is retried at once
	w.signerInit()
	w.add(findSample(t, huHW, "1.1.0"))
	for _, s := range loadSamples(t) {
		if !s.Bootable {
			w.add(s) // verifies, but does not boot
		}
	}
	w.publish()
	v := w.vehicle(1)
	update(t, v.dir, 4)
	st := status(t, v)
	dcm := st["dcm"]
	if dcm.ActiveSlot != "a" || dcm.Version != "1.0.0" {
		t.Fatalf("DCM should be back on slot a with 1.0.0: %+v", dcm)
	}
	if !strings.Contains(dcm.LastResult, "rolled back") {
		t.Errorf("lastResult should say rolled back: %q", dcm.LastResult)
	}
	// Head unit and DCM were one update set: the head unit went back to
	// 1.0.0 with it, and installs 1.1.0 alone in the next cycle (the DCM
	// image that failed is not tried again).
	if hu := st["head-unit"]; hu.Version != "1.0.0" || !strings.Contains(hu.LastResult, "update set failed") {
		t.Errorf("head unit should have gone back with its update set: %+v", hu)
	}
	activeBytes(t, v)
	update(t, v.dir, 0)
	if st := status(t, v); st["head-unit"].Version != "1.1.0" || st["dcm"].Version != "1.0.0" {
		t.Errorf("next cycle: head unit %s, DCM %s; want 1.1.0 alone", st["head-unit"].Version, st["dcm"].Version)
	}
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// publishRaw posts metadata to the publish API as the admin, as an
// attacker holding the admin token would, and returns the status and the
// error code.
func (w *world) publishRaw(body map[string]any) (int, string) {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	code := w.api("POST", "/api/v1/repo/publish", adminToken, body, &e)
	return code, e.Error.Code
}

// TestCompromisedImageRepositoryAlone: an attacker holding the image
// repository's targets key (and the admin token to publish) signs new
// images into it. A vehicle installs only what the director assigns: it
// takes the dealer's job for DCM 1.1.0 and nothing the attacker added,
// though the attacker's images are validly signed and newer.
func TestCompromisedImageRepositoryAlone(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.signerInit()
	w.add(findSample(t, dcmHW, "1.1.0"))
	w.publish()
	v := w.vehicle(1)
	w.job(adminToken, map[string]any{"vin": v.vin, "ecu": "dcm", "version": "1.1.0", "reason": "dealer reflash"})

	// The attacker's images: newer, for this vehicle's hardware, signed
	// with the real targets key.
	w.add(findSample(t, dcmHW, "2.0.0"))
	w.add(findSample(t, huHW, "2.0.0"))
	w.publish()

	r := update(t, v.dir, 0)
	if got := versions(t, v); got["dcm"] != "1.1.0" || got["head-unit"] != "1.0.0" {
		t.Fatalf("the vehicle installed what the director did not assign: %v\n%s", got, r)
	}
	if r := agent(t, "update", "--state", v.dir); r.code != 0 || !strings.Contains(r.stdout, "no update assigned") {
		t.Fatalf("a second cycle: %s", r)
	}
	if got := versions(t, v); got["dcm"] != "1.1.0" || got["head-unit"] != "1.0.0" {
		t.Fatalf("after a second cycle: %v", got)
	}
}

// TestSlowRetrievalIsAbandoned: a network attacker drips target images
// (about 10 KiB/s). Each attempt is abandoned once it has moved less
// than the minimum speed over the stall window, the agent gives up after
// its bounded attempts with nothing installed, and once the network is
// honest again the next cycle installs.
func TestSlowRetrievalIsAbandoned(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v := w.vehicle(1)
	before := activeBytes(t, v)
	restore := w.routeVia(t, v, func(pass http.Handler) http.Handler {
		return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			if !strings.HasPrefix(r.URL.Path, "/repo/targets/") {
				pass.ServeHTTP(rw, r)
				return
			}
			pass.ServeHTTP(dripWriter{rw, r.Context()}, r)
		})
	})
	var out, errb bytes.Buffer
	p := download.Policy{MaxAttempts: 2, BaseBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
		MinSpeed: 64 << 10, StallWindow: 500 * time.Millisecond, Sleep: instantRetry.Sleep}
	code := agentcli.Run(context.Background(), []string{"update", "--state", v.dir}, agentcli.Env{
		Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, Now: time.Now, Policy: &p})
	if code != 1 || !strings.Contains(errb.String(), "stalled") {
		t.Fatalf("dripped download: want exit 1 naming the stall, got %d\n%s\n%s", code, out.String(), errb.String())
	}
	if after := activeBytes(t, v); !maps.Equal(before, after) {
		t.Fatalf("active slots changed: %v -> %v", before, after)
	}
	restore()
	update(t, v.dir, 0)
	if got := versions(t, v); got["head-unit"] != "2.0.0" || got["dcm"] != "2.0.0" {
		t.Fatalf("after the honest update: %v", got)
	}
}

// dripWriter passes a response on 1 KiB every 100 ms.
type dripWriter struct {
	http.ResponseWriter
	ctx context.Context
}

func (d dripWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := min(len(b), 1024)
		m, err := d.ResponseWriter.Write(b[:k])
		n += m
		if err != nil {
			return n, err
		}
		if f, ok := d.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		b = b[k:]
		select {
		case <-d.ctx.Done():
			return n, d.ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return n, nil
}
