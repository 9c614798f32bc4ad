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
	"errors"
	"fmt"
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
// it answers) and connects, with MQTT keepalive; whenever the connection
// fails it asks the server again, so a broker that moved is found. An
// mqtts:// broker is reached over TLS with tlsCfg (the agent's CA and
// client certificate). It returns at once; cancelling ctx ends it.
func Start(ctx context.Context, srv *api.Client, vin string, key ed25519.PrivateKey, tlsCfg *tls.Config, now func() time.Time, log *slog.Logger) *Listener {
	c := make(chan struct{}, 1)
	l := &Listener{C: c, c: c, log: log}
	go l.run(ctx, srv, vin, key, tlsCfg, now)
	return l
}

// Waits between attempts: after a failed connection the agent asks the
// server again where its broker is (a restarted server's embedded broker
// may listen elsewhere), starting at retryMin and doubling to retryMax;
// with push off it asks again every pushOffRecheck.
const (
	retryMin       = time.Second
	retryMax       = time.Minute
	pushOffRecheck = 10 * time.Minute
)

func (l *Listener) run(ctx context.Context, srv *api.Client, vin string, key ed25519.PrivateKey, tlsCfg *tls.Config, now func() time.Time) {
	wait := retryMin
	sleep := func(d time.Duration) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	for ctx.Err() == nil {
		p, err := srv.Push(ctx)
		if err != nil {
			l.log.Info("push settings not available; polling meanwhile", "err", err)
			if !sleep(wait) {
				return
			}
			wait = min(2*wait, retryMax)
			continue
		}
		if p.Broker == "" {
			l.log.Info("the server sends no wake-ups; polling only")
			if !sleep(pushOffRecheck) {
				return
			}
			continue
		}
		connected, err := l.session(ctx, p, vin, key, tlsCfg, now)
		if ctx.Err() != nil {
			return
		}
		if connected >= retryMax {
			wait = retryMin // it worked for a while: this is a new outage
		}
		l.log.Warn("wake-up connection lost; asking the server for its broker again, polling meanwhile", "broker", p.Broker, "err", err, "retry_in", wait)
		if !sleep(wait) {
			return
		}
		wait = min(2*wait, retryMax)
	}
}

// session connects to the broker p names, listens until the connection
// is lost or ctx ends, and reports how long it was connected.
func (l *Listener) session(ctx context.Context, p api.Push, vin string, key ed25519.PrivateKey, tlsCfg *tls.Config, now func() time.Time) (time.Duration, error) {
	u, err := url.Parse(p.Broker)
	if err != nil || (u.Scheme != "mqtt" && u.Scheme != "mqtts") || u.Host == "" {
		return 0, fmt.Errorf("the server names an unusable broker %q", p.Broker)
	}
	broker := "tcp://" + u.Host
	if u.Scheme == "mqtts" {
		broker = "ssl://" + u.Host
	}
	lost := make(chan error, 1)
	// Each connection signs a fresh single-use credential.
	opts := paho.NewClientOptions().AddBroker(broker).SetClientID(vehicleauth.ClientID(vin)).SetTLSConfig(tlsCfg).
		SetCredentialsProvider(func() (string, string) { return vin, vehicleauth.MQTTPassword(vin, key, now()) }).
		SetKeepAlive(30 * time.Second).SetPingTimeout(10 * time.Second).SetConnectTimeout(10 * time.Second).
		SetAutoReconnect(false).SetConnectRetry(false).SetCleanSession(true).
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
			select {
			case lost <- err:
			default:
			}
		})
	cl := paho.NewClient(opts)
	tok := cl.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		cl.Disconnect(0)
		return 0, errors.New("no answer from the broker within 15 s")
	}
	if err := tok.Error(); err != nil {
		return 0, err
	}
	start := time.Now()
	select {
	case <-ctx.Done():
		cl.Disconnect(250)
		return time.Since(start), nil
	case err := <-lost:
		return time.Since(start), err
	}
}
