package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/roadsign/roadsign/internal/connlimit"
	"github.com/roadsign/roadsign/internal/envflag"
	"github.com/roadsign/roadsign/internal/tlsconf"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/auditlog"
	"github.com/roadsign/roadsign/server/blobmetrics"
	"github.com/roadsign/roadsign/server/fsblob"
	"github.com/roadsign/roadsign/server/httpapi"
	"github.com/roadsign/roadsign/server/postgres"
	"github.com/roadsign/roadsign/server/push"
	"github.com/roadsign/roadsign/server/repo"
	"github.com/roadsign/roadsign/server/s3blob"
	"github.com/roadsign/roadsign/server/sqlite"
	"github.com/roadsign/roadsign/server/sqlstore"
	"github.com/roadsign/roadsign/server/web"
)

func initData(dir string, out io.Writer) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	_, created, err := repo.InitKeys(dir)
	if err != nil {
		return err
	}
	p := filepath.Join(dir, repo.PublicKeysFile)
	if created {
		fmt.Fprintf(out, "created online keys in %s; give %s to roadsign-signer init\n", dir, p)
	} else {
		fmt.Fprintf(out, "online keys already exist in %s; public keys: %s\n", dir, p)
	}
	return nil
}

func newLogger(c config, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return nil, envflag.Usagef("--log-level %q: want debug, info, warn or error", c.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch c.logFormat {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, envflag.Usagef("--log-format %q: want json or text", c.logFormat)
}

func openBlobs(ctx context.Context, c config, getenv func(string) string) (server.BlobStore, error) {
	switch {
	case c.blob == "":
		return fsblob.New(filepath.Join(c.data, "blobs"))
	case strings.HasPrefix(c.blob, "file://"):
		return fsblob.New(strings.TrimPrefix(c.blob, "file://"))
	case strings.HasPrefix(c.blob, "s3://"):
		sc, err := s3blob.ParseURL(c.blob, getenv)
		if err != nil {
			return nil, envflag.UsageError{Err: err}
		}
		return s3blob.New(ctx, sc)
	}
	return nil, envflag.Usagef("--blob %q: want file:///DIR or s3://BUCKET?endpoint=HOST:PORT", c.blob)
}

// openStore opens the state store; a PostgreSQL that does not answer is
// waited for up to wait, each failure logged to log (nil: not logged).
func openStore(ctx context.Context, c config, wait time.Duration, log *slog.Logger) (*sqlstore.Store, error) {
	switch {
	case c.database == "":
		return sqlite.Open(ctx, filepath.Join(c.data, "roadsign.db"))
	case strings.HasPrefix(c.database, "postgres://"), strings.HasPrefix(c.database, "postgresql://"):
		return postgres.OpenWaiting(ctx, c.database, wait, func(err error) {
			if log != nil {
				log.Warn("waiting for a writable database (--database-wait)", "err", err)
			}
		})
	case strings.HasPrefix(c.database, "sqlite://"):
		return sqlite.Open(ctx, strings.TrimPrefix(c.database, "sqlite://"))
	}
	return nil, envflag.Usagef("--database %q: want postgres://... or sqlite:///PATH (empty: SQLite in --data)", c.database)
}

func serve(ctx context.Context, c config, env Env) error {
	log, err := newLogger(c, env.Stderr)
	if err != nil {
		return err
	}
	if err := initData(c.data, io.Discard); err != nil {
		return err
	}
	keys, err := repo.LoadKeys(c.data)
	if err != nil {
		return err
	}
	blobs, err := openBlobs(ctx, c, env.Getenv)
	if err != nil {
		return err
	}
	store, err := openStore(ctx, c, c.databaseWait, log)
	if err != nil {
		return err
	}
	defer store.Close()
	if c.adminToken == "" {
		c.adminToken = env.Getenv("ROADSIGN_ADMIN_TOKEN")
	}
	if c.adminToken == "" {
		log.Warn("no ROADSIGN_ADMIN_TOKEN set: only accounts made earlier can call admin routes")
	}
	// The audit chain's start is sealed before anything is appended to it.
	if _, err := auditlog.EnsureGenesis(ctx, store, keys.ImageTimestamp, time.Now()); err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	blobs = blobmetrics.Wrap(blobs, reg)
	svc, err := wire(ctx, c, parts{store: store, blobs: blobs, keys: keys, log: log, reg: reg})
	if err != nil {
		return err
	}
	if svc.pusher != nil {
		defer svc.pusher.Close()
	}
	certs, clientCAs, refused := svc.certs, svc.clientCAs, svc.refused

	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("listen on %s: %w; another server runs there: stop it or choose another --listen", c.listen, err)
		}
		return envflag.Usagef("--listen %s: %v", c.listen, err)
	}
	// One address holds at most --max-connections-per-address; near the
	// total cap, idle keep-alive connections are closed for new clients.
	limited := connlimit.New(ln, connlimit.Config{Max: svc.httpMax, Wait: true, PerAddress: c.perAddress,
		Exempt: connlimit.ExemptList(c.proxies()), OnRefuse: func(r string) { refused.WithLabelValues("http", r).Inc() }})
	ln = limited
	// Headers must arrive within 10 s and idle connections close after a
	// minute; bodies and answers get per-route deadlines (httpapi.Body).
	srv := &http.Server{
		Handler:           svc.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnState:         func(conn net.Conn, st http.ConnState) { limited.SetIdle(conn, st == http.StateIdle) },
	}
	if certs != nil {
		srv.TLSConfig = certs.Server(clientCAs)
	}
	stopBG := svc.background(ctx, c, store, keys, env.Reload, log)
	defer stopBG()

	errc := make(chan error, 1)
	go func() {
		if certs != nil {
			errc <- srv.ServeTLS(ln, "", "") // HTTP/2 as well
			return
		}
		errc <- srv.Serve(ln)
	}()
	log.Info("roadsign-server listening", "addr", ln.Addr().String(), "mqtt", svc.push.Broker(), "data", c.data, "blob", blobDesc(c), "database", dbDesc(c), "auto_assign", c.autoAssign)
	if env.OnListen != nil {
		env.OnListen(ln.Addr().String())
	}
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: draining in-flight requests", "timeout", c.shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return nil
}

func dbDesc(c config) string {
	if c.database == "" {
		return filepath.Join(c.data, "roadsign.db")
	}
	if u, err := url.Parse(c.database); err == nil {
		u.User = nil // never log a password
		return u.String()
	}
	return "(unparsable URL)"
}

func blobDesc(c config) string {
	if c.blob == "" {
		return filepath.Join(c.data, "blobs")
	}
	if i := strings.IndexByte(c.blob, '?'); i > 0 {
		return c.blob[:i]
	}
	return c.blob
}

// statusChecks is what /status shows an owner before they blame the car.
// Causes of failures go to the log: the page is public.
func statusChecks(ctx context.Context, images *repo.Repo, store httpapi.Pinger, blobs server.BlobStore, push web.Check, log *slog.Logger) []web.Check {
	ping := func(name string, p interface{ Ping(context.Context) error }) func(context.Context) []web.Check {
		return func(ctx context.Context) []web.Check {
			if err := p.Ping(ctx); err != nil {
				log.Warn("status: "+name, "err", err)
				return []web.Check{{Name: name, Detail: "unreachable; the operator is told"}}
			}
			return []web.Check{{Name: name, OK: true, Detail: "reachable"}}
		}
	}
	checks := []func(context.Context) []web.Check{
		func(ctx context.Context) []web.Check { return repoChecks(ctx, images, log) },
		func(ctx context.Context) []web.Check {
			if v, err := images.DirectorRootVersion(ctx); err != nil || v == 0 {
				return []web.Check{{Name: "Update instructions for each car (director)", Detail: "not set up yet: nothing published"}}
			} else {
				return []web.Check{{Name: "Update instructions for each car (director)", OK: true, Detail: fmt.Sprintf("ready (director root v%d)", v)}}
			}
		},
		ping("Vehicle and account records (state store)", store),
		ping("Update files (blob store)", blobs),
		func(context.Context) []web.Check { return []web.Check{push} },
	}
	// Each check on its own clock, all at once: one that hangs (a store
	// that does not answer) neither delays the page nor fails the others.
	results := make([][]web.Check, len(checks))
	var wg sync.WaitGroup
	for i, check := range checks {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			results[i] = check(ctx)
		})
	}
	wg.Wait()
	var out []web.Check
	for _, r := range results {
		out = append(out, r...)
	}
	return out
}

// memoize answers f's last result while it is younger than ttl.
func memoize(ttl time.Duration, f func(context.Context) []server.HealthCheck) func(context.Context) []server.HealthCheck {
	var mu sync.Mutex
	var last []server.HealthCheck
	var at time.Time
	return func(ctx context.Context) []server.HealthCheck {
		mu.Lock()
		defer mu.Unlock()
		if last == nil || time.Since(at) > ttl {
			last, at = f(ctx), time.Now()
		}
		return last
	}
}

// repoCheck names the image repository for people reading /status.
const repoCheck = "Software updates (image repository)"

// pushStatus says whether cars are woken when an update is ready.
func pushStatus(c config) web.Check {
	ch := web.Check{Name: "Instant update notices (push)", OK: true}
	switch _, on := push.ParseListen(c.mqttListen); {
	case c.mqttBroker != "":
		ch.Detail = "on, through the operator's broker; cars also check on their own schedule"
	case on:
		ch.Detail = "on; cars also check on their own schedule"
	default:
		ch.Detail = "off: cars find updates when they check on their own schedule"
	}
	return ch
}

// repoChecks are the image repository's checks: its timestamp, and
// whether re-signing keeps it fresh.
func repoChecks(ctx context.Context, images *repo.Repo, log *slog.Logger) []web.Check {
	h, err := images.Health(ctx)
	switch {
	case err != nil:
		log.Warn("status: image repository", "err", err)
		return []web.Check{{Name: repoCheck, Detail: "cannot be read; the operator is told"}}
	case !h.Published:
		return []web.Check{{Name: repoCheck, Detail: "no software published yet"}}
	}
	out := []web.Check{{Name: repoCheck, OK: time.Now().Before(h.TimestampExpires),
		Detail: fmt.Sprintf("available; signed until %s (timestamp v%d)", h.TimestampExpires.UTC().Format("2 Jan 2006 15:04 MST"), h.TimestampVersion)}}
	resign := web.Check{Name: "Signatures kept fresh (re-signing)", OK: h.ResignErr == nil}
	switch {
	case h.ResignErr != nil:
		log.Warn("status: re-signing", "err", h.ResignErr)
		resign.Detail = "the last renewal failed; the operator is told"
	case !h.LastResign.IsZero():
		resign.Detail = "last renewed " + h.LastResign.UTC().Format("2 Jan 2006 15:04 MST")
	default:
		resign.Detail = "no renewal needed since this server started"
	}
	return append(out, resign)
}

// reloadCerts rereads the TLS certificate and key on each signal; open
// connections keep the certificate they started with.
func reloadCerts(ctx context.Context, certs *tlsconf.Reloader, reload <-chan os.Signal, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-reload:
			if err := certs.Reload(); err != nil {
				log.Error("TLS certificate reload failed; still serving the previous one", "err", err)
				continue
			}
			leaf := certs.Leaf()
			log.Info("TLS certificate reloaded", "subject", leaf.Subject.String(), "not_after", leaf.NotAfter)
		}
	}
}

// pushDeps are what the embedded broker needs from the rest of the server.
type pushDeps struct {
	keys   push.Keys
	nonces interface {
		UseNonce(context.Context, string, string, time.Time) error
	}
	certs     *tlsconf.Reloader // nil: plain MQTT
	clientCAs *x509.CertPool    // nil: no client certificates
	max       int
	refused   *prometheus.CounterVec
}

// startPush starts the embedded MQTT broker, or connects to an external
// one; nil when push is off. With HTTPS on, the broker speaks TLS with the
// same certificate, and with --client-ca it requires vehicles'
// certificates as well.
func startPush(c config, d pushDeps, log *slog.Logger) (push.Publisher, error) {
	if c.mqttBroker != "" {
		x, err := push.Dial(c.mqttBroker, c.mqttAdvertise, "roadsign-server-"+uuid.NewString()[:8], log)
		if err != nil {
			return nil, envflag.Usagef("%v", err)
		}
		return x, nil
	}
	addr, on := push.ParseListen(c.mqttListen)
	if !on {
		return nil, nil
	}
	bc := push.BrokerConfig{
		Addr: addr, Advertise: c.mqttAdvertise, Keys: d.keys,
		UseNonce: func(ctx context.Context, vin, nonce string) error {
			return d.nonces.UseNonce(ctx, vin, "mqtt:"+nonce, time.Now())
		},
		MaxConnections: d.max, MaxPerAddress: c.mqttPerAddress, Exempt: connlimit.ExemptList(c.proxies()),
		ConnectTimeout: c.mqttConnectTime, OnRefuse: func(r string) { d.refused.WithLabelValues("mqtt", r).Inc() },
		Log: log, Now: time.Now,
	}
	if d.certs != nil {
		bc.TLS = d.certs.Server(nil)
		if d.clientCAs != nil {
			bc.TLS.ClientCAs, bc.TLS.ClientAuth, bc.ClientCerts = d.clientCAs, tls.RequireAndVerifyClientCert, true
		}
	}
	e, err := push.Listen(bc)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("%w; another broker listens there (a system Mosquitto on 1883?): choose another --mqtt-listen, or --mqtt-broker to use it", err)
		}
		return nil, err
	}
	return e, nil
}

// openFilesReserve is what the server keeps of its open-file limit for
// everything but client connections: the database, blobs being served or
// written, logs.
const openFilesReserve = 256

// fitOpenFiles fits the HTTP and broker connection caps into the
// process's open-file limit, the broker taking at most a third of what is
// left after the reserve, so that neither can starve the other (or the
// database) of file descriptors.
func fitOpenFiles(c config, log *slog.Logger) (httpMax, mqttMax int) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return c.maxConnections, c.mqttMaxConns
	}
	mqttWant := c.mqttMaxConns
	if _, on := push.ParseListen(c.mqttListen); !on || c.mqttBroker != "" {
		mqttWant = 0 // no embedded broker
	}
	httpMax, mqttMax = connlimit.FitOpenFiles(int64(lim.Cur), openFilesReserve, c.maxConnections, mqttWant)
	if httpMax < c.maxConnections || mqttMax < mqttWant {
		log.Warn("connection caps lowered to fit the open-file limit; raise it (ulimit -n, systemd LimitNOFILE=) for more",
			"open_files", lim.Cur, "max_connections", httpMax, "mqtt_max_connections", mqttMax)
	}
	return httpMax, mqttMax
}
