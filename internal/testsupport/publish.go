package testsupport

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// PublishServer plays roadsign-server's publish API for the signer's
// tests: it keeps the lengths of uploaded targets, answers HEAD for them,
// and accepts published targets only if the newest image root they come
// with verifies them (threshold and keys).
type PublishServer struct {
	*httptest.Server
	token string

	mu         sync.Mutex
	files      map[string]int64
	uploads    int
	publishes  int
	refuseCode string
}

// NewPublishServer starts one that takes bearer token; Close stops it.
func NewPublishServer(token string) *PublishServer {
	s := &PublishServer{token: token, files: map[string]int64{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// Refuse makes publish answer 400 with this error code ("": accept).
func (s *PublishServer) Refuse(code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refuseCode = code
}

// Uploads and Publishes count what was accepted.
func (s *PublishServer) Uploads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.uploads
}

func (s *PublishServer) Publishes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.publishes
}

func (s *PublishServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.Method != http.MethodHead && r.Header.Get("Authorization") != "Bearer "+s.token {
		writeError(w, http.StatusUnauthorized, "unauthorized", "unknown bearer token")
		return
	}
	switch {
	case r.Method == http.MethodHead && strings.HasPrefix(r.URL.Path, "/repo/targets/"):
		n, ok := s.files[strings.TrimPrefix(r.URL.Path, "/repo/targets/")]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/api/v1/repo/targets/"):
		n, _ := io.Copy(io.Discard, r.Body)
		s.files[strings.TrimPrefix(r.URL.Path, "/api/v1/repo/targets/")] = n
		s.uploads++
		w.WriteHeader(http.StatusCreated)
	case r.Method == http.MethodPost && r.URL.Path == "/api/v1/repo/publish":
		if s.refuseCode != "" {
			writeError(w, http.StatusBadRequest, s.refuseCode, "refused by the test")
			return
		}
		var body struct {
			Targets    json.RawMessage   `json:"targets"`
			ImageRoots []json.RawMessage `json:"imageRoots"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || len(body.ImageRoots) == 0 {
			writeError(w, http.StatusBadRequest, "invalid", "want targets and imageRoots")
			return
		}
		root, err := (&metadata.Metadata[metadata.RootType]{}).FromBytes(body.ImageRoots[len(body.ImageRoots)-1])
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid", err.Error())
			return
		}
		tm, err := (&metadata.Metadata[metadata.TargetsType]{}).FromBytes(body.Targets)
		if err == nil {
			err = root.VerifyDelegate(metadata.TARGETS, tm)
		}
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_signature", err.Error())
			return
		}
		s.publishes++
		json.NewEncoder(w).Encode(map[string]any{"changed": true, "rootVersion": root.Signed.Version, "targetsVersion": tm.Signed.Version})
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}
