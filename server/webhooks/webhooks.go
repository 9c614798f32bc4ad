// Package webhooks tells other systems what happened: subscriptions per
// event type, each event queued in the database as one delivery per
// subscription (so a restart loses none), POSTed as JSON signed with the
// subscription's secret (HMAC-SHA256 over "<timestamp>.<body>"), and
// retried with exponential backoff and jitter until delivered or out of
// time. Delivery is at least once: the delivery ID
// (X-Roadsign-Delivery) is the receiver's idempotency key.
package webhooks

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/auditlog"
)

// Events are the event types one can subscribe to.
var Events = []string{
	"job.state_changed",
	"campaign.wave_opened", "campaign.halted", "campaign.completed",
	"diagnosis.finding_raised",
	"vehicle.reprovisioned",
	"approval.requested",
}

// Headers of a delivery.
const (
	EventHeader     = "X-Roadsign-Event"
	DeliveryHeader  = "X-Roadsign-Delivery"
	TimestampHeader = "X-Roadsign-Timestamp"
	SignatureHeader = "X-Roadsign-Signature"
)

// Store is what webhooks need of the state store.
type Store interface {
	server.Webhooks
	auditlog.Appender
}

// Config is what the service is built from.
type Config struct {
	Store Store
	Now   func() time.Time
	Log   *slog.Logger
	// Client sends deliveries (default: 10 s timeout, no redirects).
	Client *http.Client
	// RetryFor is how long a delivery is retried (default 24 h);
	// FirstRetry the first wait, doubled each time up to MaxRetry
	// (defaults 1 s and 10 min).
	RetryFor, FirstRetry, MaxRetry time.Duration
	// Metrics (may be nil) gets the delivery metrics.
	Metrics prometheus.Registerer
}

// Service queues and delivers events.
type Service struct {
	cfg Config

	mu       sync.Mutex
	hooks    []server.Webhook
	hooksAt  time.Time
	attempts *prometheus.CounterVec
}

// New returns a Service.
func New(cfg Config) *Service {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if cfg.RetryFor == 0 {
		cfg.RetryFor = 24 * time.Hour
	}
	if cfg.FirstRetry == 0 {
		cfg.FirstRetry = time.Second
	}
	if cfg.MaxRetry == 0 {
		cfg.MaxRetry = 10 * time.Minute
	}
	s := &Service{cfg: cfg, attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "roadsign_webhook_attempts_total", Help: "Webhook delivery attempts by outcome: delivered, retry, failed (gave up).",
	}, []string{"outcome"})}
	if cfg.Metrics != nil {
		cfg.Metrics.MustRegister(s.attempts)
	}
	return s
}

// CreateRequest is the body of POST /api/v1/webhooks.
type CreateRequest struct {
	URL    string   `json:"url"`
	Events []string `json:"events"`
	Secret string   `json:"secret"`
}

// View is a subscription as the API shows it (never its secret).
type View struct {
	ID         string         `json:"id"`
	URL        string         `json:"url"`
	Events     []string       `json:"events"`
	CreatedBy  string         `json:"createdBy"`
	CreatedAt  time.Time      `json:"createdAt"`
	Deliveries []DeliveryView `json:"deliveries"`
}

// DeliveryView is one delivery in the log.
type DeliveryView struct {
	ID          string    `json:"id"`
	Event       string    `json:"event"`
	State       string    `json:"state"`
	Attempts    int       `json:"attempts"`
	CreatedAt   time.Time `json:"createdAt"`
	NextAt      time.Time `json:"nextAt,omitzero"`
	LastStatus  int       `json:"lastStatus,omitempty"`
	LastError   string    `json:"lastError,omitempty"`
	DeliveredAt time.Time `json:"deliveredAt,omitzero"`
}

func deliveryView(d server.Delivery) DeliveryView {
	v := DeliveryView{ID: d.ID, Event: d.Event, State: d.State, Attempts: d.Attempts, CreatedAt: d.CreatedAt, LastStatus: d.LastStatus, LastError: d.LastError, DeliveredAt: d.DeliveredAt}
	if d.State == server.DeliveryPending {
		v.NextAt = d.NextAt
	}
	return v
}

// Create subscribes a URL to events.
func (s *Service) Create(ctx context.Context, by server.Principal, r CreateRequest) (View, error) {
	u, err := url.Parse(strings.TrimSpace(r.URL))
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || len(r.URL) > 2000 {
		return View{}, server.Errorf(server.KindInvalid, "url %q: give an absolute http(s) URL", r.URL)
	}
	if len(r.Events) == 0 {
		return View{}, server.Errorf(server.KindInvalid, "events: name at least one of %s", strings.Join(Events, ", "))
	}
	var events []string
	for _, e := range r.Events {
		if !slices.Contains(Events, e) {
			return View{}, server.Errorf(server.KindInvalid, "event %q: want one of %s", e, strings.Join(Events, ", "))
		}
		if !slices.Contains(events, e) {
			events = append(events, e)
		}
	}
	if len(r.Secret) < 16 || len(r.Secret) > 256 {
		return View{}, server.Errorf(server.KindInvalid, "secret: give 16 to 256 characters (deliveries are signed with it; the receiver checks the signature)")
	}
	w := server.Webhook{ID: uuid.NewString(), URL: u.String(), Events: events, Secret: r.Secret, CreatedBy: by.Name, CreatedAt: s.cfg.Now().UTC()}
	if err := s.cfg.Store.CreateWebhook(ctx, w); err != nil {
		return View{}, err
	}
	s.forget()
	if err := auditlog.Record(ctx, s.cfg.Store, w.CreatedAt, by, "webhook.create", w.ID, fmt.Sprintf("%s for %s", w.URL, strings.Join(events, ","))); err != nil {
		return View{}, err
	}
	return View{ID: w.ID, URL: w.URL, Events: w.Events, CreatedBy: w.CreatedBy, CreatedAt: w.CreatedAt, Deliveries: []DeliveryView{}}, nil
}

// Delete ends a subscription.
func (s *Service) Delete(ctx context.Context, by server.Principal, id string) error {
	if err := s.cfg.Store.DeleteWebhook(ctx, id); errors.Is(err, server.ErrNotFound) {
		return server.Errorf(server.KindNotFound, "no webhook %s", id)
	} else if err != nil {
		return err
	}
	s.forget()
	return auditlog.Record(ctx, s.cfg.Store, s.cfg.Now(), by, "webhook.delete", id, "")
}

// List shows every subscription with its newest deliveries.
func (s *Service) List(ctx context.Context, deliveries int) ([]View, error) {
	hooks, err := s.cfg.Store.ListWebhooks(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]View, 0, len(hooks))
	for _, w := range hooks {
		ds, err := s.cfg.Store.Deliveries(ctx, w.ID, deliveries)
		if err != nil {
			return nil, err
		}
		v := View{ID: w.ID, URL: w.URL, Events: w.Events, CreatedBy: w.CreatedBy, CreatedAt: w.CreatedAt, Deliveries: make([]DeliveryView, 0, len(ds))}
		for _, d := range ds {
			v.Deliveries = append(v.Deliveries, deliveryView(d))
		}
		out = append(out, v)
	}
	return out, nil
}

func (s *Service) forget() {
	s.mu.Lock()
	s.hooksAt = time.Time{}
	s.mu.Unlock()
}

// subscribed are the subscriptions, read again at most every 5 s: a new
// one hears events within seconds on every replica.
func (s *Service) subscribed(ctx context.Context) ([]server.Webhook, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if !s.hooksAt.IsZero() && now.Sub(s.hooksAt) < 5*time.Second {
		return s.hooks, nil
	}
	hooks, err := s.cfg.Store.ListWebhooks(ctx)
	if err != nil {
		return nil, err
	}
	s.hooks, s.hooksAt = hooks, now
	return hooks, nil
}

// Payload is a delivery's body.
type Payload struct {
	ID    string    `json:"id"`
	Event string    `json:"event"`
	At    time.Time `json:"at"`
	Data  any       `json:"data"`
}

// Emit queues event for every subscription to it. A failure to queue is
// logged, not returned: what happened has happened, and the caller's
// work must not fail for a subscriber.
func (s *Service) Emit(ctx context.Context, event string, data any) {
	if s == nil {
		return
	}
	if err := s.emit(ctx, event, data); err != nil {
		s.cfg.Log.ErrorContext(ctx, "webhook event not queued", "event", event, "err", err)
	}
}

func (s *Service) emit(ctx context.Context, event string, data any) error {
	hooks, err := s.subscribed(ctx)
	if err != nil {
		return err
	}
	now := s.cfg.Now().UTC()
	var ds []server.Delivery
	for _, w := range hooks {
		if w.Disabled || !slices.Contains(w.Events, event) {
			continue
		}
		id := uuid.NewString()
		body, err := json.Marshal(Payload{ID: id, Event: event, At: now, Data: data})
		if err != nil {
			return fmt.Errorf("webhook %s body: %w", event, err)
		}
		ds = append(ds, server.Delivery{ID: id, WebhookID: w.ID, Event: event, Body: string(body), State: server.DeliveryPending, CreatedAt: now, NextAt: now})
	}
	return s.cfg.Store.EnqueueDeliveries(ctx, ds)
}

// Sign is the signature header's value for a body sent at ts.
func Sign(secret string, ts int64, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(m, "%d.", ts)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a delivery's signature and that its timestamp is within
// tolerance of now: what a receiver does.
func Verify(secret string, h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	ts, err := strconv.ParseInt(h.Get(TimestampHeader), 10, 64)
	if err != nil {
		return fmt.Errorf("no %s", TimestampHeader)
	}
	if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("timestamp %d is %s from now", ts, d)
	}
	if !hmac.Equal([]byte(h.Get(SignatureHeader)), []byte(Sign(secret, ts, body))) {
		return errors.New("bad signature")
	}
	return nil
}

// Run delivers due deliveries until ctx ends: every replica runs it; each
// delivery is claimed by one.
func (s *Service) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := s.DeliverDue(ctx); err != nil && ctx.Err() == nil {
			s.cfg.Log.WarnContext(ctx, "webhook deliveries", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// DeliverDue sends the deliveries due now (a batch at a time).
func (s *Service) DeliverDue(ctx context.Context) error {
	now := s.cfg.Now()
	ds, err := s.cfg.Store.DueDeliveries(ctx, now, now.Add(s.cfg.Client.Timeout+30*time.Second), 50)
	if err != nil || len(ds) == 0 {
		return err
	}
	secrets := map[string]server.Webhook{}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, d := range ds {
		w, ok := secrets[d.WebhookID]
		if !ok {
			w, err = s.cfg.Store.Webhook(ctx, d.WebhookID)
			if errors.Is(err, server.ErrNotFound) {
				d.State, d.LastError = server.DeliveryFailed, "the subscription was deleted"
				if err := s.cfg.Store.UpdateDelivery(ctx, d); err != nil {
					return err
				}
				continue
			}
			if err != nil {
				return err
			}
			secrets[d.WebhookID] = w
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.attempt(ctx, w, d)
		})
	}
	wg.Wait()
	return nil
}

// attempt sends one delivery and stores the outcome: delivered on any
// 2xx, else retried after an exponential wait with jitter, until
// RetryFor after it was queued.
func (s *Service) attempt(ctx context.Context, w server.Webhook, d server.Delivery) {
	now := s.cfg.Now()
	ts := now.Unix()
	body := []byte(d.Body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	status := 0
	if err == nil {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "roadsign-webhooks")
		req.Header.Set(EventHeader, d.Event)
		req.Header.Set(DeliveryHeader, d.ID)
		req.Header.Set(TimestampHeader, strconv.FormatInt(ts, 10))
		req.Header.Set(SignatureHeader, Sign(w.Secret, ts, body))
		var resp *http.Response
		resp, err = s.cfg.Client.Do(req)
		if err == nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			status = resp.StatusCode
			if status < 200 || status > 299 {
				err = fmt.Errorf("answered %d", status)
			}
		}
	}
	if ctx.Err() != nil {
		return // shutting down: the claim lapses and another try comes
	}
	d.Attempts++
	d.LastStatus = status
	d.LastError = ""
	switch {
	case err == nil:
		d.State, d.DeliveredAt = server.DeliveryDelivered, s.cfg.Now().UTC()
		s.attempts.WithLabelValues("delivered").Inc()
	default:
		d.LastError = err.Error()
		if len(d.LastError) > 300 {
			d.LastError = d.LastError[:300]
		}
		wait := s.backoff(d.Attempts)
		if next := s.cfg.Now().Add(wait); next.Sub(d.CreatedAt) > s.cfg.RetryFor {
			d.State = server.DeliveryFailed
			s.attempts.WithLabelValues("failed").Inc()
			s.cfg.Log.WarnContext(ctx, "webhook delivery given up", "webhook", w.ID, "delivery", d.ID, "event", d.Event, "attempts", d.Attempts, "err", err)
		} else {
			d.NextAt = next.UTC()
			s.attempts.WithLabelValues("retry").Inc()
			s.cfg.Log.InfoContext(ctx, "webhook delivery to retry", "webhook", w.ID, "delivery", d.ID, "event", d.Event, "attempt", d.Attempts, "in", wait, "err", err)
		}
	}
	if err := s.cfg.Store.UpdateDelivery(context.WithoutCancel(ctx), d); err != nil {
		s.cfg.Log.ErrorContext(ctx, "webhook delivery outcome not stored", "delivery", d.ID, "err", err)
	}
}

// backoff is the wait after the n-th failed attempt: FirstRetry doubled
// each time, up to MaxRetry, with ±20 % jitter so that a receiver coming
// back is not hit by every retry at once.
func (s *Service) backoff(n int) time.Duration {
	d := s.cfg.FirstRetry
	for i := 1; i < n && d < s.cfg.MaxRetry; i++ {
		d *= 2
	}
	d = min(d, s.cfg.MaxRetry)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
