package tufcli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/testsupport"
)

// vectorServer speaks the tuf-test-vectors server protocol for vectors
// made with this repository's own (TUF 1.0) metadata: one step each.
type vectorServer struct {
	vectors map[string]*testVector
	mu      sync.Mutex
	stepped map[string]int
}

type testVector struct {
	u    *testsupport.Uptane
	meta map[string]any // what the step says should happen
}

func (s *vectorServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.URL.Path == "/" {
		var names []string
		for n := range s.vectors {
			names = append(names, n)
		}
		sort.Strings(names)
		json.NewEncoder(w).Encode(names)
		return
	}
	parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 3)
	v := s.vectors[parts[0]]
	if v == nil || len(parts) < 2 {
		http.NotFound(w, r)
		return
	}
	switch {
	case parts[1] == "reset":
		s.stepped[parts[0]] = 0
		w.WriteHeader(http.StatusNoContent)
	case parts[1] == "step":
		if s.stepped[parts[0]]++; s.stepped[parts[0]] > 1 {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		json.NewEncoder(w).Encode(v.meta)
	case len(parts) == 3 && parts[1] == "director":
		files := v.u.Files("director")
		name := parts[2]
		if name == "targets.json" { // a director that serves root and targets only
			name = newestTargets(files)
		}
		if b, ok := files[name]; ok && (strings.HasSuffix(name, ".root.json") || strings.HasSuffix(name, ".targets.json")) {
			w.Write(b)
			return
		}
		http.NotFound(w, r)
	case len(parts) == 3 && parts[1] == "image_repo":
		if p, ok := strings.CutPrefix(parts[2], "targets/"); ok {
			if b := v.u.Blob(p); b != nil {
				w.Write(b)
				return
			}
		}
		if b, ok := v.u.Files("image")[parts[2]]; ok {
			w.Write(b)
			return
		}
		http.NotFound(w, r)
	default:
		http.NotFound(w, r)
	}
}

func newestTargets(files map[string][]byte) string {
	best, bv := "", -1
	for n := range files {
		var v int
		if _, err := fmt.Sscanf(n, "%d.targets.json", &v); err == nil && v > bv {
			best, bv = n, v
		}
	}
	return best
}

// expect is a step's meta: success, or the error the suite would name.
func expect(err string) map[string]any {
	repo := func(e string) map[string]any {
		u := map[string]any{"is_success": e == ""}
		if e != "" {
			u["err"] = e
		}
		return map[string]any{"update": u, "targets": map[string]any{}}
	}
	return map[string]any{"director": repo(err), "image_repo": repo("")}
}

// TestUptaneVectorsAdapter: the adapter runs each vector's steps through
// the agent's verification and compares the outcome with the suite's:
// a good assignment passes; a director hash the image repository does
// not have, a serial that is not the ECU's and another hardware ID are
// refused; a vector whose expectation the verification does not meet
// (it says success for a bad hash) fails the run.
func TestUptaneVectorsAdapter(t *testing.T) {
	const serial, hw = "123", "abc"
	vector := func(a testsupport.Assign) *testsupport.Uptane {
		u := testsupport.NewUptane(t, testsupport.VIN("1RSDA0000000000A1"))
		u.AddImage("file.txt", testsupport.Image{ECU: "dcm", HardwareID: hw, Version: "1.0.0", ReleaseCounter: 1})
		u.Direct("", a)
		u.Publish()
		return u
	}
	ecu := map[string]string{serial: hw}
	srv := &vectorServer{stepped: map[string]int{}, vectors: map[string]*testVector{
		"simple":            {vector(testsupport.Assign{Path: "file.txt", ECUs: ecu}), expect("")},
		"director_bad_hash": {vector(testsupport.Assign{Path: "file.txt", ECUs: ecu, SHA256: make([]byte, 32)}), expect("TargetHashMismatch")},
		"bad_ecu_id":        {vector(testsupport.Assign{Path: "file.txt", ECUs: map[string]string{"123-XXX": hw}}), expect("BadEcuId")},
		"bad_hw_id":         {vector(testsupport.Assign{Path: "file.txt", ECUs: map[string]string{serial: "abc-XXX"}}), expect("BadHardwareId")},
	}}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	run := func(only ...string) (int, string) {
		var out, errb bytes.Buffer
		args := []string{"uptane-vectors", "--vectors-url", hs.URL, "--ecu-serial", serial, "--hardware-id", hw, "--metadata-dir", t.TempDir()}
		for _, o := range only {
			args = append(args, "--vector", o)
		}
		code := Run(context.Background(), args, Env{Stdout: &out, Stderr: &errb, Now: func() (time.Time, error) { return time.Now(), nil }})
		return code, out.String() + errb.String()
	}
	code, out := run()
	if code != 0 || !strings.Contains(out, "4 vectors, 4 steps, 4 met, 0 not met; of the 1 steps expected to succeed, 1 did") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	srv.vectors["lying"] = &testVector{vector(testsupport.Assign{Path: "file.txt", ECUs: ecu, SHA256: make([]byte, 32)}), expect("")}
	if code, out := run("lying"); code == 0 || !strings.Contains(out, "lying step 1: expected success; refused") || !strings.Contains(out, "NOT MET") {
		t.Fatalf("a vector whose expectation is not met: exit %d\n%s", code, out)
	}
}
