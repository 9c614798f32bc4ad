package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/server/s3blob/s3test"
)

func targetURL(t testing.TB, w *world, hw, version string) (string, []byte) {
	t.Helper()
	s := findSample(t, hw, version)
	b, err := os.ReadFile(filepath.Join(samplesDir(), s.File))
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s/repo/targets/%s/%s.%s", w.url, s.ECU, sha256hex(b), s.File), b
}

func TestServerServesRepositoryFiles(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	url, content := targetURL(t, w, dcmHW, "1.0.0")

	resp, body := httpGet(t, url, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, content) {
		t.Fatalf("GET target: %d, %d bytes", resp.StatusCode, len(body))
	}
	if cc := resp.Header.Get("Cache-Control"); !strings.Contains(cc, "immutable") {
		t.Errorf("target Cache-Control = %q, want immutable", cc)
	}
	etag := resp.Header.Get("ETag")
	if etag == "" {
		t.Fatal("target has no ETag")
	}

	tests := []struct {
		name       string
		url        string
		hdr        map[string]string
		wantStatus int
		wantBody   []byte
		wantHeader map[string]string
	}{
		{"range", url, map[string]string{"Range": "bytes=100-199"}, 206, content[100:200],
			map[string]string{"Content-Range": fmt.Sprintf("bytes 100-199/%d", len(content))}},
		{"open range", url, map[string]string{"Range": fmt.Sprintf("bytes=%d-", len(content)-10)}, 206, content[len(content)-10:], nil},
		{"if-none-match", url, map[string]string{"If-None-Match": etag}, 304, nil, nil},
		{"missing target", w.url + "/repo/targets/dcm/" + strings.Repeat("0", 64) + ".nope.img", nil, 404, nil, nil},
		{"badly named target", w.url + "/repo/targets/dcm/plain.img", nil, 404, nil, nil},
		{"missing root version", w.url + "/repo/99.root.json", nil, 404, nil, nil},
		{"traversal", w.url + "/repo/..%2f..%2fkeys/image-timestamp.key", nil, 404, nil, nil},
		{"timestamp", w.url + "/repo/timestamp.json", nil, 200, nil, map[string]string{"Cache-Control": "no-cache"}},
		{"versioned root", w.url + "/repo/1.root.json", nil, 200, nil, map[string]string{"Cache-Control": "public, max-age=31536000, immutable"}},
		{"healthz", w.url + "/healthz", nil, 200, nil, nil},
		{"readyz", w.url + "/readyz", nil, 200, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := httpGet(t, tt.url, tt.hdr)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantBody != nil && !bytes.Equal(body, tt.wantBody) {
				t.Errorf("body: got %d bytes, want %d", len(body), len(tt.wantBody))
			}
			for k, v := range tt.wantHeader {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if resp.StatusCode == 404 {
				var e struct {
					Error struct{ Code, Message string } `json:"error"`
				}
				if json.Unmarshal(body, &e) != nil || e.Error.Code != "not_found" {
					t.Errorf("404 body is not a JSON error: %s", body)
				}
			}
		})
	}

	resp, body = httpGet(t, w.url+"/metrics", nil)
	for _, m := range []string{"roadsign_http_requests_total", "roadsign_repo_publishes_total", "roadsign_repo_timestamp_expiry_seconds"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
}

func do(t testing.TB, method, url, token string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.String()
}

func TestServerPublishChecks(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	content := []byte("not the content the name promises")
	name := strings.Repeat("ab", 32) + ".x.img"
	tests := []struct {
		name       string
		method     string
		path       string
		token      string
		body       []byte
		wantStatus int
		wantCode   string
	}{
		{"publish without token", "POST", "/api/v1/repo/publish", "", []byte(`{}`), 401, "unauthorized"},
		{"publish with unknown token", "POST", "/api/v1/repo/publish", "nope", []byte(`{}`), 401, "unauthorized"},
		{"upload without token", "PUT", "/api/v1/repo/targets/dcm/" + name, "", content, 401, "unauthorized"},
		{"upload whose hash does not match its name", "PUT", "/api/v1/repo/targets/dcm/" + name, adminToken, content, 400, "hash_mismatch"},
		{"upload with an unhashed name", "PUT", "/api/v1/repo/targets/dcm/x.img", adminToken, content, 400, "invalid"},
		{"publish unknown fields", "POST", "/api/v1/repo/publish", adminToken, []byte(`{"bogus":1}`), 400, "invalid"},
		{"publish garbage targets", "POST", "/api/v1/repo/publish", adminToken, []byte(`{"targets":{"signed":{}}}`), 400, "invalid"},
		{"publish root v1 that differs", "POST", "/api/v1/repo/publish", adminToken, []byte(`{"imageRoots":[` + forgedRootV1(t, w) + `]}`), 409, "conflict"},
		{"wrong method", "DELETE", "/api/v1/repo/publish", adminToken, nil, 405, "method_not_allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := do(t, tt.method, w.url+tt.path, tt.token, tt.body)
			if status != tt.wantStatus || !strings.Contains(body, `"code":"`+tt.wantCode+`"`) {
				t.Fatalf("got %d %s, want %d with code %s", status, body, tt.wantStatus, tt.wantCode)
			}
		})
	}
	if _, err := os.Stat(w.blobPath("repo/targets/dcm/" + name)); !os.IsNotExist(err) {
		t.Fatalf("a refused upload left a blob behind: %v", err)
	}
}

// forgedRootV1 is a root v1 that differs from the published one.
func forgedRootV1(t testing.TB, w *world) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(w.ws, "image", "1.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Replace(string(b), `"consistent_snapshot": true`, `"consistent_snapshot": false`, 1)
}

func TestServerResignsTimestampBeforeExpiry(t *testing.T) {
	w := newWorld(t, "--timestamp-expiry", "4s", "--snapshot-expiry", "8s")
	w.setup(nil)
	first := w.timestamp()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		ts := w.timestamp()
		if ts.Signed.Version > first.Signed.Version {
			if !ts.Signed.Expires.After(first.Signed.Expires) {
				t.Fatalf("re-signed timestamp v%d does not expire later", ts.Signed.Version)
			}
			// A vehicle still verifies the re-signed repository.
			v := w.vehicle(1)
			update(t, v.dir, 0)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatal("timestamp was not re-signed before it expired")
}

func TestServerShutsDownGracefully(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	url, _ := targetURL(t, w, dcmHW, "1.0.0")
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	w.shutdown() // fails the test unless Run returns 0 promptly
	if _, err := http.Get(w.url + "/healthz"); err == nil {
		t.Fatal("server still answers after shutdown")
	}
}

// newS3World starts a server whose blobs are in a new bucket on gw.
func newS3World(t *testing.T, gw *s3test.Gateway, extra ...string) *world {
	t.Helper()
	w := &world{t: t, dir: t.TempDir(), extra: append([]string{"--blob", gw.URL()}, extra...), env: map[string]string{"ROADSIGN_ADMIN_TOKEN": adminToken}}
	for _, kv := range gw.Env() {
		k, v, _ := strings.Cut(kv, "=")
		w.env[k] = v
	}
	w.data, w.ws = filepath.Join(w.dir, "data"), filepath.Join(w.dir, "ws")
	w.start()
	return w
}

// TestUpdateOverS3 runs the whole path with the server's blobs in a real
// S3-compatible store (versitygw on loopback).
func TestUpdateOverS3(t *testing.T) {
	gw := s3test.Start(t)
	w := newS3World(t, gw)
	w.setup(nil)
	v := w.vehicle(1)
	update(t, v.dir, 0)
	if got := versions(t, v); got["head-unit"] != "2.0.0" || got["dcm"] != "2.0.0" {
		t.Fatalf("after update over S3: %v", got)
	}
	if resp, _ := httpGet(t, w.url+"/repo/77.root.json", nil); resp.StatusCode != 404 {
		t.Fatalf("missing file over S3: %d, want 404", resp.StatusCode)
	}
	if r := w.publish(); !strings.Contains(r.stdout, "nothing changed") {
		t.Fatalf("second publish over S3: %s", r)
	}
}
