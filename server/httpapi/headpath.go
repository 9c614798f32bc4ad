package httpapi

import (
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/roadsign/roadsign/server/repo"
)

// headPath serves the image repository's head (timestamp.json, root.json
// and the current versioned metadata) from memory ahead of the router:
// every vehicle polls timestamp.json, so that request costs a map lookup
// and one write. It is public, bodiless and small, so the router's
// authentication, body limits and per-request deadlines have nothing to
// do; it is counted on /metrics and logged like every other request.
// Anything else, a Range request included, goes to the router.
type headPath struct {
	next http.Handler
	a    *api
	m    *httpMetrics
}

const headRoute = "/repo/*file"

// Pre-built header values: net/http only reads them.
var (
	jsonType      = []string{"application/json"}
	revalidate    = []string{"no-cache"}
	forever       = []string{"public, max-age=31536000, immutable"}
	acceptsRanges = []string{"bytes"}
)

func (h headPath) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name, isRepo := strings.CutPrefix(r.URL.Path, "/repo/")
	if !isRepo || (r.Method != http.MethodGet && r.Method != http.MethodHead) || r.Header.Get("Range") != "" {
		h.next.ServeHTTP(w, r)
		return
	}
	body, etag, kind, ok := h.a.Repo.HeadFile(r.Context(), name)
	if !ok {
		h.next.ServeHTTP(w, r)
		return
	}
	start := time.Now()
	hdr := w.Header()
	hdr["Content-Type"] = jsonType
	hdr["Cache-Control"] = forever
	if kind == repo.Mutable {
		hdr["Cache-Control"] = revalidate
	}
	hdr["Etag"] = []string{etag}
	status, size := http.StatusOK, 0
	if etagMatches(r.Header.Get("If-None-Match"), etag) {
		status = http.StatusNotModified
		w.WriteHeader(status)
	} else {
		hdr["Accept-Ranges"] = acceptsRanges
		hdr["Content-Length"] = []string{strconv.Itoa(len(body))}
		w.WriteHeader(status)
		if r.Method == http.MethodGet {
			size, _ = w.Write(body)
		}
	}
	d := time.Since(start)
	h.m.count(headRoute, r.Method, status, d)
	h.m.countMetadata("image", name, status)
	remote := r.RemoteAddr
	if host, _, err := net.SplitHostPort(remote); err == nil {
		remote = host
	}
	h.a.logRequest(r, status, size, d, remote)
}

// etagMatches is If-None-Match's weak comparison against a strong etag.
func etagMatches(header, etag string) bool {
	if header == "" {
		return false
	}
	for _, tag := range strings.Split(header, ",") {
		tag = strings.TrimSpace(tag)
		if tag == "*" || strings.TrimPrefix(tag, "W/") == etag {
			return true
		}
	}
	return false
}
