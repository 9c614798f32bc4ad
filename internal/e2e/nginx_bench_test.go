package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/fwimage"
)

// BenchmarkServeVsNginx measures the real roadsign-server and nginx
// serving the same bytes, side by side in one run, on the same cores:
// GET /repo/timestamp.json under wrk (64 connections), and a 1 GiB target
// downloaded with curl. The two sides take turns, round after round, and
// the ratio is the median of the rounds' ratios, so a burst of noise from
// the VM's neighbours moves one round, not the result. nginx serves the
// server's own blob directory, with sendfile and no access log; the
// server runs at --log-level warn. make bench installs nginx and wrk when
// they are missing. ROADSIGN_BENCH_DOWNLOAD_MIB overrides the download
// size.
func BenchmarkServeVsNginx(b *testing.B) {
	for _, tool := range []string{"nginx", "wrk", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("%s is not installed (make bench installs nginx and wrk)", tool)
		}
	}
	srv := startFleetServer(b, "sqlite")
	ngx := startNginx(b, filepath.Join(srv.data, "blobs", "repo"))

	b.Run("timestamp", func(b *testing.B) {
		for range b.N {
			ours, theirs, ratio := rounds(5, func() (float64, float64) {
				return wrkRate(b, srv.url+"/repo/timestamp.json"), wrkRate(b, ngx+"/timestamp.json")
			})
			b.ReportMetric(ours, "roadsign-req/s")
			b.ReportMetric(theirs, "nginx-req/s")
			b.ReportMetric(ratio, "ratio")
		}
	})

	mib := envCounts(b, "ROADSIGN_BENCH_DOWNLOAD_MIB", 1024)[0]
	b.Run(fmt.Sprintf("download-%dMiB", mib), func(b *testing.B) {
		name := addBigTarget(b, srv, mib<<20)
		for range b.N {
			ours, theirs, ratio := rounds(3, func() (float64, float64) {
				return curlRate(b, srv.url+"/repo/"+name, mib<<20), curlRate(b, ngx+"/"+name, mib<<20)
			})
			b.ReportMetric(ours/(1<<20), "roadsign-MiB/s")
			b.ReportMetric(theirs/(1<<20), "nginx-MiB/s")
			b.ReportMetric(ratio, "ratio")
		}
	})
}

// rounds runs measure n times, each a measurement of ours and of the
// reference taken back to back, and returns the medians of ours, of the
// reference and of the rounds' ratios.
func rounds(n int, measure func() (ours, ref float64)) (float64, float64, float64) {
	var o, r, x []float64
	for range n {
		a, c := measure()
		o, r, x = append(o, a), append(r, c), append(x, a/c)
	}
	return median(o), median(r), median(x)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// addBigTarget signs and publishes a generated DCM image of size bytes on
// srv and returns its path under /repo/.
func addBigTarget(b *testing.B, srv *fleetServer, size int64) string {
	b.Helper()
	img := filepath.Join(b.TempDir(), "dcm-big-9.0.0.img")
	f, err := os.Create(img)
	if err != nil {
		b.Fatal(err)
	}
	h := sha256.New()
	if err := fwimage.Write(io.MultiWriter(f, h), fwimage.Spec{ECU: "dcm", HardwareID: dcmHW, Version: "9.0.0", Size: size}); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	bin := builtPrograms(b)
	for _, args := range [][]string{
		{"add", srv.ws, img, "--ecu", "dcm", "--hardware-id", dcmHW, "--version", "9.0.0", "--release-counter", "9"},
		{"publish", srv.ws, "--server", srv.url, "--token", adminToken},
	} {
		if out, err := exec.Command(filepath.Join(bin, "roadsign-signer"), args...).CombinedOutput(); err != nil {
			b.Fatalf("roadsign-signer %s: %v\n%s", args[0], err, out)
		}
	}
	os.Remove(img)
	return "targets/dcm/" + hex.EncodeToString(h.Sum(nil)) + ".dcm-big-9.0.0.img"
}

// startNginx serves root on a free loopback port and returns its URL.
func startNginx(b *testing.B, root string) string {
	b.Helper()
	dir := b.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	conf := fmt.Sprintf(`daemon off;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
	access_log off;
	sendfile on;
	tcp_nopush on;
	keepalive_requests 1000000;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	types { application/json json; }
	default_type application/octet-stream;
	server {
		listen %[2]s;
		root %[3]s;
	}
}
`, dir, addr, root)
	if os.Geteuid() == 0 {
		conf = "user root;\n" + conf // workers must read the test's private directories
	}
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		b.Fatal(err)
	}
	var log bytes.Buffer
	cmd := exec.Command("nginx", "-p", dir, "-c", confPath)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGQUIT)
		cmd.Wait()
	})
	url := "http://" + addr
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return url
		}
		if i > 100 {
			errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			b.Fatalf("nginx did not start: %s%s", log.String(), errLog)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var wrkRateRE = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

// wrkRate runs wrk against url (2 threads, 64 connections, 10 s) and
// returns the requests per second; any non-2xx answer fails the benchmark.
func wrkRate(b *testing.B, url string) float64 {
	b.Helper()
	out, err := exec.Command("wrk", "-t2", "-c64", "-d10s", url).CombinedOutput()
	if err != nil {
		b.Fatalf("wrk %s: %v\n%s", url, err, out)
	}
	if strings.Contains(string(out), "Non-2xx") || strings.Contains(string(out), "Socket errors") {
		b.Fatalf("wrk %s: errors\n%s", url, out)
	}
	m := wrkRateRE.FindSubmatch(out)
	if m == nil {
		b.Fatalf("wrk %s: no rate in\n%s", url, out)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// curlRate downloads url with curl to /dev/null and returns bytes per
// second; it fails the benchmark unless exactly size bytes arrived.
func curlRate(b *testing.B, url string, size int64) float64 {
	b.Helper()
	out, err := exec.Command("curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{speed_download}", url).CombinedOutput()
	if err != nil {
		b.Fatalf("curl %s: %v\n%s", url, err, out)
	}
	var got int64
	var speed float64
	if _, err := fmt.Sscan(string(out), &got, &speed); err != nil || got != size {
		b.Fatalf("curl %s: %q, want %d bytes", url, out, size)
	}
	return speed
}
