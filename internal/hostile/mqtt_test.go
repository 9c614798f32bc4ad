package hostile

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/roadsign/roadsign/internal/testca"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// mqttConnect logs in to broker (host:port) as vin with password and
// client ID id; opts may add to the options (a will, TLS).
func mqttConnect(broker, id, vin, password string, opts ...func(*paho.ClientOptions)) (paho.Client, error) {
	o := paho.NewClientOptions().AddBroker(broker).SetClientID(id).SetUsername(vin).SetPassword(password).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetProtocolVersion(4)
	for _, f := range opts {
		f(o)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return c, errors.New("no CONNACK within 10 s")
	}
	return c, tok.Error()
}

// rawConnect sends an MQTT 3.1.1 CONNECT with a will and returns the
// CONNACK's return code (0: accepted); the connection is then dropped
// without DISCONNECT, which is when a broker would send the will.
func rawConnect(addr, clientID, user, password, willTopic, will string, retain bool) (byte, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	str := func(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }
	flags := byte(0x80 | 0x40 | 0x08 | 0x04 | 0x02) // user name, password, will QoS 1, will, clean session
	if retain {
		flags |= 0x20
	}
	body := append(str("MQTT"), 4, flags, 0, 30)
	for _, f := range []string{clientID, willTopic, will, user, password} {
		body = append(body, str(f)...)
	}
	pkt := []byte{0x10}
	for n := len(body); ; {
		b := byte(n % 128)
		if n /= 128; n > 0 {
			pkt = append(pkt, b|0x80)
			continue
		}
		pkt = append(pkt, b)
		break
	}
	if _, err := c.Write(append(pkt, body...)); err != nil {
		return 0, err
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		return 0, fmt.Errorf("no CONNACK: %w", err)
	}
	return ack[3], nil
}

// receiver subscribes c to vin's wake topic and returns what arrives.
func receiver(t *testing.T, c paho.Client, vin string) <-chan string {
	t.Helper()
	got := make(chan string, 10)
	tok := c.Subscribe(vehicleauth.WakeTopic(vin), 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) })
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	return got
}

// twoCars is a world with a second registered car, and the broker address.
func twoCars(t *testing.T, extra ...string) (*world, vehicle, string) {
	t.Helper()
	mqttAddr := freeAddr(t)
	w := newWorld(t, append([]string{"--mqtt-listen", mqttAddr, "--auto-assign", "none"}, extra...)...)
	b := w.vehicle(t, "JTMBFREV3N0000002")
	return w, b, mqttAddr
}

// TestMQTTOversizedConnectIsRefused: eight clients announce a 255 MiB
// CONNECT and stream it; the broker reads only the header, closes them,
// and the server stays under 256 MiB.
func TestMQTTOversizedConnectIsRefused(t *testing.T) {
	mqttAddr := freeAddr(t)
	s := start(t, "--mqtt-listen", mqttAddr)
	rssBefore := s.rss(t)
	var wg sync.WaitGroup
	sent := make([]int64, 8)
	for i := range 8 {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", mqttAddr, 5*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			// CONNECT, remaining length 268 435 455 (the most MQTT allows).
			c.Write([]byte{0x10, 0xff, 0xff, 0xff, 0x7f})
			sent[i], _ = io.Copy(c, io.LimitReader(zeros{}, 255<<20))
		})
	}
	wg.Wait()
	var total int64
	for _, n := range sent {
		total += n
	}
	rss := s.rss(t)
	t.Logf("8 oversized CONNECTs: %d MiB sent before the broker closed them; server RSS %d MiB (before: %d MiB)", total>>20, rss>>20, rssBefore>>20)
	if rss > 256<<20 {
		t.Fatalf("server RSS %d MiB after 8 oversized CONNECTs; the bound is 256 MiB", rss>>20)
	}
	if total >= 8*(255<<20) {
		t.Fatal("the broker read every oversized CONNECT to its end")
	}
}

// TestMQTTIdleConnectionsUnderLowFileLimit: with an open-file limit of
// 1 024, 1 100 connections that never send CONNECT neither exhaust the
// server's descriptors (/healthz answers throughout) nor outlive the
// log-in deadline.
func TestMQTTIdleConnectionsUnderLowFileLimit(t *testing.T) {
	mqttAddr := freeAddr(t)
	s := startUnder(t, []string{"prlimit", "--nofile=1024:1024"}, "--mqtt-listen", mqttAddr, "--mqtt-connect-timeout", "3s")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	opened := time.Now()
	for range 1100 {
		c, err := net.DialTimeout("tcp", mqttAddr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	fds := s.openFDs(t)
	hc := &http.Client{Timeout: 5 * time.Second}
	t0 := time.Now()
	resp, err := hc.Get(s.url + "/healthz")
	if err != nil {
		t.Fatalf("/healthz with 1 100 idle broker connections open: %v", err)
	}
	resp.Body.Close()
	took := time.Since(t0)
	// Every one is closed: at once past the caps, the rest at the deadline.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var last time.Duration
	open := 0
	for _, c := range conns {
		wg.Go(func() {
			c.SetReadDeadline(opened.Add(3*time.Second + 5*time.Second))
			_, err := c.Read(make([]byte, 1))
			mu.Lock()
			defer mu.Unlock()
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				open++
			} else {
				last = max(last, time.Since(opened))
			}
		})
	}
	wg.Wait()
	t.Logf("1 100 idle broker connections under a 1 024 file limit: server held %d open files, /healthz answered in %s, all closed %s after opening",
		fds, took.Round(time.Millisecond), last.Round(100*time.Millisecond))
	if fds >= 1024 {
		t.Errorf("the server reached its open-file limit (%d)", fds)
	}
	if open > 0 {
		t.Errorf("%d idle connections were still open 5 s past the 3 s log-in deadline", open)
	}
	if !strings.Contains(s.log.String(), "connection caps lowered to fit the open-file limit") {
		t.Error("the server did not say it lowered its connection caps")
	}
}

// TestMQTTLogInRules: a log-in carrying a will (a publish to another
// car's topic) is refused and never delivered; a credential works once;
// a vehicle cannot take another's client ID (and so its session).
func TestMQTTLogInRules(t *testing.T) {
	w, b, mqttAddr := twoCars(t)
	broker := "tcp://" + mqttAddr
	cb, err := mqttConnect(broker, vehicleauth.ClientID(b.vin), b.vin, vehicleauth.MQTTPassword(b.vin, b.key, time.Now()))
	if err != nil {
		t.Fatalf("car B logging in: %v", err)
	}
	defer cb.Disconnect(100)
	toB := receiver(t, cb, b.vin)

	// A will on B's topic, retained or not: refused at log-in. (Sent
	// raw: paho takes CONNACK codes MQTT 3.1.1 does not define as success.)
	for _, retained := range []bool{true, false} {
		rc, err := rawConnect(mqttAddr, vehicleauth.ClientID(w.vin), w.vin, vehicleauth.MQTTPassword(w.vin, w.key, time.Now()),
			vehicleauth.WakeTopic(b.vin), "forged wake-up", retained)
		if err == nil && rc == 0 {
			t.Errorf("a log-in with a will message (retained: %v) was accepted", retained)
		}
	}
	// A's own credential, used twice.
	cred := vehicleauth.MQTTPassword(w.vin, w.key, time.Now())
	ca, err := mqttConnect(broker, vehicleauth.ClientID(w.vin), w.vin, cred)
	if err != nil {
		t.Fatalf("car A's fresh credential: %v", err)
	}
	ca.Disconnect(100)
	if c, err := mqttConnect(broker, vehicleauth.ClientID(w.vin), w.vin, cred); err == nil {
		c.Disconnect(100)
		t.Error("a credential was accepted a second time")
	}
	// A's fresh credential with B's client ID.
	if c, err := mqttConnect(broker, vehicleauth.ClientID(b.vin), w.vin, vehicleauth.MQTTPassword(w.vin, w.key, time.Now())); err == nil {
		c.Disconnect(100)
		t.Error("car A logged in with car B's client ID")
	}
	select {
	case m := <-toB:
		t.Fatalf("car B received %q from another car", m)
	case <-time.After(time.Second):
	}
	if !cb.IsConnectionOpen() {
		t.Fatal("car B was disconnected by another car's log-in")
	}
	// B still hears the server.
	if code := w.api(t, "POST", "/api/v1/jobs", adminToken, map[string]any{"vin": b.vin, "ecu": "dcm", "version": "1.1.0", "reason": "wake B"}, nil); code != 201 {
		t.Fatalf("job: %d", code)
	}
	select {
	case <-toB:
	case <-time.After(5 * time.Second):
		t.Fatal("the server's wake-up did not reach car B")
	}
	logs := w.log.String()
	for _, want := range []string{"a will message is not allowed", "credential already used", "is not " + vehicleauth.ClientID(w.vin)} {
		if !strings.Contains(logs, want) {
			t.Errorf("the server log does not say %q", want)
		}
	}
}

// TestMQTTOverMutualTLS: a server on HTTPS with a client CA advertises
// and serves MQTT over TLS, and admits only a vehicle whose certificate
// is for its registered key.
func TestMQTTOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testca.New(t, dir, "server-ca")
	vehicles := testca.New(t, dir, "vehicle-ca")
	certFile, keyFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	ca.ServerCert(t, 2, certFile, keyFile)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	mqttAddr := freeAddr(t)
	s := startTLS(t, pool, "--mqtt-listen", mqttAddr, "--tls-cert", certFile, "--tls-key", keyFile, "--client-ca", vehicles.File)
	pub, key, _ := ed25519.GenerateKey(nil)
	_, otherKey, _ := ed25519.GenerateKey(nil)
	const vin = "JTMBFREV1N0000001"
	body := map[string]any{"vin": vin, "model": "m", "year": 2025, "region": "EU", "publicKey": base64.StdEncoding.EncodeToString(pub),
		"ecus": []map[string]string{{"type": "dcm", "serial": "DCM-" + vin, "hardwareId": "DCM-4G-24MM"}}}
	if code := s.api(t, "POST", "/api/v1/vehicles", adminToken, body, nil); code != 201 {
		t.Fatalf("register: %d", code)
	}
	cert := func(k ed25519.PrivateKey, serial int64) tls.Certificate {
		return tls.Certificate{Certificate: [][]byte{vehicles.Issue(t, serial, k.Public(), false)}, PrivateKey: k}
	}
	// The vehicle learns an mqtts:// broker.
	req, _ := http.NewRequest("GET", s.url+"/api/v1/vehicles/"+vin+"/push", nil)
	vehicleauth.Sign(req, key, vin, nil, time.Now())
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert(key, 10)}}}}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var info struct{ Broker string }
	json.NewDecoder(resp.Body).Decode(&info)
	resp.Body.Close()
	if info.Broker != "mqtts://"+mqttAddr {
		t.Fatalf("push settings: %d %q, want mqtts://%s", resp.StatusCode, info.Broker, mqttAddr)
	}
	withTLS := func(certs ...tls.Certificate) func(*paho.ClientOptions) {
		return func(o *paho.ClientOptions) { o.SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: certs}) }
	}
	login := func(broker string, opts ...func(*paho.ClientOptions)) (paho.Client, error) {
		return mqttConnect(broker, vehicleauth.ClientID(vin), vin, vehicleauth.MQTTPassword(vin, key, time.Now()), opts...)
	}
	tests := []struct {
		name   string
		broker string
		opts   []func(*paho.ClientOptions)
	}{
		{"plain MQTT", "tcp://" + mqttAddr, nil},
		{"TLS without a client certificate", "ssl://" + mqttAddr, []func(*paho.ClientOptions){withTLS()}},
		{"a certificate for another key", "ssl://" + mqttAddr, []func(*paho.ClientOptions){withTLS(cert(otherKey, 11))}},
	}
	for _, tt := range tests {
		if c, err := login(tt.broker, tt.opts...); err == nil {
			c.Disconnect(100)
			t.Errorf("%s: accepted", tt.name)
		}
	}
	c, err := login("ssl://"+mqttAddr, withTLS(cert(key, 12)))
	if err != nil {
		t.Fatalf("the vehicle with its own certificate: %v", err)
	}
	defer c.Disconnect(100)
	tok := c.Subscribe(vehicleauth.WakeTopic(vin), 1, func(paho.Client, paho.Message) {})
	tok.WaitTimeout(5 * time.Second)
	if res := tok.(*paho.SubscribeToken).Result()[vehicleauth.WakeTopic(vin)]; res != 1 {
		t.Fatalf("subscribing over mutual TLS: granted %#x, want 1", res)
	}
}
