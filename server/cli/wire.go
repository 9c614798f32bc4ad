package cli

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/roadsign/roadsign/internal/envflag"
	"github.com/roadsign/roadsign/internal/tlsconf"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/accounts"
	"github.com/roadsign/roadsign/server/approvals"
	"github.com/roadsign/roadsign/server/auditlog"
	"github.com/roadsign/roadsign/server/backup"
	"github.com/roadsign/roadsign/server/bundle"
	"github.com/roadsign/roadsign/server/campaigns"
	"github.com/roadsign/roadsign/server/connect"
	"github.com/roadsign/roadsign/server/deltas"
	"github.com/roadsign/roadsign/server/diagnosis"
	"github.com/roadsign/roadsign/server/director"
	"github.com/roadsign/roadsign/server/httpapi"
	"github.com/roadsign/roadsign/server/jobs"
	"github.com/roadsign/roadsign/server/leader"
	"github.com/roadsign/roadsign/server/owners"
	"github.com/roadsign/roadsign/server/push"
	"github.com/roadsign/roadsign/server/registry"
	"github.com/roadsign/roadsign/server/repo"
	"github.com/roadsign/roadsign/server/sqlstore"
	"github.com/roadsign/roadsign/server/web"
	"github.com/roadsign/roadsign/server/webhooks"
)

// parts are what serve opened before wiring: the stores, the online
// keys, the logger and the metrics registry.
type parts struct {
	store *sqlstore.Store
	blobs server.BlobStore
	keys  *repo.OnlineKeys
	log   *slog.Logger
	reg   *prometheus.Registry
}

// services are the server's parts, each built whole from its config
// (no setter runs after construction), in dependency order.
type services struct {
	images    *repo.Repo
	elector   *leader.Elector
	push      *push.Service
	pusher    push.Publisher // nil: push is off; closed by serve
	jobs      *jobs.Service
	campaigns *campaigns.Service
	director  *director.Service
	deltas    *deltas.Service
	diagnosis *diagnosis.Service
	connect   *connect.Service
	owners    *owners.Service
	registry  *registry.Service
	webhooks  *webhooks.Service
	handler   http.Handler

	certs     *tlsconf.Reloader // nil: plain HTTP
	clientCAs *x509.CertPool    // nil: no client certificates
	httpMax   int
	refused   *prometheus.CounterVec
}

// wire builds every service of serve from the flags and the opened parts.
func wire(ctx context.Context, c config, p parts) (_ *services, err error) {
	store, log, reg := p.store, p.log, p.reg
	s := &services{}
	defer func() {
		if err != nil && s.pusher != nil {
			s.pusher.Close()
		}
	}()
	floor, err := backup.Floor(c.data)
	if err != nil {
		return nil, err
	}
	replica := uuid.NewString()
	var kek []byte
	if len(c.encrypt) > 0 {
		// The key-encryption key sits in the key store with the online
		// keys (every replica needs the same), never in the database.
		if kek, err = repo.LoadKEK(c.data); err != nil {
			return nil, fmt.Errorf("--encrypt-hardware-id: %w", err)
		}
	}
	s.images, err = repo.New(p.blobs, p.keys, repo.Config{
		TimestampExpiry: c.timestampExpiry, SnapshotExpiry: c.snapshotExpiry, MaxTargetSize: c.maxTargetSize,
		VersionFloor: floor, Leases: store, Holder: replica, Redirects: c.blobRedirect, Encrypt: c.encrypt, KEK: kek,
	}, time.Now, log, reg)
	if err != nil {
		return nil, envflag.Usagef("--blob-redirect: %v", err)
	}
	if err := s.images.SealPublished(ctx); err != nil {
		return nil, fmt.Errorf("--encrypt-hardware-id: %w", err)
	}
	if floor > 0 {
		// Restored from a backup: sign above whatever the lost server
		// served before any vehicle asks (server/backup explains).
		if _, err := s.images.ResignIfNeeded(ctx); err != nil {
			return nil, fmt.Errorf("re-sign after restore: %w", err)
		}
		log.Info("restored data: every online role signs at or above the version floor", "version_floor", floor)
	}
	s.elector = leader.New(store, "leader", replica, c.leaderLease, log, reg)

	if c.tlsCert != "" {
		if s.certs, err = tlsconf.NewReloader(c.tlsCert, c.tlsKey); err != nil {
			return nil, envflag.Usagef("%v", err)
		}
		if c.clientCA != "" {
			if s.clientCAs, err = tlsconf.CertPool(c.clientCA); err != nil {
				return nil, envflag.Usagef("--client-ca: %v", err)
			}
		}
	}
	var mqttMax int
	s.httpMax, mqttMax = fitOpenFiles(c, log)
	s.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "roadsign_connections_refused_total",
		Help: "Connections closed at once for a cap (per-address, total) or shed while idle near the cap."}, []string{"listener", "reason"})
	reg.MustRegister(s.refused)
	vehicleKey := func(ctx context.Context, vin string) (ed25519.PublicKey, error) {
		key, err := store.VehicleKey(ctx, vin)
		return ed25519.PublicKey(key), err
	}
	s.pusher, err = startPush(c, pushDeps{keys: vehicleKey, nonces: store, certs: s.certs, clientCAs: s.clientCAs,
		max: mqttMax, refused: s.refused}, log)
	if err != nil {
		return nil, err
	}
	s.push = push.New(s.pusher, log, time.Now)

	s.webhooks = webhooks.New(webhooks.Config{Store: store, Now: time.Now, Log: log, Metrics: reg, RetryFor: c.webhookRetryFor})
	notify := server.Notify(s.webhooks.Emit)
	approvalSvc := approvals.New(store, time.Now, notify)
	if s.jobs, err = jobs.New(jobs.Config{Store: store, Images: s.images, Timeout: c.jobTimeout, RetryBase: c.jobRetry,
		Wake: s.push.Wake, Now: time.Now, Log: log, Notify: notify, Approvals: approvalSvc, ApproveOver: c.approveJobsOver}); err != nil {
		return nil, err
	}
	reg.MustRegister(s.jobs.Collector())
	if s.campaigns, err = campaigns.New(campaigns.Config{Store: store, Images: s.images, Jobs: s.jobs,
		Wake: s.push.Wake, Now: time.Now, Metrics: reg, Log: log, Approvals: approvalSvc, Notify: notify}); err != nil {
		return nil, err
	}
	// With --deltas off the service only offers deltas signed offline.
	if s.deltas, err = deltas.New(deltas.Config{Repo: s.images, Off: c.deltas == "off", Queue: c.deltaQueue,
		Workers: c.deltaWorkers, Timeout: c.deltaTimeout, Log: log, Metrics: reg}); err != nil {
		return nil, err
	}
	if s.director, err = director.New(director.Config{Store: store, Images: s.images, Keys: p.keys, Jobs: s.jobs, Campaigns: store, Deltas: s.deltas, Sealer: s.images,
		AutoAssign: c.autoAssign, Expiry: c.directorExpiry, VersionFloor: floor, Now: time.Now, Log: log}); err != nil {
		return nil, err
	}

	secret, err := connect.LoadSecret(c.data)
	if err != nil {
		return nil, fmt.Errorf("connected-services secret: %w", err)
	}
	restoreNotice := func() []server.HealthCheck {
		r, restored, err := backup.Load(c.data)
		if err != nil || !restored || !r.PublishedAt.IsZero() {
			return nil
		}
		return []server.HealthCheck{{Name: "Restored from a backup", Detail: fmt.Sprintf("of %s: %s", r.BackupCreatedAt.Format(time.DateOnly), backup.PublishNeeded)}}
	}
	status := func(ctx context.Context) []server.HealthCheck {
		return append(statusChecks(ctx, s.images, store, p.blobs, pushStatus(c), log), restoreNotice()...)
	}
	// Every handshake's diagnosis reads the service's health: at most
	// every few seconds per replica, so a fleet's handshakes do not poll
	// the stores.
	if s.diagnosis, err = diagnosis.New(diagnosis.Config{Store: store, Director: s.director, Images: s.images,
		Status: memoize(5*time.Second, status), OfflineAfter: c.offlineAfter, Now: time.Now, Log: log, Metrics: reg, Notify: notify}); err != nil {
		return nil, err
	}
	if s.connect, err = connect.New(connect.Config{Store: store, Director: s.director, Images: s.images, Secret: secret,
		TokenTTL: c.authTokenTTL, Handshake: s.diagnosis.Record, Now: time.Now}); err != nil {
		return nil, err
	}
	if s.owners, err = owners.New(owners.Config{Store: store, Now: time.Now}); err != nil {
		return nil, err
	}
	if s.registry, err = registry.New(registry.Config{Store: store, Images: s.images, Owns: s.owners.Owns,
		Registered: s.campaigns.OnRegister, Now: time.Now, Log: log, Notify: notify}); err != nil {
		return nil, err
	}

	bundles := bundle.New(s.images, s.director, time.Now, reg)
	accountSvc := accounts.New(store, accounts.NewPasswords(c.hashConcurrency, reg), c.adminToken, time.Now)
	throttle := accounts.DefaultThrottle
	throttle.PerIP = c.loginsPerMinute
	var sso *web.SSO
	if c.oidcIssuer != "" {
		sso = &web.SSO{Issuer: c.oidcIssuer, ClientID: c.oidcClientID, ClientSecret: c.oidcSecret, RolesClaim: c.oidcRolesClaim, RedirectURL: c.oidcRedirect}
	}
	pages, err := web.New(web.Deps{
		Accounts: accountSvc, Throttle: accounts.NewThrottle(throttle, store, time.Now), Owners: s.owners, Registry: s.registry, Jobs: s.jobs,
		Bundles: bundles, Campaigns: s.campaigns, Store: store, Secret: secret, Now: time.Now, Log: log,
		Diagnosis: s.diagnosis, Status: status, Approvals: approvalSvc, Webhooks: s.webhooks, SSO: sso,
	})
	if err != nil {
		return nil, err
	}
	publicHosts, _ := c.publicHosts() // validated with the flags
	s.handler = httpapi.New(httpapi.Deps{
		Repo: s.images, Accounts: accountSvc, Registry: s.registry,
		Director: s.director, Jobs: s.jobs, Owners: s.owners, Connect: s.connect,
		Bundles: bundles, Web: pages, Campaigns: s.campaigns, Diagnosis: s.diagnosis,
		Approvals: approvalSvc, Webhooks: s.webhooks,
		Store: store, Log: log, Metrics: reg, Now: time.Now, TrustedProxies: c.proxies(),
		Ready: map[string]httpapi.Pinger{"state": store}, Degraded: map[string]httpapi.Pinger{"blobs": p.blobs},
		VehicleClientCerts: s.clientCAs != nil, RecordKey: p.keys.ImageTimestamp, TimeKey: p.keys.DirectorTime, Push: s.push, PublicHosts: publicHosts,
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
	return s, nil
}

// background starts what runs beside the requests: certificate reloads,
// the served head's watch, the election, and the singleton work that runs
// on the elected replica only (campaign writes are fenced by its lease;
// re-signing also takes the repository's lease, and job timeouts are
// conditional updates). The returned stop ends it all and waits.
func (s *services) background(ctx context.Context, c config, store *sqlstore.Store, keys *repo.OnlineKeys, reload <-chan os.Signal, log *slog.Logger) (stop func()) {
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	if s.certs != nil {
		wg.Go(func() { reloadCerts(bg, s.certs, reload, log) })
	}
	wg.Go(func() { s.images.Watch(bg) }) // every replica: the head it serves from memory
	wg.Go(func() { s.elector.Run(bg) })
	wg.Go(func() { s.deltas.Run(bg) })                // every replica makes the deltas its vehicles ask for
	wg.Go(func() { s.webhooks.Run(bg, time.Second) }) // every replica delivers; each delivery is claimed by one
	every := func(d time.Duration, name string, f func(ctx context.Context, _ server.Fence) error) {
		wg.Go(func() { s.elector.Every(bg, d, name, f) })
	}
	every(c.campaignTick, "campaign tick", s.campaigns.Tick)
	every(min(c.jobTimeout/10, time.Minute), "job sweep", func(ctx context.Context, _ server.Fence) error {
		_, err := s.jobs.Sweep(ctx)
		return err
	})
	every(s.images.ResignInterval(), "re-sign", func(ctx context.Context, _ server.Fence) error {
		_, err := s.images.ResignIfNeeded(ctx)
		return err
	})
	every(c.auditCheckpoint, "audit checkpoint", func(ctx context.Context, _ server.Fence) error {
		cp, err := auditlog.Checkpoint(ctx, store, keys.ImageTimestamp, time.Now())
		if err != nil || cp.Seq == 0 || c.auditFile == "" {
			return err
		}
		return auditlog.AppendFile(c.auditFile, cp)
	})
	// A signed request is refused beyond vehicleauth.MaxSkew of the
	// server's time, so its nonce need not be kept much longer.
	every(time.Minute, "nonce prune", func(ctx context.Context, _ server.Fence) error {
		_, err := store.PruneNonces(ctx, time.Now().Add(-time.Hour))
		return err
	})
	return func() { cancel(); wg.Wait() }
}
