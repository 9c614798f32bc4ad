// Package s3test starts a real S3-compatible server (versitygw) on
// loopback for tests. `make test` installs a pinned versitygw and sets
// ROADSIGN_REQUIRE_S3=1, so there a missing server fails instead of skipping.
package s3test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/roadsign/roadsign/server/s3blob"
)

const (
	accessKey = "roadsign-test"
	secretKey = "roadsign-test-secret"
)

// Gateway is a running versitygw.
type Gateway struct {
	Endpoint string
	n        atomic.Int64
	bin, dir string
	stop     func()
	proc     *os.Process
}

// Binary finds versitygw: $VERSITYGW, then PATH, then GOBIN/GOPATH/bin.
func Binary() (string, bool) {
	if p := os.Getenv("VERSITYGW"); p != "" {
		return p, true
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, true
	}
	for _, dir := range []string{os.Getenv("GOBIN"), filepath.Join(os.Getenv("HOME"), "go", "bin")} {
		if dir == "" {
			continue
		}
		if p := filepath.Join(dir, "versitygw"); fileExists(p) {
			return p, true
		}
	}
	return "", false
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// Start runs versitygw for the duration of t, or skips t when it is not
// installed (fails instead when ROADSIGN_REQUIRE_S3=1).
func Start(t *testing.T) *Gateway {
	t.Helper()
	bin, ok := Binary()
	if !ok {
		if os.Getenv("ROADSIGN_REQUIRE_S3") == "1" {
			t.Fatal("versitygw not found: run `make tools` or set VERSITYGW")
		}
		t.Skip("versitygw not installed; `make test` installs it")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &Gateway{Endpoint: l.Addr().String(), bin: bin, dir: t.TempDir()}
	l.Close()
	g.run(t)
	t.Cleanup(g.Stop)
	return g
}

// run starts versitygw on g's address and directory and waits until it
// listens.
func (g *Gateway) run(t *testing.T) {
	t.Helper()
	cmd := exec.Command(g.bin, "--port", g.Endpoint, "posix", g.dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+accessKey, "ROOT_SECRET_KEY="+secretKey)
	var logBuf strings.Builder
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start versitygw: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	g.proc = cmd.Process
	g.stop = func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		<-done
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", g.Endpoint, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-done:
			t.Fatalf("versitygw exited: %s", logBuf.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw did not listen on %s", g.Endpoint)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop kills the gateway, as an outage of the store would.
func (g *Gateway) Stop() {
	if g.stop != nil {
		g.stop()
		g.stop = nil
	}
}

// Pause freezes the gateway (SIGSTOP): connections to it hang, as to a
// store that stopped answering; Resume thaws it.
func (g *Gateway) Pause() error { return g.proc.Signal(syscall.SIGSTOP) }

// Resume thaws a paused gateway.
func (g *Gateway) Resume() error { return g.proc.Signal(syscall.SIGCONT) }

// Restart starts the stopped gateway again, with the data it had.
func (g *Gateway) Restart(t *testing.T) {
	t.Helper()
	g.Stop()
	g.run(t)
}

// Config returns a config for a new, unique bucket on g.
func (g *Gateway) Config() s3blob.Config {
	return s3blob.Config{
		Endpoint:  g.Endpoint,
		Bucket:    fmt.Sprintf("roadsign-test-%d", g.n.Add(1)),
		AccessKey: accessKey,
		SecretKey: secretKey,
	}
}

// Env returns environment entries that give the server g's credentials.
func (g *Gateway) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + accessKey, "AWS_SECRET_ACCESS_KEY=" + secretKey}
}

// URL returns a --blob URL for a new bucket on g.
func (g *Gateway) URL() string {
	return fmt.Sprintf("s3://roadsign-url-%d?endpoint=%s&secure=false", g.n.Add(1), g.Endpoint)
}

// Dir is the directory the gateway keeps the objects in (posix backend).
func (g *Gateway) Dir() string { return g.dir }
