package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/client/download"
	fleetsimcli "github.com/roadsign/roadsign/client/fleetsim"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/testca"
	"github.com/roadsign/roadsign/internal/testsupport"
)

// tlsWorld starts a server on HTTPS with a certificate from a new CA.
func tlsWorld(t *testing.T, extra ...string) (*world, *testca.CA, string, string) {
	t.Helper()
	dir := t.TempDir()
	ca := testca.New(t, dir, "roadsign-ca")
	certFile, keyFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	ca.ServerCert(t, 100, certFile, keyFile)
	w := newWorld(t, append([]string{"--tls-cert", certFile, "--tls-key", keyFile}, extra...)...)
	return w, ca, certFile, keyFile
}

func (w *world) tlsPublish(ca string) result {
	w.t.Helper()
	return w.signer("publish", w.ws, "--server", w.url, "--token", adminToken, "--ca-cert", ca)
}

// tlsVehicle provisions vehicle n trusting the CA, registered by the admin.
func (w *world) tlsVehicle(n int, ca string) vehicleState {
	w.t.Helper()
	st := filepath.Join(w.dir, "tls-vehicle"+string(rune('0'+n)))
	hu, dcm := findSample(w.t, huHW, "1.0.0"), findSample(w.t, dcmHW, "1.0.0")
	r := agent(w.t, "init", "--state", st, "--server", w.url, "--vin", testVIN(n), "--ca-cert", ca,
		"--image-root", filepath.Join(w.ws, "image.root.json"), "--director-root", filepath.Join(w.ws, "director.root.json"),
		"--ecu", "head-unit:HU"+testVIN(n)[11:]+":"+huHW+":"+filepath.Join(samplesDir(), hu.File),
		"--ecu", "dcm:DCM"+testVIN(n)[11:]+":"+dcmHW+":"+filepath.Join(samplesDir(), dcm.File),
		"--token", adminToken)
	if r.code != 0 {
		w.t.Fatalf("agent init over TLS: %s", r)
	}
	return vehicleState{dir: st, vin: testVIN(n)}
}

// TestAgentOverTLS: the server speaks HTTPS with a certificate from a
// private CA. The signer and the agent given the CA (--ca-cert; the agent
// keeps it in its state) publish and install; without it each refuses
// with a security error (exit 3) and nothing is installed.
func TestAgentOverTLS(t *testing.T) {
	w, ca, _, _ := tlsWorld(t)
	w.signerInit()
	w.add(findSample(t, huHW, "1.1.0"))
	w.add(findSample(t, dcmHW, "1.1.0"))
	if r := w.signer("publish", w.ws, "--server", w.url, "--token", adminToken); r.code != 3 || !strings.Contains(r.stderr, "not signed by a CA this program trusts") {
		t.Fatalf("publish without the CA: want exit 3, got %s", r)
	}
	if r := w.signer("publish", w.ws, "--server", strings.Replace(w.url, "https://", "http://", 1), "--token", adminToken); r.code == 0 || !strings.Contains(r.stderr, "use https://") {
		t.Fatalf("publish with http:// to the HTTPS port: want a message naming https://, got %s", r)
	}
	if r := w.tlsPublish(ca.File); r.code != 0 {
		t.Fatalf("publish with --ca-cert: %s", r)
	}
	v := w.tlsVehicle(1, ca.File)
	update(t, v.dir, 0)
	if got := versions(t, v); got["head-unit"] != "1.1.0" || got["dcm"] != "1.1.0" {
		t.Fatalf("after the update over TLS: %v", got)
	}

	// A vehicle provisioned without the CA, or with another one, refuses
	// the server, and init writes nothing: run again with the right CA,
	// it works.
	st := filepath.Join(w.dir, "no-ca")
	hu, dcm := findSample(t, huHW, "1.0.0"), findSample(t, dcmHW, "1.0.0")
	initCar := func(extra ...string) result {
		return agent(t, append([]string{"init", "--state", st, "--server", w.url, "--vin", testVIN(2),
			"--image-root", filepath.Join(w.ws, "image.root.json"), "--director-root", filepath.Join(w.ws, "director.root.json"),
			"--ecu", "head-unit:HU2:" + huHW + ":" + filepath.Join(samplesDir(), hu.File), "--ecu", "dcm:DCM2:" + dcmHW + ":" + filepath.Join(samplesDir(), dcm.File),
			"--token", adminToken}, extra...)...)
	}
	other := testca.New(t, t.TempDir(), "another-ca")
	for _, extra := range [][]string{nil, {"--ca-cert", other.File}} {
		r := initCar(extra...)
		if r.code != 3 || !strings.Contains(r.stderr, "not signed by a CA") || !strings.Contains(r.stderr, "trust-ca") || !strings.Contains(r.stderr, "nothing was written") {
			t.Fatalf("init %v: want exit 3 saying what to do, got %s", extra, r)
		}
		if entries, _ := os.ReadDir(w.dir); slices.ContainsFunc(entries, func(e os.DirEntry) bool {
			return strings.HasPrefix(e.Name(), "no-ca") || strings.HasPrefix(e.Name(), ".no-ca")
		}) {
			t.Fatalf("a failed init left state behind: %v", entries)
		}
	}
	if r := initCar("--ca-cert", ca.File); r.code != 0 {
		t.Fatalf("init with the right CA, after two failures: %s", r)
	}
	// The CA is replaced in place: the wrong one is refused, nothing
	// installed; the right one again, and it updates.
	noCA := vehicleState{dir: st, vin: testVIN(2)}
	if r := agent(t, "trust-ca", "--state", st, "--ca-cert", other.File); r.code != 0 {
		t.Fatalf("trust-ca: %s", r)
	}
	before := activeBytes(t, noCA)
	if r := agent(t, "update", "--state", st); r.code != 3 || !strings.Contains(r.stderr, "roadsign-agent trust-ca") {
		t.Fatalf("update trusting another CA: want exit 3 naming trust-ca, got %s", r)
	}
	if after := activeBytes(t, noCA); before["dcm"] != after["dcm"] || before["head-unit"] != after["head-unit"] {
		t.Fatal("installed something from a server whose certificate did not verify")
	}
	if r := agent(t, "trust-ca", "--state", st, "--ca-cert", ca.File); r.code != 0 {
		t.Fatalf("trust-ca: %s", r)
	}
	update(t, st, 0)

	// The fleet simulator takes the CA too.
	if r := runFleetsim(t, "--server", w.url, "--token", adminToken, "--ca-cert", ca.File, "--samples", samplesDir(), "--vehicles", "2", "--register", "--cycles", "1", "--interval", "0"); r.code != 0 {
		t.Fatalf("fleetsim over TLS: %s", r)
	}
}

// TestTLSCertificateReloadsOnSIGHUP: a new certificate written over the
// files is served to new connections after the reload signal; a
// connection opened before keeps working (HTTP/2).
func TestTLSCertificateReloadsOnSIGHUP(t *testing.T) {
	w, ca, certFile, keyFile := tlsWorld(t)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	newClient := func() *http.Client {
		c := download.NewHTTPClient()
		c.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: pool}
		return c
	}
	get := func(c *http.Client) (*http.Response, error) {
		resp, err := c.Get(w.url + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return resp, err
	}
	old := newClient()
	resp, err := get(old)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != 2 {
		t.Errorf("protocol %s, want HTTP/2", resp.Proto)
	}
	if resp.TLS.Version < tls.VersionTLS12 {
		t.Errorf("TLS version %x, want 1.2 or later", resp.TLS.Version)
	}
	if s := resp.TLS.PeerCertificates[0].SerialNumber.Int64(); s != 100 {
		t.Fatalf("serial %d, want 100", s)
	}

	ca.ServerCert(t, 101, certFile, keyFile)
	w.reload <- os.Interrupt // SIGHUP in the real binary
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := get(newClient())
		if err != nil {
			t.Fatal(err)
		}
		if resp.TLS.PeerCertificates[0].SerialNumber.Int64() == 101 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("new connections still get the old certificate 10 s after the reload signal")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The connection opened before the reload is still up and still
	// carries the certificate it started with.
	resp, err = get(old)
	if err != nil {
		t.Fatalf("a connection from before the reload: %v", err)
	}
	if s := resp.TLS.PeerCertificates[0].SerialNumber.Int64(); s != 100 {
		t.Errorf("the connection from before the reload now shows serial %d; it was dropped and redialed", s)
	}

	// A broken certificate file is not loaded: the server keeps serving.
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.reload <- os.Interrupt
	deadline = time.Now().Add(10 * time.Second)
	for !strings.Contains(w.logBuf.String(), "reload failed") {
		if time.Now().After(deadline) {
			t.Fatal("a failed reload is not logged")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if resp, err := get(newClient()); err != nil || resp.TLS.PeerCertificates[0].SerialNumber.Int64() != 101 {
		t.Fatalf("after a failed reload: %v", err)
	}
}

// TestMutualTLSForVehicles: with --client-ca, a vehicle's signed requests
// must come with a certificate for its registered key. Without one the
// server refuses; with its own it updates; a valid certificate for
// another key is refused even with a good signature.
func TestMutualTLSForVehicles(t *testing.T) {
	dir := t.TempDir()
	vehicles := testca.New(t, dir, "vehicle-ca")
	w, ca, _, _ := tlsWorld(t, "--client-ca", vehicles.File)
	w.signerInit()
	w.add(findSample(t, dcmHW, "1.1.0"))
	if r := w.tlsPublish(ca.File); r.code != 0 {
		t.Fatalf("publish: %s", r)
	}
	v := w.tlsVehicle(1, ca.File) // registration uses a bearer token: no client certificate needed
	if r := agent(t, "update", "--state", v.dir); r.code == 0 || !strings.Contains(r.stderr, "client_certificate_required") {
		t.Fatalf("update without a client certificate: want a refusal, got %s", r)
	}
	key, err := keys.Load(filepath.Join(v.dir, "vehicle.key"))
	if err != nil {
		t.Fatal(err)
	}
	own := filepath.Join(dir, "own.pem")
	testca.WritePEM(t, own, "CERTIFICATE", vehicles.Issue(t, 7, key.Private.Public(), false))
	other, err := keys.Generate(filepath.Join(dir, "other.key"))
	if err != nil {
		t.Fatal(err)
	}
	otherCert := vehicles.Issue(t, 8, other.Private.Public(), false)
	otherFile := filepath.Join(dir, "other.pem")
	testca.WritePEM(t, otherFile, "CERTIFICATE", otherCert)
	if r := agent(t, "client-cert", "--state", v.dir, "--cert", otherFile); r.code != 2 || !strings.Contains(r.stderr, "another key") {
		t.Fatalf("installing a certificate for another key: want exit 2, got %s", r)
	}
	if r := agent(t, "client-cert", "--state", v.dir, "--cert", own); r.code != 0 {
		t.Fatalf("client-cert: %s", r)
	}
	update(t, v.dir, 0)
	if got := versions(t, v); got["dcm"] != "1.1.0" {
		t.Fatalf("after the mutual-TLS update: %v", got)
	}

	// Someone holding the vehicle's signing key but presenting another
	// key's certificate (issued by the same CA) is refused.
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	hc := download.NewHTTPClient()
	hc.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: pool,
		Certificates: []tls.Certificate{{Certificate: [][]byte{otherCert}, PrivateKey: other.Private}}}
	c := &api.Client{Base: w.url, HTTP: hc, VIN: v.vin, Key: key.Private, Now: time.Now}
	_, _, err = c.LinkCode(context.Background())
	if err == nil || !strings.Contains(err.Error(), "client_certificate_mismatch") {
		t.Fatalf("a signed request with another key's certificate: want client_certificate_mismatch, got %v", err)
	}
}

// runFleetsim runs roadsign-fleetsim in process.
func runFleetsim(t *testing.T, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := fleetsimcli.Run(context.Background(), args, fleetsimcli.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	return result{code, out.String(), errb.String()}
}

// TestServerBinaryReloadsCertificateOnSIGHUP: the real roadsign-server
// process rereads its certificate on SIGHUP (what systemctl reload sends)
// and keeps running.
func TestServerBinaryReloadsCertificateOnSIGHUP(t *testing.T) {
	bin := builtPrograms(t)
	dir := t.TempDir()
	ca := testca.New(t, dir, "ca")
	certFile, keyFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	ca.ServerCert(t, 200, certFile, keyFile)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var logs testsupport.LockedBuffer
	cmd := exec.Command(filepath.Join(bin, "roadsign-server"), "serve", "--data", filepath.Join(dir, "data"), "--listen", addr,
		"--tls-cert", certFile, "--tls-key", keyFile, "--log-format", "text")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("server exited with %v:\n%s", err, logs.String())
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Error("server did not stop on SIGTERM")
		}
	}()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	serial := func() int64 {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
		if err != nil {
			return 0
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	waitSerial := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for serial() != want {
			if time.Now().After(deadline) {
				t.Fatalf("the server does not serve certificate %d:\n%s", want, logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitSerial(200)
	ca.ServerCert(t, 201, certFile, keyFile)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitSerial(201)
}
