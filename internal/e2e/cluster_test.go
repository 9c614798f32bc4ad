package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/client/fleetsim"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/testsupport"
	"github.com/roadsign/roadsign/server/s3blob/s3test"
	"github.com/roadsign/roadsign/server/softwarerecord"
)

// clusterPlan is the size of TestCluster's run: small inside make test,
// full under make cluster-test (ROADSIGN_CLUSTER=full).
type clusterPlan struct {
	vehicles             int
	soak                 string        // each wave's soak
	killEvery            time.Duration // a replica SIGKILLed and restarted
	s3Pause              time.Duration
	s3At, brokerAt, pgAt time.Duration // after the campaign's start
	freezeAt             time.Duration
	leaderLease          time.Duration
	promoteAfter         time.Duration
	campaignTimeout      time.Duration
	// maxGap bounds the longest time a vehicle goes without a good
	// cycle: two poll intervals at their longest (a poll, then a failed
	// one), the longest fault (the S3 stop) and the longest retry wait.
	maxGap     time.Duration
	fleetConns int
	run        fleetsim.RunConfig
}

func planFor(full bool) clusterPlan {
	if full {
		return clusterPlan{vehicles: 5000, soak: "20s", killEvery: 20 * time.Second, s3Pause: 60 * time.Second,
			s3At: 5 * time.Second, brokerAt: 70 * time.Second, pgAt: 80 * time.Second, freezeAt: 110 * time.Second,
			leaderLease: 5 * time.Second, promoteAfter: 5 * time.Second, campaignTimeout: 15 * time.Minute, maxGap: 4 * time.Minute,
			fleetConns: 64, run: fleetsim.RunConfig{Interval: 60 * time.Second, RetryMin: 2 * time.Second, RetryMax: 30 * time.Second, Jitter: 0.2, Push: true}}
	}
	return clusterPlan{vehicles: 150, soak: "4s", killEvery: 8 * time.Second, s3Pause: 10 * time.Second,
		s3At: 2 * time.Second, brokerAt: 13 * time.Second, pgAt: 15 * time.Second, freezeAt: 27 * time.Second,
		leaderLease: 3 * time.Second, promoteAfter: 5 * time.Second, campaignTimeout: 4 * time.Minute, maxGap: 90 * time.Second,
		fleetConns: 16, run: fleetsim.RunConfig{Interval: 15 * time.Second, RetryMin: time.Second, RetryMax: 8 * time.Second, Jitter: 0.2, Push: true}}
}

// TestCluster runs the deployment a manufacturer runs: three replicas
// behind HAProxy (health-checked on /readyz), a PostgreSQL primary with a
// synchronous streaming standby, versitygw as S3 and a private Mosquitto,
// all on loopback. A simulated fleet rolls out a campaign of four waves
// twice: once undisturbed, once while a replica is SIGKILLed and
// restarted on a schedule, the store is frozen, the broker restarted,
// the primary killed and the standby promoted, and the leader frozen past
// its lease. It prints the figures and then, as its last lines, one
// invariant per line (ok: or FAIL:), checked from the database, the
// simulator and the software record.
func TestCluster(t *testing.T) {
	full := os.Getenv("ROADSIGN_CLUSTER") == "full"
	if !full && testing.Short() {
		t.Skip("-short")
	}
	plan := planFor(full)
	c := startCluster(t, plan)
	report := &clusterReport{}

	// 1. Undisturbed.
	quiet := c.rollout(t, "1.1.0", nil)
	c.mu.Lock()
	c.probes = nil // the availability under faults is of the second run alone
	c.mu.Unlock()
	report.quiet = quiet
	// 2. Under faults.
	loud := c.rollout(t, "2.0.0", c.faults)
	report.loud = loud
	report.faultLog = c.flog.lines()
	report.promotion, report.handover = c.promotion, c.handover
	for _, w := range c.windows {
		a, n := c.availability(w.from, w.to)
		report.availability = append(report.availability, fmt.Sprintf("%s for %.1f s: the API answered %.0f%% of %d probes", w.name, w.to.Sub(w.from).Seconds(), 100*a, n))
	}

	report.checks = c.invariants(t, "2.0.0", loud)
	report.print(t, plan)
	for _, ch := range report.checks {
		if !ch.ok {
			t.Errorf("invariant failed: %s", ch.text)
		}
	}
}

// cluster is the running deployment.
type cluster struct {
	plan     clusterPlan
	w        *world
	pg       *testsupport.PGPair
	gw       *s3test.Gateway
	broker   *privateBroker
	lb       string // HAProxy's URL
	replicas []*clusterReplica
	fleet    *fleetsim.Fleet
	flog     *faultLog
	// promotion is the time from the primary's loss to the first write
	// accepted again; handover from the leader's freeze to another
	// replica leading.
	promotion, handover time.Duration
	// brokerBack is when the broker came back, and wakeAtBrokerBack the
	// wake-ups the fleet had acted on by then.
	brokerBack       time.Time
	wakeAtBrokerBack int64
	// windows are the faults' spans, probes the API's answers.
	windows   []faultWindow
	probes    []probeResult
	unhealthy []string
	mu        sync.Mutex
	frozen    *clusterReplica
	// errs counts the errors the simulated vehicles saw, by kind.
	errs *errorKinds
}

// errorKinds counts the fleet's logged errors by their text, with
// addresses, VINs and IDs cut out, to say what the vehicles saw.
type errorKinds struct {
	mu     sync.Mutex
	counts map[string]int
}

var errorNoise = regexp.MustCompile(`127\.0\.0\.1:\d+|[0-9A-HJ-NPR-Z]{17}|[0-9a-f]{8}-[0-9a-f-]{27}|time=\S+ |vin=\S+ |job=\S+ `)

func (e *errorKinds) Write(p []byte) (int, error) {
	line := errorNoise.ReplaceAllString(strings.TrimSpace(string(p)), "")
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.counts == nil {
		e.counts = map[string]int{}
	}
	e.counts[line]++
	return len(p), nil
}

// top is the n most frequent kinds, and forgets them all.
func (e *errorKinds) top(n int) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	type kc struct {
		k string
		c int
	}
	var all []kc
	for k, c := range e.counts {
		all = append(all, kc{k, c})
	}
	slices.SortFunc(all, func(a, b kc) int { return b.c - a.c })
	var out []string
	for i := 0; i < len(all) && i < n; i++ {
		out = append(out, fmt.Sprintf("%6d × %.200s", all[i].c, all[i].k))
	}
	e.counts = nil
	return out
}

func startCluster(t *testing.T, plan clusterPlan) *cluster {
	t.Helper()
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("ROADSIGN_REQUIRE_CLUSTER") == "1" {
			t.Fatal("haproxy not installed: `make test` installs it (apt-get install haproxy)")
		}
		t.Skip("haproxy not installed")
	}
	c := &cluster{plan: plan, flog: &faultLog{start: time.Now()}}
	c.pg = testsupport.StartPGPair(t)
	c.gw = s3test.Start(t)
	c.broker = startMosquitto(t)
	w := &world{t: t, dir: t.TempDir(), env: map[string]string{"ROADSIGN_ADMIN_TOKEN": adminToken}}
	w.data, w.ws = filepath.Join(w.dir, "data"), filepath.Join(w.dir, "ws")
	c.w = w
	blob := c.gw.URL()
	lbPort := testsupport.FreeAddr(t)
	flags := []string{"--database", c.pg.URL(), "--blob", blob, "--mqtt-broker", "mqtt://" + c.broker.addr,
		"--leader-lease", plan.leaderLease.String(), "--campaign-tick", "200ms", "--auto-assign", "none",
		"--trusted-proxies", "127.0.0.1", "--public-url", "http://" + lbPort}
	// The first replica makes the online keys; the others share them.
	for i := range 3 {
		r := &clusterReplica{t: t, addr: testsupport.FreeAddr(t), data: w.data, flags: flags, env: c.gw.Env()}
		r.start()
		c.replicas = append(c.replicas, r)
		if i == 0 {
			if err := r.waitHealthy(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, r := range c.replicas {
		if err := r.waitHealthy(); err != nil {
			t.Fatal(err)
		}
	}
	c.lb = "http://" + lbPort
	startHAProxy(t, haproxy, lbPort, c.replicas)
	w.url = c.lb
	w.setup(nil)
	root, err := os.ReadFile(filepath.Join(w.ws, "director.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	hc := download.NewHTTPClient()
	c.errs = &errorKinds{}
	c.fleet, err = fleetsim.New(fleetsim.Config{Server: c.lb, Token: adminToken, Vehicles: plan.vehicles, Concurrency: plan.fleetConns, Seed: 27,
		ECUs: factorySpecs(t), Model: "Roadster", Year: 2025, Region: "EU", StateDir: t.TempDir(), DirectorRoot: root, HTTP: hc,
		Log: slog.New(slog.NewTextHandler(c.errs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.fleet.Register(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	return c
}

// rolloutResult is what one campaign's run measured.
type rolloutResult struct {
	id         string
	took       time.Duration
	summary    fleetsim.Summary
	state      string
	health     []fleetsim.Health
	lostEvents int64
	wakeups    int64
	// errorKinds are the most frequent errors the vehicles saw.
	errorKinds []string
}

// rollout starts a campaign of four waves to version on the DCMs and runs
// the fleet agent-like (each vehicle on its own schedule, woken by push)
// until it ends, with faults (if set) beside it; with faults it goes on
// until every scheduled fault has happened and been undone.
func (c *cluster) rollout(t *testing.T, version string, faults func(ctx context.Context, t *testing.T, oneShotsDone chan<- struct{})) rolloutResult {
	t.Helper()
	c.fleet.ResetStats()
	lost0, wake0 := c.fleet.LostEvents(), c.fleet.Wakeups()
	runCtx, stopRun := context.WithCancel(context.Background())
	var run sync.WaitGroup
	run.Go(func() { c.fleet.Run(runCtx, c.plan.run) })
	run.Go(func() { c.probe(runCtx) })
	id := c.w.startCampaign(t, map[string]any{"ecu": "dcm", "version": version, "waves": []int{10, 25, 50, 100},
		"minSamples": 5, "soak": c.plan.soak, "name": "cluster " + version})
	start := time.Now()
	faultCtx, stopFaults := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	oneShots := make(chan struct{})
	if faults != nil {
		wg.Go(func() { faults(faultCtx, t, oneShots) })
	} else {
		close(oneShots)
	}
	var state string
	var took time.Duration
	deadline := start.Add(c.plan.campaignTimeout)
	for time.Now().Before(deadline) {
		if st, err := c.fleet.Campaign(context.Background(), id); err == nil {
			state = st.State
			if state != "running" && state != "paused" {
				took = time.Since(start)
				break
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	if took == 0 {
		took = time.Since(start)
	}
	select {
	case <-oneShots:
	case <-time.After(time.Until(deadline)):
	}
	stopFaults()
	wg.Wait() // the faults are undone: every part runs again
	for _, r := range c.replicas {
		if err := r.waitHealthy(); err != nil {
			c.unhealthy = append(c.unhealthy, err.Error())
		}
	}
	stopRun()
	run.Wait()
	// Two lock-step cycles: every vehicle reports what it runs.
	for range 2 {
		c.fleet.Cycle(context.Background())
	}
	return rolloutResult{id: id, took: took, summary: c.fleet.Summary(), state: state, health: c.fleet.Health(),
		lostEvents: c.fleet.LostEvents() - lost0, wakeups: c.fleet.Wakeups() - wake0, errorKinds: c.errs.top(8)}
}

// probe asks the API for something that needs the database (the list of
// campaigns) through the load balancer every 200 ms, and records whether
// it was answered: what a vehicle or an operator sees of the cluster.
func (c *cluster) probe(ctx context.Context) {
	cl := &http.Client{Timeout: 2 * time.Second}
	for ctx.Err() == nil {
		at := time.Now()
		ok := false
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.lb+"/api/v1/campaigns", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		if resp, err := cl.Do(req); err == nil {
			resp.Body.Close()
			ok = resp.StatusCode == 200
		}
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		c.probes = append(c.probes, probeResult{at, ok})
		c.mu.Unlock()
		time.Sleep(time.Until(at.Add(200 * time.Millisecond)))
	}
}

type probeResult struct {
	at time.Time
	ok bool
}

// availability is the share of probes answered within [from, to], and
// how many there were. Unless the window is the database's own outage,
// probes during that outage do not count: nothing that needs the
// database can be answered then, whatever else is failing.
func (c *cluster) availability(from, to time.Time) (float64, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	inOutage := func(at time.Time) bool {
		for _, w := range c.windows {
			if w.name == "primary lost" && !(w.from.Equal(from) && w.to.Equal(to)) && !at.Before(w.from) && !at.After(w.to) {
				return true
			}
		}
		return false
	}
	n, ok := 0, 0
	for _, p := range c.probes {
		if !p.at.Before(from) && !p.at.After(to) && !inOutage(p.at) {
			n++
			if p.ok {
				ok++
			}
		}
	}
	if n == 0 {
		return 0, 0
	}
	return float64(ok) / float64(n), n
}

// faults runs the fault schedule until ctx ends, and undoes what is
// still in effect.
func (c *cluster) faults(ctx context.Context, t *testing.T, oneShotsDone chan<- struct{}) {
	var wg, once sync.WaitGroup
	at := func(d time.Duration, name string, fn func()) {
		once.Go(func() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
			fn()
		})
	}
	defer wg.Wait()
	defer func() { once.Wait(); close(oneShotsDone) }()
	// A random replica SIGKILLed every killEvery, back 2 s later.
	wg.Go(func() {
		tick := time.NewTicker(c.plan.killEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			c.mu.Lock()
			var candidates []*clusterReplica
			for _, r := range c.replicas {
				if r != c.frozen {
					candidates = append(candidates, r)
				}
			}
			r := candidates[rand.IntN(len(candidates))]
			c.mu.Unlock()
			c.flog.add("SIGKILL replica %s", r.addr)
			from := time.Now()
			r.kill()
			time.Sleep(2 * time.Second)
			r.start()
			c.flog.add("replica %s restarted", r.addr)
			r.waitHealthy()
			c.window("replica killed", from, time.Now())
		}
	})
	at(c.plan.s3At, "s3", func() {
		c.flog.add("SIGSTOP S3 for %s", c.plan.s3Pause)
		from := time.Now()
		c.gw.Pause()
		time.Sleep(c.plan.s3Pause)
		c.gw.Resume()
		c.flog.add("SIGCONT S3")
		c.window("S3 frozen", from, time.Now())
	})
	at(c.plan.brokerAt, "broker", func() {
		c.flog.add("broker stopped")
		c.broker.stop()
		time.Sleep(time.Second)
		c.broker.start(t)
		c.brokerBack = time.Now()
		c.flog.add("broker restarted")
		// A job created once the vehicles had time to reconnect must
		// wake its vehicle through the restarted broker (the server's
		// publisher reconnects too): a head-unit job, beside the DCM
		// campaign.
		time.Sleep(5 * time.Second)
		c.wakeAtBrokerBack = c.fleet.Wakeups()
		vin := c.fleet.Vehicles()[0].VIN
		for range 20 {
			if code := c.post("/api/v1/jobs", map[string]any{"vin": vin, "ecu": "head-unit", "version": "1.1.0", "reason": "wake-up after the broker restart"}); code == 201 {
				c.flog.add("head-unit job created for %s (it must be woken)", vin)
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
		c.flog.add("could not create the head-unit job for %s", vin)
	})
	at(c.plan.pgAt, "postgres", func() {
		probe := c.writeProbe()
		c.pg.KillPrimary()
		killed := time.Now()
		c.flog.add("PostgreSQL primary SIGKILLed")
		time.Sleep(c.plan.promoteAfter)
		c.pg.Promote()
		c.flog.add("standby promoted")
		for !probe() {
			time.Sleep(100 * time.Millisecond)
		}
		c.promotion = time.Since(killed)
		c.flog.add("writes accepted again, %.1f s after the primary's loss", c.promotion.Seconds())
		c.window("primary lost", killed, time.Now())
	})
	at(c.plan.freezeAt, "leader", func() {
		// The leader is the one replica that says it leads.
		var lead *clusterReplica
		for range 50 {
			var leading []*clusterReplica
			for _, r := range c.replicas {
				if r.leads() {
					leading = append(leading, r)
				}
			}
			if len(leading) == 1 {
				lead = leading[0]
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		c.mu.Lock()
		c.frozen = lead
		c.mu.Unlock()
		if lead == nil {
			c.flog.add("no leader to freeze")
			return
		}
		lead.signal(syscall.SIGSTOP)
		frozen := time.Now()
		c.flog.add("SIGSTOP leader %s past its lease (%s)", lead.addr, c.plan.leaderLease)
		for time.Since(frozen) < 3*c.plan.leaderLease {
			if c.handover == 0 {
				for _, r := range c.replicas {
					if r != lead && r.leads() {
						c.handover = time.Since(frozen)
						c.flog.add("replica %s leads, %.1f s after the freeze", r.addr, c.handover.Seconds())
					}
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		lead.signal(syscall.SIGCONT)
		c.mu.Lock()
		c.frozen = nil
		c.mu.Unlock()
		c.flog.add("SIGCONT old leader %s", lead.addr)
		c.window("leader frozen", frozen, time.Now())
	})
}

// faultWindow is when one fault was in effect (until its part served
// again).
type faultWindow struct {
	name     string
	from, to time.Time
}

func (c *cluster) window(name string, from, to time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.windows = append(c.windows, faultWindow{name, from, to})
}

// post sends an admin POST through the load balancer and returns the
// status (0: no answer).
func (c *cluster) post(path string, body any) int {
	b, _ := json.Marshal(body)
	req, err := http.NewRequest(http.MethodPost, c.lb+path, bytes.NewReader(b))
	if err != nil {
		return 0
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// writeProbe returns a check that one write (a vehicle's signed
// check-in, which stores its nonce) goes through the load balancer.
func (c *cluster) writeProbe() func() bool {
	v := c.fleet.Vehicles()[0]
	cl := &api.Client{Base: c.lb, HTTP: download.NewHTTPClient(), VIN: v.VIN, Key: v.Key, Now: time.Now}
	return func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := cl.CheckIn(ctx, nil, nil, api.CheckInInfo{})
		return err == nil
	}
}

// check is one invariant's verdict.
type check struct {
	ok   bool
	text string
}

func (c *cluster) invariants(t *testing.T, version string, run rolloutResult) []check {
	t.Helper()
	var out []check
	add := func(ok bool, format string, args ...any) {
		out = append(out, check{ok, fmt.Sprintf(format, args...)})
	}
	camp := c.w.campaign(t, run.id)
	add(camp.State == "completed", "the campaign under faults completed (state %s, %d of %d succeeded)", camp.State, camp.Totals.Succeeded, camp.Selected)

	installed := c.fleet.Installed()
	behind := 0
	for _, m := range installed {
		if m["dcm"] != version {
			behind++
		}
	}
	add(behind == 0 && camp.Selected == len(installed), "every vehicle of the campaign runs %s (%d of %d do not)", version, behind, len(installed))

	// Exactly once: one campaign job per vehicle, one successful install.
	twice, jobsChecked, badHistory := 0, 0, []string{}
	var jobIDs []string
	for vin, receipts := range c.fleet.Receipts() {
		n := 0
		for _, r := range receipts {
			if r.Version == version && r.Outcome == "succeeded" {
				n++
			}
		}
		var campaignJobs []jobView
		for _, j := range c.w.jobsOf(t, vin) {
			if j.Origin == "campaign" && j.Version == version {
				campaignJobs = append(campaignJobs, j)
			}
		}
		if n != 1 || len(campaignJobs) != 1 {
			twice++
			if twice <= 3 {
				t.Logf("%s: %d successful installs of %s, %d campaign jobs", vin, n, version, len(campaignJobs))
			}
		}
		for _, j := range campaignJobs {
			jobIDs = append(jobIDs, j.ID)
		}
	}
	add(twice == 0, "every vehicle installed %s exactly once, through one campaign job (%d vehicles did not)", version, twice)
	for _, id := range jobIDs {
		j := c.w.getJob(adminToken, id)
		jobsChecked++
		if why := historyBroken(j); why != "" {
			badHistory = append(badHistory, id+": "+why)
		}
	}
	add(len(badHistory) == 0, "every job's event history follows the state machine (%d jobs checked, %d broken%s)", jobsChecked, len(badHistory), firstOf(badHistory))

	// Wave openings, from the database's audit log (the API pages it).
	opens := map[string]int{}
	db, err := sql.Open("pgx", c.pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT detail FROM audit WHERE action = 'campaign.wave_open' AND subject = $1`, run.id)
	if err != nil {
		t.Fatalf("audit: %v", err)
	}
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			t.Fatal(err)
		}
		opens[d[:strings.Index(d, ":")]]++
	}
	rows.Close()
	waves := len(opens) == 4
	for _, n := range opens {
		waves = waves && n == 1
	}
	add(waves, "each of the 4 waves opened exactly once (%v)", opens)

	verify := exec.Command(filepath.Join(builtPrograms(t), "roadsign-server"), "audit", "verify", "--database", c.pg.URL())
	vout, verr := verify.CombinedOutput()
	add(verr == nil, "the audit chain verifies (%s)", strings.TrimSpace(lastLine(string(vout))))

	// The software record agrees with what each vehicle runs.
	disagree := 0
	for vin, m := range installed {
		var doc softwarerecord.Document
		if code := c.w.api("GET", "/api/v1/vehicles/"+vin+"/software-record", adminToken, nil, &doc); code != 200 {
			disagree++
			continue
		}
		last := ""
		for _, e := range doc.Entries {
			if e.ECUType == "dcm" && e.Outcome == "installed" {
				last = e.ToVersion
			}
		}
		if last != m["dcm"] {
			disagree++
			if disagree <= 3 {
				t.Logf("%s runs dcm %s; its software record says %q", vin, m["dcm"], last)
			}
		}
	}
	add(disagree == 0, "the software record agrees with what every vehicle reports it runs (%d disagree)", disagree)

	// Every install came from verified metadata: each vehicle's DCM
	// target is the one the image repository signs for the version.
	signed := c.signedTarget(t, "dcm", version)
	unsigned := 0
	for _, receipts := range c.fleet.Receipts() {
		for _, r := range receipts {
			if r.Version == version && r.Outcome == "succeeded" && r.Target != signed {
				unsigned++
			}
		}
	}
	add(unsigned == 0 && signed != "", "no vehicle installed an image without valid metadata (%d installs not of the signed target %s)", unsigned, signed)

	worstGap, worstVIN, errs := time.Duration(0), "", 0
	for _, h := range run.health {
		errs += h.Errors
		if h.LongestGap > worstGap {
			worstGap, worstVIN = h.LongestGap, h.VIN
		}
	}
	// Each fault, and what its fix must show.
	c.mu.Lock()
	windows := slices.Clone(c.windows)
	c.mu.Unlock()
	seen := map[string]bool{}
	for _, name := range []string{"replica killed", "S3 frozen", "primary lost", "leader frozen"} {
		var all []faultWindow
		for _, w := range windows {
			if w.name == name {
				all = append(all, w)
			}
		}
		seen[name] = len(all) > 0
		if name == "primary lost" || name == "leader frozen" {
			continue // judged by their figures below
		}
		okProbes, n := 0.0, 0
		for _, w := range all {
			a, k := c.availability(w.from, w.to)
			okProbes += a * float64(k)
			n += k
		}
		share := okProbes / max(float64(n), 1)
		add(len(all) > 0 && share >= 0.95, "%s (%d times): the API answered %.1f%% of %d probes meanwhile (want ≥ 95%%)", name, len(all), 100*share, n)
	}
	add(seen["primary lost"] && c.promotion > 0 && c.promotion <= 30*time.Second,
		"primary killed, standby promoted after %s: writes accepted again %.1f s after the loss (want ≤ 30 s)", c.plan.promoteAfter, c.promotion.Seconds())
	add(seen["leader frozen"] && c.handover > 0 && c.handover <= 2*c.plan.leaderLease,
		"leader frozen past its lease: another replica led %.1f s after the freeze (want ≤ 2 × the %s lease)", c.handover.Seconds(), c.plan.leaderLease)
	woken := c.fleet.Wakeups() - c.wakeAtBrokerBack
	add(!c.brokerBack.IsZero() && woken > 0, "broker restarted: vehicles reconnected, and a job created afterwards woke its vehicle (%d wake-ups acted on after the restart)", woken)
	add(len(c.unhealthy) == 0, "every replica serves again once the faults end%s", firstOf(c.unhealthy))

	gaps := make([]time.Duration, len(run.health))
	for i, h := range run.health {
		gaps[i] = h.LongestGap
	}
	slices.Sort(gaps)
	pct := func(p float64) float64 { return gaps[min(len(gaps)-1, int(p*float64(len(gaps))))].Seconds() }
	add(worstGap <= c.plan.maxGap, "check-in errors during faults were retried and bounded: %d failed cycles, %d job events given up; each vehicle's longest gap between good cycles: median %.1f s, p99 %.1f s, longest %.1f s (%s; bound %s)",
		errs, run.lostEvents, pct(0.5), pct(0.99), worstGap.Seconds(), worstVIN, c.plan.maxGap)
	return out
}

// historyBroken says how j's events break the job state machine ("": they
// do not): progress never goes back within an attempt, the job ends with
// one outcome, and nothing follows it.
func historyBroken(j jobView) string {
	phase := map[string]int{"downloading": 1, "installing": 2, "rebooting": 3}
	at, ended := 0, ""
	for i, e := range j.Events {
		if ended != "" {
			return fmt.Sprintf("event %d (%s) after the outcome %s", i, e.Kind, ended)
		}
		switch e.Kind {
		case "downloading", "installing", "rebooting":
			if phase[e.Kind] < at {
				return fmt.Sprintf("event %d goes back to %s", i, e.Kind)
			}
			at = phase[e.Kind]
		case "succeeded", "rolled_back", "canceled", "timed_out":
			ended = e.Kind
		case "failed":
			at = 0 // a retry starts over
			if j.State == "failed" && i == len(j.Events)-1 {
				ended = e.Kind
			}
		}
	}
	if j.State != "succeeded" || ended != "succeeded" {
		return fmt.Sprintf("state %s, last outcome %q", j.State, ended)
	}
	return ""
}

func firstOf(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return "; first: " + s[0]
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// signedTarget is the image repository's target for ecu at version.
func (c *cluster) signedTarget(t *testing.T, ecu, version string) string {
	t.Helper()
	version1 := func(path, file string) int64 {
		_, b := httpGet(t, c.lb+path, nil)
		var d struct {
			Signed struct {
				Meta map[string]struct{ Version int64 } `json:"meta"`
			} `json:"signed"`
		}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return d.Signed.Meta[file].Version
	}
	snap := version1("/repo/timestamp.json", "snapshot.json")
	targets := version1(fmt.Sprintf("/repo/%d.snapshot.json", snap), "targets.json")
	_, body := httpGet(t, fmt.Sprintf("%s/repo/%d.targets.json", c.lb, targets), nil)
	var doc struct {
		Signed struct {
			Targets map[string]struct {
				Custom meta.Custom `json:"custom"`
			} `json:"targets"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("targets.json: %v", err)
	}
	for name, tf := range doc.Signed.Targets {
		if tf.Custom.ECU == ecu && tf.Custom.Version == version && slices.Contains(tf.Custom.HardwareIDs, dcmHW) {
			return name
		}
	}
	return ""
}

// clusterReport is what TestCluster prints.
type clusterReport struct {
	quiet, loud         rolloutResult
	faultLog            []string
	promotion, handover time.Duration
	checks              []check
	availability        []string
}

func (r *clusterReport) print(t *testing.T, plan clusterPlan) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }
	var b strings.Builder
	fmt.Fprintf(&b, "cluster: 3 replicas behind HAProxy, PostgreSQL primary + synchronous standby, versitygw, Mosquitto; %d vehicles, campaigns of 4 waves\n", plan.vehicles)
	b.WriteString("faults:\n")
	for _, l := range r.faultLog {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	for _, x := range []struct {
		name string
		run  rolloutResult
	}{{"without faults", r.quiet}, {"with faults", r.loud}} {
		errs := 0
		for _, h := range x.run.health {
			errs += h.Errors
		}
		fmt.Fprintf(&b, "figure: campaign %s: %s in %.1f s; %d check-ins served, %d cycles failed at the vehicles, %d wake-ups acted on; check-in p99 %s, cycle p99 %s\n",
			x.name, x.run.state, x.run.took.Seconds(), x.run.summary.CheckIns, errs, x.run.wakeups, ms(x.run.summary.P99), ms(x.run.summary.CycleP99))
		for _, k := range x.run.errorKinds {
			fmt.Fprintf(&b, "  seen by vehicles: %s\n", k)
		}
	}
	for _, a := range r.availability {
		fmt.Fprintf(&b, "figure: %s\n", a)
	}
	fmt.Fprintf(&b, "figure: primary lost to writes accepted again: %.1f s (standby promoted after %s)\n", r.promotion.Seconds(), plan.promoteAfter)
	fmt.Fprintf(&b, "figure: leader hand-over after a freeze: %.1f s (lease %s)\n", r.handover.Seconds(), plan.leaderLease)
	for _, ch := range r.checks {
		verdict := "ok"
		if !ch.ok {
			verdict = "FAIL"
		}
		fmt.Fprintf(&b, "%s: %s\n", verdict, ch.text)
	}
	fmt.Print(b.String())
	if out := os.Getenv("ROADSIGN_CLUSTER_REPORT"); out != "" {
		os.WriteFile(out, []byte(b.String()), 0o644)
	}
}

// faultLog is the faults injected, with the time since the cluster
// started.
type faultLog struct {
	start time.Time
	mu    sync.Mutex
	l     []string
}

func (f *faultLog) add(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.l = append(f.l, fmt.Sprintf("%s +%6.1fs  %s", time.Now().UTC().Format("15:04:05.000"), time.Since(f.start).Seconds(), fmt.Sprintf(format, args...)))
}

func (f *faultLog) lines() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.l)
}

// clusterReplica is one roadsign-server process on a fixed address (the
// load balancer's configuration names it), restartable.
type clusterReplica struct {
	t     *testing.T
	addr  string
	data  string // shared by the replicas: the online keys
	flags []string
	env   []string
	mu    sync.Mutex
	cmd   *exec.Cmd
	done  chan struct{}
	log   *testsupport.LockedBuffer
}

func (r *clusterReplica) start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = &testsupport.LockedBuffer{}
	cmd := exec.Command(filepath.Join(builtPrograms(r.t), "roadsign-server"),
		append([]string{"--listen", r.addr, "--data", r.data, "--log-format", "text", "--log-level", "warn"}, r.flags...)...)
	cmd.Env = append(append(os.Environ(), "ROADSIGN_ADMIN_TOKEN="+adminToken), r.env...)
	cmd.Stdout, cmd.Stderr = r.log, r.log
	if err := cmd.Start(); err != nil {
		r.t.Errorf("start replica %s: %v", r.addr, err)
		return
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	r.cmd, r.done = cmd, done
	r.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
		}
	})
}

func (r *clusterReplica) kill() {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

func (r *clusterReplica) signal(s syscall.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		r.cmd.Process.Signal(s)
	}
}

func (r *clusterReplica) waitHealthy() error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + r.addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("replica %s not ready 60 s after the faults:\n%s", r.addr, r.log.String())
}

// leads reads the replica's roadsign_leader metric (false when it does
// not answer).
func (r *clusterReplica) leads() bool {
	cl := &http.Client{Timeout: time.Second}
	resp, err := cl.Get("http://" + r.addr + "/metrics")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return strings.Contains(b.String(), `roadsign_leader{lease="leader"} 1`)
}

// privateBroker is a private Mosquitto broker on a port of its own.
type privateBroker struct {
	bin, addr, conf string
	cmd             *exec.Cmd
	done            chan struct{}
}

func startMosquitto(t *testing.T) *privateBroker {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if p := "/usr/sbin/mosquitto"; fileExists(p) {
			bin = p
		} else if os.Getenv("ROADSIGN_REQUIRE_MQTT") == "1" {
			t.Fatal("mosquitto not installed")
		} else {
			t.Skip("mosquitto not installed")
		}
	}
	m := &privateBroker{addr: testsupport.FreeAddr(t)}
	_, port, _ := net.SplitHostPort(m.addr)
	m.conf = filepath.Join(t.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(m.conf, []byte("listener "+port+" 127.0.0.1\nallow_anonymous true\npersistence false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.bin = bin
	m.start(t)
	t.Cleanup(m.stop)
	return m
}

func (m *privateBroker) start(t *testing.T) {
	cmd := exec.Command(m.bin, "-c", m.conf)
	if err := cmd.Start(); err != nil {
		t.Errorf("start mosquitto: %v", err)
		return
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	m.cmd, m.done = cmd, done
	for range 100 {
		if c, err := net.DialTimeout("tcp", m.addr, 100*time.Millisecond); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("mosquitto did not listen on %s", m.addr)
}

func (m *privateBroker) stop() {
	if m.done == nil {
		return
	}
	m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.done
	m.done = nil
}

// startHAProxy balances lbAddr over the replicas, each health-checked on
// /readyz twice a second.
func startHAProxy(t *testing.T, bin, lbAddr string, replicas []*clusterReplica) {
	t.Helper()
	var servers strings.Builder
	for i, r := range replicas {
		fmt.Fprintf(&servers, "    server r%d %s check\n", i+1, r.addr)
	}
	cfg := fmt.Sprintf(haproxyConfig, lbAddr, servers.String())
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	log := &testsupport.LockedBuffer{}
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + lbAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy passes no request (%v):\n%s\n%s", err, cfg, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// haproxyConfig is the load balancer docs/operations.md describes:
// health checks on /readyz, a request that could not reach a replica
// retried on another (only then: a request a replica took and died on is
// not replayed, the vehicle signs a new one), X-Forwarded-For for the
// replicas' throttles and logs.
const haproxyConfig = `global
    maxconn 4000

defaults
    mode http
    option forwardfor
    option redispatch 1
    retries 3
    retry-on conn-failure
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-keep-alive 10s
    timeout check 2s

frontend vehicles
    bind %s
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions
%s`

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
