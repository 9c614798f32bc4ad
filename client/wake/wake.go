// Package wake keeps the agent's one MQTT connection to the broker the
// server names, subscribed to the vehicle's own topic, and turns each
// message into a signal to check in now. Nothing the broker says is
// trusted beyond that: the update cycle verifies everything as usual, and
// when the broker is away the agent keeps polling.
package wake

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"log/slog"
	"net/url"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// Listener delivers wake-ups on C.
type Listener struct {
	C   <-chan struct{}
	c   chan struct{}
	log *slog.Logger
}

// Start asks the server where to listen (retrying in the background until
// it answers) and connects, with MQTT keepalive and reconnects; an
// mqtts:// broker is reached over TLS with tlsCfg (the agent's CA and
// client certificate). It returns at once; cancelling ctx ends it.
func Start(ctx context.Context, srv *api.Client, vin string, key ed25519.PrivateKey, tlsCfg *tls.Config, now func() time.Time, log *slog.Logger) *Listener {
	c := make(chan struct{}, 1)
	l := &Listener{C: c, c: c, log: log}
	go l.run(ctx, srv, vin, key, tlsCfg, now)
	return l
}

func (l *Listener) run(ctx context.Context, srv *api.Client, vin string, key ed25519.PrivateKey, tlsCfg *tls.Config, now func() time.Time) {
	var p api.Push
	for {
		var err error
		if p, err = srv.Push(ctx); err == nil {
			break
		}
		l.log.Info("push settings not available yet; polling meanwhile", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Minute):
		}
	}
	if p.Broker == "" {
		l.log.Info("the server sends no wake-ups; polling only")
		return
	}
	u, err := url.Parse(p.Broker)
	if err != nil || (u.Scheme != "mqtt" && u.Scheme != "mqtts") || u.Host == "" {
		l.log.Warn("the server names an unusable broker; polling only", "broker", p.Broker)
		return
	}
	broker := "tcp://" + u.Host
	if u.Scheme == "mqtts" {
		broker = "ssl://" + u.Host
	}
	// Each connection attempt signs a fresh single-use credential.
	opts := paho.NewClientOptions().AddBroker(broker).SetClientID(vehicleauth.ClientID(vin)).SetTLSConfig(tlsCfg).
		SetCredentialsProvider(func() (string, string) { return vin, vehicleauth.MQTTPassword(vin, key, now()) }).
		SetKeepAlive(30 * time.Second).SetPingTimeout(10 * time.Second).SetConnectTimeout(10 * time.Second).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(5 * time.Second).SetMaxReconnectInterval(time.Minute).
		SetCleanSession(true).
		SetOnConnectHandler(func(cl paho.Client) {
			tok := cl.Subscribe(p.Topic, 1, func(paho.Client, paho.Message) {
				select {
				case l.c <- struct{}{}:
				default: // one pending wake-up is enough
				}
			})
			if tok.WaitTimeout(10*time.Second) && tok.Error() != nil {
				l.log.Warn("subscribing to wake-ups failed", "topic", p.Topic, "err", tok.Error())
				return
			}
			l.log.Info("listening for wake-ups", "broker", u.Host, "topic", p.Topic)
		}).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			l.log.Warn("wake-up connection lost; polling until it is back", "err", err)
		})
	cl := paho.NewClient(opts)
	cl.Connect() // retries in the background
	<-ctx.Done()
	cl.Disconnect(250)
}
