// Package hostile attacks the real roadsign-server binary the way the
// security review did, and checks that it holds: bounded memory and
// connections under floods, deadlines on slow and stalled clients,
// replay-proof vehicle requests, revocable sessions, and the smaller
// holes. Resource figures are read from the server process itself (its
// /metrics and /proc).
package hostile

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/testsupport"
)

const adminToken = "hostile-admin-token"

// bin holds the real programs, built once.
var bin string

func TestMain(m *testing.M) {
	dir, err := testsupport.Programs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		testsupport.Clean()
		os.Exit(1)
	}
	bin = dir
	code := m.Run()
	testsupport.Clean()
	os.Exit(code)
}

// server is a running roadsign-server process.
type server struct {
	t          testing.TB
	url, addr  string
	dir, data  string
	tmp        string // its TMPDIR: nothing may land there
	cmd        *exec.Cmd
	log        *testsupport.LockedBuffer
	done       chan struct{}
	stopOnce   sync.Once
	extraFlags []string
	// client is how the harness talks to it (trusting its CA on HTTPS).
	client *http.Client
}

func freeAddr(t testing.TB) string { return testsupport.FreeAddr(t) }

// start runs the server binary on embedded defaults with extra flags.
func start(t testing.TB, extra ...string) *server {
	t.Helper()
	return startUnder(t, nil, extra...)
}

// startUnder runs the server binary through a wrapper that execs it
// (prlimit, for a low open-file limit), with extra flags.
func startUnder(t testing.TB, wrapper []string, extra ...string) *server {
	t.Helper()
	return launch(t, wrapper, nil, extra...)
}

// startTLS runs the server with extra flags that turn HTTPS on; the
// harness trusts pool.
func startTLS(t testing.TB, pool *x509.CertPool, extra ...string) *server {
	t.Helper()
	return launch(t, nil, pool, extra...)
}

func launch(t testing.TB, wrapper []string, pool *x509.CertPool, extra ...string) *server {
	t.Helper()
	s := &server{t: t, dir: t.TempDir(), log: &testsupport.LockedBuffer{}, done: make(chan struct{}), extraFlags: extra}
	s.data, s.tmp = filepath.Join(s.dir, "data"), filepath.Join(s.dir, "tmp")
	os.MkdirAll(s.tmp, 0o700)
	s.addr = freeAddr(t)
	s.url, s.client = "http://"+s.addr, &http.Client{Timeout: time.Minute}
	if pool != nil {
		s.url = "https://" + s.addr
		s.client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	}
	args := append([]string{"--listen", s.addr, "--data", s.data, "--log-format", "json"}, extra...)
	argv := append(append(append([]string{}, wrapper...), filepath.Join(bin, "roadsign-server")), args...)
	s.cmd = exec.Command(argv[0], argv[1:]...)
	s.cmd.Env = []string{"ROADSIGN_ADMIN_TOKEN=" + adminToken, "TMPDIR=" + s.tmp, "PATH=" + os.Getenv("PATH"), "HOME=" + s.dir}
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(s.stop)
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := s.client.Get(s.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			return s
		}
		select {
		case <-s.done:
			t.Fatalf("server exited: %s", s.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not start: %s", s.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *server) stop() {
	s.stopOnce.Do(func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			s.cmd.Process.Kill()
			s.t.Error("the server did not stop on SIGTERM within 30 s")
		}
	})
}

// metrics reads the server's own figures from /metrics.
func (s *server) metrics(t testing.TB) map[string]float64 {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(s.url + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(val, 64); err == nil {
			out[name] = f
		}
	}
	return out
}

// rss is the server's resident memory from /proc (it needs no connection,
// so it can be read while every connection slot is taken).
func (s *server) rss(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`VmRSS:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no VmRSS in /proc/%d/status", s.cmd.Process.Pid)
	}
	kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return kb << 10
}

// openFDs counts the server's open files from /proc.
func (s *server) openFDs(t testing.TB) int {
	t.Helper()
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// api calls the JSON API with a bearer token (or none).
func (s *server) api(t testing.TB, method, path, token string, body any, out any) int {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, s.url+path, r)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		json.Unmarshal(raw, out)
	}
	return resp.StatusCode
}

// apiError is the code of a JSON error answer.
type apiError struct {
	Error struct{ Code, Message string } `json:"error"`
}

type account struct{ ID, Token string }

func (s *server) account(t testing.TB, role, name string) account {
	t.Helper()
	body := map[string]any{"role": role, "name": name}
	switch role {
	case "owner":
		body["password"] = "correct horse battery"
	case "dealer":
		body["regions"] = []string{"EU", "NA"} // where the test vehicles are
	}
	var a account
	if code := s.api(t, "POST", "/api/v1/accounts", adminToken, body, &a); code != 201 {
		t.Fatalf("create %s %s: %d", role, name, code)
	}
	return a
}

// vehicle registers a vehicle with a fresh key and returns it.
type vehicle struct {
	vin string
	key ed25519.PrivateKey
}

func (s *server) vehicle(t testing.TB, vin string) vehicle {
	t.Helper()
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	body := map[string]any{"vin": vin, "model": "m", "year": 2025, "region": "EU", "publicKey": base64.StdEncoding.EncodeToString(pub),
		"ecus": []map[string]string{{"type": "dcm", "serial": "DCM-" + vin, "hardwareId": "DCM-4G-24MM"}}}
	if code := s.api(t, "POST", "/api/v1/vehicles", adminToken, body, nil); code != 201 {
		t.Fatalf("register %s: %d", vin, code)
	}
	return vehicle{vin: vin, key: key}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// browser is a cookie-keeping client that does not follow redirects.
func browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 60 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// page GETs a page and returns its body and its form's CSRF token.
func page(t testing.TB, c *http.Client, u string) (string, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	token := ""
	if m := csrfRE.FindSubmatch(b); m != nil {
		token = string(m[1])
	}
	return string(b), token
}

// postForm posts a urlencoded form and returns the response (body read).
func postForm(t testing.TB, c *http.Client, u string, v url.Values) (*http.Response, string) {
	t.Helper()
	resp, err := c.PostForm(u, v)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// login logs an owner into the portal with a fresh browser.
func (s *server) login(t testing.TB, name, password string) (*http.Client, *http.Response) {
	t.Helper()
	c := browser()
	_, token := page(t, c, s.url+"/")
	resp, _ := postForm(t, c, s.url+"/login", url.Values{"name": {name}, "secret": {password}, "csrf": {token}})
	return c, resp
}

// loggedIn reports whether the browser's session shows the owner's page.
func (s *server) loggedIn(t testing.TB, c *http.Client) bool {
	t.Helper()
	body, _ := page(t, c, s.url+"/")
	return strings.Contains(body, "My vehicles")
}

func run(t testing.TB, name string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(bin, name), args...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}
