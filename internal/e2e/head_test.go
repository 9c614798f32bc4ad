package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/fwimage"
	"github.com/roadsign/roadsign/server/postgres/pgtest"
	"github.com/roadsign/roadsign/server/repo"
	"github.com/roadsign/roadsign/server/s3blob"
	"github.com/roadsign/roadsign/server/s3blob/s3test"
)

// addImage signs a new DCM image of size bytes as version v (release
// counter 9).
func (w *world) addImage(t testing.TB, v string, size int64) string {
	t.Helper()
	img := filepath.Join(w.dir, "dcm-"+v+".img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := fwimage.Write(f, fwimage.Spec{ECU: "dcm", HardwareID: dcmHW, Version: v, Size: size}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	w.mustSigner("add", w.ws, img, "--ecu", "dcm", "--hardware-id", dcmHW, "--version", v, "--release-counter", "9")
	return img
}

// servedTimestamp is the version of the timestamp.json url serves.
func servedTimestamp(t *testing.T, url string) int64 {
	t.Helper()
	resp, body := httpGet(t, url+"/repo/timestamp.json", nil)
	if resp.StatusCode != 200 {
		return 0
	}
	var ts struct {
		Signed struct{ Version int64 } `json:"signed"`
	}
	json.Unmarshal(body, &ts)
	return ts.Signed.Version
}

// blobOps is the server's count of blob-store operations so far.
func blobOps(t *testing.T, url string) int {
	t.Helper()
	_, body := httpGet(t, url+"/metrics", nil)
	n := 0
	for _, m := range regexp.MustCompile(`(?m)^roadsign_blob_operations_total\{[^}]*\} (\d+)$`).FindAllSubmatch(body, -1) {
		v, _ := strconv.Atoi(string(m[1]))
		n += v
	}
	return n
}

// TestTimestampPollsDoNotTouchTheBlobStore: with the blobs in S3, the
// head of the image repository is served from memory: a fleet polling
// timestamp.json (and snapshot and targets) costs the store nothing until
// something changes; an unchanged file answers 304 to its ETag.
func TestTimestampPollsDoNotTouchTheBlobStore(t *testing.T) {
	gw := s3test.Start(t)
	// Deltas off: making one reads both images from the store in the
	// background (TestDeltaUpdates); this counts what polls cost.
	w := newS3World(t, gw, "--deltas", "off")
	w.setup(nil)
	v := w.vehicle(1)
	update(t, v.dir, 0)
	ts := servedTimestamp(t, w.url)
	before := blobOps(t, w.url)
	etag := ""
	for i := range 200 {
		req, _ := http.NewRequest("GET", w.url+"/repo/timestamp.json", nil)
		if i%2 == 1 {
			req.Header.Set("If-None-Match", etag)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		want := 200
		if i%2 == 1 {
			want = 304
		}
		if resp.StatusCode != want {
			t.Fatalf("poll %d: %d, want %d", i, resp.StatusCode, want)
		}
		etag = resp.Header.Get("ETag")
	}
	for _, name := range []string{"root.json", "1.root.json"} {
		if resp, _ := httpGet(t, w.url+"/repo/"+name, nil); resp.StatusCode != 200 {
			t.Fatalf("%s: %d", name, resp.StatusCode)
		}
	}
	if after := blobOps(t, w.url); after != before {
		t.Fatalf("200 polls of timestamp.json cost the blob store %d operations", after-before)
	}
	if r := agent(t, "update", "--state", v.dir); r.code != 0 { // a vehicle's poll: nothing new
		t.Fatalf("update: %s", r)
	}
	if after := blobOps(t, w.url); after != before {
		t.Fatalf("polls of unchanged metadata cost the blob store %d operations", after-before)
	}
	// A change is read once, then served from memory again.
	w.addImage(t, "9.0.0", 1<<16)
	w.publish()
	if got := servedTimestamp(t, w.url); got <= ts {
		t.Fatalf("after a publish the timestamp is v%d, was v%d", got, ts)
	}
}

// TestReplicaServesNewPublishWithinBound: two replicas on one PostgreSQL
// database and one S3 bucket; a publish through one is served by the
// other within repo.HeadBound, and never an older version after it.
func TestReplicaServesNewPublishWithinBound(t *testing.T) {
	gw := s3test.Start(t)
	a := newS3World(t, gw, "--database", pgtest.Schema(t))
	b := &world{t: t, dir: a.dir, data: a.data, ws: a.ws, extra: a.extra, env: a.env}
	b.start()
	a.setup(nil)
	first := servedTimestamp(t, a.url)
	waitFor(t, "replica b to serve the first publish", func() bool { return servedTimestamp(t, b.url) == first })
	a.addImage(t, "9.0.0", 1<<16)
	a.publish()
	published := time.Now()
	want := servedTimestamp(t, a.url)
	if want <= first {
		t.Fatalf("replica a serves v%d after the publish, was v%d", want, first)
	}
	for {
		got := servedTimestamp(t, b.url)
		if got == want {
			break
		}
		if got < first {
			t.Fatalf("replica b went back to v%d", got)
		}
		if time.Since(published) > repo.HeadBound {
			t.Fatalf("replica b still serves v%d %s after the publish; the bound is %s", got, time.Since(published), repo.HeadBound)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("replica b served v%d %s after the publish", want, time.Since(published).Round(time.Millisecond))
}

// TestTargetDownloadsRedirectToTheStore: with --blob-redirect, target
// bytes come straight from S3 through a presigned URL: the agent resumes
// a dropped download across the redirect, the server reads none of the
// bytes, and a target whose bytes in the store were altered is refused.
func TestTargetDownloadsRedirectToTheStore(t *testing.T) {
	gw := s3test.Start(t)
	// Deltas off: making one reads both images from the store in the
	// background; this counts what the downloads cost.
	w := newS3World(t, gw, "--blob-redirect", "--deltas", "off")
	w.setup(nil)
	v := w.vehicle(1)
	before := blobOps(t, w.url)
	update(t, v.dir, 1, "--simulate", "network-drop:50")
	if r := agent(t, "update", "--state", v.dir); r.code != 0 || !strings.Contains(r.stdout, "installed") {
		t.Fatalf("resumed update: %s", r)
	}
	if got := versions(t, v); got["dcm"] != "2.0.0" || got["head-unit"] != "2.0.0" {
		t.Fatalf("after the resumed update: %v", got)
	}
	_, metrics := httpGet(t, w.url+"/metrics", nil)
	if !regexp.MustCompile(`roadsign_repo_target_redirects_total [1-9]`).Match(metrics) {
		t.Fatal("no target download was redirected")
	}
	if opened := regexp.MustCompile(`roadsign_blob_operations_total\{op="open",result="ok"\} (\d+)`).FindSubmatch(metrics); opened != nil {
		t.Logf("blob opens by the server: %s (metadata only)", opened[1])
	}
	if n := blobOps(t, w.url) - before; n > 2 {
		t.Fatalf("the server touched the store %d times while the vehicle's images downloaded: target bytes passed through it", n)
	}

	// Someone with write access to the bucket swaps a target's bytes.
	img := w.addImage(t, "9.0.0", 1<<18)
	w.publish()
	cfg, err := s3blob.ParseURL(w.extra[1], func(k string) string { return w.env[k] })
	if err != nil {
		t.Fatal(err)
	}
	store, err := s3blob.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(img)
	sum := sha256.Sum256(raw)
	key := "repo/targets/dcm/" + hex.EncodeToString(sum[:]) + "." + filepath.Base(img)
	bad := bytes.Clone(raw)
	bad[len(bad)/2] ^= 0xff
	if err := store.Put(context.Background(), key, bytes.NewReader(bad), int64(len(bad))); err != nil {
		t.Fatalf("alter %s: %v", key, err)
	}
	v2 := w.vehicle(2)
	dealer := w.account("dealer", "dealer-1")
	w.job(dealer, map[string]any{"vin": v2.vin, "ecu": "dcm", "version": "9.0.0", "reason": "altered bytes"})
	before2 := activeBytes(t, v2)
	if r := agent(t, "update", "--state", v2.dir); r.code == 0 || versions(t, v2)["dcm"] == "9.0.0" {
		t.Fatalf("an altered target installed: %s", r)
	}
	if after := activeBytes(t, v2); after["dcm"] != before2["dcm"] {
		t.Fatal("the DCM's active slot changed")
	}
}
