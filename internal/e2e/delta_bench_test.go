package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/fwimage"
)

// BenchmarkAgentDeltaInstall measures the agent rebuilding a DCM image
// from a delta (max RSS of the real roadsign-agent process, and the
// rebuild's speed as the agent reports it in streamSeconds: delta
// download, base reads, per-operation and whole-image sha256, slot
// write, fsynced), on an image pair like two releases: 2 % of the 4 KiB
// blocks rewritten and 100 KiB inserted near the start. make bench sets
// it beside BenchmarkAgentInstall's full-image install of the same size.
// ROADSIGN_BENCH_SIZES (MiB, comma-separated) overrides the sizes.
func BenchmarkAgentDeltaInstall(b *testing.B) {
	for _, mib := range envCounts(b, "ROADSIGN_BENCH_SIZES", 1024) {
		b.Run(fmt.Sprintf("%dMiB", mib), func(b *testing.B) {
			for range b.N {
				benchDeltaInstall(b, mib<<20)
			}
		})
	}
}

// writeReleasePair streams two bootable DCM images of size bytes to dir:
// a base, and a target that rewrites 2 % of its payload's 4 KiB blocks
// and inserts 100 KiB at offset 300 001 (neither is ever in memory).
func writeReleasePair(b *testing.B, dir string, size int64) (base, target string) {
	b.Helper()
	n := size - fwimage.HeaderSize
	rewrite := map[int64]bool{}
	r := rand.New(rand.NewPCG(3, 4))
	for range n / 4096 / 50 {
		rewrite[r.Int64N(n/4096)] = true
	}
	const insertAt, insertLen = 300_001, 100 << 10
	// payload writes the base payload (target false) or the target's to w.
	payload := func(w io.Writer, target bool) {
		src := rand.NewChaCha8([32]byte{9})
		blk := make([]byte, 4096)
		for i := int64(0); i*4096 < n-insertLen*btoi(target); i++ {
			k := min(4096, n-insertLen*btoi(target)-i*4096)
			src.Read(blk[:k])
			if target && rewrite[i] {
				rand.NewChaCha8([32]byte{byte(i), byte(i >> 8), byte(i >> 16), 1}).Read(blk[:k])
			}
			if target && i*4096 <= insertAt && insertAt < i*4096+k {
				cut := insertAt - i*4096
				w.Write(blk[:cut])
				ins := make([]byte, insertLen)
				rand.NewChaCha8([32]byte{10}).Read(ins)
				w.Write(ins)
				w.Write(blk[cut:k])
				continue
			}
			w.Write(blk[:k])
		}
	}
	write := func(name, version string, target bool) string {
		h := sha256.New()
		payload(h, target)
		hdr := fwimage.Header{ECU: "dcm", HardwareID: dcmHW, Version: version, PayloadLength: n}
		copy(hdr.PayloadSHA256[:], sumOf(h))
		hb, err := hdr.Marshal()
		if err != nil {
			b.Fatal(err)
		}
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		bw := bufio.NewWriterSize(f, 1<<20)
		bw.Write(hb)
		payload(bw, target)
		if err := bw.Flush(); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		return p
	}
	return write("dcm-base-8.0.0.img", "8.0.0", false), write("dcm-target-8.1.0.img", "8.1.0", true)
}

func btoi(v bool) int64 {
	if v {
		return 1
	}
	return 0
}

func sumOf(h hash.Hash) []byte { return h.Sum(nil) }

func benchDeltaInstall(b *testing.B, size int64) {
	b.StopTimer()
	w := newWorld(b, "--auto-assign", "latest", "--delta-timeout", "30m")
	base, target := writeReleasePair(b, w.dir, size)
	w.publishDeltaPair(base, target, "8.0.0", "8.1.0")
	vehicle := func(i int) string { return w.deltaVehicle(900+i, base).dir }
	// The first vehicle's check-in of the base has the server make the
	// delta (it installs the full image meanwhile).
	first := vehicle(0)
	made := time.Now()
	if r := agent(b, "update", "--state", first); r.code != 0 {
		b.Fatalf("first update: %s", r)
	}
	w.waitDeltaMade(30 * time.Minute)
	b.Logf("delta made in %s", time.Since(made).Round(time.Millisecond))
	os.RemoveAll(first)

	mibs := float64(size) / (1 << 20)
	var install []float64
	var peak float64
	var transferred int64
	for n := range installRounds {
		st := vehicle(n + 1)
		cmd := exec.Command(agentBin, "update", "--state", st, "--json")
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		b.StartTimer()
		peakKiB, err := runPeakRSS(cmd)
		b.StopTimer()
		if err != nil {
			b.Fatalf("agent update: %v\n%s%s", err, out.String(), errOut.String())
		}
		var rep struct {
			ECUs []struct {
				Type          string  `json:"type"`
				Outcome       string  `json:"outcome"`
				Delta         bool    `json:"delta"`
				Transferred   int64   `json:"transferred"`
				StreamSeconds float64 `json:"streamSeconds"`
			} `json:"ecus"`
		}
		if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
			b.Fatalf("update --json: %v\n%s", err, out.String())
		}
		for _, e := range rep.ECUs {
			if e.Type != "dcm" {
				continue
			}
			if e.Outcome != "installed" || !e.Delta || e.StreamSeconds <= 0 {
				b.Fatalf("the DCM did not install from the delta:\n%s\n%s", out.String(), errOut.String())
			}
			install = append(install, mibs/e.StreamSeconds)
			transferred = e.Transferred
		}
		peak = max(peak, float64(peakKiB)/1024)
		os.RemoveAll(st)
	}
	b.ReportMetric(peak, "peak-RSS-MiB")
	b.ReportMetric(median(install), "install-MiB/s")
	b.ReportMetric(100*float64(transferred)/float64(size), "%-of-full")
	b.SetBytes(size * installRounds)
	if peak > 24 {
		b.Errorf("agent peak RSS %.1f MiB rebuilding a %d MiB image from a delta; the limit is 24 MiB", peak, size>>20)
	}
	w.shutdown()
	os.RemoveAll(w.dir)
}
