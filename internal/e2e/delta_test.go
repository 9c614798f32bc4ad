package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/client/bootctl"
	"github.com/roadsign/roadsign/client/fleetsim"
	"github.com/roadsign/roadsign/internal/fwimage"
)

// deltaPair writes two bootable DCM images that share most of their
// payload, as consecutive releases do: the target rewrites 2 % of the
// base's 4 KiB blocks and inserts 100 KiB near the start.
func deltaPair(t *testing.T, dir string, size int) (base, target string) {
	t.Helper()
	p := make([]byte, size)
	rand.NewChaCha8([32]byte{42}).Read(p)
	q := bytes.Clone(p)
	r := rand.New(rand.NewPCG(1, 2))
	for range size / 4096 / 50 {
		b := r.IntN(size / 4096)
		rand.NewChaCha8([32]byte{byte(b), byte(b >> 8), 7}).Read(q[b*4096 : (b+1)*4096])
	}
	ins := make([]byte, 100<<10)
	rand.NewChaCha8([32]byte{43}).Read(ins)
	at := 300_001
	q = append(append(append([]byte{}, q[:at]...), ins...), q[at:]...)
	write := func(name, version string, payload []byte) string {
		h := fwimage.Header{ECU: "dcm", HardwareID: dcmHW, Version: version, PayloadLength: int64(len(payload)), PayloadSHA256: sha256.Sum256(payload)}
		hb, err := h.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, append(hb, payload...), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	return write("dcm-base-1.5.0.img", "1.5.0", p), write("dcm-target-3.0.0.img", "3.0.0", q)
}

type deltaECU struct {
	Type          string `json:"type"`
	Outcome       string `json:"outcome"`
	To            string `json:"to"`
	Transferred   int64  `json:"transferred"`
	Delta         bool   `json:"delta"`
	DeltaFallback string `json:"deltaFallback"`
}

// TestDeltaUpdates: a campaign with "deltas": "wait" sends each vehicle
// the delta from the DCM image it reported; the rebuilt slot matches the
// signed full image. A corrupted delta, a delta for another base (the DCM
// was reflashed behind the server's back) and an altered base slot each
// end in a verified full-image install in the same cycle, the reason in
// the report; an image with nothing in common gets the full image.
func TestDeltaUpdates(t *testing.T) {
	w := newWorld(t, "--campaign-tick", "50ms", "--auto-assign", "none")
	base, target := deltaPair(t, w.dir, 4<<20)
	w.signerInit()
	hu, dcm1 := findSample(t, huHW, "1.0.0"), findSample(t, dcmHW, "1.0.0")
	w.add(hu)
	w.add(dcm1)
	w.mustSigner("add", w.ws, base, "--ecu", "dcm", "--hardware-id", dcmHW, "--version", "1.5.0", "--release-counter", "2")
	w.mustSigner("add", w.ws, target, "--ecu", "dcm", "--hardware-id", dcmHW, "--version", "3.0.0", "--release-counter", "3")
	w.publish()
	targetInfo, err := os.Stat(target)
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name     string
		firmware string
		simulate string
		// reflash, after the first check-in, puts another image in the
		// DCM's slot without the server hearing of it.
		reflash  string
		delta    bool
		fallback string
	}{
		{name: "delta", firmware: base, delta: true},
		{name: "corrupted delta", firmware: base, simulate: "corrupt-delta", fallback: "operation"},
		{name: "truncated delta", firmware: base, simulate: "truncate-delta", fallback: "ends after"},
		{name: "wrong base", firmware: base, reflash: filepath.Join(samplesDir(), dcm1.File), fallback: "applies to the image"},
		{name: "altered base", firmware: base, simulate: "corrupt-active", fallback: "does not match its sha256"},
		{name: "nothing in common", firmware: filepath.Join(samplesDir(), dcm1.File)},
	}
	var vins []string
	dirs := map[string]string{}
	for i, tc := range cases {
		n := 700 + i
		st := filepath.Join(w.dir, fmt.Sprintf("dv%d", n))
		vin := testVIN(n)
		r := agent(t, "init", "--state", st, "--server", w.url, "--vin", vin,
			"--image-root", filepath.Join(w.ws, "image.root.json"), "--director-root", filepath.Join(w.ws, "director.root.json"),
			"--ecu", fmt.Sprintf("head-unit:HU%06d:%s:%s", n, huHW, filepath.Join(samplesDir(), hu.File)),
			"--ecu", fmt.Sprintf("dcm:DCM%06d:%s:%s", n, dcmHW, tc.firmware), "--token", adminToken)
		if r.code != 0 {
			t.Fatalf("%s: agent init: %s", tc.name, r)
		}
		update(t, st, 0) // checks in: the server learns what the DCM runs
		if tc.reflash != "" {
			e := bootctl.New(filepath.Join(st, "ecus", fmt.Sprintf("DCM%06d", n)), "dcm", dcmHW, time.Now)
			if _, err := e.Provision(tc.reflash); err != nil {
				t.Fatal(err)
			}
		}
		vins, dirs[tc.name] = append(vins, vin), st
	}
	w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "3.0.0", "selector": map[string]any{"vins": vins}, "waves": []int{100}, "deltas": "wait"})

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got deltaECU
			var last result
			for try := 0; try < 100 && got.Outcome != "installed"; try++ {
				args := []string{"--json"}
				if tc.simulate != "" {
					args = append(args, "--simulate", tc.simulate)
				}
				last = agent(t, append([]string{"update", "--state", dirs[tc.name]}, args...)...)
				var rep struct{ ECUs []deltaECU }
				json.Unmarshal([]byte(last.stdout), &rep)
				for _, e := range rep.ECUs {
					if e.Type == "dcm" {
						got = e
					}
				}
				if got.Outcome != "installed" {
					time.Sleep(100 * time.Millisecond)
				}
			}
			t.Logf("DCM: delta %v, %d bytes transferred, fallback %q", got.Delta, got.Transferred, got.DeltaFallback)
			if got.Outcome != "installed" || got.To != "3.0.0" {
				t.Fatalf("DCM never installed 3.0.0: %+v\n%s", got, last)
			}
			if got.Delta != tc.delta || !strings.Contains(got.DeltaFallback, tc.fallback) || (tc.fallback == "") != (got.DeltaFallback == "") {
				t.Fatalf("delta %v, fallback %q; want delta %v and a fallback naming %q", got.Delta, got.DeltaFallback, tc.delta, tc.fallback)
			}
			if tc.delta && got.Transferred > targetInfo.Size()/20 {
				t.Errorf("a delta of %d bytes for a %d-byte image: want at most 5 %%", got.Transferred, targetInfo.Size())
			}
			v := vehicleState{dir: dirs[tc.name]}
			activeBytes(t, v) // the slot's bytes match the sha256 recorded when verified
			if vs := versions(t, v); vs["dcm"] != "3.0.0" {
				t.Fatalf("DCM runs %s", vs["dcm"])
			}
		})
	}
	for _, series := range []string{`roadsign_served_bytes_total{kind="delta"}`, `roadsign_delta_generations_total{result="made"}`, `roadsign_delta_generations_total{result="not_worth"}`} {
		if v := metric(t, w.url, series); v <= 0 {
			t.Errorf("/metrics: %s is %v, want above 0", series, v)
		}
	}
}

// TestDeltaCampaignBytes: a campaign with "deltas": "wait" over 200
// simulated vehicles, all on the base image, serves each its delta: the
// target bytes served (from /metrics) are at most 10 % of what full
// images would have cost.
func TestDeltaCampaignBytes(t *testing.T) {
	const n = 200
	w := newWorld(t, "--campaign-tick", "50ms", "--auto-assign", "none")
	base, target := deltaPair(t, w.dir, 4<<20)
	w.signerInit()
	hu := findSample(t, huHW, "1.0.0")
	w.add(hu)
	w.mustSigner("add", w.ws, base, "--ecu", "dcm", "--hardware-id", dcmHW, "--version", "1.5.0", "--release-counter", "2")
	w.mustSigner("add", w.ws, target, "--ecu", "dcm", "--hardware-id", dcmHW, "--version", "3.0.0", "--release-counter", "3")
	w.publish()
	spec := func(typ, hw, version, file string) fleetsim.ECUSpec {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return fleetsim.ECUSpec{Type: typ, HardwareID: hw, Version: version, SHA256: sha(b), Length: int64(len(b))}
	}
	full := spec("dcm", dcmHW, "3.0.0", target).Length
	dirRoot, err := os.ReadFile(filepath.Join(w.ws, "director.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	imgRoot, err := os.ReadFile(filepath.Join(w.ws, "image.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleetsim.New(fleetsim.Config{Server: w.url, Token: adminToken, Vehicles: n, Concurrency: 16, Seed: 25,
		ECUs:  []fleetsim.ECUSpec{spec("head-unit", huHW, "1.0.0", filepath.Join(samplesDir(), hu.File)), spec("dcm", dcmHW, "1.5.0", base)},
		Model: "Roadster", Year: 2025, Region: "EU", Download: true, StateDir: t.TempDir(), DirectorRoot: dirRoot, ImageRoot: imgRoot})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Register(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	f.Cycle(context.Background()) // every vehicle reports its DCM image
	id := w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "3.0.0", "waves": []int{100}, "deltas": "wait"})
	runUntil(t, f, "the campaign to complete", func() bool { return w.campaign(t, id).State == "completed" })
	if c := w.campaign(t, id); c.Totals.Succeeded != n {
		t.Fatalf("campaign totals %+v; want %d successes", c.Totals, n)
	}
	deltaBytes := metric(t, w.url, `roadsign_served_bytes_total{kind="delta"}`)
	fullBytes := metric(t, w.url, `roadsign_served_bytes_total{kind="full"}`)
	ratio := (deltaBytes + fullBytes) / float64(n*full)
	t.Logf("served %.0f delta + %.0f full bytes for %d vehicles: %.2f %% of %d full images", deltaBytes, fullBytes, n, 100*ratio, n)
	if ratio > 0.10 {
		t.Fatalf("served %.2f %% of what full images would have cost; want at most 10 %%", 100*ratio)
	}
}
