package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/fwimage"
)

// run is one real agent process.
type run struct {
	code   int
	killed bool
	out    string
}

func runAgent(t testing.TB, killAfter time.Duration, args ...string) run {
	t.Helper()
	cmd := exec.Command(agentBin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if killAfter > 0 {
		timer := time.AfterFunc(killAfter, func() { cmd.Process.Signal(syscall.SIGKILL) })
		defer timer.Stop()
	}
	err := cmd.Wait()
	r := run{out: out.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		ws := ee.Sys().(syscall.WaitStatus)
		r.killed = ws.Signaled() && ws.Signal() == syscall.SIGKILL
		r.code = ws.ExitStatus()
	default:
		t.Fatal(err)
	}
	return r
}

// bootRecord mirrors what the bootloader keeps per ECU (bootctl.Record).
type bootRecord struct {
	Active string `json:"active"`
	Trial  bool   `json:"trial"`
	Slots  map[string]*struct {
		Version string `json:"version"`
		SHA256  string `json:"sha256"`
		Length  int64  `json:"length"`
	} `json:"slots"`
}

// checkInvariant is what must hold after any interruption: every ECU's
// active slot is recorded, its bytes hash to the recorded sha256, that
// hash is one of the images the vehicle may legitimately run (verified),
// the image passes the boot check (not bricked), and its version is
// exactly the old or the new one. Every other recorded slot matches too.
func checkInvariant(t testing.TB, v vehicleState, allowed map[string]string) (bricked, unverified int) {
	t.Helper()
	ecus, err := os.ReadDir(filepath.Join(v.dir, "ecus"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ecus {
		dir := filepath.Join(v.dir, "ecus", e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "boot.json"))
		if err != nil {
			t.Errorf("%s: boot record unreadable: %v", e.Name(), err)
			bricked++
			continue
		}
		var rec bootRecord
		if err := json.Unmarshal(b, &rec); err != nil {
			t.Errorf("%s: boot record damaged: %v", e.Name(), err)
			bricked++
			continue
		}
		for slot, info := range rec.Slots {
			if info == nil {
				continue
			}
			img, err := os.ReadFile(filepath.Join(dir, "slot-"+slot+".img"))
			sum := sha256.Sum256(img)
			if err != nil || hex.EncodeToString(sum[:]) != info.SHA256 || int64(len(img)) != info.Length {
				t.Errorf("%s slot %s: bytes do not match the recorded hash", e.Name(), slot)
				if slot == rec.Active {
					unverified++
				}
			}
		}
		active := rec.Slots[rec.Active]
		if active == nil {
			t.Errorf("%s: active slot %s holds nothing recorded", e.Name(), rec.Active)
			bricked++
			continue
		}
		want, ok := allowed[active.SHA256]
		if !ok {
			t.Errorf("%s: active slot holds an image that is neither the old nor the new one", e.Name())
			unverified++
			continue
		}
		f, err := os.Open(filepath.Join(dir, "slot-"+rec.Active+".img"))
		if err != nil {
			bricked++
			continue
		}
		typ := "dcm"
		if strings.HasPrefix(e.Name(), "HU") {
			typ = "head-unit"
		}
		hw := map[string]string{"dcm": dcmHW, "head-unit": huHW}[typ]
		h, err := fwimage.BootCheck(f, typ, hw)
		f.Close()
		if err != nil {
			t.Errorf("%s: active slot does not boot: %v", e.Name(), err)
			bricked++
			continue
		}
		if h.Version != active.Version || h.Version != want {
			t.Errorf("%s: boots %s, record says %s, image is %s (a mix)", e.Name(), h.Version, active.Version, want)
			unverified++
		}
	}
	return bricked, unverified
}

// allowedImages maps sha256 to version for the images a vehicle may run.
func allowedImages(t testing.TB, files ...string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		h, err := fwimage.ParseHeader(b)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		m[hex.EncodeToString(sum[:])] = h.Version
	}
	return m
}

func sampleFile(t testing.TB, hw, version string) string {
	return filepath.Join(samplesDir(), findSample(t, hw, version).File)
}

// TestFaultMatrix injects every simulated fault in every phase, then
// restarts the agent without faults, and checks after each run that the
// ECUs boot verified images of exactly the old or the new version, that the
// exit code and output say what happened, and where the vehicle ends up.
func TestFaultMatrix(t *testing.T) {
	type tc struct {
		fault     string
		unbootDCM bool   // the DCM image verifies but fails its boot check
		wantCode  int    // first run; -1 means killed by the simulated power loss
		wantOut   string // in the first run's output
		wantAfter string // version both ECUs run after the recovery run ("" = per ECU below)
		wantHU    string
		wantDCM   string
	}
	var cases []tc
	cases = append(cases,
		tc{fault: "corrupt-download", wantCode: 3, wantOut: "sha256 mismatch", wantAfter: "1.1.0"},
		tc{fault: "truncate-download", wantCode: 3, wantOut: "length mismatch", wantAfter: "1.1.0"},
		tc{fault: "flash-error", wantCode: 4, wantOut: "simulated flash write error", wantAfter: "1.1.0"},
		// An image that failed its boot check is not tried again: the head
		// unit stays on its old, verified image. The DCM, in the same
		// update set, never switched: its attempt is retried, and its
		// image installs alone.
		tc{fault: "boot-fail", wantCode: 4, wantOut: "rolled back", wantHU: "1.0.0", wantDCM: "1.1.0"},
	)
	for _, pct := range []int{1, 50, 99} {
		cases = append(cases, tc{fault: fmt.Sprintf("network-drop:%d", pct), wantCode: 1, wantOut: "the next update resumes", wantAfter: "1.1.0"})
		cases = append(cases, tc{fault: fmt.Sprintf("power-loss:download:%d", pct), wantCode: -1, wantAfter: "1.1.0"})
	}
	for _, pct := range []int{0, 50, 100} {
		cases = append(cases, tc{fault: fmt.Sprintf("power-loss:write:%d", pct), wantCode: -1, wantAfter: "1.1.0"})
	}
	for _, phase := range []string{"switch", "commit"} {
		cases = append(cases, tc{fault: "power-loss:" + phase, wantCode: -1, wantAfter: "1.1.0"})
	}
	// The same with a DCM image that verifies but does not boot: head
	// unit and DCM are one update set, so both end on their old images.
	// Power lost at the head unit's switch: the recovery run goes back
	// and installs the set again, which fails on the DCM.
	cases = append(cases, tc{fault: "power-loss:switch", unbootDCM: true, wantCode: -1, wantHU: "1.0.0", wantDCM: "1.0.0"})
	// Nothing commits when the DCM fails its boot check, so the power
	// loss at the commit never comes; the head unit's attempt failed and
	// its retry installs it alone in the recovery run (the DCM image that
	// failed is not tried again).
	cases = append(cases, tc{fault: "power-loss:commit", unbootDCM: true, wantCode: 4, wantOut: "rolled back", wantHU: "1.1.0", wantDCM: "1.0.0"})
	cases = append(cases, tc{fault: "boot-fail", unbootDCM: true, wantCode: 4, wantOut: "rolled back", wantHU: "1.0.0", wantDCM: "1.0.0"})

	worlds := map[bool]*world{}
	for _, unboot := range []bool{false, true} {
		// Auto-assigned installs are jobs: a failed attempt is retried
		// after --job-retry, which the back-to-back runs here make short.
		w := newWorld(t, "--job-retry", "1ms")
		w.signerInit()
		w.add(findSample(t, huHW, "1.1.0"))
		if unboot {
			for _, s := range loadSamples(t) {
				if !s.Bootable {
					w.add(s)
				}
			}
		} else {
			w.add(findSample(t, dcmHW, "1.1.0"))
		}
		w.publish()
		worlds[unboot] = w
	}
	var unbootFile string
	for _, s := range loadSamples(t) {
		if !s.Bootable {
			unbootFile = filepath.Join(samplesDir(), s.File)
		}
	}
	allowed := allowedImages(t, sampleFile(t, huHW, "1.0.0"), sampleFile(t, huHW, "1.1.0"),
		sampleFile(t, dcmHW, "1.0.0"), sampleFile(t, dcmHW, "1.1.0"), unbootFile)

	for i, c := range cases {
		name := c.fault
		if c.unbootDCM {
			name += "/unbootable-dcm"
		}
		t.Run(name, func(t *testing.T) {
			w := worlds[c.unbootDCM]
			v := w.vehicle(100 + i)
			first := runAgent(t, 0, "update", "--state", v.dir, "--simulate", c.fault)
			switch {
			case c.wantCode == -1 && !first.killed:
				t.Fatalf("want the simulated power loss to kill the agent; exit %d\n%s", first.code, first.out)
			case c.wantCode >= 0 && (first.killed || first.code != c.wantCode):
				t.Fatalf("want exit %d, got %d (killed %v)\n%s", c.wantCode, first.code, first.killed, first.out)
			}
			if !strings.Contains(first.out, c.wantOut) {
				t.Errorf("output should mention %q:\n%s", c.wantOut, first.out)
			}
			if b, u := checkInvariant(t, v, allowed); b+u > 0 {
				t.Fatalf("after the fault: %d bricked, %d unverified", b, u)
			}

			second := runAgent(t, 0, "update", "--state", v.dir)
			if second.killed || (second.code != 0 && second.code != 4) {
				t.Fatalf("recovery run: exit %d\n%s", second.code, second.out)
			}
			if c.wantCode == -1 && !c.unbootDCM && strings.Contains(c.fault, "switch") && !strings.Contains(second.out, "recovered") {
				t.Errorf("recovery run should say what it recovered:\n%s", second.out)
			}
			if b, u := checkInvariant(t, v, allowed); b+u > 0 {
				t.Fatalf("after recovery: %d bricked, %d unverified", b, u)
			}
			got := versions(t, v)
			wantHU, wantDCM := c.wantAfter, c.wantAfter
			if c.wantAfter == "" {
				wantHU, wantDCM = c.wantHU, c.wantDCM
			}
			if got["head-unit"] != wantHU || got["dcm"] != wantDCM {
				t.Fatalf("after recovery: %v, want head-unit %s, dcm %s\nfirst:\n%s\nsecond:\n%s", got, wantHU, wantDCM, first.out, second.out)
			}
			// A third run is quiet: nothing left to do, nothing retried.
			if third := runAgent(t, 0, "update", "--state", v.dir); third.code != 0 {
				t.Fatalf("third run: exit %d\n%s", third.code, third.out)
			}
		})
	}
}

// tortureInstalls is how many installs the torture test interrupts;
// `make torture` sets ROADSIGN_TORTURE_INSTALLS=500.
func tortureInstalls(t *testing.T) int {
	if s := os.Getenv("ROADSIGN_TORTURE_INSTALLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("ROADSIGN_TORTURE_INSTALLS=%q", s)
		}
		return n
	}
	return 50
}

// TestPowerLossTorture kills the real agent process with SIGKILL at random
// points of many installs, restarting it each time, and checks after every
// kill that no ECU is bricked or runs an unverified image, and that after
// the next start (a run with no network: recovery only) head unit and DCM,
// one update set, run the same release: never one new and one old.
func TestPowerLossTorture(t *testing.T) {
	n := tortureInstalls(t)
	w := newWorld(t)
	w.signerInit()
	// Images of a few MiB so that random kill times land in every phase.
	var newFiles []string
	for _, img := range []struct{ ecu, hw string }{{"head-unit", huHW}, {"dcm", dcmHW}} {
		p := filepath.Join(w.dir, img.ecu+"-5.0.0.img")
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := fwimage.Write(f, fwimage.Spec{ECU: img.ecu, HardwareID: img.hw, Version: "5.0.0", Size: 3 << 20}); err != nil {
			t.Fatal(err)
		}
		f.Close()
		w.mustSigner("add", w.ws, p, "--ecu", img.ecu, "--hardware-id", img.hw, "--version", "5.0.0", "--release-counter", "5")
		newFiles = append(newFiles, p)
	}
	w.publish()
	allowed := allowedImages(t, append(newFiles, sampleFile(t, huHW, "1.0.0"), sampleFile(t, dcmHW, "1.0.0"))...)

	// Time one clean install to spread the random kills over it.
	probe := w.vehicle(9999)
	start := time.Now()
	if r := runAgent(t, 0, "update", "--state", probe.dir); r.code != 0 {
		t.Fatalf("clean install: %s", r.out)
	}
	span := time.Since(start)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("ROADSIGN_TORTURE_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	t.Logf("a clean install takes %s; random kills over [0, %s]; seed %d (ROADSIGN_TORTURE_SEED repeats it)", span, span, seed)

	phases := []string{"download", "write", "switch", "commit"}
	kills, bricked, unverified, mixed := 0, 0, 0, 0
	for i := range n {
		v := w.vehicle(i + 1)
		done := false
		for attempt := 0; attempt < 12 && !done; attempt++ {
			var r run
			switch {
			case attempt >= 8: // let it finish
				r = runAgent(t, 0, "update", "--state", v.dir)
			case rng.IntN(2) == 0: // power cut by the simulator at a chosen phase
				ph := phases[rng.IntN(len(phases))]
				r = runAgent(t, 0, "update", "--state", v.dir, "--simulate", fmt.Sprintf("power-loss:%s:%d", ph, rng.IntN(101)))
			default: // power cut from outside at a random instant
				r = runAgent(t, time.Duration(rng.Int64N(int64(span))), "update", "--state", v.dir)
			}
			if r.killed {
				kills++
				b, u := checkInvariant(t, v, allowed)
				bricked += b
				unverified += u
				if boot := runAgent(t, 0, "update", "--state", v.dir, "--simulate", "signal:0"); boot.killed {
					t.Fatalf("install %d: the recovery start was killed\n%s", i, boot.out)
				}
				if got := versions(t, v); got["head-unit"] != got["dcm"] {
					mixed++
					t.Errorf("install %d attempt %d: after the next start head unit %s, DCM %s: a mixed update set", i, attempt, got["head-unit"], got["dcm"])
				}
			} else if r.code != 0 {
				t.Fatalf("install %d attempt %d: exit %d\n%s", i, attempt, r.code, r.out)
			} else {
				done = true
			}
			b, u := checkInvariant(t, v, allowed)
			bricked += b
			unverified += u
		}
		if got := versions(t, v); got["head-unit"] != "5.0.0" || got["dcm"] != "5.0.0" {
			t.Fatalf("install %d did not complete: %v", i, got)
		}
		os.RemoveAll(v.dir)
	}
	fmt.Printf("power-loss torture: %d installs, %d bricked, %d unverified, %d mixed sets after a restart (%d kills)\n", n, bricked, unverified, mixed, kills)
	t.Logf("%d installs, %d bricked, %d unverified, %d mixed (%d kills)", n, bricked, unverified, mixed, kills)
	if bricked+unverified+mixed > 0 {
		t.Fatalf("%d installs, %d bricked, %d unverified, %d mixed", n, bricked, unverified, mixed)
	}
	if kills < n {
		t.Fatalf("only %d kills in %d installs; the torture did not bite", kills, n)
	}
}
