package e2e

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	agentcli "github.com/roadsign/roadsign/client/cli"
	"github.com/roadsign/roadsign/internal/testsupport"
)

func dtcs(t *testing.T, v vehicleState) string {
	t.Helper()
	r := agent(t, "status", "--state", v.dir)
	if r.code != 0 {
		t.Fatalf("status: %s", r)
	}
	return r.stdout
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDaemonRecordsConnectionDTC: while the server is down the daemon
// backs off and keeps DTC B15C4; when it is back the code clears and the
// pending update installs.
func TestDaemonRecordsConnectionDTC(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v := w.vehicle(1)
	addr := strings.TrimPrefix(w.url, "http://")
	w.shutdown()

	ctx, cancel := context.WithCancel(context.Background())
	var out testsupport.LockedBuffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var errb bytes.Buffer
		p := instantRetry
		code := agentcli.Run(ctx, []string{"run", "--state", v.dir, "--interval", "300ms", "--retry-min", "50ms", "--jitter", "0.1"},
			agentcli.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, Policy: &p})
		if code != 0 {
			t.Errorf("run exited %d: %s", code, errb.String())
		}
	}()
	defer func() { cancel(); wg.Wait() }()

	waitFor(t, "DTC B15C4 while the server is down", func() bool { return strings.Contains(dtcs(t, v), "B15C4") })
	if got := versions(t, v); got["dcm"] != "1.0.0" {
		t.Fatalf("updated while the server was down: %v", got)
	}

	w.extra = append(w.extra, "--listen", addr) // same address as before
	w.start()
	waitFor(t, "the update after the server came back", func() bool { return versions(t, v)["dcm"] == "2.0.0" })
	waitFor(t, "DTC B15C4 to clear", func() bool { return strings.Contains(dtcs(t, v), "DTCs: none") })
	// The cycle's report prints when the cycle ends (after the report to
	// the server and reauthorization), a moment after the slot switched.
	waitFor(t, "the daemon to print the install", func() bool { return strings.Contains(out.String(), "installed") })
	if !strings.Contains(out.String(), "check-in failed") {
		t.Errorf("daemon output should show the failed check-ins:\n%s", out.String())
	}
}
