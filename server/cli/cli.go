// Package cli is roadsign-server's command line: it parses flags, wires the
// stores and services together and runs the HTTP server until its context
// ends. cmd/roadsign-server only calls Run.
package cli

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
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

	"github.com/roadsign/roadsign/internal/buildinfo"
	"github.com/roadsign/roadsign/internal/connlimit"
	"github.com/roadsign/roadsign/internal/envflag"
	"github.com/roadsign/roadsign/internal/exitcode"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/tlsconf"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/accounts"
	"github.com/roadsign/roadsign/server/auditlog"
	"github.com/roadsign/roadsign/server/backup"
	"github.com/roadsign/roadsign/server/blobmetrics"
	"github.com/roadsign/roadsign/server/bundle"
	"github.com/roadsign/roadsign/server/campaigns"
	"github.com/roadsign/roadsign/server/connect"
	"github.com/roadsign/roadsign/server/diagnosis"
	"github.com/roadsign/roadsign/server/director"
	"github.com/roadsign/roadsign/server/fsblob"
	"github.com/roadsign/roadsign/server/httpapi"
	"github.com/roadsign/roadsign/server/jobs"
	"github.com/roadsign/roadsign/server/leader"
	"github.com/roadsign/roadsign/server/owners"
	"github.com/roadsign/roadsign/server/postgres"
	"github.com/roadsign/roadsign/server/push"
	"github.com/roadsign/roadsign/server/registry"
	"github.com/roadsign/roadsign/server/repo"
	"github.com/roadsign/roadsign/server/s3blob"
	"github.com/roadsign/roadsign/server/softwarerecord"
	"github.com/roadsign/roadsign/server/sqlite"
	"github.com/roadsign/roadsign/server/sqlstore"
	"github.com/roadsign/roadsign/server/web"
)

// errRefused marks a security refusal (exit 3): a signature that does not
// verify.
var errRefused = errors.New("refused")

// commands is every command, for --help and help.
const commands = `roadsign-server [serve] [flags]          run the server (the default; its flags are below)
       roadsign-server init --data DIR          create the online keys and DIR/online-keys.json for the signer
       roadsign-server backup --data DIR --out FILE   archive a server's data while it runs
       roadsign-server restore --data DIR --from FILE [--force]
       roadsign-server audit verify [--data DIR | --database URL] [--checkpoints FILE ...]
       roadsign-server audit export-checkpoints [--data DIR | --database URL] --out FILE
       roadsign-server record verify --vin VIN [--online-keys FILE | --data DIR] RECORD
       roadsign-server COMMAND --help lists that command's flags`

// Env is the process environment Run works in; tests pass their own.
type Env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// OnListen, if set, is called with the bound address once the server
	// accepts connections (tests listen on 127.0.0.1:0).
	OnListen func(addr string)
	// Reload, if set, delivers a value whenever the TLS certificate and
	// key should be read again (main sends one on SIGHUP).
	Reload <-chan os.Signal
}

type config struct {
	listen          string
	data            string
	database        string
	blob            string
	autoAssign      string
	directorExpiry  time.Duration
	jobTimeout      time.Duration
	jobRetry        time.Duration
	authTokenTTL    time.Duration
	adminToken      string
	timestampExpiry time.Duration
	snapshotExpiry  time.Duration
	maxTargetSize   int64
	shutdownTimeout time.Duration
	logLevel        string
	logFormat       string
	trustedProxies  string
	maxConnections  int
	hashConcurrency int
	loginsPerMinute int
	leaderLease     time.Duration
	campaignTick    time.Duration
	offlineAfter    time.Duration
	blobRedirect    bool
	tlsCert         string
	tlsKey          string
	clientCA        string
	auditCheckpoint time.Duration
	auditFile       string
	mqttListen      string
	mqttBroker      string
	mqttAdvertise   string
	mqttMaxConns    int
	mqttPerAddress  int
	mqttConnectTime time.Duration
	perAddress      int
	publicURLs      envflag.List
}

// Run runs roadsign-server with args (without the program name) and
// returns the process exit code.
func Run(ctx context.Context, args []string, env Env) int {
	err := run(ctx, args, env)
	switch {
	case err == nil:
		return exitcode.OK
	case errors.Is(err, flag.ErrHelp):
		return exitcode.OK
	case errors.As(err, new(envflag.UsageError)):
		fmt.Fprintf(env.Stderr, "roadsign-server: %v\n", err)
		return exitcode.Usage
	case errors.Is(err, errRefused):
		fmt.Fprintf(env.Stderr, "roadsign-server: %v\n", err)
		return exitcode.Refused
	default:
		fmt.Fprintf(env.Stderr, "roadsign-server: %v\n", err)
		return exitcode.Error
	}
}

func run(ctx context.Context, args []string, env Env) error {
	if len(args) > 0 && envflag.IsVersion(args[0]) {
		fmt.Fprintln(env.Stdout, buildinfo.String("roadsign-server"))
		return nil
	}
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve", "init":
	case "backup":
		return cmdBackup(ctx, args, env)
	case "restore":
		return cmdRestore(args, env)
	case "audit":
		switch {
		case len(args) > 0 && args[0] == "verify":
			return cmdAuditVerify(ctx, args[1:], env)
		case len(args) > 0 && args[0] == "export-checkpoints":
			return cmdAuditExport(ctx, args[1:], env)
		}
		return envflag.Usagef("usage: roadsign-server audit verify [--data DIR | --database URL] [--checkpoints FILE ...] | audit export-checkpoints [--data DIR | --database URL] --out FILE")
	case "record":
		if len(args) == 0 || args[0] != "verify" {
			return envflag.Usagef("usage: roadsign-server record verify --vin VIN [--online-keys FILE | --data DIR] RECORD")
		}
		return cmdRecordVerify(args[1:], env)
	case "help":
		fmt.Fprintf(env.Stdout, "usage: %s\n", commands)
		return nil
	default:
		return envflag.Usagef("unknown command %q; want init, serve, backup, restore, audit or record", cmd)
	}
	cfg, err := parseFlags(cmd, args, env)
	if err != nil {
		return err
	}
	if cmd == "init" {
		return initData(cfg.data, env.Stdout)
	}
	return serve(ctx, cfg, env)
}

func parseFlags(cmd string, args []string, env Env) (config, error) {
	var c config
	fs := flag.NewFlagSet("roadsign-server "+cmd, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.StringVar(&c.data, "data", "./roadsign-data", "data directory: online keys, SQLite database, local blobs")
	if cmd == "serve" {
		fs.StringVar(&c.listen, "listen", "127.0.0.1:8080", "address to listen on")
		fs.StringVar(&c.database, "database", "", "state store: empty for SQLite at DATA/roadsign.db, or postgres://USER@HOST:PORT/DB")
		fs.StringVar(&c.autoAssign, "auto-assign", director.AutoLatest, "what the director assigns to an ECU no job covers: latest (newest image for its hardware) or none")
		fs.DurationVar(&c.directorExpiry, "director-expiry", 24*time.Hour, "lifetime of per-VIN director metadata; re-signed at half-life when fetched")
		fs.DurationVar(&c.jobTimeout, "job-timeout", 72*time.Hour, "a job the vehicle does not report on for this long is timed_out")
		fs.DurationVar(&c.jobRetry, "job-retry", time.Minute, "first retry delay of a failed job (doubles per attempt)")
		fs.DurationVar(&c.authTokenTTL, "auth-token-ttl", time.Hour, "lifetime of a connected-services token; vehicles renew it with a third left")
		fs.BoolVar(&c.blobRedirect, "blob-redirect", false, "send target downloads straight to the S3 store with short-lived presigned URLs (vehicles must reach the store)")
		fs.StringVar(&c.blob, "blob", "", "blob store: empty for DATA/blobs, file:///DIR, or s3://BUCKET[/PREFIX]?endpoint=HOST:PORT&secure=false (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
		fs.StringVar(&c.adminToken, "admin-token", "", "bootstrap admin bearer token (prefer the environment variable ROADSIGN_ADMIN_TOKEN)")
		fs.DurationVar(&c.timestampExpiry, "timestamp-expiry", 24*time.Hour, "lifetime of signed timestamps; re-signed at half-life")
		fs.DurationVar(&c.snapshotExpiry, "snapshot-expiry", 7*24*time.Hour, "lifetime of signed snapshots; re-signed at half-life")
		fs.Int64Var(&c.maxTargetSize, "max-target-size", 8<<30, "largest target file accepted, in bytes")
		fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long SIGTERM waits for in-flight requests")
		fs.StringVar(&c.trustedProxies, "trusted-proxies", "", "comma-separated addresses or CIDRs of load balancers whose X-Forwarded-For is believed (default: none)")
		fs.IntVar(&c.maxConnections, "max-connections", 4096, "most HTTP connections open at once; more wait to be accepted, and near the cap idle keep-alive connections are closed (lowered to fit the process's open-file limit)")
		fs.Var(&c.publicURLs, "public-url", "a URL vehicles are given for this server (repeatable, or comma-separated): their signed requests verify over its host even when a reverse proxy rewrote Host")
		fs.IntVar(&c.perAddress, "max-connections-per-address", 256, "most HTTP connections open at once from one client address (0: no cap); --trusted-proxies are exempt")
		fs.DurationVar(&c.leaderLease, "leader-lease", 15*time.Second, "lease of the replica that runs campaign waves, job timeouts and re-signing; renewed at a third")
		fs.DurationVar(&c.campaignTick, "campaign-tick", time.Second, "how often the leader advances running campaigns")
		fs.DurationVar(&c.offlineAfter, "offline-after", 72*time.Hour, "a vehicle not heard from for this long is diagnosed as offline")
		fs.IntVar(&c.hashConcurrency, "password-hash-concurrency", 0, "most owner-password checks (argon2id, 64 MiB each) at once; 0: one per CPU")
		fs.IntVar(&c.loginsPerMinute, "login-attempts-per-minute", accounts.DefaultThrottle.PerIP, "log-in attempts allowed per client address per minute")
		fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
		fs.StringVar(&c.logFormat, "log-format", "json", "json or text")
		fs.StringVar(&c.mqttListen, "mqtt-listen", "127.0.0.1:0", "the embedded MQTT broker for push wake-ups: host:port (port 0: a free one; vehicles learn it from the server), or off")
		fs.StringVar(&c.mqttBroker, "mqtt-broker", "", "publish wake-ups to this external broker instead (mqtt://HOST:PORT); vehicles connect to it too")
		fs.StringVar(&c.mqttAdvertise, "mqtt-advertise", "", "the broker URL given to vehicles when they reach it by another address (mqtt://HOST:PORT or mqtts://HOST:PORT)")
		fs.IntVar(&c.mqttMaxConns, "mqtt-max-connections", 100000, "most connections to the embedded broker at once (one per vehicle listening; lowered to a third of the process's open-file limit)")
		fs.IntVar(&c.mqttPerAddress, "mqtt-max-connections-per-address", 1024, "most embedded-broker connections from one client address (0: no cap); vehicles behind carrier NAT share addresses")
		fs.DurationVar(&c.mqttConnectTime, "mqtt-connect-timeout", 10*time.Second, "a connection to the embedded broker must log in within this")
		fs.DurationVar(&c.auditCheckpoint, "audit-checkpoint-interval", 10*time.Minute, "how often the leader signs a checkpoint of the audit log's hash chain")
		fs.StringVar(&c.auditFile, "audit-checkpoint-file", "", "the leader also appends each signed audit checkpoint to this file (keep it off the database's machine; audit verify --checkpoints reads it)")
		fs.StringVar(&c.tlsCert, "tls-cert", "", "serve HTTPS with this PEM certificate (chain); reread on SIGHUP")
		fs.StringVar(&c.tlsKey, "tls-key", "", "the PEM private key of --tls-cert; reread on SIGHUP")
		fs.StringVar(&c.clientCA, "client-ca", "", "mutual TLS for vehicles: PEM CA that issues vehicle certificates; a vehicle's signed requests must come with a certificate for its registered key")
	}
	synopsis := "roadsign-server init --data DIR"
	if cmd == "serve" {
		synopsis = commands
	}
	if _, err := envflag.Parse(fs, args, env.Getenv, 0, synopsis); err != nil {
		return c, err
	}
	if cmd == "serve" && c.autoAssign != director.AutoLatest && c.autoAssign != director.AutoNone {
		return c, envflag.Usagef("--auto-assign %q: want latest or none", c.autoAssign)
	}
	if cmd == "serve" && c.directorExpiry < 2*time.Second {
		return c, envflag.Usagef("--director-expiry %s is too short; use at least 2s", c.directorExpiry)
	}
	if cmd == "serve" && (c.hashConcurrency < 0 || c.loginsPerMinute < 1) {
		return c, envflag.Usagef("--password-hash-concurrency must be 0 or more and --login-attempts-per-minute at least 1")
	}
	if cmd == "serve" && (c.leaderLease < time.Second || c.campaignTick <= 0) {
		return c, envflag.Usagef("--leader-lease must be at least 1s and --campaign-tick positive")
	}
	if cmd == "serve" && c.offlineAfter <= 0 {
		return c, envflag.Usagef("--offline-after must be positive, such as 72h")
	}
	if cmd == "serve" && (c.tlsCert == "") != (c.tlsKey == "") {
		return c, envflag.Usagef("--tls-cert and --tls-key go together")
	}
	if cmd == "serve" && c.clientCA != "" && c.tlsCert == "" {
		return c, envflag.Usagef("--client-ca needs TLS: give --tls-cert and --tls-key too")
	}
	if cmd == "serve" && c.auditCheckpoint < time.Second {
		return c, envflag.Usagef("--audit-checkpoint-interval %s is too short; use at least 1s", c.auditCheckpoint)
	}
	if cmd == "serve" && c.maxConnections < 1 {
		return c, envflag.Usagef("--max-connections %d: want at least 1", c.maxConnections)
	}
	if cmd == "serve" && (c.perAddress < 0 || c.mqttPerAddress < 0 || c.mqttMaxConns < 1) {
		return c, envflag.Usagef("--max-connections-per-address and --mqtt-max-connections-per-address must be 0 (no cap) or more, --mqtt-max-connections at least 1")
	}
	if _, err := c.publicHosts(); err != nil {
		return c, err
	}
	if cmd == "serve" && c.mqttConnectTime < 100*time.Millisecond {
		return c, envflag.Usagef("--mqtt-connect-timeout %s is too short; use at least 100ms", c.mqttConnectTime)
	}
	for _, p := range c.proxies() {
		if net.ParseIP(p) == nil {
			if _, _, err := net.ParseCIDR(p); err != nil {
				return c, envflag.Usagef("--trusted-proxies: %q is neither an IP address nor a CIDR", p)
			}
		}
	}
	if cmd == "serve" && c.authTokenTTL < time.Second {
		return c, envflag.Usagef("--auth-token-ttl %s is too short; use at least 1s", c.authTokenTTL)
	}
	if c.timestampExpiry < 2*time.Second && cmd == "serve" {
		return c, envflag.Usagef("--timestamp-expiry %s is too short; use at least 2s", c.timestampExpiry)
	}
	return c, nil
}

// publicHosts are the hosts of --public-url.
func (c config) publicHosts() ([]string, error) {
	var out []string
	for _, raw := range c.publicURLs {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return nil, envflag.Usagef("--public-url %q: want the URL vehicles are given, such as https://ota.example.com or http://10.0.0.5:8080", raw)
		}
		out = append(out, u.Host)
	}
	return out, nil
}

// proxies is --trusted-proxies as a list (nil: none).
func (c config) proxies() []string {
	var out []string
	for _, p := range strings.Split(c.trustedProxies, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

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

func openStore(ctx context.Context, c config) (*sqlstore.Store, error) {
	switch {
	case c.database == "":
		return sqlite.Open(ctx, filepath.Join(c.data, "roadsign.db"))
	case strings.HasPrefix(c.database, "postgres://"), strings.HasPrefix(c.database, "postgresql://"):
		return postgres.Open(ctx, c.database)
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
	store, err := openStore(ctx, c)
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
	floor, err := backup.Floor(c.data)
	if err != nil {
		return err
	}
	images := repo.New(blobs, keys, repo.Config{
		TimestampExpiry: c.timestampExpiry, SnapshotExpiry: c.snapshotExpiry, MaxTargetSize: c.maxTargetSize,
		VersionFloor: floor,
	}, time.Now, log, reg)
	if c.blobRedirect {
		if err := images.UseRedirects(); err != nil {
			return envflag.Usagef("--blob-redirect: %v", err)
		}
	}
	replica := uuid.NewString()
	images.UseLeases(store, replica)
	elector := leader.New(store, "leader", replica, c.leaderLease, log, reg)
	directorSvc := director.New(store, images, keys, c.autoAssign, c.directorExpiry, time.Now, log)
	directorSvc.SetVersionFloor(floor)
	if floor > 0 {
		// Restored from a backup: sign above whatever the lost server
		// served before any vehicle asks (server/backup explains).
		if _, err := images.ResignIfNeeded(ctx); err != nil {
			return fmt.Errorf("re-sign after restore: %w", err)
		}
		log.Info("restored data: every online role signs at or above the version floor", "version_floor", floor)
	}
	jobSvc := jobs.New(store, images, jobs.Config{Timeout: c.jobTimeout, RetryBase: c.jobRetry}, time.Now, log)
	reg.MustRegister(jobSvc.Collector())
	directorSvc.UseJobs(jobSvc)
	directorSvc.UseCampaigns(store)
	campaignSvc := campaigns.New(store, images, jobSvc, time.Now, reg)
	secret, err := connect.LoadSecret(c.data)
	if err != nil {
		return fmt.Errorf("connected-services secret: %w", err)
	}
	connectSvc := connect.New(store, directorSvc, images, secret, time.Now)
	connectSvc.TokenTTL = c.authTokenTTL
	restoreNotice := func() []server.HealthCheck {
		r, restored, err := backup.Load(c.data)
		if err != nil || !restored || !r.PublishedAt.IsZero() {
			return nil
		}
		return []server.HealthCheck{{Name: "Restored from a backup", Detail: fmt.Sprintf("of %s: %s", r.BackupCreatedAt.Format(time.DateOnly), backup.PublishNeeded)}}
	}
	status := func(ctx context.Context) []server.HealthCheck {
		return append(statusChecks(ctx, images, store, blobs, pushStatus(c), log), restoreNotice()...)
	}
	// Every handshake's diagnosis reads the service's health: at most
	// every few seconds per replica, so a fleet's handshakes do not poll
	// the stores.
	diagnosisSvc := diagnosis.New(store, directorSvc, images, memoize(5*time.Second, status), time.Now, log, reg)
	diagnosisSvc.OfflineAfter = c.offlineAfter
	connectSvc.Handshake = diagnosisSvc.Record
	ownerSvc := owners.New(store, time.Now)
	registrySvc := registry.New(store, images, time.Now, log)
	registrySvc.Owns = ownerSvc.Owns
	registrySvc.Registered = campaignSvc.OnRegister
	var certs *tlsconf.Reloader
	var clientCAs *x509.CertPool
	if c.tlsCert != "" {
		if certs, err = tlsconf.NewReloader(c.tlsCert, c.tlsKey); err != nil {
			return envflag.Usagef("%v", err)
		}
		if c.clientCA != "" {
			if clientCAs, err = tlsconf.CertPool(c.clientCA); err != nil {
				return envflag.Usagef("--client-ca: %v", err)
			}
		}
	}
	httpMax, mqttMax := fitOpenFiles(c, log)
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "roadsign_connections_refused_total",
		Help: "Connections closed at once for a cap (per-address, total) or shed while idle near the cap."}, []string{"listener", "reason"})
	reg.MustRegister(refused)
	pusher, err := startPush(c, pushDeps{keys: registrySvc.VehicleKey, nonces: store, certs: certs, clientCAs: clientCAs,
		max: mqttMax, refused: refused}, log)
	if err != nil {
		return err
	}
	if pusher != nil {
		defer pusher.Close()
	}
	pushSvc := push.New(pusher, log, time.Now)
	jobSvc.Wake, campaignSvc.Wake = pushSvc.Wake, pushSvc.Wake
	bundles := bundle.New(images, directorSvc, time.Now, reg)
	accountSvc := accounts.New(store, accounts.NewPasswords(c.hashConcurrency, reg), c.adminToken, time.Now)
	throttle := accounts.DefaultThrottle
	throttle.PerIP = c.loginsPerMinute
	pages, err := web.New(web.Deps{
		Accounts: accountSvc, Throttle: accounts.NewThrottle(throttle, time.Now), Owners: ownerSvc, Registry: registrySvc, Jobs: jobSvc,
		Bundles: bundles, Campaigns: campaignSvc, Store: store, Secret: secret, Now: time.Now, Log: log,
		Diagnosis: diagnosisSvc, Status: status,
	})
	if err != nil {
		return err
	}
	publicHosts, _ := c.publicHosts() // validated with the flags
	handler := httpapi.New(httpapi.Deps{
		Repo: images, Accounts: accountSvc, Registry: registrySvc,
		Director: directorSvc, Jobs: jobSvc, Owners: ownerSvc, Connect: connectSvc,
		Bundles: bundles, Web: pages, Campaigns: campaignSvc, Diagnosis: diagnosisSvc,
		Store: store, Log: log, Metrics: reg, Now: time.Now, TrustedProxies: c.proxies(),
		Ready:              map[string]httpapi.Pinger{"blobs": blobs, "state": store},
		VehicleClientCerts: clientCAs != nil, RecordKey: keys.ImageTimestamp, Push: pushSvc, PublicHosts: publicHosts,
		OnPublish: func() {
			if err := backup.MarkPublished(c.data, time.Now()); err != nil {
				log.Warn("recording the first publish after the restore", "err", err)
			}
		},
		Notices: func() map[string]string {
			if n := restoreNotice(); len(n) > 0 {
				return map[string]string{"publish": backup.PublishNeeded}
			}
			return nil
		},
	})

	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("listen on %s: %w; another server runs there: stop it or choose another --listen", c.listen, err)
		}
		return envflag.Usagef("--listen %s: %v", c.listen, err)
	}
	// One address holds at most --max-connections-per-address; near the
	// total cap, idle keep-alive connections are closed for new clients.
	limited := connlimit.New(ln, connlimit.Config{Max: httpMax, Wait: true, PerAddress: c.perAddress,
		Exempt: connlimit.ExemptList(c.proxies()), OnRefuse: func(r string) { refused.WithLabelValues("http", r).Inc() }})
	ln = limited
	// Headers must arrive within 10 s and idle connections close after a
	// minute; bodies and answers get per-route deadlines (httpapi.Body).
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnState:         func(conn net.Conn, st http.ConnState) { limited.SetIdle(conn, st == http.StateIdle) },
	}
	if certs != nil {
		srv.TLSConfig = certs.Server(clientCAs)
	}
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	if certs != nil {
		wg.Go(func() { reloadCerts(bg, certs, env.Reload, log) })
	}
	// Singleton work runs on the elected replica only. Campaign writes are
	// fenced by its lease; re-signing also takes the repository's lease,
	// and job timeouts are conditional updates.
	wg.Go(func() { images.Watch(bg) }) // every replica: the head it serves from memory
	wg.Go(func() { elector.Run(bg) })
	wg.Go(func() { elector.Every(bg, c.campaignTick, "campaign tick", campaignSvc.Tick) })
	wg.Go(func() {
		elector.Every(bg, min(c.jobTimeout/10, time.Minute), "job sweep", func(ctx context.Context, _ server.Fence) error {
			_, err := jobSvc.Sweep(ctx)
			return err
		})
	})
	wg.Go(func() {
		elector.Every(bg, images.ResignInterval(), "re-sign", func(ctx context.Context, _ server.Fence) error {
			_, err := images.ResignIfNeeded(ctx)
			return err
		})
	})
	wg.Go(func() {
		elector.Every(bg, c.auditCheckpoint, "audit checkpoint", func(ctx context.Context, _ server.Fence) error {
			cp, err := auditlog.Checkpoint(ctx, store, keys.ImageTimestamp, time.Now())
			if err != nil || cp.Seq == 0 || c.auditFile == "" {
				return err
			}
			return auditlog.AppendFile(c.auditFile, cp)
		})
	})
	wg.Go(func() {
		// A signed request is refused beyond vehicleauth.MaxSkew of the
		// server's time, so its nonce need not be kept much longer.
		elector.Every(bg, time.Minute, "nonce prune", func(ctx context.Context, _ server.Fence) error {
			_, err := store.PruneNonces(ctx, time.Now().Add(-time.Hour))
			return err
		})
	})
	defer func() { stopBG(); wg.Wait() }()

	errc := make(chan error, 1)
	go func() {
		if certs != nil {
			errc <- srv.ServeTLS(ln, "", "") // HTTP/2 as well
			return
		}
		errc <- srv.Serve(ln)
	}()
	log.Info("roadsign-server listening", "addr", ln.Addr().String(), "mqtt", pushSvc.Broker(), "data", c.data, "blob", blobDesc(c), "database", dbDesc(c), "auto_assign", c.autoAssign)
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
func statusChecks(ctx context.Context, images *repo.Repo, store server.Store, blobs server.BlobStore, push web.Check, log *slog.Logger) []web.Check {
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

func cmdBackup(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("roadsign-server backup", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	var o backup.Options
	fs.StringVar(&o.Data, "data", "./roadsign-data", "the server's data directory (the server may keep running)")
	fs.StringVar(&o.Out, "out", "", "archive to write (gzipped tar; holds the online private keys: keep it like them)")
	fs.StringVar(&o.Database, "database", "", "the server's --database when it is PostgreSQL (pg_dump backs that up)")
	blob := fs.String("blob", "", "the server's --blob when it is not DATA/blobs")
	if _, err := envflag.Parse(fs, args, env.Getenv, 0, "roadsign-server backup --data DIR --out FILE"); err != nil {
		return err
	}
	if o.Out == "" {
		return envflag.Usagef("backup needs --out FILE")
	}
	if st, err := os.Stat(filepath.Dir(o.Out)); err != nil || !st.IsDir() {
		return envflag.Usagef("--out %s: the directory %s does not exist; create it or choose another", o.Out, filepath.Dir(o.Out))
	}
	switch {
	case *blob == "":
	case strings.HasPrefix(*blob, "file://"):
		o.BlobDir = strings.TrimPrefix(*blob, "file://")
	case strings.HasPrefix(*blob, "s3://"):
		o.S3 = true
	default:
		return envflag.Usagef("--blob %q: want file:///DIR or s3://BUCKET", *blob)
	}
	o.Now = time.Now
	m, err := backup.Create(ctx, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "backed up %s to %s: %d files (database: %s, blobs: %s)\n", o.Data, o.Out, m.Files, m.Database, m.Blobs)
	for _, n := range m.Notes {
		fmt.Fprintf(env.Stdout, "note: %s\n", n)
	}
	return nil
}

func cmdRestore(args []string, env Env) error {
	fs := flag.NewFlagSet("roadsign-server restore", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	var o backup.RestoreOptions
	fs.StringVar(&o.Data, "data", "", "data directory to restore into (new or empty)")
	fs.StringVar(&o.From, "from", "", "archive written by roadsign-server backup")
	fs.BoolVar(&o.Force, "force", false, "replace what the data directory holds")
	if _, err := envflag.Parse(fs, args, env.Getenv, 0, "roadsign-server restore --data DIR --from FILE [--force]"); err != nil {
		return err
	}
	if o.Data == "" || o.From == "" {
		return envflag.Usagef("restore needs --data DIR and --from FILE")
	}
	o.Now = time.Now
	m, err := backup.Restore(o)
	if errors.Is(err, backup.ErrNotEmpty) {
		return envflag.Usagef("%v", err)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "restored the backup of %s into %s; start roadsign-server serve --data %s: it signs every online role above what the old server served\n",
		m.CreatedAt.Format(time.RFC3339), o.Data, o.Data)
	fmt.Fprintln(env.Stdout, "then publish again from the signer's workspace (roadsign-signer publish WORKSPACE --server URL --token TOKEN): vehicles that saw anything published after this backup refuse the older metadata until then; /status and /readyz say so until it is done")
	for _, n := range m.Notes {
		fmt.Fprintf(env.Stdout, "note: %s\n", n)
	}
	return nil
}

// cmdAuditVerify walks the audit log's hash chain and its signed
// checkpoints, in the database and in files outside it: exit 0 when
// intact, 1 naming the first entry altered, removed or reordered.
func cmdAuditVerify(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("roadsign-server audit verify", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	var c config
	var files envflag.List
	fs.StringVar(&c.data, "data", "./roadsign-data", "the server's data directory (SQLite, and online-keys.json to check signatures)")
	fs.StringVar(&c.database, "database", "", "the server's --database (postgres://...) instead of SQLite in --data")
	fs.Var(&files, "checkpoints", "a file of checkpoints kept outside the database (--audit-checkpoint-file, or audit export-checkpoints); repeatable: each checkpoint must still match the chain")
	fs.DurationVar(&c.auditCheckpoint, "audit-checkpoint-interval", 10*time.Minute, "the server's --audit-checkpoint-interval: with --checkpoints, the newest may be at most two intervals old")
	synopsis := "roadsign-server audit verify [--data DIR | --database URL] [--checkpoints FILE ...] [--audit-checkpoint-interval 10m]"
	if _, err := envflag.Parse(fs, args, env.Getenv, 0, synopsis); err != nil {
		return err
	}
	store, err := openAuditStore(ctx, c)
	if err != nil {
		return err
	}
	defer store.Close()
	o := auditlog.Options{MaxAge: 2 * c.auditCheckpoint, Now: time.Now()}
	if o.Pub, err = checkpointKey(c.data); err != nil {
		return err
	}
	for _, f := range files {
		cps, err := auditlog.ReadFile(f)
		if err != nil {
			return envflag.Usagef("--checkpoints: %v", err)
		}
		if len(cps) == 0 {
			return fmt.Errorf("--checkpoints %s holds no checkpoint: nothing outside the database vouches for the log", f)
		}
		o.External = append(o.External, cps...)
	}
	r, err := auditlog.Verify(ctx, store, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "audit log intact: %d entries (%d from before the chain), sealed by its genesis at seq %d, head seq %d\n", r.Entries, r.Legacy, r.GenesisSeq, r.HeadSeq)
	switch {
	case r.Checkpoints+r.External == 0:
		fmt.Fprintln(env.Stdout, "no signed checkpoint yet (the server signs one every --audit-checkpoint-interval)")
	case !r.SignaturesChecked:
		fmt.Fprintf(env.Stdout, "%d checkpoints match the chain; signatures were not checked (no %s in --data)\n", r.Checkpoints+r.External, repo.PublicKeysFile)
	default:
		fmt.Fprintf(env.Stdout, "%d signed checkpoints verified (%d in the database, %d outside it), the latest at seq %d (%s)\n",
			r.Checkpoints+r.External, r.Checkpoints, r.External, r.LatestCheckpoint.Seq, r.LatestCheckpoint.At.Format(time.RFC3339))
	}
	if len(files) == 0 {
		fmt.Fprintln(env.Stdout, "note: only the database's own checkpoints were checked; whoever can rewrite the database can rewrite those too: give --checkpoints FILE")
	}
	return nil
}

// cmdAuditExport writes the database's signed checkpoints to a file, to
// keep where the database's writers cannot reach.
func cmdAuditExport(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("roadsign-server audit export-checkpoints", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	var c config
	out := fs.String("out", "", "file to write (one checkpoint a line)")
	fs.StringVar(&c.data, "data", "./roadsign-data", "the server's data directory (SQLite)")
	fs.StringVar(&c.database, "database", "", "the server's --database (postgres://...) instead of SQLite in --data")
	if _, err := envflag.Parse(fs, args, env.Getenv, 0, "roadsign-server audit export-checkpoints [--data DIR | --database URL] --out FILE"); err != nil {
		return err
	}
	if *out == "" {
		return envflag.Usagef("audit export-checkpoints needs --out FILE")
	}
	store, err := openAuditStore(ctx, c)
	if err != nil {
		return err
	}
	defer store.Close()
	n, err := auditlog.Export(ctx, store, *out)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "exported %d audit checkpoints to %s\n", n, *out)
	return nil
}

// openAuditStore opens the store the audit commands read, refusing to
// create an empty SQLite database where none is.
func openAuditStore(ctx context.Context, c config) (*sqlstore.Store, error) {
	if c.database == "" {
		if _, err := os.Stat(filepath.Join(c.data, "roadsign.db")); err != nil {
			return nil, envflag.Usagef("no database at %s: give the server's --data or --database", filepath.Join(c.data, "roadsign.db"))
		}
	}
	return openStore(ctx, c)
}

// cmdRecordVerify checks a signed software record export offline: exit 0
// when it is the server's signed record of that VIN, 3 when it is not.
func cmdRecordVerify(args []string, env Env) error {
	fs := flag.NewFlagSet("roadsign-server record verify", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	vinFlag := fs.String("vin", "", "the VIN the record must be of")
	keysFile := fs.String("online-keys", "", "the server's published online-keys.json")
	data := fs.String("data", "", "or the server's data directory (its online-keys.json)")
	rest, err := envflag.Parse(fs, args, env.Getenv, 1, "roadsign-server record verify --vin VIN [--online-keys FILE | --data DIR] RECORD")
	if err != nil {
		return err
	}
	if *vinFlag == "" || (*keysFile == "") == (*data == "") {
		return envflag.Usagef("record verify needs --vin and one of --online-keys FILE or --data DIR")
	}
	if *keysFile == "" {
		*keysFile = filepath.Join(*data, repo.PublicKeysFile)
	}
	pub, err := timestampKey(*keysFile)
	if err != nil {
		return envflag.Usagef("--online-keys: %v", err)
	}
	f, err := os.Open(rest[0])
	if err != nil {
		return envflag.Usagef("%v", err)
	}
	defer f.Close()
	h, n, err := softwarerecord.Verify(f, pub, *vinFlag, nil)
	if err != nil {
		return fmt.Errorf("%w: %s is not a software record the server signed for %s: %v", errRefused, rest[0], *vinFlag, err)
	}
	fmt.Fprintf(env.Stdout, "software record of %s: %d entries, signed by key %s at %s\n", h.VIN, n, h.KeyID, h.GeneratedAt.Format(time.RFC3339))
	return nil
}

// checkpointKey is the online key that signs audit checkpoints (the image
// timestamp key), from DATA/online-keys.json; nil when there is none.
func checkpointKey(data string) (ed25519.PublicKey, error) {
	pub, err := timestampKey(filepath.Join(data, repo.PublicKeysFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return pub, err
}

// timestampKey reads the image timestamp key from an online-keys.json.
func timestampKey(path string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ok meta.OnlineKeys
	if err := json.Unmarshal(b, &ok); err != nil || ok.Image.Timestamp == nil {
		return nil, fmt.Errorf("%s: not the server's online keys: %v", path, err)
	}
	pk, err := ok.Image.Timestamp.ToPublicKey()
	if err != nil {
		return nil, err
	}
	pub, isEd := pk.(ed25519.PublicKey)
	if !isEd {
		return nil, fmt.Errorf("%s: the timestamp key is not ed25519", path)
	}
	return pub, nil
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
