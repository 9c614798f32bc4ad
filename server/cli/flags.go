package cli

import (
	"flag"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/roadsign/roadsign/internal/envflag"
	"github.com/roadsign/roadsign/server/accounts"
	"github.com/roadsign/roadsign/server/director"
)

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
	databaseWait    time.Duration
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
	deltas          string
	deltaQueue      int
	deltaWorkers    int
	deltaTimeout    time.Duration
	encrypt         envflag.List
	approveJobsOver int
	webhookRetryFor time.Duration
	oidcIssuer      string
	oidcClientID    string
	oidcSecret      string
	oidcRolesClaim  string
	oidcRedirect    string
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
		fs.IntVar(&c.approveJobsOver, "approve-jobs-over", 10, "jobs for more than this many vehicles in one request need another account's approval (four eyes)")
		fs.StringVar(&c.oidcIssuer, "oidc-issuer", "", "single sign-on to the console: the OpenID Connect provider's issuer URL (with --oidc-client-id and --oidc-client-secret)")
		fs.StringVar(&c.oidcClientID, "oidc-client-id", "", "this server's client ID at the OpenID Connect provider")
		fs.StringVar(&c.oidcSecret, "oidc-client-secret", "", "this server's client secret at the provider (prefer the environment variable ROADSIGN_OIDC_CLIENT_SECRET)")
		fs.StringVar(&c.oidcRolesClaim, "oidc-roles-claim", "roles", "the ID token claim that holds a user's Roadsign roles (a dealer's regions come from the regions claim)")
		fs.StringVar(&c.oidcRedirect, "oidc-redirect-url", "", "the redirect URL registered at the provider (default: the console's /dealer/sso/callback at the address the browser used)")
		fs.DurationVar(&c.webhookRetryFor, "webhook-retry-for", 24*time.Hour, "how long a webhook delivery is retried (exponential backoff) before it is marked failed")
		fs.DurationVar(&c.jobRetry, "job-retry", time.Minute, "first retry delay of a failed job (doubles per attempt)")
		fs.DurationVar(&c.authTokenTTL, "auth-token-ttl", time.Hour, "lifetime of a connected-services token; vehicles renew it with a third left")
		fs.StringVar(&c.deltas, "deltas", "on", "make deltas from the images vehicles run to the ones they are assigned, and offer them instead of full images: on or off")
		fs.IntVar(&c.deltaQueue, "delta-queue", 256, "most deltas waiting to be made on this replica; more are asked for again at later polls")
		fs.IntVar(&c.deltaWorkers, "delta-workers", 1, "deltas made at once on this replica (each reads both images and uses a CPU)")
		fs.DurationVar(&c.deltaTimeout, "delta-timeout", 10*time.Minute, "longest time to make one delta; past it vehicles get the full image")
		fs.Var(&c.encrypt, "encrypt-hardware-id", "keep, serve and bundle images for this hardware ID only encrypted, per ECU (repeatable, or comma-separated); the key-encryption key is DATA/keys/file-kek.key")
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
		fs.DurationVar(&c.databaseWait, "database-wait", 2*time.Minute, "at start, how long to keep trying a PostgreSQL --database that does not take writes (a failover in progress) before exiting")
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
	if cmd == "serve" && c.deltas != "on" && c.deltas != "off" {
		return c, envflag.Usagef("--deltas %q: want on or off", c.deltas)
	}
	if cmd == "serve" && (c.deltaQueue < 1 || c.deltaWorkers < 1 || c.deltaTimeout <= 0) {
		return c, envflag.Usagef("--delta-queue and --delta-workers must be at least 1 and --delta-timeout positive")
	}
	if cmd == "serve" && c.directorExpiry < 2*time.Second {
		return c, envflag.Usagef("--director-expiry %s is too short; use at least 2s", c.directorExpiry)
	}
	if cmd == "serve" && (c.hashConcurrency < 0 || c.loginsPerMinute < 1) {
		return c, envflag.Usagef("--password-hash-concurrency must be 0 or more and --login-attempts-per-minute at least 1")
	}
	if cmd == "serve" && c.databaseWait < 0 {
		return c, envflag.Usagef("--database-wait must not be negative")
	}
	if cmd == "serve" && (c.leaderLease < time.Second || c.campaignTick <= 0) {
		return c, envflag.Usagef("--leader-lease must be at least 1s and --campaign-tick positive")
	}
	if cmd == "serve" && c.oidcIssuer != "" {
		u, err := url.Parse(c.oidcIssuer)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return c, envflag.Usagef("--oidc-issuer %q: give the provider's issuer URL, such as https://login.example.com", c.oidcIssuer)
		}
		if c.oidcClientID == "" || c.oidcSecret == "" {
			return c, envflag.Usagef("--oidc-issuer needs --oidc-client-id and --oidc-client-secret (or ROADSIGN_OIDC_CLIENT_SECRET)")
		}
	}
	if cmd == "serve" && c.oidcIssuer == "" && (c.oidcClientID != "" || c.oidcSecret != "") {
		return c, envflag.Usagef("--oidc-client-id and --oidc-client-secret need --oidc-issuer")
	}
	if cmd == "serve" && (c.approveJobsOver < 0 || c.webhookRetryFor < time.Minute) {
		return c, envflag.Usagef("--approve-jobs-over must be 0 or more and --webhook-retry-for at least 1m")
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
