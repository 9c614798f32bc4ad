package httpapi

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/roadsign/roadsign/server"
)

// Body is how much request body a route takes, and how long a request and
// its answer may take. Every route has one, so a new route gets limits
// and deadlines without asking for them.
type Body int

// Body rules.
const (
	// Default: no body for GET and HEAD; a small JSON body otherwise.
	Default Body = iota
	// Form is a browser form: urlencoded only, a few KiB.
	Form
	// LargeJSON is the signer's publish: targets metadata for many images.
	LargeJSON
	// Upload streams a request body of any size (a target image): it must
	// keep arriving at a minimum rate instead of within a fixed time.
	Upload
	// Download streams an answer of any size (images, USB bundles): the
	// client must keep reading at a minimum rate.
	Download
)

// Limits and deadlines.
const (
	maxSmallBody = 64 << 10
	maxFormBody  = 4 << 10
	maxLargeBody = 16 << 20
	// requestTimeout bounds reading a non-streamed body and writing its
	// answer; a publish may first wait for the lease another replica holds.
	requestTimeout = 20 * time.Second
	publishTimeout = 2 * time.Minute
	// minProgress: a streamed transfer must move at least this many
	// bytes in every progressWindow.
	minProgress = 1 << 10
)

// progressWindow is a var so tests can shorten it.
var progressWindow = 30 * time.Second

func (b Body) max(method string) int64 {
	switch b {
	case Form:
		return maxFormBody
	case LargeJSON:
		return maxLargeBody
	case Upload:
		return -1
	}
	if method == http.MethodGet || method == http.MethodHead {
		return 0
	}
	return maxSmallBody
}

// limit applies a route's body rule before anything reads the body: a
// declared length over the limit is refused at once, any body is cut at
// the limit, forms must be urlencoded, and deadlines are set.
func (a *api) limit(b Body) gin.HandlerFunc {
	return func(c *gin.Context) {
		r, rc := c.Request, http.NewResponseController(c.Writer)
		max := b.max(r.Method)
		if max >= 0 {
			if r.ContentLength > max {
				a.fail(c, server.Errorf(server.KindTooLarge, "request body of %d bytes is over this route's %d-byte limit", r.ContentLength, max))
				return
			}
			r.Body = http.MaxBytesReader(c.Writer, r.Body, max)
		}
		if b == Form && r.ContentLength != 0 {
			if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
				a.fail(c, &server.Error{Kind: server.KindInvalid, Code: "unsupported_media_type", Message: "forms must be application/x-www-form-urlencoded"})
				return
			}
			// Parsed here, so an oversized form is an error and not, as
			// gin's PostForm would have it, a form with empty fields.
			rc.SetReadDeadline(time.Now().Add(requestTimeout))
			if err := r.ParseForm(); err != nil {
				var tooBig *http.MaxBytesError
				if errors.As(err, &tooBig) {
					a.fail(c, server.Errorf(server.KindTooLarge, "a form of over %d bytes; forms are small", maxFormBody))
				} else {
					a.fail(c, server.Errorf(server.KindInvalid, "malformed form: %v", err))
				}
				return
			}
		}
		now, timeout := time.Now(), requestTimeout
		if b == LargeJSON {
			timeout = publishTimeout
		}
		switch b {
		case Upload:
			r.Body = &progressReader{r: r.Body, rc: rc}
		case Download:
			c.Writer = &progressWriter{ResponseWriter: c.Writer, rc: rc}
		}
		if b != Upload {
			rc.SetReadDeadline(now.Add(timeout))
		}
		if b != Download {
			rc.SetWriteDeadline(now.Add(timeout))
		}
		c.Next()
	}
}

// errTooSlow ends a streamed transfer that stopped moving.
var errTooSlow = errors.New("transfer stalled")

// progress enforces minProgress bytes per progressWindow, and sets the
// connection's next deadline to the end of the current window.
type progress struct {
	start time.Time
	n     int64
}

func (p *progress) step(n int, set func(time.Time) error) error {
	now := time.Now()
	if p.start.IsZero() {
		p.start = now
	}
	p.n += int64(n)
	if now.Sub(p.start) >= progressWindow {
		if p.n < minProgress {
			return fmt.Errorf("%w: %d bytes in %s", errTooSlow, p.n, now.Sub(p.start).Round(time.Second))
		}
		p.start, p.n = now, 0
	}
	if err := set(p.start.Add(progressWindow)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

type progressReader struct {
	r  io.ReadCloser
	rc *http.ResponseController
	p  progress
}

func (pr *progressReader) Read(b []byte) (int, error) {
	if err := pr.p.step(0, pr.rc.SetReadDeadline); err != nil {
		return 0, err
	}
	n, err := pr.r.Read(b)
	if serr := pr.p.step(n, pr.rc.SetReadDeadline); err == nil && serr != nil {
		err = serr
	}
	return n, err
}

func (pr *progressReader) Close() error { return pr.r.Close() }

type progressWriter struct {
	gin.ResponseWriter
	rc *http.ResponseController
	p  progress
}

func (pw *progressWriter) Write(b []byte) (int, error) {
	if err := pw.p.step(0, pw.rc.SetWriteDeadline); err != nil {
		return 0, err
	}
	n, err := pw.ResponseWriter.Write(b)
	if serr := pw.p.step(n, pw.rc.SetWriteDeadline); err == nil && serr != nil {
		err = serr
	}
	return n, err
}

// ReadFrom copies through Write (each write under the deadline) with a
// 256 KiB buffer. On this kind of machine that outruns handing a file to
// sendfile(2) through net/http (about 1.3× nginx against 0.75×, measured
// by BenchmarkServeVsNginx); the copy costs a little CPU per byte.
func (pw *progressWriter) ReadFrom(r io.Reader) (int64, error) {
	return io.CopyBuffer(struct{ io.Writer }{pw}, r, make([]byte, 256<<10))
}

// Unwrap lets http.ResponseController reach the connection.
func (pw *progressWriter) Unwrap() http.ResponseWriter { return pw.ResponseWriter }
