package main

import (
	"cmp"
	"strings"
	"testing"
)

const sample = `goos: linux
BenchmarkAgentInstall/64MiB-2         	       1	 512000000 ns/op	 200.0 install-MiB/s	  12.00 peak-RSS-MiB	   0.20 ratio	1000 sha256-MiB/s	 150.0 update-MiB/s
BenchmarkAgentInstall/1024MiB-2       	       1	2000000000 ns/op	 600.0 install-MiB/s	  %r peak-RSS-MiB	   0.60 ratio	1000 sha256-MiB/s	 450.0 update-MiB/s
BenchmarkAgentDeltaInstall/1024MiB-2  	       1	3000000000 ns/op	 400.0 install-MiB/s	  15.00 peak-RSS-MiB	   4.50 %-of-full
BenchmarkAgentEncryptedInstall/1024MiB-2	1	4000000000 ns/op	 500.0 install-MiB/s	  15.50 peak-RSS-MiB	 600.0 plaintext-MiB/s	   0.79 ratio
BenchmarkSynthetic256-2               	       1	2000000000 ns/op	 126.0 MB/s	   2.04 %-of-full
BenchmarkServeVsNginx/timestamp-2     	       1	 1 ns/op	 40000 nginx-req/s	0.90 ratio	 36000 roadsign-req/s
BenchmarkServeVsNginx/download-1024MiB-2	1	 1 ns/op	 2000 nginx-MiB/s	0.95 ratio	 1900 roadsign-MiB/s
BenchmarkServerStreamsUSBBundle-2     	       1	 1 ns/op	 20.00 server-peak-RSS-MiB
BenchmarkJobEvents-2                  	       1	 1 ns/op	 %e events/s
BenchmarkFleet/sqlite/10000-2         	       1	 1 ns/op	 5000 checkins/s	 20.0 p99-ms	 14000 ed25519-verify/s
BenchmarkFleet/sqlite/100000-2        	       1	 1 ns/op	 4800 checkins/s	 24.0 p99-ms	 %c cycles/s	 30.0 cycle-p99-ms	 1200 first-cycle-vehicles/s	 14000 ed25519-verify/s
BenchmarkFleet/postgres/10000-2       	       1	 1 ns/op	 2500 checkins/s	 25.0 p99-ms	 14000 ed25519-verify/s
BenchmarkFleet/postgres/100000-2      	       1	 1 ns/op	 %s checkins/s	 30.0 p99-ms	 1600 cycles/s	 %p cycle-p99-ms	 14000 ed25519-verify/s
BenchmarkFleetSecondaries/100000-2    	       1	 1 ns/op	 3600 checkins/s	 28.0 p99-ms	 1900 cycles/s	 35.0 cycle-p99-ms	 14000 ed25519-verify/s
BenchmarkFleetTimeAttested/100000-2   	       1	 1 ns/op	 4300 checkins/s	 26.0 p99-ms	 2000 cycles/s	 33.0 cycle-p99-ms	 14000 ed25519-verify/s
PASS
`

func TestTable(t *testing.T) {
	type tableCase struct {
		name   string
		pgRate string
		rss    string
		events string
		extra  string
		wantOK bool
		want   []string
		cycles string // SQLite's full cycles/s ("": 2 100)
		p99    string // PostgreSQL's full-cycle p99 ("": 40 ms)
	}
	tests := []tableCase{
		{"all met", "2400", "13.00", "2400", "", true, []string{"| 36 000 | nginx: 40 000 | 0.90× | ≥ 0.8× | yes |", "| 600 | Go sha256 from memory: 1 000 | 0.60× | ≥ 0.5× | yes |", "at 10 000: 2 500/s, p99 25.0 ms | 0.96× | ≥ 0.8× | yes |", "| 2 400/s | ed25519 verifications/s, one core: 14 000 | 0.17× (p99 30.0 ms) | ≥ 2 000/s, p99 ≤ 50.0 ms | yes |", "| 13.0 MiB |  |  | ≤ 16.0 MiB | yes |", "| 3 600/s | the same fleet without ECU reports: 4 800 | 0.75× (p99 28.0 ms) |  | — |", "| 500 | plaintext verified install, same runs: 600 | 0.79× | ≥ 0.75× | yes |"}, "", ""},
		{"check-ins slow down with the fleet", "1500", "13.00", "2400", "", false, []string{"at 10 000: 2 500/s, p99 25.0 ms | 0.60× | ≥ 0.8× | NO |", "| 1 500/s | ed25519 verifications/s, one core: 14 000 | 0.11× (p99 30.0 ms) | ≥ 2 000/s, p99 ≤ 50.0 ms | NO |"}, "", ""},
		{"job events too slow", "2400", "13.00", "1500", "", false, []string{"| job events/s, 32 vehicles reporting at once, SQLite (signed, over HTTP) | 1 500/s |  |  | ≥ 2 000/s | NO |"}, "", ""},
		{"the agent grows past 16 MiB", "2400", "22.50", "2400", "", false, []string{"| agent peak RSS, 1 GiB image | 22.5 MiB |  |  | ≤ 16.0 MiB | NO |"}, "", ""},
		{"a failed benchmark", "2400", "13.00", "2400", "--- FAIL: BenchmarkFleet\n", false, nil, "", ""},
		{"go test exited non-zero", "2400", "13.00", "2400", "exit status 1\n", false, nil, "", ""},
		{"go test exited zero", "2400", "13.00", "2400", "exit status 0\n", true, nil, "", ""},
	}
	for _, tt := range []struct {
		name, cycles, p99 string
		want              string
	}{
		{"full cycles too slow", "1900", "", "| 1 900/s | ed25519 verifications/s, one core: 14 000 | 0.14× (p99 30.0 ms) | ≥ 2 000/s, p99 ≤ 50.0 ms | NO |"},
		{"full cycles too slow at the tail", "", "60.0", "| 1 600/s | ed25519 verifications/s, one core: 14 000 | 0.11× (p99 60.0 ms) | ≥ 1 500/s, p99 ≤ 50.0 ms | NO |"},
	} {
		tests = append(tests, tableCase{name: tt.name, pgRate: "2400", rss: "13.00", events: "2400", cycles: tt.cycles, p99: tt.p99, want: []string{tt.want}})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := strings.NewReplacer("%s", tt.pgRate, "%r", tt.rss, "%e", tt.events, "%c", cmp.Or(tt.cycles, "2100"), "%p", cmp.Or(tt.p99, "40.0")).Replace(sample) + tt.extra
			res, failed, err := parse(strings.NewReader(in))
			if err != nil {
				t.Fatal(err)
			}
			var out strings.Builder
			ok := print(&out, res) && !failed
			if ok != tt.wantOK {
				t.Errorf("ok = %v, want %v\n%s", ok, tt.wantOK, out.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("table lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestMissingRowFails(t *testing.T) {
	res, _, _ := parse(strings.NewReader("BenchmarkServeVsNginx/timestamp-2 1 1 ns/op 1 nginx-req/s 1 roadsign-req/s\n"))
	var out strings.Builder
	if print(&out, res) {
		t.Fatalf("a table with missing rows passed:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "not measured (BenchmarkFleet/sqlite/100000)") {
		t.Errorf("missing row not named:\n%s", out.String())
	}
}
