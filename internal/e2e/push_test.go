package e2e

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/roadsign/roadsign/client/api"
	agentcli "github.com/roadsign/roadsign/client/cli"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/testsupport"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// runAgentDaemon starts roadsign-agent run in the background; stop ends it.
func runAgentDaemon(t *testing.T, v vehicleState, args ...string) (*testsupport.LockedBuffer, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out testsupport.LockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- agentcli.Run(ctx, append([]string{"run", "--state", v.dir, "--jitter", "0"}, args...),
			agentcli.Env{Stdout: &out, Stderr: &out, Getenv: func(string) string { return "" }, Now: time.Now})
	}()
	stop := func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("the agent did not stop")
		}
	}
	t.Cleanup(stop)
	return &out, stop
}

func waitUntil(t *testing.T, what string, within time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func mosquitto(t *testing.T) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", "127.0.0.1:1883", 2*time.Second)
	if err != nil {
		if os.Getenv("ROADSIGN_REQUIRE_MQTT") != "" {
			t.Fatalf("Mosquitto is required on 127.0.0.1:1883: %v", err)
		}
		t.Skipf("no Mosquitto on 127.0.0.1:1883: %v", err)
	}
	c.Close()
	return "mqtt://127.0.0.1:1883"
}

// TestPushWakeUp: the agent runs with a one-hour poll interval; a dealer
// job created on the server is installed and succeeded within 10 s,
// through the server's own broker and through an external Mosquitto.
func TestPushWakeUp(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra func(t *testing.T) []string
	}{
		{"embedded broker", func(*testing.T) []string { return nil }},
		{"external Mosquitto", func(t *testing.T) []string { return []string{"--mqtt-broker", mosquitto(t)} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, append([]string{"--auto-assign", "none"}, tc.extra(t)...)...)
			w.setup(nil)
			v := w.vehicle(1)
			out, _ := runAgentDaemon(t, v, "--interval", "1h")
			waitUntil(t, "the agent subscribes to its wake-ups and ends its first cycle", 20*time.Second, func() bool {
				return strings.Contains(out.String(), "listening for wake-ups") && strings.Contains(out.String(), "next check-in in")
			})
			start := time.Now()
			j := w.job(adminToken, map[string]any{"vin": v.vin, "ecu": "dcm", "version": "2.0.0", "reason": "dealer reflash while the customer waits"})
			waitUntil(t, "the job succeeds", 10*time.Second, func() bool { return w.getJob(adminToken, j.ID).State == "succeeded" })
			t.Logf("job succeeded %s after it was created", time.Since(start).Round(time.Millisecond))
			if !strings.Contains(out.String(), "woken by the server") {
				t.Errorf("the agent did not say it was woken:\n%s", out.String())
			}
		})
	}
}

// TestPushSurvivesServerRestart: the server restarts (its embedded broker
// on a new port, as by default); the running agent asks for the broker
// again when its connection drops, and a job created afterwards still
// wakes it within seconds, not at its next hourly poll.
func TestPushSurvivesServerRestart(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.setup(nil)
	v := w.vehicle(1)
	out, _ := runAgentDaemon(t, v, "--interval", "1h")
	waitUntil(t, "the agent listens for wake-ups", 20*time.Second, func() bool {
		return strings.Contains(out.String(), "listening for wake-ups") && strings.Contains(out.String(), "next check-in in")
	})
	first := brokerOf(t, out.String())
	addr := strings.TrimPrefix(w.url, "http://")
	w.shutdown()
	w.extra = append(w.extra, "--listen", addr) // same HTTP address; the broker takes a new port
	w.start()
	waitUntil(t, "the agent finds the restarted server's broker", 30*time.Second, func() bool {
		return strings.Count(out.String(), "listening for wake-ups") >= 2
	})
	if again := brokerOf(t, out.String()); again == first {
		t.Fatalf("the broker kept its port %s across the restart; the test shows nothing", first)
	}
	start := time.Now()
	j := w.job(adminToken, map[string]any{"vin": v.vin, "ecu": "dcm", "version": "2.0.0", "reason": "after a server restart"})
	waitUntil(t, "the job succeeds", 15*time.Second, func() bool { return w.getJob(adminToken, j.ID).State == "succeeded" })
	t.Logf("job succeeded %s after it was created, past a server restart", time.Since(start).Round(time.Millisecond))
}

// brokerOf is the broker address the agent last said it listens at.
func brokerOf(t *testing.T, log string) string {
	t.Helper()
	i := strings.LastIndex(log, "listening for wake-ups")
	if i < 0 {
		t.Fatal("the agent never listened for wake-ups")
	}
	line := log[i:]
	if j := strings.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	for _, f := range strings.Fields(line) {
		if b, ok := strings.CutPrefix(f, "broker="); ok {
			return b
		}
	}
	t.Fatalf("no broker in %q", line)
	return ""
}

// TestPushFallsBackToPolling: with the broker gone the agent still
// updates at its next poll.
func TestPushFallsBackToPolling(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := ln.Addr().String()
	ln.Close() // nothing listens there any more
	w := newWorld(t, "--auto-assign", "none", "--mqtt-broker", "mqtt://"+gone)
	w.setup(nil)
	v := w.vehicle(1)
	runAgentDaemon(t, v, "--interval", "2s")
	j := w.job(adminToken, map[string]any{"vin": v.vin, "ecu": "dcm", "version": "2.0.0", "reason": "broker down"})
	waitUntil(t, "the job succeeds by polling", 20*time.Second, func() bool { return w.getJob(adminToken, j.ID).State == "succeeded" })
}

// TestVehicleConfinedToItsTopic: in the embedded broker a vehicle logs in
// with a credential from its own key only, may subscribe to its own topic
// only, and may publish nothing.
func TestVehicleConfinedToItsTopic(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	a, b := w.vehicle(1), w.vehicle(2)
	keyOf := func(v vehicleState) *keys.Key {
		k, err := keys.Load(filepath.Join(v.dir, "vehicle.key"))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	ka, kb := keyOf(a), keyOf(b)
	p, err := (&api.Client{Base: w.url, HTTP: http.DefaultClient, VIN: a.vin, Key: ka.Private, Now: time.Now}).Push(context.Background())
	if err != nil || !strings.HasPrefix(p.Broker, "mqtt://") || p.Topic != vehicleauth.WakeTopic(a.vin) {
		t.Fatalf("push settings: %+v, %v", p, err)
	}
	broker := "tcp://" + strings.TrimPrefix(p.Broker, "mqtt://")
	connect := func(id, vin, password string) (paho.Client, error) {
		c := paho.NewClient(paho.NewClientOptions().AddBroker(broker).SetClientID(id).SetUsername(vin).SetPassword(password).SetAutoReconnect(false))
		tok := c.Connect()
		tok.WaitTimeout(5 * time.Second)
		return c, tok.Error()
	}
	if _, err := connect(vehicleauth.ClientID(a.vin), a.vin, vehicleauth.MQTTPassword(a.vin, kb.Private, time.Now())); err == nil {
		t.Error("a credential signed by another vehicle's key was accepted")
	}
	if _, err := connect(vehicleauth.ClientID(a.vin), a.vin, vehicleauth.MQTTPassword(a.vin, ka.Private, time.Now().Add(-time.Hour))); err == nil {
		t.Error("an hour-old credential was accepted")
	}
	ca, err := connect(vehicleauth.ClientID(a.vin), a.vin, vehicleauth.MQTTPassword(a.vin, ka.Private, time.Now()))
	if err != nil {
		t.Fatalf("vehicle A's own credential: %v", err)
	}
	defer ca.Disconnect(100)
	cb, err := connect(vehicleauth.ClientID(b.vin), b.vin, vehicleauth.MQTTPassword(b.vin, kb.Private, time.Now()))
	if err != nil {
		t.Fatalf("vehicle B's own credential: %v", err)
	}
	defer cb.Disconnect(100)
	got := make(chan string, 10)
	handler := func(_ paho.Client, m paho.Message) { got <- m.Topic() + " " + string(m.Payload()) }
	if tok := cb.Subscribe(vehicleauth.WakeTopic(b.vin), 1, handler); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("B subscribing to its own topic: %v", tok.Error())
	}
	tok := ca.Subscribe(vehicleauth.WakeTopic(b.vin), 1, handler)
	tok.WaitTimeout(5 * time.Second)
	if res := tok.(*paho.SubscribeToken).Result()[vehicleauth.WakeTopic(b.vin)]; res != 0x80 {
		t.Errorf("A subscribing to B's topic: granted %#x, want 0x80 (refused)", res)
	}
	tok = ca.Subscribe("roadsign/#", 1, handler)
	tok.WaitTimeout(5 * time.Second)
	if res := tok.(*paho.SubscribeToken).Result()["roadsign/#"]; res != 0x80 {
		t.Errorf("A subscribing to every topic: granted %#x, want 0x80 (refused)", res)
	}
	for _, topic := range []string{vehicleauth.WakeTopic(b.vin), vehicleauth.WakeTopic(a.vin)} {
		ca.Publish(topic, 1, false, "forged wake-up").WaitTimeout(2 * time.Second)
	}
	select {
	case m := <-got:
		t.Errorf("a vehicle's publish was delivered: %s", m)
	case <-time.After(time.Second):
	}
	// The server's own wake-up reaches B.
	w.job(adminToken, map[string]any{"vin": b.vin, "ecu": "dcm", "version": "2.0.0", "reason": "wake B"})
	select {
	case m := <-got:
		if !strings.Contains(m, b.vin) {
			t.Errorf("B got %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Error("the server's wake-up did not reach B")
	}
}
