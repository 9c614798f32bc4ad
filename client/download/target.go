package download

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/internal/tlsconf"
)

// ErrNotFound is final: the server does not have the file; retrying will not help.
var ErrNotFound = errors.New("not found on the server")

// ErrStalled means an attempt moved less than the policy's minimum speed
// over its stall window (a dripping or frozen transfer). Stalls count
// against MaxAttempts even when they made some progress, so a slow
// retrieval attack ends the cycle instead of holding it for ever.
var ErrStalled = errors.New("stalled")

// ErrServerLength means the server's file is not the signed length.
var ErrServerLength = errors.New("server's file length differs from the signed length")

// Target describes one image download.
type Target struct {
	URL string
	// Length is the signed length; nothing beyond it is ever read.
	Length int64
	// Offset is where to start (bytes already in W from an earlier attempt).
	Offset int64
	// W receives bytes from Offset on.
	W io.Writer
	// Body, if set, wraps each response body (failure simulation).
	Body func(r io.Reader, offset int64) io.Reader
	// Progress, if set, is told about every byte received.
	Progress interface{ Add(int64) }
}

// Policy bounds retries and guards against stalls.
type Policy struct {
	// MaxAttempts without progress (or stalled) before giving up.
	MaxAttempts int
	BaseBackoff time.Duration
	MaxBackoff  time.Duration
	// MinSpeed in bytes per second, averaged over StallWindow; slower aborts
	// the attempt (a stalled or dripping transfer).
	MinSpeed    int64
	StallWindow time.Duration
	// Sleep waits between attempts (tests make it instant).
	Sleep func(ctx context.Context, d time.Duration) error
}

// DefaultPolicy is what the agent uses.
func DefaultPolicy() Policy {
	return Policy{MaxAttempts: 5, BaseBackoff: 500 * time.Millisecond, MaxBackoff: 30 * time.Second,
		MinSpeed: 1024, StallWindow: 30 * time.Second, Sleep: sleep}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Result says how a download went.
type Result struct {
	// Transferred counts bytes received in this call (the resume saving
	// shows as Transferred < Length).
	Transferred int64
	Attempts    int
	// Done is false when the server's file ended before the signed length.
	Done bool
}

// Fetch streams the target into t.W from t.Offset, resuming with Range
// after drops. A 404 is final (ErrNotFound); a server file of another size
// than signed stops at once (ErrServerLength); other failures are retried
// with exponential backoff and jitter while attempts make no progress.
func Fetch(ctx context.Context, c *http.Client, t Target, p Policy) (Result, error) {
	var res Result
	off := t.Offset
	fails := 0
	for off < t.Length {
		res.Attempts++
		n, short, err := fetchOnce(ctx, c, t, off, p)
		off += n
		res.Transferred += n
		switch {
		case err == nil && short:
			// The server's response ended normally before the signed
			// length: its file is short. Verification will refuse it.
			return res, nil
		case err == nil:
			continue
		case errors.Is(err, ErrNotFound), errors.Is(err, ErrServerLength), errors.Is(err, client.ErrRefused), ctx.Err() != nil:
			return res, err
		case errors.Is(err, errWriter):
			return res, errors.Unwrap(err)
		}
		if n > 0 && !errors.Is(err, ErrStalled) {
			fails = 0
		}
		fails++
		if fails >= p.MaxAttempts {
			return res, fmt.Errorf("download %s: gave up after %d attempts without progress: %w", t.URL, fails, err)
		}
		d := backoff(p, fails)
		if err := p.Sleep(ctx, d); err != nil {
			return res, err
		}
	}
	res.Done = true
	return res, nil
}

func backoff(p Policy, attempt int) time.Duration {
	d := p.BaseBackoff << min(attempt-1, 20)
	if d > p.MaxBackoff || d <= 0 {
		d = p.MaxBackoff
	}
	// Full jitter on the upper half spreads a fleet's retries.
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// errWriter marks a failure of the destination (flash), which retrying
// the network cannot fix.
var errWriter = errors.New("write failed")

type writerErr struct{ err error }

func (w writerErr) Error() string        { return w.err.Error() }
func (w writerErr) Unwrap() error        { return w.err }
func (w writerErr) Is(target error) bool { return target == errWriter }

// fetchOnce makes one request from off. short reports that the body ended
// normally (the server sent all it has) before the signed length.
func fetchOnce(ctx context.Context, c *http.Client, t Target, off int64, p Policy) (int64, bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.URL, nil)
	if err != nil {
		return 0, false, err
	}
	if off > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-")
	}
	resp, err := c.Do(req)
	if tlsconf.IsVerifyError(err) {
		return 0, false, fmt.Errorf("%w: %s: %s", client.ErrRefused, t.URL, TLSRefusal(err))
	}
	if err != nil {
		return 0, false, fmt.Errorf("request %s: %w", t.URL, err)
	}
	defer resp.Body.Close()
	var body io.Reader = resp.Body
	switch resp.StatusCode {
	case http.StatusOK:
		if resp.ContentLength >= 0 && resp.ContentLength != t.Length {
			return 0, false, fmt.Errorf("%w: %s is %d bytes, signed length is %d", ErrServerLength, t.URL, resp.ContentLength, t.Length)
		}
		if off > 0 { // the server ignored Range: skip what we have
			if _, err := io.CopyN(io.Discard, body, off); err != nil {
				return 0, false, fmt.Errorf("skip to %d: %w", off, err)
			}
		}
	case http.StatusPartialContent:
		start, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != off {
			return 0, false, fmt.Errorf("server answered Range %d- with %q", off, resp.Header.Get("Content-Range"))
		}
		if total >= 0 && total != t.Length {
			return 0, false, fmt.Errorf("%w: %s is %d bytes, signed length is %d", ErrServerLength, t.URL, total, t.Length)
		}
	case http.StatusNotFound:
		return 0, false, fmt.Errorf("%w: %s", ErrNotFound, t.URL)
	case http.StatusRequestedRangeNotSatisfiable:
		return 0, false, fmt.Errorf("%w: %s has fewer than %d bytes", ErrServerLength, t.URL, off)
	default:
		return 0, false, fmt.Errorf("%s: server answered %s", t.URL, resp.Status)
	}
	if t.Body != nil {
		body = t.Body(body, off)
	}
	body = io.LimitReader(body, t.Length-off)

	// The watchdog cancels the request when fewer than MinSpeed*window
	// bytes arrived in the last window.
	var got atomic.Int64
	stalled := make(chan struct{})
	if p.MinSpeed > 0 && p.StallWindow > 0 {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			tick := time.NewTicker(p.StallWindow)
			defer tick.Stop()
			last := int64(0)
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					now := got.Load()
					if now-last < int64(float64(p.MinSpeed)*p.StallWindow.Seconds()) {
						close(stalled)
						cancel()
						return
					}
					last = now
				}
			}
		}()
	}
	// The writer reads the body itself when it can (its own buffers, no
	// copy through ours).
	cr := &countingReader{r: body, got: &got, progress: t.Progress}
	n, err := io.CopyBuffer(t.W, cr, make([]byte, 256<<10))
	switch {
	case err == nil:
		return n, off+n < t.Length, nil
	case cr.err == nil || err != cr.err:
		return n, false, writerErr{err}
	}
	select {
	case <-stalled:
		return n, false, fmt.Errorf("transfer of %s %w: under %d bytes/s for %s", t.URL, ErrStalled, p.MinSpeed, p.StallWindow)
	default:
	}
	return n, false, fmt.Errorf("read %s at byte %d: %w", t.URL, off+n, err)
}

// countingReader counts what it reads for the stall watchdog and the
// progress bar, and keeps the read error it returned, so a failure of the
// writer can be told from one of the network.
type countingReader struct {
	r        io.Reader
	got      *atomic.Int64
	progress interface{ Add(int64) }
	err      error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.got.Add(int64(n))
		if c.progress != nil {
			c.progress.Add(int64(n))
		}
	}
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

// parseContentRange reads "bytes START-END/TOTAL" (TOTAL may be "*": -1).
func parseContentRange(h string) (start, total int64, ok bool) {
	rest, found := strings.CutPrefix(h, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	s, _, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	if tot == "*" {
		return start, -1, true
	}
	total, err = strconv.ParseInt(tot, 10, 64)
	return start, total, err == nil
}
