// Package push wakes vehicles when what the director assigns them
// changes: it publishes a small message (no firmware, no secrets: "your
// assignment changed") to the vehicle's own MQTT topic, either from a
// broker it runs itself or to an external one. Wake-ups are hints only:
// the vehicle then runs its usual verified update cycle.
//
// In the embedded broker a vehicle logs in with its VIN and a credential
// signed by its vehicle key (internal/vehicleauth), may subscribe only to
// its own topic, and may publish nothing.
package push

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// Keys finds a vehicle's registered public key.
type Keys func(ctx context.Context, vin string) (ed25519.PublicKey, error)

// Message is what a wake-up says.
type Message struct {
	VIN    string    `json:"vin"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// Publisher sends wake-ups.
type Publisher interface {
	publish(topic string, payload []byte) error
	// Advertised is the broker URL vehicles connect to.
	Advertised() string
	Close() error
}

// Service wakes vehicles through a publisher.
type Service struct {
	p   Publisher
	log *slog.Logger
	now func() time.Time
}

// New returns a service publishing through p (nil: push is off).
func New(p Publisher, log *slog.Logger, now func() time.Time) *Service {
	return &Service{p: p, log: log, now: now}
}

// Broker is the URL vehicles connect to, "" when push is off.
func (s *Service) Broker() string {
	if s == nil || s.p == nil {
		return ""
	}
	return s.p.Advertised()
}

// Wake tells each vehicle its assignment changed. Failures are logged:
// vehicles still poll.
func (s *Service) Wake(vins ...string) {
	if s == nil || s.p == nil {
		return
	}
	for _, vin := range vins {
		b, _ := json.Marshal(Message{VIN: vin, Reason: "assignment changed", At: s.now().UTC()})
		if err := s.p.publish(vehicleauth.WakeTopic(vin), b); err != nil {
			s.log.Warn("wake-up not published; the vehicle will see the change at its next poll", "vin", vin, "err", err)
		}
	}
}

// Embedded is an MQTT broker in the server process.
type Embedded struct {
	srv       *mqtt.Server
	addr      string
	advertise string
}

// Listen starts the embedded broker on addr (host:port; port 0 picks a
// free one). advertise, if set, is the URL given to vehicles instead of
// mqtt://ADDR.
func Listen(addr, advertise string, keys Keys, log *slog.Logger) (*Embedded, error) {
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: log.With("component", "mqtt")})
	if err := srv.AddHook(&vehicleHook{keys: keys, now: time.Now}, nil); err != nil {
		return nil, err
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "vehicles", Address: addr})
	if err := srv.AddListener(tcp); err != nil {
		return nil, fmt.Errorf("MQTT broker on %s: %w", addr, err)
	}
	if err := srv.Serve(); err != nil {
		srv.Close()
		return nil, fmt.Errorf("MQTT broker: %w", err)
	}
	e := &Embedded{srv: srv, addr: tcp.Address(), advertise: advertise}
	if e.advertise == "" {
		e.advertise = "mqtt://" + e.addr
	}
	return e, nil
}

// Advertised implements Publisher.
func (e *Embedded) Advertised() string { return e.advertise }

func (e *Embedded) publish(topic string, payload []byte) error {
	return e.srv.Publish(topic, payload, false, 1)
}

// Close stops the broker.
func (e *Embedded) Close() error { return e.srv.Close() }

// vehicleHook authenticates vehicles and confines them to their topic.
type vehicleHook struct {
	mqtt.HookBase
	keys Keys
	now  func() time.Time
}

func (h *vehicleHook) ID() string { return "roadsign-vehicles" }

func (h *vehicleHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *vehicleHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	vin := string(pk.Connect.Username)
	if vin == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pub, err := h.keys(ctx, vin)
	if err != nil {
		return false
	}
	return vehicleauth.VerifyMQTTPassword(vin, string(pk.Connect.Password), pub, h.now()) == nil
}

func (h *vehicleHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true // the server itself
	}
	return !write && topic == vehicleauth.WakeTopic(string(cl.Properties.Username))
}

// External publishes to a broker someone else runs (Mosquitto); who may
// subscribe to what is that broker's configuration.
type External struct {
	c         paho.Client
	advertise string
}

// Dial connects to an external broker (mqtt://HOST:PORT), reconnecting
// by itself when the broker goes away.
func Dial(rawURL, advertise, clientID string, log *slog.Logger) (*External, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "mqtt" || u.Host == "" {
		return nil, fmt.Errorf("--mqtt-broker %q: want mqtt://HOST:PORT", rawURL)
	}
	opts := paho.NewClientOptions().AddBroker("tcp://" + u.Host).SetClientID(clientID).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(time.Second).
		SetKeepAlive(30 * time.Second).SetConnectTimeout(5 * time.Second).SetCleanSession(true)
	if u.User != nil {
		opts.SetUsername(u.User.Username())
		if p, ok := u.User.Password(); ok {
			opts.SetPassword(p)
		}
	}
	c := paho.NewClient(opts)
	tok := c.Connect() // retries in the background until the broker answers
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		log.Warn("external MQTT broker not reachable yet; retrying in the background (vehicles poll meanwhile)", "broker", u.Host, "err", tok.Error())
	}
	if advertise == "" {
		advertise = "mqtt://" + u.Host
	}
	return &External{c: c, advertise: advertise}, nil
}

// Advertised implements Publisher.
func (x *External) Advertised() string { return x.advertise }

func (x *External) publish(topic string, payload []byte) error {
	if !x.c.IsConnectionOpen() {
		return errors.New("not connected to the external broker")
	}
	tok := x.c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(5 * time.Second) {
		return errors.New("the external broker did not acknowledge within 5 s")
	}
	return tok.Error()
}

// Close disconnects.
func (x *External) Close() error {
	x.c.Disconnect(250)
	return nil
}

// ParseListen reads --mqtt-listen: "off" or host:port.
func ParseListen(s string) (string, bool) {
	s = strings.TrimSpace(s)
	if s == "" || s == "off" {
		return "", false
	}
	return s, true
}
