package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/client/tufclient"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/testsupport"
)

// TestMultiPartySigning: root and targets keys held by different people,
// one of them on a PKCS#11 token (SoftHSM2). Every change is staged,
// each holder signs with only their own key, publish refuses below a
// threshold (nothing reaches the server) and accepts at it, and a vehicle
// pinned to root v1 follows a 2-of-3 root rotation and installs images
// signed 2-of-2.
func TestMultiPartySigning(t *testing.T) {
	query := testsupport.SoftHSM(t)
	w := newWorld(t)
	keysDir := t.TempDir()
	key := func(name string) string { return filepath.Join(keysDir, name+".key") }
	hsmKey := func(object string) string { return "pkcs11:token=roadsign;object=" + object + query }
	pub := func(name string) string { return key(name) + ".pub" }
	for _, h := range []string{"alice", "bob", "dave", "targets-ann"} {
		r := w.mustSigner("keygen", "--out", key(h))
		if !strings.Contains(r.stdout, "key ID: ") {
			t.Fatalf("keygen prints no key ID: %s", r)
		}
	}
	for _, h := range []string{"carol", "targets-tom"} {
		r := w.mustSigner("keygen", "--out", hsmKey(h), "--pub", pub(h))
		if !strings.Contains(r.stdout, "ecdsa-sha2-nistp256") {
			t.Fatalf("keygen on the token: %s", r)
		}
	}
	if r := w.signer("keygen", "--out", hsmKey("carol"), "--pub", pub("carol2")); r.code != 2 || !strings.Contains(r.stderr, "already holds a key") {
		t.Errorf("a second key under one label: want exit 2, got %s", r)
	}

	// Root 2-of-3 (alice, bob, carol on the token); targets 2-of-2.
	w.mustSigner("init", w.ws, "--online-keys", filepath.Join(w.data, "online-keys.json"),
		"--root-key", pub("alice"), "--root-key", pub("bob"), "--root-key", pub("carol"), "--root-threshold", "2",
		"--targets-key", pub("targets-ann"), "--targets-key", pub("targets-tom"), "--targets-threshold", "2")
	if entries, _ := os.ReadDir(filepath.Join(w.ws, "keys")); len(entries) != 0 {
		t.Errorf("a multi-party workspace keeps private keys: %v", entries)
	}
	w.add(findSample(t, huHW, "1.1.0"))
	w.add(findSample(t, dcmHW, "1.1.0"))
	w.mustSigner("sign", w.ws, "--key", key("alice"))
	if r := w.signer("publish", w.ws, "--server", w.url, "--token", adminToken); r.code != 3 || !strings.Contains(r.stderr, "below threshold") {
		t.Fatalf("publish with one root signature: want exit 3, got %s", r)
	}
	w.mustSigner("sign", w.ws, "--key", hsmKey("carol"))
	w.mustSigner("sign", w.ws, "--key", key("targets-ann"))
	w.mustSigner("sign", w.ws, "--key", hsmKey("targets-tom"))
	w.publish()
	v := w.vehicle(1) // pinned to root v1
	update(t, v.dir, 0)

	// Rotate the image root to bob, carol, dave (2-of-3) and add images:
	// root v2 needs 2 of the old keys and 2 of the new, targets 2 of 2.
	w.mustSigner("rotate", w.ws, "--role", "root", "--root-key", pub("bob"), "--root-key", pub("carol"), "--root-key", pub("dave"), "--root-threshold", "2")
	w.add(findSample(t, huHW, "2.0.0"))
	w.add(findSample(t, dcmHW, "2.0.0"))
	// An expiry extension joins the staged targets change (one version).
	if r := w.mustSigner("extend", w.ws, "--role", "targets"); !strings.Contains(r.stdout, "targets v2") || !strings.Contains(r.stdout, "staged") {
		t.Errorf("extend: %s", r)
	}
	if r := w.signer("sign", w.ws, "--key", key("nobody-"+"x")); r.code != 2 {
		t.Errorf("sign with a missing key file: want exit 2, got %s", r)
	}
	w.mustSigner("keygen", "--out", key("mallory"))
	if r := w.signer("sign", w.ws, "--key", key("mallory")); r.code != 2 || !strings.Contains(r.stderr, "is not one of the keys") {
		t.Errorf("sign with an outsider's key: want exit 2, got %s", r)
	}
	w.mustSigner("sign", w.ws, "--key", hsmKey("carol"))
	w.mustSigner("sign", w.ws, "--key", key("targets-ann"))

	st := w.mustSigner("status", w.ws, "--json")
	var status struct {
		Staged []struct {
			File         string
			Version      int64
			Requirements []struct {
				Of              string
				Threshold       int
				Signed, Missing []string
			}
		}
	}
	if err := json.Unmarshal([]byte(st.stdout), &status); err != nil {
		t.Fatalf("status --json: %v\n%s", err, st.stdout)
	}
	if len(status.Staged) != 2 {
		t.Fatalf("staged: want the image root and targets, got %+v", status.Staged)
	}
	for _, s := range status.Staged {
		for _, r := range s.Requirements {
			wantMissing := 2 // of three root keys
			if strings.HasPrefix(r.Of, "targets") {
				wantMissing = 1 // of two targets keys
			}
			if len(r.Signed) != 1 || len(r.Missing) != wantMissing {
				t.Errorf("%s: %s: signed %v, missing %v; want one signature so far", s.File, r.Of, r.Signed, r.Missing)
			}
		}
	}
	if txt := w.mustSigner("status", w.ws).stdout; !strings.Contains(txt, "STAGED") || !strings.Contains(txt, "1 of 2") {
		t.Errorf("status does not show the staged signatures:\n%s", txt)
	}

	r := w.signer("publish", w.ws, "--server", w.url, "--token", adminToken)
	if r.code != 3 || !strings.Contains(r.stderr, "image root v2 has 1 of 2 signatures") || !strings.Contains(r.stderr, "targets v2 has 1 of 2") {
		t.Fatalf("publish with one signature each: want exit 3 naming what is missing, got %s", r)
	}
	if resp, _ := httpGet(t, w.url+"/repo/2.root.json", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("a refused publish reached the server: 2.root.json answers %d", resp.StatusCode)
	}
	hu2 := findSample(t, huHW, "2.0.0")
	img, err := os.ReadFile(filepath.Join(samplesDir(), hu2.File))
	if err != nil {
		t.Fatal(err)
	}
	if resp, _ := httpGet(t, w.url+"/repo/targets/head-unit/"+fmt.Sprintf("%x", sha256.Sum256(img))+"."+hu2.File, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("a refused publish uploaded an image: %d", resp.StatusCode)
	}

	w.mustSigner("sign", w.ws, "--key", key("bob"))
	w.mustSigner("sign", w.ws, "--key", hsmKey("targets-tom"))
	if r := w.publish(); !strings.Contains(r.stdout, "root v2") {
		t.Fatalf("publish at threshold: %s", r)
	}
	if _, err := os.Stat(filepath.Join(w.ws, "staged")); !os.IsNotExist(err) {
		t.Errorf("published staged metadata is still staged: %v", err)
	}

	update(t, v.dir, 0)
	if got := versions(t, v); got["head-unit"] != "2.0.0" || got["dcm"] != "2.0.0" {
		t.Fatalf("after rotation: %v", got)
	}
	if got := tufclient.CachedVersion(filepath.Join(v.dir, "tuf", "image"), "root"); got != 2 {
		t.Errorf("vehicle trusts image root v%d, want v2", got)
	}

	// Keys compromised below threshold: one targets holder's key (and
	// every online key) signs targets v3 alone. The server refuses it on
	// publish; put in storage with a forged snapshot and timestamp, the
	// vehicle refuses it.
	ann, err := keys.Load(key("targets-ann"))
	if err != nil {
		t.Fatal(err)
	}
	cur, err := metadata.Targets().FromBytes(w.readBlob("repo/2.targets.json"))
	if err != nil {
		t.Fatal(err)
	}
	cur.Signed.Version = 3
	if err := meta.Sign(cur, ann); err != nil {
		t.Fatal(err)
	}
	raw, _ := cur.ToBytes(false)
	if code, errCode := w.publishRaw(map[string]any{"targets": json.RawMessage(raw)}); code != http.StatusBadRequest || errCode != "bad_signature" {
		t.Errorf("publishing targets signed by one of two keys: got %d %s, want 400 bad_signature", code, errCode)
	}
	w.writeBlob("repo/3.targets.json", raw)
	w.forgeSnapshotAndTimestamp(3, meta.Expires(time.Now(), time.Hour))
	w.restart()
	if r := agent(t, "update", "--state", v.dir); r.code != 3 || !strings.Contains(r.stderr, "not enough signatures") {
		t.Fatalf("targets signed below threshold: want exit 3, got %s", r)
	}
}
