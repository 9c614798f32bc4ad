package hostile

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// TestHostileCheckInsStayBounded: a vehicle key that checks in 1 200
// times, each time with 32 new offline-install notes and 32 new trouble
// code episodes (the most a manifest may carry), leaves a bounded number
// of rows; its signed record export and its owner's portal page stay
// small.
func TestHostileCheckInsStayBounded(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	owner := w.account(t, "owner", "alice")
	if code := w.api(t, "POST", "/api/v1/vehicles/"+w.vin+"/owner", adminToken, map[string]string{"owner": "alice"}, nil); code != 200 {
		t.Fatalf("link the owner: %d", code)
	}
	const checkIns, workers = 1200, 8
	base := time.Now().Add(-12 * time.Hour).UTC().Truncate(time.Second)
	var next, failed atomic.Int64
	t0 := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= checkIns {
					return
				}
				m := vehicleauth.Manifest{VIN: w.vin, Nonce: randHex(16), Time: time.Now().UTC(),
					ECUs: []vehicleauth.ECUReport{{Serial: "DCM000001", Version: "1.0.0", SHA256: strings.Repeat("0", 64), Length: 1}}}
				for j := range 32 {
					k := i*32 + int64(j)
					m.Offline = append(m.Offline, fmt.Sprintf("dcm DCM000001: 1.0.0 -> 1.0.%d from USB bundle issued %s %s", k, base.Format(time.RFC3339), strings.Repeat("x", 400)))
					at := base.Add(time.Duration(k) * time.Millisecond)
					m.DTCDetails = append(m.DTCDetails, vehicleauth.DTCEpisode{Code: "U1100", FirstSeen: at, LastSeen: at, Count: 1, Detail: strings.Repeat("d", 500)})
				}
				signed, _ := json.Marshal(m)
				body, _ := json.Marshal(vehicleauth.SignedManifest{Signed: signed, Signature: ed25519.Sign(w.key, signed)})
				if code, _ := send(t, w.signed("POST", "/api/v1/vehicles/"+w.vin+"/manifest", body)); code != 200 {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(t0)
	if failed.Load() > 0 {
		t.Fatalf("%d of %d check-ins refused", failed.Load(), checkIns)
	}
	d := openDB(t, filepath.Join(w.data, "roadsign.db")) // WAL: read beside the running server
	count := func(q string) int {
		var n int
		if err := d.QueryRow(q, w.vin).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	records := count(`SELECT COUNT(*) FROM software_record WHERE vin = ?`)
	episodes := count(`SELECT COUNT(*) FROM dtc_episodes WHERE vin = ?`)
	audits := count(`SELECT COUNT(*) FROM audit WHERE subject = ?`)
	d.Close()
	fi, _ := os.Stat(filepath.Join(w.data, "roadsign.db"))

	t1 := time.Now()
	req, _ := http.NewRequest("GET", w.url+"/api/v1/vehicles/"+w.vin+"/software-record?format=signed", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := w.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	export, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	exportTook := time.Since(t1)
	browser, _ := w.login(t, "alice", "correct horse battery")
	portal, _ := page(t, browser, w.url+"/")
	_ = owner
	t.Logf("%d hostile check-ins in %s: %d software record rows, %d trouble code episodes, %d audit entries for the car; database %d KiB; signed export %d KiB in %s; owner portal %d KiB",
		checkIns, took.Round(time.Second), records, episodes, audits, fi.Size()>>10, len(export)>>10, exportTook.Round(time.Millisecond), len(portal)>>10)
	if records > 16 || episodes > 256 || audits > 20 {
		t.Errorf("rows for one car: %d records (cap 16 a day), %d episodes (cap 256), %d audit entries", records, episodes, audits)
	}
	if len(export) > 64<<10 || len(portal) > 64<<10 {
		t.Errorf("the signed export is %d bytes and the portal page %d", len(export), len(portal))
	}
	// The portal shows the newest ten and links to the record's own
	// pages, which show the rest.
	full, _ := page(t, browser, w.url+"/vehicles/"+w.vin+"/record")
	if n := strings.Count(portal, `class="record-entry"`); n != 10 || !strings.Contains(portal, `href="/vehicles/`+w.vin+`/record"`) {
		t.Errorf("the portal shows %d record entries (want 10) or no link to the rest", n)
	}
	if n := strings.Count(full, `class="record-entry"`); n != records {
		t.Errorf("the record page shows %d entries of %d", n, records)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// TestRepackagedTimestampIsNotARecord: the image repository's
// timestamp.json, signed by the same online key, repackaged in either
// software record form, is refused as a record; a genuine record of one
// car is refused as another's.
func TestRepackagedTimestampIsNotARecord(t *testing.T) {
	w := newWorld(t)
	resp, err := w.client.Get(w.url + "/repo/timestamp.json")
	if err != nil {
		t.Fatal(err)
	}
	var ts struct {
		Signed     json.RawMessage
		Signatures []struct{ KeyID, Sig string }
	}
	json.NewDecoder(resp.Body).Decode(&ts)
	resp.Body.Close()
	if len(ts.Signatures) == 0 {
		t.Fatal("no timestamp signature")
	}
	dir := t.TempDir()
	forms := map[string]string{
		"the old {payload, keyId, signature} form": fmt.Sprintf(`{"payload":%q,"keyId":%q,"signature":%q}`,
			mustB64(ts.Signed), ts.Signatures[0].KeyID, ts.Signatures[0].Sig),
		"the streamed form": fmt.Sprintf("{\"format\":\"roadsign-software-record\",\"version\":2,\"vin\":%q,\"generatedAt\":\"2026-01-01T00:00:00Z\",\"keyId\":%q}\n{\"entries\":0,\"signature\":%q}\n",
			w.vin, ts.Signatures[0].KeyID, ts.Signatures[0].Sig),
	}
	for name, body := range forms {
		f := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		os.WriteFile(f, []byte(body), 0o600)
		if code, out := run(t, "roadsign-server", "record", "verify", "--vin", w.vin, "--data", w.data, f); code != 3 {
			t.Errorf("%s: exit %d, want 3 (refused)\n%s", name, code, out)
		}
	}
	req, _ := http.NewRequest("GET", w.url+"/api/v1/vehicles/"+w.vin+"/software-record?format=signed", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err = w.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	genuine, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	f := filepath.Join(dir, "genuine.jsonl")
	os.WriteFile(f, genuine, 0o600)
	if code, out := run(t, "roadsign-server", "record", "verify", "--vin", w.vin, "--data", w.data, f); code != 0 {
		t.Fatalf("the genuine record: exit %d\n%s", code, out)
	}
	if code, _ := run(t, "roadsign-server", "record", "verify", "--vin", "JTMBFREV3N0000002", "--data", w.data, f); code != 3 {
		t.Errorf("one car's record checked as another's: exit %d, want 3", code)
	}
}

func mustB64(b []byte) []byte { return b } // encoding/json writes []byte as base64

// TestVehicleBehindHostRewritingProxy: a proxy that sets Host to its
// upstream (nginx's default proxy_pass) locks vehicles out unless the
// server knows the URL they use (--public-url); then the car updates,
// and without it the refusal says what to configure.
func TestVehicleBehindHostRewritingProxy(t *testing.T) {
	for _, configured := range []bool{true, false} {
		t.Run(fmt.Sprintf("public-url given: %v", configured), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			proxyURL := "http://" + ln.Addr().String()
			var extra []string
			if configured {
				extra = []string{"--public-url", proxyURL}
			}
			var upstream atomic.Pointer[url.URL]
			proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
				r.SetURL(upstream.Load()) // and Host becomes the upstream's, as nginx does by default
			}}
			go http.Serve(ln, proxy)
			defer ln.Close()
			// The car knows the proxy; the signer talks to the server.
			w := newWorldViaProxy(t, proxyURL, &upstream, extra...)
			code, out := run(t, "roadsign-agent", "update", "--state", w.car)
			switch {
			case configured && code != 0:
				t.Fatalf("update through the proxy: exit %d\n%s", code, out)
			case !configured && (code == 0 || !strings.Contains(out, "--public-url")):
				t.Fatalf("without --public-url: exit %d, want a refusal naming --public-url\n%s", code, out)
			}
			t.Logf("exit %d: %s", code, lastLine(out))
		})
	}
}

// newWorldViaProxy starts the world with the car pointed at proxyURL,
// whose upstream is set to the server once it is known.
func newWorldViaProxy(t *testing.T, proxyURL string, upstream *atomic.Pointer[url.URL], extra ...string) *world {
	t.Helper()
	// The server must be up before the proxy can forward to it, and the
	// world's car is registered through the proxy: start the server
	// first, point the proxy at it, then make the world around it.
	return newWorldWith(t, proxyURL, func(s *server) {
		u, _ := url.Parse(s.url)
		upstream.Store(u)
	}, extra...)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestRenewalsAreCapped: thirteen dealer renewals do not take a
// subscription past ten years from now; the refused ones say why.
func TestRenewalsAreCapped(t *testing.T) {
	s := start(t)
	owner := s.account(t, "owner", "alice")
	const vin = "JTMBFREV1N0000001"
	s.vehicle(t, vin)
	if code := s.api(t, "POST", "/api/v1/vehicles/"+vin+"/owner", adminToken, map[string]string{"owner": "alice"}, nil); code != 200 {
		t.Fatalf("link: %d", code)
	}
	dealer := s.account(t, "dealer", "dealer-1")
	console := browser()
	_, token := page(t, console, s.url+"/dealer")
	postForm(t, console, s.url+"/dealer/login", url.Values{"name": {"dealer-1"}, "secret": {dealer.Token}, "csrf": {token}})
	refused := 0
	for range 13 {
		_, token = page(t, console, s.url+"/dealer?vin="+vin)
		postForm(t, console, s.url+"/dealer/renew", url.Values{"vin": {vin}, "csrf": {token}})
		body, _ := page(t, console, s.url+"/dealer?vin="+vin)
		if strings.Contains(body, "may not take it more than 10 years ahead") {
			refused++
		}
	}
	var mine struct {
		Vehicles []struct {
			Link struct{ SubscriptionEnds time.Time }
		}
	}
	s.api(t, "GET", "/api/v1/owners/me/vehicles", owner.Token, nil, &mine)
	if len(mine.Vehicles) != 1 {
		t.Fatalf("owner's vehicles: %+v", mine)
	}
	end := mine.Vehicles[0].Link.SubscriptionEnds
	t.Logf("13 renewals: %d refused; the subscription ends %s", refused, end.Format(time.DateOnly))
	if end.After(time.Now().AddDate(10, 0, 1)) {
		t.Fatalf("13 renewals took the subscription to %s, past ten years", end.Format(time.DateOnly))
	}
	if refused == 0 {
		t.Fatal("no renewal was refused with a reason")
	}
}

// TestRestoreKeepsItsOwnLimits: an archive of a few MiB that declares a
// 3 GiB file is refused before anything is written; files come back with
// the server's own modes whatever the archive says; a failed restore
// over --force leaves the old data directory as it was.
func TestRestoreKeepsItsOwnLimits(t *testing.T) {
	dir := t.TempDir()
	archive := func(name string, entries ...tarEntry) string {
		var buf bytes.Buffer
		gz, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
		tw := tar.NewWriter(gz)
		for _, e := range entries {
			tw.WriteHeader(&tar.Header{Name: e.name, Mode: e.mode, Size: e.size, Typeflag: tar.TypeReg})
			io.CopyN(tw, e.body, e.size)
		}
		tw.Close()
		gz.Close()
		p := filepath.Join(dir, name)
		os.WriteFile(p, buf.Bytes(), 0o600)
		return p
	}
	manifest := func() tarEntry {
		return tarEntry{name: "roadsign-backup.json", mode: 0o644, size: int64(len(manifestJSON)), body: strings.NewReader(manifestJSON)}
	}
	bomb := bombArchive(t, filepath.Join(dir, "bomb.tar.gz"), 3<<30, manifest())
	fi, _ := os.Stat(bomb)

	old := filepath.Join(dir, "data")
	os.MkdirAll(old, 0o700)
	os.WriteFile(filepath.Join(old, "keep.me"), []byte("old data"), 0o600)
	code, out := run(t, "roadsign-server", "restore", "--data", old, "--from", bomb, "--force")
	if code == 0 || !strings.Contains(out, "decompression bomb") {
		t.Fatalf("a %d KiB archive declaring 3 GiB: exit %d\n%s", fi.Size()>>10, code, out)
	}
	if b, err := os.ReadFile(filepath.Join(old, "keep.me")); err != nil || string(b) != "old data" {
		t.Fatalf("the failed restore changed the data directory: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".data.restore-*")); len(left) > 0 {
		t.Fatalf("the failed restore left %v", left)
	}
	t.Logf("a %d KiB archive declaring a 3 GiB file: refused (%s)", fi.Size()>>10, lastLine(out))

	loose := archive("loose.tar.gz",
		tarEntry{name: "data/keys/image-timestamp.key", mode: 0o755, size: 4, body: strings.NewReader("key!")},
		tarEntry{name: "blobs/repo/1.root.json", mode: 0o777, size: 2, body: strings.NewReader("{}")},
		manifest())
	fresh := filepath.Join(dir, "fresh")
	if code, out := run(t, "roadsign-server", "restore", "--data", fresh, "--from", loose); code != 0 {
		t.Fatalf("restore: exit %d\n%s", code, out)
	}
	for p, want := range map[string]os.FileMode{"keys/image-timestamp.key": 0o600, "blobs/repo/1.root.json": 0o600, "keys": 0o700, "blobs/repo": 0o700, ".": 0o700} {
		fi, err := os.Stat(filepath.Join(fresh, p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s restored with mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
}

// bombArchive writes a gzipped tar whose one file, roadsign.db, is size
// bytes of zeros, then manifest. gzip members may be concatenated, so the
// zeros are one compressed 64 MiB member written again and again: the
// archive is a few MiB and quick to make, even under the race detector.
func bombArchive(t *testing.T, path string, size int64, manifest tarEntry) string {
	t.Helper()
	const chunk = 64 << 20
	member := func(write func(io.Writer)) []byte {
		var buf bytes.Buffer
		gz, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
		write(gz)
		gz.Close()
		return buf.Bytes()
	}
	header := member(func(w io.Writer) {
		tar.NewWriter(w).WriteHeader(&tar.Header{Name: "roadsign.db", Mode: 0o600, Size: size, Typeflag: tar.TypeReg})
	})
	zeroChunk := member(func(w io.Writer) { io.CopyN(w, zeros{}, chunk) })
	tail := member(func(w io.Writer) {
		tw := tar.NewWriter(w)
		tw.WriteHeader(&tar.Header{Name: manifest.name, Mode: manifest.mode, Size: manifest.size, Typeflag: tar.TypeReg})
		io.CopyN(tw, manifest.body, manifest.size)
		tw.Close()
	})
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write(header)
	for range size / chunk {
		f.Write(zeroChunk)
	}
	f.Write(tail)
	return path
}

type tarEntry struct {
	name string
	mode int64
	size int64
	body io.Reader
}

const manifestJSON = `{"format":1,"createdAt":"2026-12-01T00:00:00Z","database":"sqlite","blobs":"local","files":1}`
