package fleetsim_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roadsign/roadsign/client/fleetsim"
)

// slowServer accepts every check-in after delay and counts them.
func slowServer(t *testing.T, delay time.Duration) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/manifest") {
			http.NotFound(w, r)
			return
		}
		time.Sleep(delay)
		n.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// TestDurationEndsAtTheDeadline: --duration ends the run at its deadline
// even when one whole-fleet cycle takes far longer (vehicles in flight
// finish; none starts after), --warmup cycles are not in the summary, and
// the summary's window is the measured one.
func TestDurationEndsAtTheDeadline(t *testing.T) {
	srv, served := slowServer(t, 20*time.Millisecond)
	samples := filepath.Join("..", "..", "firmware-samples")
	var out, errb bytes.Buffer
	start := time.Now()
	// 2 000 vehicles, 4 at a time, 20 ms each: a whole cycle takes 10 s.
	code := fleetsim.Run(context.Background(), []string{"--server", srv.URL, "--vehicles", "2000", "--concurrency", "4",
		"--check-in-only", "--duration", "1s", "--interval", "0", "--samples", samples}, fleetsim.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out.String(), errb.String())
	}
	if took > 5*time.Second {
		t.Fatalf("--duration 1s ran %s: the deadline waited for a whole-fleet cycle", took)
	}
	m := regexp.MustCompile(`(\d+) check-ins in ([0-9.]+) s`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("summary: %s", out.String())
	}
	checkIns, _ := strconv.Atoi(m[1])
	window, _ := strconv.ParseFloat(m[2], 64)
	if int64(checkIns) != served.Load() || checkIns >= 2000 {
		t.Fatalf("summary counts %d check-ins, the server took %d (a whole cycle is 2000)", checkIns, served.Load())
	}
	if window < 1 || window > 3 {
		t.Fatalf("measured window %.1f s for --duration 1s", window)
	}

	// With a warm-up cycle, only what follows is counted.
	out.Reset()
	served.Store(0)
	code = fleetsim.Run(context.Background(), []string{"--server", srv.URL, "--vehicles", "40", "--concurrency", "8",
		"--check-in-only", "--warmup", "1", "--cycles", "2", "--interval", "0", "--samples", samples}, fleetsim.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	if code != 0 || served.Load() != 120 || !strings.Contains(out.String(), "40 vehicles, 80 check-ins in ") {
		t.Fatalf("warm-up: exit %d, server took %d, summary %s", code, served.Load(), out.String())
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--vehicles", "3"},
		{"--server", "http://127.0.0.1:1", "--vehicles", "3", "--duration", "1s", "--warmup", "-1"},
		{"--server", "http://127.0.0.1:1", "--vehicles", "0", "--cycles", "1"},
	} {
		var out bytes.Buffer
		if code := fleetsim.Run(context.Background(), args, fleetsim.Env{Stdout: &out, Stderr: &out, Getenv: func(string) string { return "" }}); code != 2 {
			t.Errorf("%v: exit %d, want 2: %s", args, code, out.String())
		}
	}
}
