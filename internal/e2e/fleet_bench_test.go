package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/roadsign/roadsign/client/fleetsim"
	"github.com/roadsign/roadsign/server/postgres/pgtest"
)

// BenchmarkFleet drives the real roadsign-server (its own process) with
// the fleet simulator, on SQLite and on PostgreSQL, with 10 000 and then
// 100 000 registered vehicles: every vehicle registers and runs its first
// cycle (its director metadata signed, stored and verified: the warm-up),
// then one steady full cycle (signed check-in and director poll, nothing
// new), then the measured cycles: signed check-ins alone. It reports check-ins/s and the check-in p50 and p99, the
// steady full cycle's rate and p99, the first cycle's rate, and how
// much CPU the simulator used against the server's, to show which one is
// the bottleneck. ROADSIGN_FLEET_SIZES (comma-separated) overrides the
// sizes, ROADSIGN_FLEET_BACKENDS (sqlite,postgres) the backends.
func BenchmarkFleet(b *testing.B) {
	sizes := envCounts(b, "ROADSIGN_FLEET_SIZES", 10_000, 100_000)
	backends := []string{"sqlite", "postgres"}
	if s := os.Getenv("ROADSIGN_FLEET_BACKENDS"); s != "" {
		backends = strings.Split(s, ",")
	}
	for _, backend := range backends {
		b.Run(backend, func(b *testing.B) {
			srv := startFleetServer(b, backend)
			for _, n := range sizes {
				b.Run(fmt.Sprint(n), func(b *testing.B) { benchFleet(b, srv, backend, int(n), false, false) })
			}
		})
	}
}

// BenchmarkFleetSecondaries is BenchmarkFleet's SQLite run with vehicles
// whose ECUs have keys of their own (Uptane secondaries): every check-in
// carries two ECU version reports, each signed by its ECU, which the
// server verifies besides the vehicle's signature. 100 000 vehicles
// (ROADSIGN_FLEET_SIZES overrides).
func BenchmarkFleetSecondaries(b *testing.B) {
	srv := startFleetServer(b, "sqlite")
	for _, n := range envCounts(b, "ROADSIGN_FLEET_SIZES", 100_000) {
		b.Run(fmt.Sprint(n), func(b *testing.B) { benchFleet(b, srv, "sqlite, secondaries", int(n), true, false) })
	}
}

// BenchmarkFleetTimeAttested is BenchmarkFleet's SQLite run with every
// check-in asking for the server's signed time for its nonce, which the
// simulated vehicle verifies against the director root's time key, as
// the agent does (secure time): the server signs one attestation more
// per check-in. 100 000 vehicles (ROADSIGN_FLEET_SIZES overrides); make
// bench sets it beside BenchmarkFleet/sqlite/100000.
func BenchmarkFleetTimeAttested(b *testing.B) {
	srv := startFleetServer(b, "sqlite")
	for _, n := range envCounts(b, "ROADSIGN_FLEET_SIZES", 100_000) {
		b.Run(fmt.Sprint(n), func(b *testing.B) { benchFleet(b, srv, "sqlite, time attested", int(n), false, true) })
	}
}

type fleetServer struct {
	url, ws, data string
	pid           int
}

// startFleetServer starts roadsign-server on a backend with the 1.0.0
// factory images published, and --auto-assign none: the measured load is
// the fleet's steady state, check-ins with nothing to install.
func startFleetServer(b *testing.B, backend string) *fleetServer {
	bin := builtPrograms(b)
	dir := b.TempDir()
	data, ws := filepath.Join(dir, "data"), filepath.Join(dir, "ws")
	env := append(os.Environ(), "ROADSIGN_ADMIN_TOKEN="+adminToken)
	run := func(name string, args ...string) {
		b.Helper()
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	run("roadsign-server", "init", "--data", data)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	args := []string{"--listen", addr, "--data", data, "--auto-assign", "none", "--log-level", "warn"}
	if backend == "postgres" {
		args = append(args, "--database", pgtest.Schema(b))
	}
	var log bytes.Buffer
	cmd := exec.Command(filepath.Join(bin, "roadsign-server"), args...)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, &log, &log
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	url := "http://" + addr
	for i := 0; ; i++ {
		if resp, err := http.Get(url + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if i > 200 {
			b.Fatalf("server not ready: %s", log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	run("roadsign-signer", "init", ws, "--online-keys", filepath.Join(data, "online-keys.json"))
	for _, s := range []sample{findSample(b, huHW, "1.0.0"), findSample(b, dcmHW, "1.0.0")} {
		run("roadsign-signer", "add", ws, filepath.Join(samplesDir(), s.File), "--ecu", s.ECU, "--hardware-id", s.HardwareID,
			"--version", s.Version, "--release-counter", fmt.Sprint(s.ReleaseCounter))
	}
	run("roadsign-signer", "publish", ws, "--server", url, "--token", adminToken)
	return &fleetServer{url: url, ws: ws, data: data, pid: cmd.Process.Pid}
}

func benchFleet(b *testing.B, srv *fleetServer, backend string, n int, secondaries, attestTime bool) {
	b.StopTimer()
	ctx := context.Background()
	root, err := os.ReadFile(filepath.Join(srv.ws, "director.root.json"))
	if err != nil {
		b.Fatal(err)
	}
	f, err := fleetsim.New(fleetsim.Config{Server: srv.url, Token: adminToken, Vehicles: n, Concurrency: 32, Seed: 1, Secondaries: secondaries, AttestTime: attestTime,
		ECUs: factorySpecs(b), Model: "Roadster", Year: 2025, Region: "EU", StateDir: stateDir(b), DirectorRoot: root})
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	if err := f.Register(ctx, nil); err != nil {
		b.Fatal(err)
	}
	registered := time.Since(t0)
	f.Cycle(ctx) // warm-up: every vehicle verifies its director metadata once
	warm := f.Summary()
	if warm.Errors > 0 {
		b.Fatalf("warm-up cycle: %s", warm)
	}
	// A steady full cycle: check-in and director poll, nothing new.
	f.ResetStats()
	f.Cycle(ctx)
	full := f.Summary()
	// The measured cycles: signed check-ins alone.
	f.SetCheckInOnly(true)
	f.ResetStats()
	simCPU, srvCPU := selfCPU(), processCPU(b, srv.pid)
	b.StartTimer()
	for range b.N {
		f.Cycle(ctx)
	}
	b.StopTimer()
	simCPU, srvCPU = selfCPU()-simCPU, processCPU(b, srv.pid)-srvCPU
	s := f.Summary()
	if s.Errors > 0 || full.Errors > 0 {
		b.Fatalf("measured cycles: %s; full cycle: %s", s, full)
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(s.Rate(), "checkins/s")
	b.ReportMetric(ms(s.P50), "p50-ms")
	b.ReportMetric(ms(s.P99), "p99-ms")
	b.ReportMetric(full.Rate(), "cycles/s")
	b.ReportMetric(ms(full.CycleP99), "cycle-p99-ms")
	b.ReportMetric(warm.Rate(), "first-cycle-vehicles/s")
	b.ReportMetric(simCPU.Seconds()/max(srvCPU.Seconds(), 1e-9), "sim/server-cpu")
	b.ReportMetric(ed25519Rate(), "ed25519-verify/s")
	fmt.Printf("fleet %-8s %7d vehicles: registered at %.0f/s; first cycle (director signed and verified) %.0f/s; "+
		"full cycle (check-in + director poll) %.0f/s, p99 %.1f ms; signed check-ins %.0f/s, p50 %.1f ms, p99 %.1f ms; CPU per check-in: server %.0f µs, simulator %.0f µs\n",
		backend, n, float64(n)/registered.Seconds(), warm.Rate(), full.Rate(), ms(full.CycleP99), s.Rate(), ms(s.P50), ms(s.P99),
		float64(srvCPU.Microseconds())/float64(s.CheckIns), float64(simCPU.Microseconds())/float64(s.CheckIns))
}

// ed25519Rate is how many ed25519 signatures one core verifies per
// second on this machine, measured now (the check-in's one verification
// is its floor of work).
func ed25519Rate() float64 {
	pub, priv, _ := ed25519.GenerateKey(nil)
	msg := make([]byte, 512)
	sig := ed25519.Sign(priv, msg)
	n, start := 0, time.Now()
	for time.Since(start) < time.Second {
		for range 100 {
			ed25519.Verify(pub, msg, sig)
		}
		n += 100
	}
	return float64(n) / time.Since(start).Seconds()
}

// stateDir is where the simulated vehicles keep their verified director
// metadata: in memory (/dev/shm) when there is one, since a vehicle has a
// disk of its own and the simulator's 100 000 would otherwise measure the
// file system (about 5 KiB each).
func stateDir(b *testing.B) string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		dir, err := os.MkdirTemp("/dev/shm", "roadsign-fleet-")
		if err == nil {
			b.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return b.TempDir()
}

// selfCPU is this process's user and system CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// processCPU is another process's user and system CPU time so far, from
// /proc (clock ticks of 1/100 s).
func processCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) start at ')'.
	fields := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}
