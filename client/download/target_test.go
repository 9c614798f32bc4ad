package download

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var noSleep = func(ctx context.Context, d time.Duration) error { return ctx.Err() }

func testPolicy() Policy {
	return Policy{MaxAttempts: 3, BaseBackoff: time.Millisecond, MaxBackoff: time.Millisecond, Sleep: noSleep}
}

// flaky serves content, cutting the connection after cut bytes for the
// first drops requests, and optionally ignoring Range.
func flaky(t *testing.T, content []byte, cut int, drops int32, ignoreRange bool) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var sent atomic.Int64
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ignoreRange {
			r.Header.Del("Range")
		}
		if n.Add(1) <= drops {
			hj, _ := w.(http.Hijacker)
			conn, buf, _ := hj.Hijack()
			defer conn.Close()
			buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: " + itoa(len(content)) + "\r\n\r\n")
			buf.Write(content[:cut])
			buf.Flush()
			sent.Add(int64(cut))
			return
		}
		cw := &countingWriter{ResponseWriter: w, n: &sent}
		http.ServeContent(cw, r, "x", time.Time{}, bytes.NewReader(content))
	}))
	t.Cleanup(srv.Close)
	return srv, &sent
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	return c.ResponseWriter.Write(p)
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestFetch(t *testing.T) {
	content := bytes.Repeat([]byte("roadsign"), 64<<10) // 512 KiB
	tests := []struct {
		name        string
		drops       int32
		ignoreRange bool
		wantMaxSent int64
	}{
		{"clean", 0, false, int64(len(content))},
		{"drop then resume with Range", 1, false, int64(len(content))},
		{"two drops (the second ignoring Range)", 2, false, int64(len(content)) * 3 / 2},
		{"server ignores Range", 1, true, int64(len(content)) * 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, sent := flaky(t, content, len(content)/2, tt.drops, tt.ignoreRange)
			var out bytes.Buffer
			res, err := Fetch(context.Background(), srv.Client(), Target{URL: srv.URL, Length: int64(len(content)), W: &out}, testPolicy())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), content) {
				t.Fatalf("got %d bytes, content differs", out.Len())
			}
			if !res.Done || res.Attempts != int(tt.drops)+1 {
				t.Errorf("result %+v", res)
			}
			if sent.Load() > tt.wantMaxSent {
				t.Errorf("server sent %d bytes, want at most %d", sent.Load(), tt.wantMaxSent)
			}
		})
	}
}

func TestFetchFinalErrors(t *testing.T) {
	content := []byte("0123456789")
	tests := []struct {
		name    string
		handler http.HandlerFunc
		length  int64
		want    error
	}{
		{"404 is final", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }, 10, ErrNotFound},
		{"server file longer than signed", func(w http.ResponseWriter, r *http.Request) {
			http.ServeContent(w, r, "x", time.Time{}, bytes.NewReader(append(content, 'x')))
		}, 10, ErrServerLength},
		{"server file shorter than signed", func(w http.ResponseWriter, r *http.Request) {
			http.ServeContent(w, r, "x", time.Time{}, bytes.NewReader(content[:5]))
		}, 10, ErrServerLength},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { calls.Add(1); tt.handler(w, r) }))
			defer srv.Close()
			_, err := Fetch(context.Background(), srv.Client(), Target{URL: srv.URL, Length: tt.length, W: io.Discard}, testPolicy())
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if calls.Load() != 1 {
				t.Errorf("%d requests; a final error must not be retried", calls.Load())
			}
		})
	}
}

func TestFetchGivesUpAfterBoundedAttempts(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "busy", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	_, err := Fetch(context.Background(), srv.Client(), Target{URL: srv.URL, Length: 10, W: io.Discard}, testPolicy())
	if err == nil || !strings.Contains(err.Error(), "gave up after 3 attempts") {
		t.Fatalf("err = %v", err)
	}
	if calls.Load() != 3 {
		t.Fatalf("%d attempts, want 3", calls.Load())
	}
}

func TestFetchAbortsStalledTransfer(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.Write([]byte("a few bytes"))
		w.(http.Flusher).Flush()
		select { // then drip nothing
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	p := testPolicy()
	p.MaxAttempts, p.MinSpeed, p.StallWindow = 1, 100, 1*time.Second
	_, err := Fetch(context.Background(), srv.Client(), Target{URL: srv.URL, Length: 1000, W: io.Discard}, p)
	if err == nil || !strings.Contains(err.Error(), "stalled") {
		t.Fatalf("err = %v, want a stall", err)
	}
}

// TestStallsCountEvenWithProgress: a server that sends a little on every
// attempt and then drips nothing (slow retrieval) uses up the attempts;
// resuming would otherwise go on as long as each attempt moved a byte.
func TestStallsCountEvenWithProgress(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Length", "100000")
		w.Write([]byte("a few bytes"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer srv.Close()
	p := testPolicy()
	p.MaxAttempts, p.MinSpeed, p.StallWindow = 3, 1000, 200*time.Millisecond
	_, err := Fetch(context.Background(), srv.Client(), Target{URL: srv.URL, Length: 100000, W: io.Discard}, p)
	if err == nil || !errors.Is(err, ErrStalled) {
		t.Fatalf("err = %v, want a stall", err)
	}
	if n := requests.Load(); n != 3 {
		t.Errorf("%d attempts, want MaxAttempts (3)", n)
	}
}

func TestBackoffGrowsAndIsCapped(t *testing.T) {
	p := Policy{BaseBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}
	for attempt, max := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond, 10: time.Second} {
		for range 20 {
			d := backoff(p, attempt)
			if d < max/2 || d > max {
				t.Fatalf("attempt %d: backoff %s outside [%s, %s]", attempt, d, max/2, max)
			}
		}
	}
}
