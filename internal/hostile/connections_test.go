package hostile

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// dirSize is the bytes in files under dir.
func dirSize(t testing.TB, dir string) int64 {
	t.Helper()
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// rawRequest sends head (the request line and headers, without the blank
// line), then streams body until the server answers or closes, and
// returns the status line.
func rawRequest(t testing.TB, addr, head string, body io.Reader) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	status := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(conn).ReadString('\n')
		status <- strings.TrimSpace(line)
	}()
	if _, err := io.WriteString(conn, head+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	go io.Copy(conn, body) // stops when the server closes
	select {
	case s := <-status:
		return s
	case <-time.After(30 * time.Second):
		t.Fatal("no answer within 30 s")
		return ""
	}
}

// zeros is an endless (or n-byte, with io.LimitReader) stream of zeros.
type zeros struct{}

func (zeros) Read(b []byte) (int, error) { clear(b); return len(b), nil }

// chunked frames r as HTTP/1.1 chunks of 64 KiB.
func chunked(r io.Reader) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				if _, werr := fmt.Fprintf(pw, "%x\r\n%s\r\n", n, buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				fmt.Fprint(pw, "0\r\n\r\n")
				pw.Close()
				return
			}
		}
	}()
	return pr
}

// TestHugeBodiesAreRefused: a 300 MiB log-in form is refused with 413
// whether it declares its length or streams it in chunks, a multipart form
// is refused before parsing, and nothing is written to disk.
func TestHugeBodiesAreRefused(t *testing.T) {
	s := start(t)
	dataBefore := dirSize(t, s.data)
	const big = 300 << 20
	tests := []struct {
		name, head string
		body       io.Reader
		want       string
	}{
		{"declared 300 MiB form", "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 314572800",
			io.LimitReader(zeros{}, big), " 413 "},
		{"chunked 300 MiB form", "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked",
			chunked(io.LimitReader(zeros{}, big)), " 413 "},
		{"multipart form", "POST /dealer/login HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100",
			strings.NewReader(strings.Repeat("-", 100)), " 400 "},
		{"declared 300 MiB JSON", "POST /api/v1/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + adminToken + "\r\nContent-Length: 314572800",
			io.LimitReader(zeros{}, big), " 413 "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t0 := time.Now()
			if got := rawRequest(t, s.addr, tt.head, tt.body); !strings.Contains(got, tt.want) {
				t.Fatalf("answer %q, want%s", got, tt.want)
			}
			t.Logf("answered in %s", time.Since(t0).Round(time.Millisecond))
		})
	}
	if left, _ := os.ReadDir(s.tmp); len(left) != 0 {
		t.Errorf("the server wrote %d temporary files", len(left))
	}
	if grew := dirSize(t, s.data) - dataBefore; grew > 1<<20 {
		t.Errorf("the data directory grew by %d bytes", grew)
	}
}

// TestStalledConnectionsAreClosed: 1000 connections that send nothing or
// half a request are closed within the 10 s header deadline; 300 vehicle
// requests with a bad signature and a 60 KB body they never send are
// answered 401 without the body being read; a JSON request whose body
// stalls is cut at its 20 s deadline. Open files and goroutines fall back
// afterwards.
func TestStalledConnectionsAreClosed(t *testing.T) {
	// All 1 300 come from 127.0.0.1: lift the per-address cap, which
	// would otherwise close most of them at once (TestOneAddress... shows it).
	s := start(t, "--max-connections-per-address", "0")
	before := s.metrics(t)
	fdsBefore, rssBefore := s.openFDs(t), s.rss(t)

	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", s.addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// closedBy waits for the server to close c (read returns an error).
	closedBy := func(c net.Conn, limit time.Duration) bool {
		c.SetReadDeadline(time.Now().Add(limit))
		_, err := io.Copy(io.Discard, c)
		ne, timeout := err.(net.Error)
		return !(timeout && ne.Timeout())
	}

	var silent []net.Conn
	for i := range 1000 {
		c := dial()
		if i%2 == 1 {
			io.WriteString(c, "POST /login HTTP/1.1\r\nHost: x\r\nContent-") // and no more
		}
		silent = append(silent, c)
	}
	var bogus []net.Conn
	for range 300 {
		c := dial()
		fmt.Fprintf(c, "POST /api/v1/vehicles/WBA00000000000001/manifest HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n"+
			"Authorization: RoadsignVehicle vin=WBA00000000000001,ts=%d,nonce=%s,body=%s,sig=%s\r\n\r\n",
			time.Now().Unix(), strings.Repeat("ab", 16), strings.Repeat("cd", 32), strings.Repeat("A", 86))
		bogus = append(bogus, c)
	}
	slowBody := dial()
	fmt.Fprintf(slowBody, "POST /api/v1/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 1000\r\n\r\n{\"role\":", adminToken)
	stalledAt := time.Now()

	// The bogus vehicle requests are answered at once, unread bodies and all.
	for i, c := range bogus {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		if !strings.Contains(line, " 401 ") {
			t.Fatalf("bogus vehicle request %d: %q, want 401", i, line)
		}
		c.Close()
	}
	if grew := s.rss(t) - rssBefore; grew > 64<<20 {
		t.Errorf("RSS grew by %d MiB holding 1300 connections", grew>>20)
	}
	t.Logf("with 1300 stalled connections: %d open files (from %d), RSS %d MiB", s.openFDs(t), fdsBefore, s.rss(t)>>20)

	// Every silent or half-sent one is closed within the header deadline.
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := 0
	for _, c := range silent {
		wg.Go(func() {
			if !closedBy(c, 10*time.Second+5*time.Second-time.Since(stalledAt)) {
				mu.Lock()
				open++
				mu.Unlock()
			}
			c.Close()
		})
	}
	wg.Wait()
	if open > 0 {
		t.Errorf("%d of 1000 stalled connections were still open 15 s later", open)
	}
	// The stalled body is cut at its request deadline (20 s).
	if !closedBy(slowBody, 20*time.Second+5*time.Second-time.Since(stalledAt)) {
		t.Error("a stalled request body was not cut within 25 s")
	}
	slowBody.Close()

	time.Sleep(time.Second)
	after := s.metrics(t)
	if fds := s.openFDs(t); fds > fdsBefore+20 {
		t.Errorf("%d open files afterwards, %d before", fds, fdsBefore)
	}
	if g := after["go_goroutines"]; g > before["go_goroutines"]+20 {
		t.Errorf("%v goroutines afterwards, %v before", g, before["go_goroutines"])
	}
}

// TestConnectionCap: with --max-connections 50, 300 stalled connections
// never give the server more than 50 open connections at once.
func TestConnectionCap(t *testing.T) {
	s := start(t, "--max-connections", "50")
	fdsBefore := s.openFDs(t)
	var conns []net.Conn
	for range 300 {
		c, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	peak := 0
	for range 20 {
		peak = max(peak, s.openFDs(t))
		time.Sleep(100 * time.Millisecond)
	}
	if peak > fdsBefore+50+2 {
		t.Fatalf("%d open files with 300 connections waiting (before: %d); the cap is 50", peak, fdsBefore)
	}
	t.Logf("open files: %d before, %d at most with 300 connections waiting", fdsBefore, peak)
	// Once the stalled ones are gone, the server answers again.
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	c := &http.Client{Timeout: 20 * time.Second}
	resp, err := c.Get(s.url + "/healthz")
	if err != nil {
		t.Fatalf("after the flood: %v", err)
	}
	resp.Body.Close()
}

// dialFrom connects to addr from a loopback address of its own (all of
// 127/8 is loopback), so one test can be many clients.
func dialFrom(src, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return d.Dial("tcp", addr)
}

// keepAlive opens n connections from src that each send one keep-alive
// GET /healthz and then sit idle; it returns those the server answered.
func keepAlive(t *testing.T, src, addr string, n int) []net.Conn {
	t.Helper()
	var mu sync.Mutex
	var kept []net.Conn
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := dialFrom(src, addr)
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(3 * time.Second))
			io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || !strings.Contains(line, " 200 ") {
				c.Close()
				return
			}
			c.SetDeadline(time.Time{})
			mu.Lock()
			kept = append(kept, c)
			mu.Unlock()
		})
	}
	wg.Wait()
	return kept
}

// freshHealth is how long a new client from 127.0.0.1 waits for /healthz
// (an error past 5 s).
func freshHealth(t *testing.T, s *server) time.Duration {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	t0 := time.Now()
	resp, err := c.Get(s.url + "/healthz")
	if err != nil {
		t.Fatalf("a fresh client's /healthz: %v", err)
	}
	resp.Body.Close()
	return time.Since(t0)
}

// TestOneAddressCannotHoldEveryConnection: one address opening 3 000
// keep-alive connections keeps at most --max-connections-per-address of
// them; a client from another address is answered at once meanwhile.
func TestOneAddressCannotHoldEveryConnection(t *testing.T) {
	s := start(t, "--max-connections-per-address", "256")
	kept := keepAlive(t, "127.0.0.2", s.addr, 3000)
	defer func() {
		for _, c := range kept {
			c.Close()
		}
	}()
	took := freshHealth(t, s)
	refused := s.metrics(t)[`roadsign_connections_refused_total{listener="http",reason="per-address"}`]
	t.Logf("one address asked for 3 000 keep-alive connections: %d kept, %.0f closed at once; a fresh client's /healthz took %s",
		len(kept), refused, took.Round(time.Millisecond))
	if len(kept) > 256 {
		t.Fatalf("one address holds %d connections; the cap is 256", len(kept))
	}
}

// TestIdleConnectionsShedNearTheCap: six addresses fill --max-connections
// with idle keep-alive connections; near the cap the longest-idle are
// closed, so a new client is still served.
func TestIdleConnectionsShedNearTheCap(t *testing.T) {
	s := start(t, "--max-connections", "200", "--max-connections-per-address", "50")
	var kept []net.Conn
	for i := 2; i < 8; i++ {
		kept = append(kept, keepAlive(t, fmt.Sprintf("127.0.0.%d", i), s.addr, 50)...)
	}
	defer func() {
		for _, c := range kept {
			c.Close()
		}
	}()
	took := freshHealth(t, s)
	shed := s.metrics(t)[`roadsign_connections_refused_total{listener="http",reason="idle-shed"}`]
	t.Logf("300 idle keep-alive connections from six addresses against a cap of 200: %.0f shed; a fresh client's /healthz took %s", shed, took.Round(time.Millisecond))
	if shed == 0 {
		t.Fatal("no idle connection was shed near the cap")
	}
}
