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
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roadsign/roadsign/internal/connlimit"
	"github.com/roadsign/roadsign/internal/tlsconf"
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

// BrokerFor is the broker URL for a vehicle that reached the server at
// host (the request's Host): a broker listening on every interface
// (0.0.0.0 or ::) with no --mqtt-advertise is given at that host's name,
// the one address the vehicle is known to reach.
func (s *Service) BrokerFor(host string) string {
	b := s.Broker()
	u, err := url.Parse(b)
	if err != nil || u.Host == "" {
		return b
	}
	if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsUnspecified() {
		return b
	}
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	if name == "" {
		return b
	}
	u.Host = net.JoinHostPort(strings.Trim(name, "[]"), u.Port())
	return u.String()
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

// MaxPacket is the largest MQTT packet the embedded broker reads: a
// vehicle's CONNECT (VIN, client ID, credential) and SUBSCRIBE are a few
// hundred bytes, and mochi reads a whole packet into memory before
// anything checks it.
const MaxPacket = 4 << 10

// BrokerConfig is what the embedded broker needs.
type BrokerConfig struct {
	// Addr is host:port (port 0 picks a free one); Advertise, if set, is
	// the URL given to vehicles instead of mqtt(s)://ADDR.
	Addr, Advertise string
	Keys            Keys
	// UseNonce records a credential's nonce for vin; an error (a replay,
	// server.ErrConflict) refuses the log-in.
	UseNonce func(ctx context.Context, vin, nonce string) error
	// TLS, if set, serves MQTT over TLS (mqtts://); with ClientCerts the
	// config must require client certificates, and a vehicle's must be
	// for its registered key.
	TLS         *tls.Config
	ClientCerts bool
	// MaxConnections caps connections in total, MaxPerAddress those from
	// one address (0: none), Exempt names load balancers; a connection
	// must log in within ConnectTimeout.
	MaxConnections, MaxPerAddress int
	Exempt                        func(net.IP) bool
	ConnectTimeout                time.Duration
	// OnRefuse hears of each connection closed for a cap.
	OnRefuse func(reason string)
	Log      *slog.Logger
	Now      func() time.Time
}

// Listen starts the embedded broker. Before anyone has logged in, a
// connection can hold little: MaxPacket bytes, ConnectTimeout, and a slot
// among MaxConnections and MaxPerAddress.
func Listen(c BrokerConfig) (*Embedded, error) {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = MaxPacket
	caps.RetainAvailable = 0              // nothing outlives the moment it is sent
	caps.MaximumSessionExpiryInterval = 0 // no session outlives its connection
	caps.MaximumClients = int64(c.MaxConnections)
	if c.MaxConnections <= 0 {
		caps.MaximumClients = math.MaxInt64
	}
	caps.MaximumClientWritesPending = 64
	caps.ReceiveMaximum, caps.MaximumInflight, caps.TopicAliasMaximum = 16, 64, 0
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Capabilities: caps, Logger: c.Log.With("component", "mqtt"),
		ClientNetReadBufferSize: 1 << 10, ClientNetWriteBufferSize: 1 << 10})
	now := c.Now
	if now == nil {
		now = time.Now
	}
	h := &vehicleHook{keys: c.Keys, useNonce: c.UseNonce, clientCerts: c.ClientCerts, now: now, log: c.Log}
	if err := srv.AddHook(h, nil); err != nil {
		return nil, err
	}
	raw, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return nil, fmt.Errorf("MQTT broker on %s: %w", c.Addr, err)
	}
	var ln net.Listener = connlimit.New(raw, connlimit.Config{Max: c.MaxConnections, PerAddress: c.MaxPerAddress,
		Exempt: c.Exempt, FirstDeadline: c.ConnectTimeout, OnRefuse: c.OnRefuse})
	scheme := "mqtt://"
	if c.TLS != nil {
		ln, scheme = tls.NewListener(ln, c.TLS), "mqtts://"
	}
	if err := srv.AddListener(listeners.NewNet("vehicles", ln)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("MQTT broker on %s: %w", c.Addr, err)
	}
	if err := srv.Serve(); err != nil {
		srv.Close()
		return nil, fmt.Errorf("MQTT broker: %w", err)
	}
	e := &Embedded{srv: srv, addr: raw.Addr().String(), advertise: c.Advertise}
	if e.advertise == "" {
		e.advertise = scheme + e.addr
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
	keys        Keys
	useNonce    func(ctx context.Context, vin, nonce string) error
	clientCerts bool
	now         func() time.Time
	log         *slog.Logger
}

func (h *vehicleHook) ID() string { return "roadsign-vehicles" }

func (h *vehicleHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

// OnConnectAuthenticate admits a vehicle that logs in as itself: its VIN,
// the client ID bound to that VIN, a fresh credential signed by its key
// and never used before, no will message (a will is a publish the broker
// would make for the client, to any topic), and over mutual TLS a
// certificate for its key.
func (h *vehicleHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	vin := string(pk.Connect.Username)
	if err := h.authenticate(cl, pk, vin); err != nil {
		h.log.Info("MQTT log-in refused", "vin", vin, "remote", cl.Net.Remote, "reason", err.Error())
		return false
	}
	return true
}

func (h *vehicleHook) authenticate(cl *mqtt.Client, pk packets.Packet, vin string) error {
	switch {
	case vin == "" || len(vin) > 32:
		return errors.New("no VIN as user name")
	case pk.Connect.WillFlag:
		return errors.New("a will message is not allowed")
	case pk.Connect.ClientIdentifier != vehicleauth.ClientID(vin):
		return fmt.Errorf("client ID %.40q is not %s", pk.Connect.ClientIdentifier, vehicleauth.ClientID(vin))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pub, err := h.keys(ctx, vin)
	if err != nil {
		return fmt.Errorf("no registered key: %w", err)
	}
	if h.clientCerts {
		tc, ok := cl.Net.Conn.(*tls.Conn)
		if !ok {
			return errors.New("not over TLS")
		}
		certs := tc.ConnectionState().PeerCertificates
		if len(certs) == 0 || !tlsconf.SameKey(certs[0].PublicKey, pub) {
			return errors.New("the client certificate is not for the key registered to the VIN")
		}
	}
	now := h.now()
	nonce, err := vehicleauth.VerifyMQTTPassword(vin, string(pk.Connect.Password), pub, now)
	if err != nil {
		return err
	}
	if err := h.useNonce(ctx, vin, nonce); err != nil {
		return fmt.Errorf("credential already used (or not recorded): %w", err)
	}
	return nil
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
