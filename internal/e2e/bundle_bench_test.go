package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/fwimage"
	"github.com/roadsign/roadsign/internal/testsupport"
)

// peakRSS reads a process's peak resident set (VmHWM) in MiB.
func peakRSS(pid int) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no VmHWM for %d", pid)
}

// BenchmarkServerStreamsUSBBundle measures the real roadsign-server
// process's peak memory while it streams a USB bundle holding a 1 GiB
// image (ROADSIGN_BENCH_BUNDLE_MIB overrides the size). The peak is reset
// just before the download, so the upload of the image does not count; it
// is reported separately. Memory must stay under 64 MiB.
func BenchmarkServerStreamsUSBBundle(b *testing.B) {
	mib := int64(1024)
	if s := os.Getenv("ROADSIGN_BENCH_BUNDLE_MIB"); s != "" {
		mib, _ = strconv.ParseInt(s, 10, 64)
	}
	dir := b.TempDir()
	bin := filepath.Join(testsupport.MustPrograms(b), "roadsign-server")
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	w := &world{t: b, dir: dir, data: filepath.Join(dir, "data"), ws: filepath.Join(dir, "ws"), url: "http://" + addr}
	cmd := exec.Command(bin, "--listen", addr, "--data", w.data, "--timestamp-expiry", "1000h", "--snapshot-expiry", "1000h", "--log-level", "warn")
	cmd.Env = append(os.Environ(), "ROADSIGN_ADMIN_TOKEN="+adminToken)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	for i := 0; ; i++ {
		if resp, err := http.Get(w.url + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if i > 100 {
			b.Fatal("server did not start")
		}
		time.Sleep(100 * time.Millisecond)
	}
	w.signerInit()
	img := filepath.Join(dir, "dcm-huge-9.0.0.img")
	f, _ := os.Create(img)
	if err := fwimage.Write(f, fwimage.Spec{ECU: "dcm", HardwareID: dcmHW, Version: "9.0.0", Size: mib << 20}); err != nil {
		b.Fatal(err)
	}
	f.Close()
	w.mustSigner("add", w.ws, img, "--ecu", "dcm", "--hardware-id", dcmHW, "--version", "9.0.0", "--release-counter", "9")
	w.add(findSample(b, huHW, "1.0.0"))
	w.publish()
	uploadPeak, _ := peakRSS(cmd.Process.Pid)
	v := w.vehicle(1)
	dealer := w.account("dealer", "bench-dealer")

	b.ResetTimer()
	for range b.N {
		// Reset the peak so only the bundle counts.
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", cmd.Process.Pid), []byte("5"), 0); err != nil {
			b.Fatalf("reset peak RSS: %v", err)
		}
		req, _ := http.NewRequest("GET", w.url+"/api/v1/vehicles/"+v.vin+"/usb-bundle", nil)
		req.Header.Set("Authorization", "Bearer "+dealer)
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		if resp.StatusCode != 200 {
			body, _ := io.ReadAll(resp.Body)
			b.Fatalf("bundle: %d %s", resp.StatusCode, body)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n < mib<<20 {
			b.Fatalf("bundle stream: %d bytes, %v", n, err)
		}
		elapsed := time.Since(start)
		peak, err := peakRSS(cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(n)
		b.ReportMetric(peak, "server-peak-RSS-MiB")
		b.ReportMetric(uploadPeak, "upload-peak-RSS-MiB")
		b.ReportMetric(float64(n)/(1<<20)/elapsed.Seconds(), "MiB/s")
		if peak > 64 {
			b.Errorf("server peak RSS %.1f MiB while streaming a %d MiB bundle; the limit is 64 MiB", peak, mib)
		}
	}
}
