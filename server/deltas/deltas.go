// Package deltas makes deltas on the server: lazily, for each (base image,
// target image, hardware ID) the director needs, in a bounded background
// queue; it stores them in the blob store beside the full images and signs
// them into the image repository's delegated deltas role.
package deltas

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/delta"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server/repo"
)

// Offer states (director.DeltaNone, DeltaReady, DeltaPending).
const (
	// None: send the full image (no base, not worth it, failed, off).
	None = 0
	// Ready: the delta is signed and served.
	Ready = 1
	// Pending: the delta is queued or being made.
	Pending = 2
)

// Repo is the image repository as deltas need it.
type Repo interface {
	CurrentTargets(ctx context.Context) (map[string]*metadata.TargetFiles, int64, error)
	Delta(ctx context.Context, path string) (*metadata.TargetFiles, bool, error)
	DeltasVersion(ctx context.Context) (int64, error)
	DeltasDelegated(ctx context.Context) (bool, error)
	UploadTarget(ctx context.Context, filePath string, hardwareIDs []string, body io.Reader, size int64) (bool, error)
	// OpenPlain opens a stored image in clear (from its sealed form when
	// its hardware's images are kept sealed).
	OpenPlain(ctx context.Context, key, plainSHA string) (io.ReadCloser, error)
	AddDelta(ctx context.Context, path string, tf *metadata.TargetFiles) (bool, error)
}

// Config tunes the service.
type Config struct {
	Repo Repo
	// Off: make no deltas, offer only those signed offline
	// (roadsign-signer delta).
	Off bool
	// Queue is how many deltas may wait; Workers how many are made at
	// once; Timeout bounds one.
	Queue   int
	Workers int
	Timeout time.Duration
	// TempDir holds the images while a delta is made ("": the system's).
	TempDir string
	Log     *slog.Logger
	Metrics prometheus.Registerer
}

// key names one delta to make: from the image with sha256 baseSHA to
// the full target at path target, for hardware hw.
type key struct{ hw, baseSHA, target string }

// path is the delta's target path.
func (k key) path() string { return meta.DeltaPath(k.hw, k.baseSHA, k.target) }

// Service makes and offers deltas.
type Service struct {
	cfg   Config
	queue chan key
	mu    sync.Mutex
	// state is what this replica knows of deltas it queued or tried.
	state map[key]int
	m     *metrics
}

// New returns a service; Run makes its deltas.
func New(cfg Config) (*Service, error) {
	if cfg.Repo == nil || cfg.Log == nil {
		return nil, errors.New("deltas: repository, blob store and logger are required")
	}
	if !cfg.Off && (cfg.Queue < 1 || cfg.Workers < 1 || cfg.Timeout <= 0) {
		return nil, fmt.Errorf("deltas: queue %d, workers %d and timeout %v must be positive", cfg.Queue, cfg.Workers, cfg.Timeout)
	}
	s := &Service{cfg: cfg, queue: make(chan key, max(cfg.Queue, 0)), state: map[key]int{}, m: newMetrics(cfg.Metrics)}
	if cfg.Metrics != nil {
		cfg.Metrics.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "roadsign_delta_queue_depth", Help: "Deltas waiting to be made on this replica.",
		}, func() float64 { return float64(len(s.queue)) }))
	}
	return s, nil
}

// Version is the served version of the deltas role: assignments decided
// before a new delta was signed are decided again.
func (s *Service) Version(ctx context.Context) (int64, error) { return s.cfg.Repo.DeltasVersion(ctx) }

// Offer says whether a delta from the image with sha256 baseSHA to the
// full target at path exists for hardware hw, and queues it when it
// could be made and is not known yet.
func (s *Service) Offer(ctx context.Context, hw, baseSHA, path string, target *metadata.TargetFiles) (string, int, error) {
	targetSHA := hex.EncodeToString(target.Hashes["sha256"])
	if len(baseSHA) != 64 || baseSHA == targetSHA {
		return "", None, nil
	}
	k := key{hw: hw, baseSHA: baseSHA, target: path}
	dpath := k.path()
	tf, ok, err := s.cfg.Repo.Delta(ctx, dpath)
	if err != nil {
		return "", None, err
	}
	if ok {
		if d, err := meta.TargetDelta(tf); err == nil && d.TargetSHA256 == targetSHA && d.BaseSHA256 == baseSHA {
			s.m.hits.Inc()
			return dpath, Ready, nil
		}
		return "", None, nil
	}
	if s.cfg.Off {
		return "", None, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, known := s.state[k]; known {
		return "", st, nil // being made, or not worth it or failed: the full image
	}
	select {
	case s.queue <- k:
		s.state[k] = Pending
		s.m.queued.Inc()
		return "", Pending, nil
	default:
		s.m.generations.WithLabelValues("queue_full").Inc()
		return "", None, nil // the queue is full: full image now, asked again at the next poll
	}
}

// Run makes queued deltas with the configured parallelism until ctx ends.
func (s *Service) Run(ctx context.Context) {
	if s.cfg.Off {
		return
	}
	var wg sync.WaitGroup
	for range s.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case j := <-s.queue:
					s.make(ctx, j)
				}
			}
		}()
	}
	wg.Wait()
}

func (s *Service) make(ctx context.Context, j key) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	size, err := s.generate(ctx, j)
	result := "made"
	switch {
	case err == nil:
	case errors.Is(err, delta.ErrNotWorth):
		result = "not_worth"
	case errors.Is(err, context.DeadlineExceeded):
		result = "timeout"
	default:
		result = "failed"
	}
	s.m.generations.WithLabelValues(result).Inc()
	s.m.seconds.Observe(time.Since(start).Seconds())
	if err != nil && result != "not_worth" {
		s.cfg.Log.Warn("delta not made; vehicles get the full image", "delta", j.path(), "err", err)
	} else {
		s.cfg.Log.Info("delta", "path", j.path(), "result", result, "bytes", size, "seconds", time.Since(start).Seconds())
	}
	s.mu.Lock()
	if err == nil {
		delete(s.state, j) // the repository has it now
	} else {
		s.state[j] = None // the full image from now on
	}
	s.mu.Unlock()
}

// generate makes one delta and signs it in; it returns its size.
func (s *Service) generate(ctx context.Context, j key) (int64, error) {
	if ok, err := s.cfg.Repo.DeltasDelegated(ctx); err != nil || !ok {
		if err == nil {
			err = errors.New("the published targets do not delegate deltas to this server's key; publish a targets version signed with a workspace made from this server's online-keys.json")
		}
		return 0, err
	}
	targets, _, err := s.cfg.Repo.CurrentTargets(ctx)
	if err != nil {
		return 0, err
	}
	ttf, ok := targets[j.target]
	if !ok {
		return 0, fmt.Errorf("target %s is no longer published", j.target)
	}
	var basePath string
	var btf *metadata.TargetFiles
	for p, tf := range targets {
		if c, err := meta.TargetCustom(tf); err == nil && hex.EncodeToString(tf.Hashes["sha256"]) == j.baseSHA && slices.Contains(c.HardwareIDs, j.hw) {
			basePath, btf = p, tf
			break
		}
	}
	if btf == nil {
		return 0, fmt.Errorf("%w: the base %s… is not a published image for %s", delta.ErrNotWorth, j.baseSHA[:12], j.hw)
	}
	base, err := s.local(ctx, basePath, btf)
	if err != nil {
		return 0, err
	}
	defer closeRemove(base)
	target, err := s.local(ctx, j.target, ttf)
	if err != nil {
		return 0, err
	}
	defer closeRemove(target)
	out, err := os.CreateTemp(s.cfg.TempDir, "roadsign-delta-*")
	if err != nil {
		return 0, err
	}
	defer closeRemove(out)
	h := sha256.New()
	if _, err := delta.Diff(ctx, base, btf.Length, target, ttf.Length, io.MultiWriter(out, h), delta.Options{MaxSize: ttf.Length / 2}); err != nil {
		return 0, err
	}
	size, err := out.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, err
	}
	sum := h.Sum(nil)
	if _, err := out.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	if _, err := s.cfg.Repo.UploadTarget(ctx, meta.ConsistentPath(j.path(), hex.EncodeToString(sum), false), []string{j.hw}, out, size); err != nil {
		return 0, fmt.Errorf("store delta: %w", err)
	}
	tf := meta.NewDeltaTarget(delta.Format, j.hw, btf, ttf, j.target, size, sum)
	if _, err := s.cfg.Repo.AddDelta(ctx, j.path(), tf); err != nil {
		return 0, fmt.Errorf("sign delta: %w", err)
	}
	return size, nil
}

// local copies a target out of the blob store into a temporary file,
// which Diff reads at random offsets.
func (s *Service) local(ctx context.Context, path string, tf *metadata.TargetFiles) (*os.File, error) {
	k, err := repo.TargetKey(path, tf)
	if err != nil {
		return nil, err
	}
	rc, err := s.cfg.Repo.OpenPlain(ctx, k, hex.EncodeToString(tf.Hashes["sha256"]))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(s.cfg.TempDir, "roadsign-delta-in-*")
	if err != nil {
		return nil, err
	}
	if n, err := io.Copy(f, io.LimitReader(rc, tf.Length)); err != nil || n != tf.Length {
		closeRemove(f)
		return nil, fmt.Errorf("copy %s: %d of %d bytes: %v", path, n, tf.Length, err)
	}
	return f, nil
}

func closeRemove(f *os.File) {
	f.Close()
	os.Remove(f.Name())
}

type metrics struct {
	hits, queued prometheus.Counter
	generations  *prometheus.CounterVec
	seconds      prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		hits: prometheus.NewCounter(prometheus.CounterOpts{Name: "roadsign_delta_cache_hits_total",
			Help: "Director decisions that found the delta for a vehicle's base already made."}),
		queued: prometheus.NewCounter(prometheus.CounterOpts{Name: "roadsign_delta_queued_total",
			Help: "Deltas queued to be made."}),
		generations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "roadsign_delta_generations_total",
			Help: "Deltas tried, by result (made, not_worth, failed, timeout, queue_full)."}, []string{"result"}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "roadsign_delta_generation_seconds",
			Help: "Time to make one delta.", Buckets: prometheus.ExponentialBuckets(0.05, 2, 14)}),
	}
	if reg != nil {
		reg.MustRegister(m.hits, m.queued, m.generations, m.seconds)
	}
	return m
}
