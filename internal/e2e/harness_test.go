// Package e2e runs the three programs' real command-line entry points
// together, through real HTTP on 127.0.0.1, the way an operator, a release
// engineer and a vehicle use them.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	agentcli "github.com/roadsign/roadsign/client/cli"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/internal/fwimage"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/testsupport"
	servercli "github.com/roadsign/roadsign/server/cli"
	"github.com/roadsign/roadsign/server/repo"
	signercli "github.com/roadsign/roadsign/signer/cli"
)

const adminToken = "e2e-admin-token"

type sample = fwimage.Sample

func samplesDir() string { return filepath.Join("..", "..", "firmware-samples") }

func loadSamples(t testing.TB) []sample {
	t.Helper()
	s, err := fwimage.LoadSamples(samplesDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func findSample(t testing.TB, hw, version string) sample {
	t.Helper()
	for _, s := range loadSamples(t) {
		if s.HardwareID == hw && s.Version == version {
			return s
		}
	}
	t.Fatalf("no sample %s %s", hw, version)
	return sample{}
}

// world is one server with a signing workspace and its vehicles.
type world struct {
	t      testing.TB
	dir    string
	data   string
	url    string
	ws     string
	extra  []string
	env    map[string]string
	stop   context.CancelFunc
	done   chan int
	logBuf *testsupport.LockedBuffer
	// reload stands for SIGHUP: it asks the server to reread its TLS
	// certificate and key.
	reload chan os.Signal
	// approver is the token of the account that approves campaigns
	// (made at the first start).
	approver string
}

// newWorld starts a server on 127.0.0.1:0 with extra flags.
func newWorld(t testing.TB, extra ...string) *world {
	t.Helper()
	w := &world{t: t, dir: t.TempDir(), extra: extra, env: map[string]string{"ROADSIGN_ADMIN_TOKEN": adminToken}}
	w.data = filepath.Join(w.dir, "data")
	w.ws = filepath.Join(w.dir, "ws")
	w.start()
	return w
}

func (w *world) getenv(k string) string { return w.env[k] }

func (w *world) start() {
	t := w.t
	ctx, cancel := context.WithCancel(context.Background())
	w.stop, w.done, w.logBuf = cancel, make(chan int, 1), &testsupport.LockedBuffer{}
	if w.reload == nil {
		w.reload = make(chan os.Signal, 1)
	}
	addr := make(chan string, 1)
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--data", w.data, "--log-level", "warn"}, w.extra...)
	go func() {
		w.done <- servercli.Run(ctx, args, servercli.Env{
			Stdout: w.logBuf, Stderr: w.logBuf, Getenv: w.getenv,
			OnListen: func(a string) { addr <- a }, Reload: w.reload,
		})
	}()
	select {
	case a := <-addr:
		w.url = "http://" + a
		if slices.Contains(w.extra, "--tls-cert") {
			w.url = "https://" + a
		}
	case code := <-w.done:
		t.Fatalf("server exited with %d: %s", code, w.logBuf.String())
	case <-time.After(20 * time.Second):
		t.Fatal("server did not start")
	}
	t.Cleanup(w.shutdown)
}

func (w *world) shutdown() {
	if w.stop == nil {
		return
	}
	w.stop()
	select {
	case code := <-w.done:
		if code != 0 {
			w.t.Errorf("server exited with %d: %s", code, w.logBuf.String())
		}
	case <-time.After(30 * time.Second):
		w.t.Error("server did not stop within 30s of its context ending")
	}
	w.stop = nil
}

type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

func (w *world) signer(args ...string) result {
	w.t.Helper()
	var out, errb bytes.Buffer
	code := signercli.Run(context.Background(), args, signercli.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, Now: time.Now})
	return result{code, out.String(), errb.String()}
}

func (w *world) mustSigner(args ...string) result {
	w.t.Helper()
	r := w.signer(args...)
	if r.code != 0 {
		w.t.Fatalf("roadsign-signer %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// instantRetry keeps tests fast: no real sleeping between attempts.
var instantRetry = download.Policy{MaxAttempts: 3, BaseBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
	Sleep: func(ctx context.Context, d time.Duration) error { return ctx.Err() }}

func agent(t testing.TB, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	p := instantRetry
	code := agentcli.Run(context.Background(), args, agentcli.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, Now: time.Now, Policy: &p})
	return result{code, out.String(), errb.String()}
}

// update runs one agent update cycle on the vehicle in dir (with more
// flags) and fails the test unless it exits want.
func update(t testing.TB, dir string, want int, args ...string) result {
	t.Helper()
	r := agent(t, append([]string{"update", "--state", dir}, args...)...)
	if r.code != want {
		t.Fatalf("update %s: want exit %d, got %s", strings.Join(args, " "), want, r)
	}
	return r
}

// signerInit creates the workspace from this server's online keys.
func (w *world) signerInit() {
	w.mustSigner("init", w.ws, "--online-keys", filepath.Join(w.data, "online-keys.json"))
}

func (w *world) add(s sample) {
	w.t.Helper()
	w.mustSigner("add", w.ws, filepath.Join(samplesDir(), s.File), "--ecu", s.ECU, "--hardware-id", s.HardwareID,
		"--version", s.Version, "--release-counter", fmt.Sprint(s.ReleaseCounter))
}

func (w *world) publish() result {
	w.t.Helper()
	return w.mustSigner("publish", w.ws, "--server", w.url, "--token", adminToken)
}

// setup signs and publishes the bootable samples matching keep (all if nil).
func (w *world) setup(keep func(sample) bool) {
	w.t.Helper()
	w.signerInit()
	for _, s := range loadSamples(w.t) {
		if s.Bootable && (keep == nil || keep(s)) {
			w.add(s)
		}
	}
	w.publish()
}

// vehicle provisions a vehicle running HU-GEN5-NA and DCM-4G-24MM 1.0.0.
type vehicleState struct {
	dir, vin string
}

const (
	huHW  = "HU-GEN5-NA"
	dcmHW = "DCM-4G-24MM"
)

func (w *world) vehicle(n int) vehicleState {
	w.t.Helper()
	st := filepath.Join(w.dir, fmt.Sprintf("vehicle%d", n))
	vin := testVIN(n)
	hu, dcm := findSample(w.t, huHW, "1.0.0"), findSample(w.t, dcmHW, "1.0.0")
	r := agent(w.t, "init", "--state", st, "--server", w.url, "--vin", vin,
		"--image-root", filepath.Join(w.ws, "image.root.json"), "--director-root", filepath.Join(w.ws, "director.root.json"),
		"--ecu", fmt.Sprintf("head-unit:HU%06d:%s:%s", n, huHW, filepath.Join(samplesDir(), hu.File)),
		"--ecu", fmt.Sprintf("dcm:DCM%06d:%s:%s", n, dcmHW, filepath.Join(samplesDir(), dcm.File)),
		"--token", adminToken)
	if r.code != 0 {
		w.t.Fatalf("agent init: %s", r)
	}
	return vehicleState{dir: st, vin: vin}
}

// testVIN makes a valid VIN with serial n.
func testVIN(n int) string {
	base := []byte(fmt.Sprintf("JTMBFREV0N%07d", n))
	weights := []int{8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2}
	val := func(c byte) int {
		switch {
		case c >= '0' && c <= '9':
			return int(c - '0')
		case c >= 'A' && c <= 'H':
			return int(c-'A') + 1
		case c >= 'J' && c <= 'N':
			return int(c-'J') + 1
		case c == 'P':
			return 7
		case c == 'R':
			return 9
		}
		return int(c-'S') + 2
	}
	sum := 0
	for i, c := range base {
		sum += val(c) * weights[i]
	}
	if d := sum % 11; d == 10 {
		base[8] = 'X'
	} else {
		base[8] = byte('0' + d)
	}
	return string(base)
}

type ecuStatus struct {
	Type       string `json:"type"`
	Serial     string `json:"serial"`
	ActiveSlot string `json:"activeSlot"`
	Version    string `json:"version"`
	Slots      map[string]*struct {
		Version string `json:"version"`
		SHA256  string `json:"sha256"`
	} `json:"slots"`
	LastResult string `json:"lastResult"`
}

func status(t testing.TB, v vehicleState) map[string]ecuStatus {
	t.Helper()
	r := agent(t, "status", "--state", v.dir, "--json")
	if r.code != 0 {
		t.Fatalf("status: %s", r)
	}
	var st struct {
		ECUs []ecuStatus `json:"ecus"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status json: %v\n%s", err, r.stdout)
	}
	out := map[string]ecuStatus{}
	for _, e := range st.ECUs {
		out[e.Type] = e
	}
	return out
}

// activeBytes hashes each ECU's active slot file as it is on disk.
func activeBytes(t testing.TB, v vehicleState) map[string]string {
	t.Helper()
	out := map[string]string{}
	for typ, e := range status(t, v) {
		b, err := os.ReadFile(filepath.Join(v.dir, "ecus", e.Serial, "slot-"+e.ActiveSlot+".img"))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		out[typ] = e.ActiveSlot + ":" + hex.EncodeToString(sum[:])
		if rec := e.Slots[e.ActiveSlot]; rec == nil || rec.SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: active slot bytes do not match the recorded hash", typ)
		}
	}
	return out
}

func versions(t testing.TB, v vehicleState) map[string]string {
	t.Helper()
	out := map[string]string{}
	for typ, e := range status(t, v) {
		out[typ] = e.Version
	}
	return out
}

// --- direct access to the server's repository, playing an attacker who
// holds the online keys or the storage ---

func (w *world) blobPath(key string) string {
	return filepath.Join(w.data, "blobs", filepath.FromSlash(key))
}

func (w *world) readBlob(key string) []byte {
	w.t.Helper()
	b, err := os.ReadFile(w.blobPath(key))
	if err != nil {
		w.t.Fatal(err)
	}
	return b
}

func (w *world) writeBlob(key string, b []byte) {
	w.t.Helper()
	if err := os.WriteFile(w.blobPath(key), b, 0o644); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) onlineKeys() *repo.OnlineKeys {
	w.t.Helper()
	k, err := repo.LoadKeys(w.data)
	if err != nil {
		w.t.Fatal(err)
	}
	return k
}

func (w *world) timestamp() *metadata.Metadata[metadata.TimestampType] {
	w.t.Helper()
	ts, err := metadata.Timestamp().FromBytes(w.readBlob("repo/timestamp.json"))
	if err != nil {
		w.t.Fatal(err)
	}
	return ts
}

// forgeSnapshotAndTimestamp signs a snapshot naming targets version tv and
// a timestamp naming it, with the server's online keys, expiring at exp.
func (w *world) forgeSnapshotAndTimestamp(tv int64, exp time.Time) {
	w.t.Helper()
	k := w.onlineKeys()
	ts := w.timestamp()
	snapV := ts.Signed.Meta["snapshot.json"].Version + 1
	snap := metadata.Snapshot(exp)
	snap.Signed.Version = snapV
	snap.Signed.Meta["targets.json"] = metadata.MetaFile(tv)
	if err := meta.Sign(snap, k.ImageSnapshot); err != nil {
		w.t.Fatal(err)
	}
	raw, err := snap.ToBytes(false)
	if err != nil {
		w.t.Fatal(err)
	}
	w.writeBlob(fmt.Sprintf("repo/%d.snapshot.json", snapV), raw)
	nts := metadata.Timestamp(exp)
	nts.Signed.Version = ts.Signed.Version + 1
	nts.Signed.Meta["snapshot.json"] = metadata.MetaFile(snapV)
	if err := meta.Sign(nts, k.ImageTimestamp); err != nil {
		w.t.Fatal(err)
	}
	raw, err = nts.ToBytes(false)
	if err != nil {
		w.t.Fatal(err)
	}
	w.writeBlob("repo/timestamp.json", raw)
}

func httpGet(t testing.TB, url string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}
