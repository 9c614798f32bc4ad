package e2e

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/fwimage"
	"github.com/roadsign/roadsign/internal/gobuild"
	"github.com/roadsign/roadsign/internal/testsupport"
)

// armImageMiB is the DCM image the arm64 secondary installs.
const armImageMiB = 256

// TestSecondaryOnArm64: vehicles are ARM. The DCM secondary runs as a
// linux/arm64 roadsign-agent under qemu-user; with its (amd64) primary
// it installs an update set: a new head unit image on the primary and a
// 256 MiB DCM image the primary streams to it, verified by itself. Its
// peak memory through the install is measured and must not grow with the
// image.
func TestSecondaryOnArm64(t *testing.T) {
	qemu, err := exec.LookPath("qemu-aarch64")
	if err != nil {
		if os.Getenv("ROADSIGN_REQUIRE_QEMU") != "" {
			t.Fatal("qemu-aarch64 is not installed (make test installs Debian's qemu-user)")
		}
		t.Skip("qemu-aarch64 not installed; make test installs qemu-user")
	}
	bin := filepath.Join(t.TempDir(), "roadsign-agent")
	root, err := testsupport.Root()
	if err != nil {
		t.Fatal(err)
	}
	// As make release builds it (and sharing its compiled packages).
	if err := (gobuild.Build{Dir: root, Env: []string{"GOOS=linux", "GOARCH=arm64"}}).Programs(filepath.Dir(bin), "./cmd/roadsign-agent"); err != nil {
		t.Fatal(err)
	}
	if f, err := elf.Open(bin); err != nil || f.Machine != elf.EM_AARCH64 {
		t.Fatalf("%s is not an arm64 program: %v", bin, err)
	}

	w := newWorld(t, "--auto-assign", "none")
	w.signerInit()
	img := filepath.Join(t.TempDir(), "dcm-DCM-4G-24MM-3.0.0.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := fwimage.Write(f, fwimage.Spec{ECU: "dcm", HardwareID: dcmHW, Version: "3.0.0", Size: armImageMiB << 20}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	w.mustSigner("add", w.ws, img, "--ecu", "dcm", "--hardware-id", dcmHW, "--version", "3.0.0")
	w.add(findSample(t, huHW, "1.1.0"))
	w.publish()

	vin := testVIN(1)
	dcmDir := filepath.Join(t.TempDir(), "dcm")
	init := exec.Command(qemu, bin, "init-secondary", "--state", dcmDir, "--vin", vin,
		"--ecu", "dcm:DCM000001:"+dcmHW+":"+filepath.Join(samplesDir(), findSample(t, dcmHW, "1.0.0").File),
		"--director-root", filepath.Join(w.ws, "director.root.json"), "--image-root", filepath.Join(w.ws, "image.root.json"), "--verification", "full")
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("arm64 init-secondary: %v\n%s", err, out)
	}
	sec, addr, stderr := startSecondaryCmd(t, exec.Command(qemu, bin, "secondary", "--state", dcmDir, "--listen", "127.0.0.1:0"))
	var peak atomic.Int64
	stop := make(chan struct{})
	defer close(stop)
	go watchPeak(sec.Process.Pid, &peak, stop)

	hu := filepath.Join(t.TempDir(), "hu")
	r := agent(t, "init", "--state", hu, "--server", w.url, "--vin", vin,
		"--image-root", filepath.Join(w.ws, "image.root.json"), "--director-root", filepath.Join(w.ws, "director.root.json"),
		"--ecu", "head-unit:HU000001:"+huHW+":"+filepath.Join(samplesDir(), findSample(t, huHW, "1.0.0").File),
		"--secondary", "DCM000001="+addr, "--token", adminToken)
	if r.code != 0 {
		t.Fatalf("init the primary: %s\n%s", r, stderr.String())
	}
	w.job(adminToken, map[string]any{"vin": vin, "reason": "arm64 DCM",
		"ecus": []map[string]string{{"ecu": "head-unit", "version": "1.1.0"}, {"ecu": "dcm", "version": "3.0.0"}}})
	before := peak.Load()
	start := time.Now()
	upd := exec.Command(agentBin, "update", "--state", hu) // the real (amd64) primary streams it through
	if out, err := upd.CombinedOutput(); err != nil {
		t.Fatalf("update: %v\n%s\nsecondary:\n%s", err, out, stderr.String())
	}
	took := time.Since(start)
	if got := versions(t, vehicleState{dir: hu, vin: vin}); got["dcm"] != "3.0.0" || got["head-unit"] != "1.1.0" {
		t.Fatalf("after the set: %v, want the head unit on 1.1.0 and the arm64 DCM on 3.0.0", got)
	}
	time.Sleep(20 * time.Millisecond) // one more reading
	mib := float64(peak.Load()) / 1024
	t.Logf("arm64 DCM secondary under qemu-user: %d MiB image installed in %s, peak RSS %.1f MiB (%.1f MiB before the install)",
		armImageMiB, took.Round(100*time.Millisecond), mib, float64(before)/1024)
	if mib >= armImageMiB/2 {
		t.Fatalf("peak RSS %.1f MiB through a %d MiB install: memory grows with the image", mib, armImageMiB)
	}
}

// watchPeak keeps the process's peak resident set (VmHWM, KiB) in peak
// until stop.
func watchPeak(pid int, peak *atomic.Int64, stop chan struct{}) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
				if kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64); err == nil && kib > peak.Load() {
					peak.Store(kib)
				}
			}
		}
	}
}
