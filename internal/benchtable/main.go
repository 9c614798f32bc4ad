// Command benchtable reads the output of `go test -bench` as make bench
// runs it and prints one table: each measurement beside the reference it
// was measured against in the same run, their ratio, and the target. It
// exits 1 when a row is missing, a target is missed or a benchmark failed.
//
//	go run ./internal/benchtable bench.out
package main

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// results maps a benchmark name (without the -N CPU suffix) to its
// metrics by unit.
type results map[string]map[string]float64

var cpuSuffix = regexp.MustCompile(`-\d+$`)

func parse(r io.Reader) (results, bool, error) {
	res := results{}
	failed := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "--- FAIL") || strings.HasPrefix(line, "FAIL") ||
			(strings.HasPrefix(line, "exit status ") && line != "exit status 0") {
			failed = true
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		m := map[string]float64{}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			m[f[i+1]] = v
		}
		res[cpuSuffix.ReplaceAllString(f[0], "")] = m
	}
	return res, failed, sc.Err()
}

// row is one line of the table.
type row struct {
	what, bench string
	// value and ref are units of bench's metrics; ref may be "".
	value, ref, refName string
	// atLeast / atMost bound the ratio (ref set) or the value (no ref).
	atLeast, atMost float64
	// p99AtMost, if set, also bounds the row's p99 metric (p99, or
	// "p99-ms" when p99 is "").
	p99AtMost float64
	p99       string
	unit      string
	// refBench, if set, is the benchmark ref is read from (else bench).
	refBench string
	// ratioMetric, if set, is the bench's own metric for the ratio (the
	// median of paired runs' ratios) instead of value / ref.
	ratioMetric string
	extra       func(m map[string]float64) string
}

var rows = []row{
	{what: "GET /repo/timestamp.json, requests/s (wrk, 64 connections)", bench: "BenchmarkServeVsNginx/timestamp",
		value: "roadsign-req/s", ref: "nginx-req/s", refName: "nginx", atLeast: 0.8},
	{what: "1 GiB target download, MiB/s (curl)", bench: "BenchmarkServeVsNginx/download-1024MiB",
		value: "roadsign-MiB/s", ref: "nginx-MiB/s", refName: "nginx", atLeast: 0.9},
	{what: "agent verified install of 1 GiB (download + sha256 + slot write, fsynced), MiB/s", bench: "BenchmarkAgentInstall/1024MiB",
		value: "install-MiB/s", ref: "sha256-MiB/s", refName: "Go sha256 from memory", atLeast: 0.5},
	{what: "agent whole update of 1 GiB (metadata, install, boot check, report), MiB/s", bench: "BenchmarkAgentInstall/1024MiB",
		value: "update-MiB/s", ref: "sha256-MiB/s", refName: "Go sha256 from memory"},
	{what: "agent peak RSS, 64 MiB image", bench: "BenchmarkAgentInstall/64MiB", value: "peak-RSS-MiB", atMost: 16, unit: "MiB"},
	{what: "agent peak RSS, 1 GiB image", bench: "BenchmarkAgentInstall/1024MiB", value: "peak-RSS-MiB", atMost: 16, unit: "MiB"},
	{what: "agent rebuild of 1 GiB from a delta (2 % of 4 KiB blocks rewritten, 100 KiB inserted): delta download, base reads, per-operation and whole-image sha256, slot write, fsynced, MiB/s", bench: "BenchmarkAgentDeltaInstall/1024MiB",
		value: "install-MiB/s", ref: "install-MiB/s", refBench: "BenchmarkAgentInstall/1024MiB", refName: "full-image verified install", atLeast: 0.5},
	{what: "agent peak RSS, delta install of a 1 GiB image", bench: "BenchmarkAgentDeltaInstall/1024MiB", value: "peak-RSS-MiB", atMost: 24, unit: "MiB"},
	{what: "agent encrypted install of 1 GiB (sealed download hashed, each 128 KiB chunk authenticated and decrypted before the slot, plaintext sha256, slot write, fsynced), MiB/s", bench: "BenchmarkAgentEncryptedInstall/1024MiB",
		value: "install-MiB/s", ref: "plaintext-MiB/s", refName: "plaintext verified install, same runs", ratioMetric: "ratio", atLeast: 0.75},
	{what: "agent peak RSS, encrypted install of a 1 GiB image", bench: "BenchmarkAgentEncryptedInstall/1024MiB", value: "peak-RSS-MiB", atMost: 16, unit: "MiB"},
	{what: "delta size, 256 MiB image with 2 % of 4 KiB blocks rewritten and 100 KiB inserted near the start, % of the full image", bench: "BenchmarkSynthetic256",
		value: "%-of-full", atMost: 5, unit: "%"},
	{what: "job events/s, 32 vehicles reporting at once, SQLite (signed, over HTTP)", bench: "BenchmarkJobEvents",
		value: "events/s", atLeast: 2000, unit: "/s"},
	{what: "server RSS streaming a 1 GiB USB bundle", bench: "BenchmarkServerStreamsUSBBundle", value: "server-peak-RSS-MiB", atMost: 64, unit: "MiB"},
	{what: "signed check-ins/s, 100 000 vehicles, SQLite (32 in flight)", bench: "BenchmarkFleet/sqlite/100000",
		value: "checkins/s", ref: "ed25519-verify/s", refName: "ed25519 verifications/s, one core", unit: "/s", atLeast: 3000, p99AtMost: 50,
		extra: func(m map[string]float64) string { return fmt.Sprintf("p99 %.1f ms", m["p99-ms"]) }},
	{what: "signed check-ins/s, 100 000 vehicles, PostgreSQL (32 in flight)", bench: "BenchmarkFleet/postgres/100000",
		value: "checkins/s", ref: "ed25519-verify/s", refName: "ed25519 verifications/s, one core", unit: "/s", atLeast: 2000, p99AtMost: 50,
		extra: func(m map[string]float64) string { return fmt.Sprintf("p99 %.1f ms", m["p99-ms"]) }},
	{what: "signed check-ins/s with two ECU version reports each signed by its ECU (secondaries), 100 000 vehicles, SQLite (32 in flight)", bench: "BenchmarkFleetSecondaries/100000",
		value: "checkins/s", ref: "checkins/s", refBench: "BenchmarkFleet/sqlite/100000", refName: "the same fleet without ECU reports", unit: "/s",
		extra: func(m map[string]float64) string { return fmt.Sprintf("p99 %.1f ms", m["p99-ms"]) }},
	{what: "signed check-ins/s with a time attestation in each answer (signed by the server, verified by the vehicle: secure time), 100 000 vehicles, SQLite (32 in flight)", bench: "BenchmarkFleetTimeAttested/100000",
		value: "checkins/s", ref: "checkins/s", refBench: "BenchmarkFleet/sqlite/100000", refName: "the same fleet without it", unit: "/s",
		extra: func(m map[string]float64) string { return fmt.Sprintf("p99 %.1f ms", m["p99-ms"]) }},
	{what: "steady full cycles/s (signed check-in + director poll, nothing new), 100 000 vehicles, SQLite (32 in flight)", bench: "BenchmarkFleet/sqlite/100000",
		value: "cycles/s", ref: "ed25519-verify/s", refName: "ed25519 verifications/s, one core", unit: "/s", atLeast: 2000, p99AtMost: 50, p99: "cycle-p99-ms",
		extra: func(m map[string]float64) string { return fmt.Sprintf("p99 %.1f ms", m["cycle-p99-ms"]) }},
	{what: "steady full cycles/s (signed check-in + director poll, nothing new), 100 000 vehicles, PostgreSQL (32 in flight)", bench: "BenchmarkFleet/postgres/100000",
		value: "cycles/s", ref: "ed25519-verify/s", refName: "ed25519 verifications/s, one core", unit: "/s", atLeast: 1500, p99AtMost: 50, p99: "cycle-p99-ms",
		extra: func(m map[string]float64) string { return fmt.Sprintf("p99 %.1f ms", m["cycle-p99-ms"]) }},
	{what: "a fleet's first cycle, vehicles/s (check-in + first director metadata, signed, stored and verified), 100 000 vehicles, SQLite", bench: "BenchmarkFleet/sqlite/100000",
		value: "first-cycle-vehicles/s", unit: "/s", atLeast: 1000},
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: benchtable BENCH_OUTPUT (the output of go test -bench, as make bench writes it)")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchtable: %v\n", err)
		os.Exit(2)
	}
	res, failed, err := parse(f)
	f.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchtable: read %s: %v\n", os.Args[1], err)
		os.Exit(2)
	}
	ok := print(os.Stdout, res)
	if failed {
		fmt.Println("\nA benchmark failed; its output is above the table.")
		ok = false
	}
	if !ok {
		os.Exit(1)
	}
}

// print writes the table and reports whether every row is there and
// meets its target.
func print(w io.Writer, res results) bool {
	allOK := true
	fmt.Fprintln(w, "| measure | Roadsign | reference (same run) | ratio | target | met |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---|---|")
	for _, r := range rows {
		m, found := res[r.bench]
		v, hasV := m[r.value]
		if !found || !hasV {
			fmt.Fprintf(w, "| %s | not measured (%s) | | | | NO |\n", r.what, r.bench)
			allOK = false
			continue
		}
		ref, ratio, target, met := "", "", "", "—"
		ok := true
		if r.ref != "" {
			rv := m[r.ref]
			if r.refBench != "" {
				rv = res[r.refBench][r.ref]
			}
			ref = fmt.Sprintf("%s: %s", r.refName, num(rv))
			x := v / rv
			if r.ratioMetric != "" {
				x = m[r.ratioMetric]
			}
			ratio = fmt.Sprintf("%.2f×", x)
			switch {
			case r.unit == "/s" && r.atLeast > 0:
				target, ok = fmt.Sprintf("≥ %s/s", num(r.atLeast)), v >= r.atLeast
				if r.p99AtMost > 0 {
					target += fmt.Sprintf(", p99 ≤ %s ms", num(r.p99AtMost))
					ok = ok && m[cmp.Or(r.p99, "p99-ms")] <= r.p99AtMost
				}
			case r.atLeast > 0:
				target, ok = fmt.Sprintf("≥ %s×", strconv.FormatFloat(r.atLeast, 'f', -1, 64)), x >= r.atLeast
			}
		} else if r.atMost > 0 {
			target, ok = fmt.Sprintf("≤ %s %s", num(r.atMost), r.unit), v <= r.atMost
		} else if r.atLeast > 0 {
			target, ok = fmt.Sprintf("≥ %s", withUnit(r.atLeast, r.unit)), v >= r.atLeast
		}
		if r.extra != nil {
			ratio += " (" + r.extra(m) + ")"
		}
		if target != "" {
			met = map[bool]string{true: "yes", false: "NO"}[ok]
			allOK = allOK && ok
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", r.what, withUnit(v, r.unit), ref, ratio, target, met)
	}
	// Check-ins scale with the fleet: the rate at 100 000 vehicles holds
	// at least 0.8 of the rate at 10 000 (p99 beside it).
	for _, db := range []string{"sqlite", "postgres"} {
		big, small := res["BenchmarkFleet/"+db+"/100000"], res["BenchmarkFleet/"+db+"/10000"]
		if big == nil || small == nil || small["checkins/s"] == 0 {
			fmt.Fprintf(w, "| check-ins/s at 100 000 vs 10 000 vehicles, %s | not measured | | | | NO |\n", db)
			allOK = false
			continue
		}
		x := big["checkins/s"] / small["checkins/s"]
		ok := x >= 0.8
		allOK = allOK && ok
		fmt.Fprintf(w, "| check-ins/s at 100 000 vs 10 000 vehicles, %s | %s/s, p99 %.1f ms | at 10 000: %s/s, p99 %.1f ms | %.2f× | ≥ 0.8× | %s |\n",
			db, num(big["checkins/s"]), big["p99-ms"], num(small["checkins/s"]), small["p99-ms"], x, map[bool]string{true: "yes", false: "NO"}[ok])
	}
	return allOK
}

func withUnit(v float64, unit string) string {
	switch unit {
	case "":
		return num(v)
	case "/s":
		return num(v) + "/s"
	}
	return num(v) + " " + unit
}

// num prints a number the way the README does: thousands apart, one
// decimal under 100.
func num(v float64) string {
	if v < 100 {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	s := strconv.FormatInt(int64(v+0.5), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(' ')
		}
		b.WriteRune(c)
	}
	return b.String()
}
