package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/roadsign/roadsign/firmware-samples/fwimage"
)

// BenchmarkAgentInstall measures the agent's peak memory (max RSS of the
// real roadsign-agent process) and throughput while it downloads,
// verifies, installs and boot-checks one image. Memory must not grow with
// the image: the 1 GiB case must stay under 64 MiB, like the 64 MiB case.
// ROADSIGN_BENCH_SIZES (MiB, comma-separated) overrides the sizes.
func BenchmarkAgentInstall(b *testing.B) {
	sizes := []int64{64, 1024}
	if s := os.Getenv("ROADSIGN_BENCH_SIZES"); s != "" {
		sizes = nil
		for _, f := range bytes.Split([]byte(s), []byte(",")) {
			n, err := strconv.ParseInt(string(f), 10, 64)
			if err != nil {
				b.Fatalf("ROADSIGN_BENCH_SIZES: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	for _, mib := range sizes {
		b.Run(fmt.Sprintf("%dMiB", mib), func(b *testing.B) {
			for range b.N {
				benchInstall(b, agentBin, mib<<20)
			}
		})
	}
}

func benchInstall(b *testing.B, bin string, size int64) {
	b.StopTimer()
	w := newWorld(b)
	w.signerInit()
	img := filepath.Join(w.dir, "dcm-big-9.0.0.img")
	f, err := os.Create(img)
	if err != nil {
		b.Fatal(err)
	}
	if err := fwimage.Write(f, fwimage.Spec{ECU: "dcm", HardwareID: dcmHW, Version: "9.0.0", Size: size}); err != nil {
		b.Fatal(err)
	}
	f.Close()
	w.mustSigner("add", w.ws, img, "--ecu", "dcm", "--hardware-id", dcmHW, "--version", "9.0.0", "--release-counter", "9")
	w.publish()
	v := w.vehicle(1)

	cmd := exec.Command(bin, "update", "--state", v.dir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	b.StartTimer()
	start := time.Now()
	err = cmd.Run()
	elapsed := time.Since(start)
	b.StopTimer()
	if err != nil {
		b.Fatalf("agent update: %v\n%s", err, out.String())
	}
	if got := versions(b, v)["dcm"]; got != "9.0.0" {
		b.Fatalf("dcm runs %s after the update, want 9.0.0\n%s", got, out.String())
	}
	peak := float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) / 1024 // KiB -> MiB
	b.ReportMetric(peak, "peak-RSS-MiB")
	b.ReportMetric(float64(size)/(1<<20)/elapsed.Seconds(), "MiB/s")
	b.SetBytes(size)
	if peak > 64 {
		b.Errorf("agent peak RSS %.1f MiB installing a %d MiB image; the limit is 64 MiB", peak, size>>20)
	}
	w.shutdown()
	os.RemoveAll(w.dir)
}
