// Package httpapi is the server's HTTP layer (gin): routing, auth checks,
// request decoding and error rendering. Handlers stay thin and call the
// services in the other server packages.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/accounts"
	"github.com/roadsign/roadsign/server/approvals"
	"github.com/roadsign/roadsign/server/auditlog"
	"github.com/roadsign/roadsign/server/bundle"
	"github.com/roadsign/roadsign/server/campaigns"
	"github.com/roadsign/roadsign/server/connect"
	"github.com/roadsign/roadsign/server/diagnosis"
	"github.com/roadsign/roadsign/server/director"
	"github.com/roadsign/roadsign/server/jobs"
	"github.com/roadsign/roadsign/server/owners"
	"github.com/roadsign/roadsign/server/push"
	"github.com/roadsign/roadsign/server/registry"
	"github.com/roadsign/roadsign/server/repo"
	"github.com/roadsign/roadsign/server/web"
	"github.com/roadsign/roadsign/server/webhooks"
)

// ginMode sets gin's process-wide mode once; gin keeps it in a global.
var ginMode sync.Once

// maxJSONBody caps JSON request bodies (publish carries targets metadata).
const maxJSONBody = 16 << 20

// Store is what the handlers read of the state store directly (the rest
// through the services): vehicles, request nonces, software records and
// the audit log.
type Store interface {
	Vehicle(ctx context.Context, vin string) (server.Vehicle, error)
	UseNonce(ctx context.Context, vin, nonce string, at time.Time) error
	SoftwareRecords(ctx context.Context, vin string, q server.RecordQuery) ([]server.SoftwareRecord, error)
	ListAudit(ctx context.Context, afterID int64, limit int) ([]server.AuditEntry, error)
	RecentAudit(ctx context.Context, beforeID int64, limit int) ([]server.AuditEntry, error)
	auditlog.Appender
}

// Pinger is a dependency /readyz checks.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Deps are what the handlers call.
type Deps struct {
	Repo     *repo.Repo
	Accounts *accounts.Service
	Registry *registry.Service
	Director *director.Service
	Jobs     *jobs.Service
	Owners   *owners.Service
	Connect  *connect.Service
	Bundles  *bundle.Service
	// Campaigns may be nil in tests that do not use them.
	Campaigns *campaigns.Service
	Diagnosis *diagnosis.Service
	// Approvals are the four-eyes approvals; Webhooks the subscriptions.
	Approvals *approvals.Service
	Webhooks  *webhooks.Service
	Web       *web.Web
	Store     Store
	// Ready are the dependencies without which the replica serves
	// nothing useful (the state store): one failing makes /readyz 503, so
	// a load balancer sends it no traffic. Degraded are those only some
	// requests need (the blob store: downloads, publishing): one failing
	// is reported ("status": "degraded") but the replica stays ready, for
	// every other replica would be failing it too and check-ins and
	// director metadata do not need it.
	Ready, Degraded map[string]Pinger
	Log             *slog.Logger
	Metrics         *prometheus.Registry
	Now             func() time.Time
	// TrustedProxies are the proxies whose X-Forwarded-For is believed
	// (nil: none).
	TrustedProxies []string
	// VehicleClientCerts (mutual TLS) requires a vehicle's signed requests
	// to arrive over TLS with a verified client certificate for the key
	// registered to that VIN.
	VehicleClientCerts bool
	// RecordKey signs software record exports (the image timestamp key,
	// published in online-keys.json); nil: no signed exports.
	RecordKey *keys.Key
	// TimeKey signs time attestations (the director root's "time" role);
	// nil: none are given.
	TimeKey *keys.Key
	// Push tells vehicles where to hear wake-ups (nil: nowhere).
	Push *push.Service
	// OnPublish, if set, hears of each publish that changed the
	// repository; Notices, if set, are what /readyz says beside its
	// checks (a restored server waiting for a publish).
	OnPublish func()
	Notices   func() map[string]string
	// PublicHosts are the hosts (host[:port]) of the URLs vehicles are
	// given (--public-url): a vehicle's signature over one of them is
	// accepted when a proxy rewrote the request's Host.
	PublicHosts []string
}

type api struct {
	Deps
}

// New returns the server's http.Handler: every route comes from the route
// table (routes.go), which also produces the OpenAPI document.
func New(d Deps) http.Handler {
	ginMode.Do(func() { gin.SetMode(gin.ReleaseMode) })
	a := &api{Deps: d}
	r := gin.New()
	r.HandleMethodNotAllowed = true
	// Client IPs (logs, login throttling) come from X-Forwarded-For only
	// when the connection is from a trusted proxy.
	if err := r.SetTrustedProxies(d.TrustedProxies); err != nil {
		panic(fmt.Sprintf("trusted proxies: %v", err)) // validated by the command line
	}
	m := newHTTPMetrics(d.Metrics)
	r.Use(a.recover, a.observe(m))
	r.NoRoute(func(c *gin.Context) {
		a.fail(c, server.Errorf(server.KindNotFound, "no route %s %s", c.Request.Method, c.Request.URL.Path))
	})
	r.NoMethod(func(c *gin.Context) {
		a.fail(c, &server.Error{Kind: server.KindInvalid, Code: errcode.MethodNotAllowed, Message: fmt.Sprintf("method %s not allowed on %s", c.Request.Method, c.Request.URL.Path)})
	})
	for _, rt := range a.routes() {
		// The body limit comes before anything reads the body (a vehicle's
		// signature check included).
		r.Handle(rt.Method, rt.Path, a.limit(rt.Body), a.authenticate, a.allow(rt.Who), rt.handler)
	}
	return headPath{next: r, a: a, m: m}
}

// statusOf is the one place that maps error kinds to HTTP statuses.
func statusOf(k server.Kind) int {
	switch k {
	case server.KindInvalid:
		return http.StatusBadRequest
	case server.KindUnauthorized:
		return http.StatusUnauthorized
	case server.KindForbidden:
		return http.StatusForbidden
	case server.KindNotFound:
		return http.StatusNotFound
	case server.KindConflict:
		return http.StatusConflict
	case server.KindTooLarge:
		return http.StatusRequestEntityTooLarge
	case server.KindUnavailable:
		return http.StatusServiceUnavailable
	case server.KindLengthRequired:
		return http.StatusLengthRequired
	}
	return http.StatusInternalServerError
}

func (a *api) fail(c *gin.Context, err error) {
	e := server.ErrorOf(err)
	setOutcome(c, e.Code)
	if c.Request.ContentLength != 0 {
		// The body may be unread: closing beats net/http draining it (up
		// to 256 KiB, as slowly as the client likes) before answering.
		c.Header("Connection", "close")
	}
	switch e.Kind {
	case server.KindInternal:
		a.Log.ErrorContext(c.Request.Context(), "request failed", "method", c.Request.Method, "path", c.Request.URL.Path, "err", err)
	case server.KindUnavailable:
		a.Log.WarnContext(c.Request.Context(), "request not served now", "method", c.Request.Method, "path", c.Request.URL.Path, "err", err)
		c.Header("Retry-After", "5")
	}
	if e.Code == errcode.MethodNotAllowed {
		c.AbortWithStatusJSON(http.StatusMethodNotAllowed, gin.H{"error": gin.H{"code": e.Code, "message": e.Message}})
		return
	}
	c.AbortWithStatusJSON(statusOf(e.Kind), gin.H{"error": gin.H{"code": e.Code, "message": e.Message}})
}

func (a *api) recover(c *gin.Context) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			a.Log.Error("panic in handler", "path", c.Request.URL.Path, "panic", v)
			a.fail(c, fmt.Errorf("panic: %v", v))
		}
	}()
	c.Next()
}

type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// What a fleet operator watches, by outcome rather than by status.
	checkins, authorizations, metadata *prometheus.CounterVec
	// servedBytes counts target bytes served, by kind (delta, full).
	servedBytes *prometheus.CounterVec
}

// outcomeKey is where a.fail (the error's code) or a handler (its
// success) leaves a request's outcome for the metrics.
const outcomeKey = "roadsign.outcome"

// setOutcome records what a request came to, for /metrics.
func setOutcome(c *gin.Context, outcome string) { c.Set(outcomeKey, outcome) }

func outcomeOf(c *gin.Context, ok string) string {
	if v, found := c.Get(outcomeKey); found {
		return v.(string)
	}
	if c.Writer.Status() >= 400 {
		return "http_" + strconv.Itoa(c.Writer.Status())
	}
	return ok
}

// metadataKind names a repository or director file by role, so the
// metric has a handful of series whatever the versions and targets.
func metadataKind(file string) string {
	name := path.Base(file)
	switch {
	case strings.HasPrefix(strings.TrimPrefix(file, "/"), "targets/"):
		return "target"
	case name == "timestamp.json":
		return "timestamp"
	case strings.HasSuffix(name, "root.json"):
		return "root"
	case strings.HasSuffix(name, "snapshot.json"):
		return "snapshot"
	case strings.HasSuffix(name, "targets.json"):
		return "targets"
	}
	return "other"
}

func newHTTPMetrics(reg *prometheus.Registry) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "roadsign_http_requests_total", Help: "HTTP requests by route, method and status.",
		}, []string{"route", "method", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "roadsign_http_request_duration_seconds", Help: "HTTP request latency by route.",
			Buckets: prometheus.DefBuckets,
		}, []string{"route", "method"}),
	}
	m.checkins = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "roadsign_checkins_total", Help: "Vehicle check-ins (signed manifests) by result: recorded, or the refusal's error code.",
	}, []string{"result"})
	m.authorizations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "roadsign_authorizations_total", Help: "Connected-services handshakes by outcome: challenge_issued, authorized, or the refusal's code.",
	}, []string{"outcome"})
	m.metadata = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "roadsign_metadata_requests_total", Help: "Image repository (repo) and director requests by file role and status.",
	}, []string{"repo", "file", "status"})
	m.servedBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "roadsign_served_bytes_total", Help: "Bytes of target files served by this replica: kind delta or full (images). Presigned redirects are not counted.",
	}, []string{"kind"})
	m.servedBytes.WithLabelValues("delta")
	m.servedBytes.WithLabelValues("full")
	reg.MustRegister(m.requests, m.duration, m.checkins, m.authorizations, m.metadata, m.servedBytes)
	return m
}

// fleet counts the requests a fleet operator watches by what they came to.
func (m *httpMetrics) fleet(c *gin.Context, route string, status int) {
	switch route {
	case "/api/v1/vehicles/:vin/manifest":
		m.checkins.WithLabelValues(outcomeOf(c, "recorded")).Inc()
	case "/api/v1/vehicles/:vin/auth":
		m.authorizations.WithLabelValues(outcomeOf(c, errcode.Authorized)).Inc()
	case "/repo/*file":
		name := strings.TrimPrefix(c.Param("file"), "/")
		m.countMetadata("image", c.Param("file"), status)
		if n := c.Writer.Size(); n > 0 && strings.HasPrefix(name, "targets/") && (status == http.StatusOK || status == http.StatusPartialContent) {
			kind := "full"
			if strings.HasPrefix(name, "targets/deltas/") {
				kind = "delta"
			}
			m.servedBytes.WithLabelValues(kind).Add(float64(n))
		}
	case "/director/:vin/*file":
		m.countMetadata("director", c.Param("file"), status)
	}
}

// count records one request by route pattern, method and status.
func (m *httpMetrics) count(route, method string, status int, d time.Duration) {
	m.requests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(route, method).Observe(d.Seconds())
}

// countMetadata records one request for a repository or director file.
func (m *httpMetrics) countMetadata(repo, file string, status int) {
	m.metadata.WithLabelValues(repo, metadataKind(file), strconv.Itoa(status)).Inc()
}

// observe logs each request (slog) and records metrics by route pattern,
// never by raw path, so VINs and hashes do not explode label cardinality.
func (a *api) observe(m *httpMetrics) gin.HandlerFunc {
	return func(c *gin.Context) {
		start := time.Now()
		c.Next()
		route := c.FullPath()
		if route == "" {
			route = "unmatched"
		}
		status := c.Writer.Status()
		d := time.Since(start)
		m.count(route, c.Request.Method, status, d)
		m.fleet(c, route, status)
		if route == "/healthz" || route == "/metrics" {
			return
		}
		a.logRequest(c.Request, status, c.Writer.Size(), d, c.ClientIP())
	}
}

// logRequest writes the request log line, when info is logged at all.
func (a *api) logRequest(r *http.Request, status, size int, d time.Duration, remote string) {
	if !a.Log.Enabled(r.Context(), slog.LevelInfo) {
		return
	}
	a.Log.LogAttrs(r.Context(), slog.LevelInfo, "http",
		slog.String("method", r.Method), slog.String("path", r.URL.Path),
		slog.Int("status", status), slog.Int("bytes", size),
		slog.Duration("duration", d), slog.String("remote", remote))
}

func (a *api) readyz(c *gin.Context) {
	// The checks run at once, each with its own deadline: a load
	// balancer's health check must be answered in time even while a
	// dependency hangs (a frozen blob store would otherwise hold the
	// answer past the check's timeout and take the replica out).
	var mu sync.Mutex
	checks := gin.H{}
	var down, degraded bool
	var wg sync.WaitGroup
	check := func(name string, p Pinger, within time.Duration, failed *bool) {
		ctx, cancel := context.WithTimeout(c.Request.Context(), within)
		defer cancel()
		err := p.Ping(ctx)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			// The cause (paths, hosts) goes to the log, not to the world.
			a.Log.WarnContext(ctx, "readiness check failed", "check", name, "err", err)
			checks[name] = "unavailable"
			*failed = true
			return
		}
		checks[name] = "ok"
	}
	for name, p := range a.Ready {
		wg.Go(func() { check(name, p, 3*time.Second, &down) })
	}
	for name, p := range a.Degraded {
		wg.Go(func() { check(name, p, time.Second, &degraded) })
	}
	wg.Wait()
	body := gin.H{"status": "ok", "checks": checks}
	if degraded {
		body["status"] = "degraded"
	}
	if a.Notices != nil {
		if n := a.Notices(); len(n) > 0 {
			body["notices"] = n
		}
	}
	if down {
		body["status"] = "unavailable"
		c.JSON(http.StatusServiceUnavailable, body)
		return
	}
	c.JSON(http.StatusOK, body)
}

// serveFile serves a repository file with caching headers; http.ServeContent
// handles Range, If-Range and If-None-Match against the ETag set here.
func serveFile(c *gin.Context, name string, f *repo.File) {
	w := c.Writer.Header()
	switch f.Kind {
	case repo.Target:
		w.Set("ETag", `"`+f.SHA256+`"`)
		w.Set("Cache-Control", "public, max-age=31536000, immutable")
		w.Set("Content-Type", "application/octet-stream")
	case repo.Immutable:
		w.Set("Cache-Control", "public, max-age=31536000, immutable")
		w.Set("ETag", fmt.Sprintf(`"%d-%s"`, f.Size, name))
	case repo.Mutable:
		w.Set("Cache-Control", "no-cache")
		w.Set("ETag", fmt.Sprintf(`"%d-%d"`, f.Size, f.ModTime.UnixNano()))
	}
	if f.ETag != "" {
		w.Set("ETag", f.ETag) // of the content: 304 for an unchanged file
	}
	http.ServeContent(c.Writer, c.Request, name, time.Time{}, f)
}

// HardwareIDsHeader, on a target upload, names the hardware the image is
// for (comma-separated), so an image for encrypted hardware is sealed as
// it streams in; EncryptedHeader marks a target kept only sealed.
const (
	HardwareIDsHeader = "X-Roadsign-Hardware-Ids"
	EncryptedHeader   = "X-Roadsign-Encrypted"
)

func (a *api) repoFile(c *gin.Context) {
	name := strings.TrimPrefix(c.Param("file"), "/")
	// GET only: a presigned URL is for one method, and HEAD (the signer
	// checking what is uploaded) is cheap here.
	if c.Request.Method == http.MethodGet {
		u, ok, err := a.Repo.TargetRedirect(c.Request.Context(), name)
		if err != nil {
			a.fail(c, err)
			return
		}
		if ok && !a.sealedOnly(c, name) {
			c.Header("Cache-Control", "no-store") // the URL expires
			c.Redirect(http.StatusTemporaryRedirect, u)
		}
		if ok {
			return
		}
	}
	f, err := a.Repo.Open(c.Request.Context(), name)
	if server.ErrorOf(err).Kind == server.KindNotFound && a.sealedOnly(c, name) {
		return
	}
	if err != nil {
		a.fail(c, err)
		return
	}
	defer f.Close()
	serveFile(c, name, f)
}

// sealedOnly answers for a target kept only sealed, which is never served
// in clear (HEAD still tells the signer it is uploaded), and reports
// whether it did. It is asked only where the clear file would be missing
// (or not looked at: a redirect), so clear targets cost no extra read.
func (a *api) sealedOnly(c *gin.Context, name string) bool {
	n, ok, err := a.Repo.SealedTarget(c.Request.Context(), name)
	if err == nil && !ok {
		return false
	}
	if err == nil {
		c.Header(EncryptedHeader, strconv.FormatInt(n, 10))
		err = server.CodedErrorf(server.KindForbidden, errcode.EncryptedOnly, "%s is served only encrypted, to the ECUs it is assigned to (their director metadata names the sealed file)", name)
	}
	a.fail(c, err)
	return true
}

// decodeJSON strictly decodes a size-limited JSON body.
func decodeJSON(c *gin.Context, v any) error {
	body := http.MaxBytesReader(c.Writer, c.Request.Body, maxJSONBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return server.Errorf(server.KindTooLarge, "request body is over %d bytes", maxJSONBody)
		}
		return server.Errorf(server.KindInvalid, "request body is not valid JSON for this route: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return server.Errorf(server.KindInvalid, "request body has data after the JSON object")
	}
	return nil
}

func (a *api) publish(c *gin.Context) {
	var req repo.PublishRequest
	if err := decodeJSON(c, &req); err != nil {
		a.fail(c, err)
		return
	}
	ctx := c.Request.Context()
	res, err := a.Repo.Publish(ctx, req)
	if err != nil {
		a.fail(c, err)
		return
	}
	if a.OnPublish != nil {
		a.OnPublish()
	}
	if res.Changed {
		p, _ := principal(c)
		detail := fmt.Sprintf("image root v%d, targets v%d, snapshot v%d, timestamp v%d; director root v%d",
			res.RootVersion, res.TargetsVersion, res.SnapshotVersion, res.TimestampVersion, res.DirectorRoot)
		if err := auditlog.Record(ctx, a.Store, a.Now(), p, "repo.publish", "image repository", detail); err != nil {
			a.fail(c, err)
			return
		}
	}
	c.JSON(http.StatusOK, res)
}

func (a *api) uploadTarget(c *gin.Context) {
	ctx := c.Request.Context()
	name := strings.TrimPrefix(c.Param("file"), "/")
	var hw []string
	for _, id := range strings.Split(c.GetHeader(HardwareIDsHeader), ",") {
		if id = strings.TrimSpace(id); id != "" {
			hw = append(hw, id)
		}
	}
	created, err := a.Repo.UploadTarget(ctx, name, hw, c.Request.Body, c.Request.ContentLength)
	if err != nil {
		a.fail(c, err)
		return
	}
	if created {
		p, _ := principal(c)
		if err := auditlog.Record(ctx, a.Store, a.Now(), p, "repo.target_upload", name, fmt.Sprintf("%d bytes", c.Request.ContentLength)); err != nil {
			a.fail(c, err)
			return
		}
		c.JSON(http.StatusCreated, gin.H{"path": name, "created": true})
		return
	}
	c.JSON(http.StatusOK, gin.H{"path": name, "created": false})
}
