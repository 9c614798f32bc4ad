// Package storetest is the conformance suite every server.Store backend
// must pass; the sqlite and postgres tests run it against real databases.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/auditlog"
)

// Run runs the suite; newStore returns an empty, migrated store.
func Run(t *testing.T, newStore func(t *testing.T) server.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s server.Store)
	}{
		{"Accounts", testAccounts},
		{"Vehicles", testVehicles},
		{"VehiclePagination", testPagination},
		{"Nonces", testNonces},
		{"ConcurrentRequestWrites", testConcurrentRequestWrites},
		{"Jobs", testJobs},
		{"JobConcurrency", testJobConcurrency},
		{"Audit", testAudit},
		{"SoftwareRecord", testSoftwareRecord},
		{"UpdateSets", testUpdateSets},
		{"Director", testDirector},
		{"DirectorInputs", testDirectorInputs},
		{"Leases", testLeases},
		{"Throttles", testThrottles},
		{"Owners", testOwners},
		{"AccountsAndSessions", testAccountsAndSessions},
		{"LeadershipAndFencing", testLeadership},
		{"Campaigns", testCampaigns},
		{"DiagnosisEvidence", testDiagnosisEvidence},
		{"RepoVersion", testRepoVersion},
		{"ErrorsCarryTheirKind", testErrorKinds},
		{"Operators", testOperators},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newStore(t)) })
	}
}

var ctx = context.Background()

var now = time.Date(2026, 11, 29, 10, 0, 0, 123000, time.UTC)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantErr(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
}

func testAccounts(t *testing.T, s server.Store) {
	a := server.Account{ID: uuid.NewString(), Roles: server.Roles{server.RoleDealer, server.RoleApprover}, Regions: []string{"EU", "NA"}, Name: "dealer-1", TokenHash: "h1", CreatedAt: now}
	must(t, s.CreateAccount(ctx, a))
	got, err := s.AccountByTokenHash(ctx, "h1")
	must(t, err)
	if !reflect.DeepEqual(got, a) {
		t.Fatalf("got %+v, want %+v", got, a)
	}
	got, err = s.AccountByName(ctx, "dealer-1")
	must(t, err)
	if got.ID != a.ID {
		t.Fatal("by name: wrong account")
	}
	dup := a
	dup.ID, dup.TokenHash = uuid.NewString(), "h2"
	wantErr(t, s.CreateAccount(ctx, dup), server.ErrConflict)
	_, err = s.AccountByTokenHash(ctx, "nope")
	wantErr(t, err, server.ErrNotFound)
}

func vehicle(vin string, serials ...string) server.Vehicle {
	v := server.Vehicle{VIN: vin, Model: "Roadster", Year: 2024, Region: "EU", PublicKey: []byte{1, 2, 3}, CreatedAt: now}
	for i, s := range serials {
		typ, hw := "dcm", "DCM-4G"
		if i == 0 {
			typ, hw = "head-unit", "HU-5"
		}
		v.ECUs = append(v.ECUs, server.ECU{Serial: s, Type: typ, HardwareID: hw})
	}
	return v
}

func testVehicles(t *testing.T, s server.Store) {
	v := vehicle("VIN00000000000001", "HU1", "DCM1")
	must(t, s.CreateVehicle(ctx, v))
	got, err := s.Vehicle(ctx, v.VIN)
	must(t, err)
	if len(got.ECUs) != 2 || got.ECUs[0].Serial != "HU1" || got.ECUs[1].HardwareID != "DCM-4G" || string(got.PublicKey) != "\x01\x02\x03" || !got.CreatedAt.Equal(now) {
		t.Fatalf("got %+v", got)
	}
	wantErr(t, s.CreateVehicle(ctx, v), server.ErrConflict)
	// A serial already bound to another vehicle: nothing of the new one is stored.
	wantErr(t, s.CreateVehicle(ctx, vehicle("VIN00000000000002", "HU2", "DCM1")), server.ErrConflict)
	_, err = s.Vehicle(ctx, "VIN00000000000002")
	wantErr(t, err, server.ErrNotFound)

	rep := []server.ECU{{Serial: "DCM1", InstalledTarget: "dcm/x.img", InstalledVersion: "2.0.0", InstalledSHA256: "ab"}}
	must(t, s.ReportECUs(ctx, v.VIN, rep, server.Health{Active: "B15C4"}, now.Add(time.Minute)))
	must(t, s.RecordAuth(ctx, v.VIN, server.AuthRecord{State: "authorized", At: now, Expires: now.Add(time.Hour)}))
	got, _ = s.Vehicle(ctx, v.VIN)
	if e, _ := got.ECUBySerial("DCM1"); e.InstalledVersion != "2.0.0" || !e.ReportedAt.Equal(now.Add(time.Minute)) || !got.LastSeen.Equal(now.Add(time.Minute)) ||
		got.DTCs != "B15C4" || got.AuthState != errcode.Authorized || !got.AuthAt.Equal(now) || !got.AuthExpires.Equal(now.Add(time.Hour)) {
		t.Fatalf("after report: %+v", got)
	}
	must(t, s.RecordAuth(ctx, v.VIN, server.AuthRecord{State: "subscription_expired", Message: "renew it", At: now.Add(time.Hour)}))
	got, _ = s.Vehicle(ctx, v.VIN)
	if got.AuthState != errcode.SubscriptionExpired || got.AuthMessage != "renew it" || !got.AuthExpires.IsZero() {
		t.Fatalf("after a failed handshake: %+v", got)
	}
	wantErr(t, s.ReportECUs(ctx, "VIN00000000000009", rep, server.Health{}, now), server.ErrNotFound)
}

func testPagination(t *testing.T, s server.Store) {
	for i := range 25 {
		v := vehicle(fmt.Sprintf("VIN%014d", i), fmt.Sprintf("HU%d", i), fmt.Sprintf("DCM%d", i))
		if i%2 == 1 {
			v.ECUs[1].HardwareID = "DCM-5G"
		}
		if i%5 == 0 {
			v.Region = "NA"
		}
		must(t, s.CreateVehicle(ctx, v))
	}
	var all []string
	after := ""
	for {
		page, err := s.ListVehicles(ctx, server.VehicleFilter{After: after, Limit: 10})
		must(t, err)
		if len(page) == 0 {
			break
		}
		for _, v := range page {
			all = append(all, v.VIN)
			if len(v.ECUs) != 2 {
				t.Fatalf("%s: %d ECUs", v.VIN, len(v.ECUs))
			}
		}
		after = page[len(page)-1].VIN
	}
	if len(all) != 25 || all[0] != "VIN00000000000000" || all[24] != "VIN00000000000024" {
		t.Fatalf("pages gave %d vehicles: %v", len(all), all)
	}
	five, err := s.ListVehicles(ctx, server.VehicleFilter{HardwareID: "DCM-5G", Limit: 100})
	must(t, err)
	if len(five) != 12 {
		t.Fatalf("DCM-5G vehicles: %d, want 12", len(five))
	}
	page, err := s.ListVehicles(ctx, server.VehicleFilter{HardwareID: "DCM-5G", After: five[9].VIN, Limit: 100})
	must(t, err)
	if len(page) != 2 {
		t.Fatalf("DCM-5G after the 10th: %d, want 2", len(page))
	}
	// A dealer's view: its regions only, by pages too.
	na, err := s.ListVehicles(ctx, server.VehicleFilter{Regions: []string{"NA"}, Limit: 3})
	must(t, err)
	if len(na) != 3 || na[0].VIN != "VIN00000000000000" || na[2].VIN != "VIN00000000000010" {
		t.Fatalf("NA vehicles, first page: %v", na)
	}
	na, err = s.ListVehicles(ctx, server.VehicleFilter{Regions: []string{"NA", "SA"}, After: na[2].VIN, Limit: 10})
	must(t, err)
	if len(na) != 2 {
		t.Fatalf("NA vehicles after the 3rd: %d, want 2", len(na))
	}
	naFive, err := s.ListVehicles(ctx, server.VehicleFilter{HardwareID: "DCM-5G", Regions: []string{"NA"}, Limit: 100})
	must(t, err)
	if len(naFive) != 2 || naFive[0].VIN != "VIN00000000000005" { // 5 and 15
		t.Fatalf("NA DCM-5G vehicles: %v", naFive)
	}
}

func testNonces(t *testing.T, s server.Store) {
	must(t, s.UseNonce(ctx, "VIN1", "n1", now))
	wantErr(t, s.UseNonce(ctx, "VIN1", "n1", now.Add(time.Second)), server.ErrConflict)
	must(t, s.UseNonce(ctx, "VIN2", "n1", now))
	// Concurrent replays: exactly one wins.
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if s.UseNonce(ctx, "VIN1", "race", now) == nil {
				wins.Add(1)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d concurrent uses of one nonce succeeded", wins.Load())
	}
}

// testConcurrentRequestWrites: the writes of many vehicles' requests at
// once (nonces and check-in reports, which a store may commit together)
// each end as they would alone: a report for an unknown vehicle fails
// without taking the others' writes with it, a replayed nonce is refused
// while its neighbours' are taken, and a caller that gave up leaves no
// error behind for the others.
func testConcurrentRequestWrites(t *testing.T, s server.Store) {
	const n = 40
	for i := range n {
		must(t, s.CreateVehicle(ctx, vehicle(fmt.Sprintf("VIN%014d", i), fmt.Sprintf("HU%d", i))))
	}
	must(t, s.UseNonce(ctx, "VIN00000000000000", "seen", now))
	gone, cancel := context.WithCancel(ctx)
	cancel()
	var wg sync.WaitGroup
	errs := make([]error, 3*n+2)
	for i := range n {
		vin := fmt.Sprintf("VIN%014d", i)
		wg.Go(func() {
			rep := []server.ECU{{Serial: fmt.Sprintf("HU%d", i), InstalledTarget: "hu/x.img", InstalledVersion: fmt.Sprint(i), InstalledSHA256: "ab"}}
			errs[3*i] = s.ReportECUs(ctx, vin, rep, server.Health{}, now.Add(time.Duration(i)*time.Second))
		})
		wg.Go(func() { errs[3*i+1] = s.UseNonce(ctx, vin, "n", now) })
		wg.Go(func() {
			errs[3*i+2] = s.ReportECUs(ctx, fmt.Sprintf("NOVIN%012d", i), []server.ECU{{Serial: "X"}}, server.Health{}, now)
		})
	}
	wg.Go(func() { errs[3*n] = s.UseNonce(gone, "VIN00000000000001", "gave-up", now) })
	wg.Go(func() { errs[3*n+1] = s.UseNonce(ctx, "VIN00000000000000", "seen", now) })
	wg.Wait()
	wantErr(t, errs[3*n+1], server.ErrConflict)
	for i := range n {
		vin := fmt.Sprintf("VIN%014d", i)
		must(t, errs[3*i])
		must(t, errs[3*i+1])
		wantErr(t, errs[3*i+2], server.ErrNotFound)
		v, err := s.Vehicle(ctx, vin)
		must(t, err)
		if e := v.ECUs[0]; e.InstalledVersion != fmt.Sprint(i) || !e.ReportedAt.Equal(now.Add(time.Duration(i)*time.Second)) {
			t.Fatalf("%s after a concurrent report: %+v", vin, e)
		}
		wantErr(t, s.UseNonce(ctx, vin, "n", now), server.ErrConflict)
	}
	if errs[3*n] != nil && !errors.Is(errs[3*n], context.Canceled) {
		t.Fatalf("a write whose caller gave up: %v", errs[3*n])
	}
}

func job(vin, serial string, created time.Time) server.Job {
	return server.Job{ID: uuid.NewString(), VIN: vin, ECUSerial: serial, ECUType: "dcm", TargetPath: "dcm/x.img", Version: "2.0.0",
		Reason: "test", State: server.JobQueued, CreatedBy: "dealer", Origin: server.OriginDealer, CreatedAt: created, UpdatedAt: created, MaxAttempts: 3,
		Events: []server.JobEvent{{At: created, Kind: "queued", Message: "created"}}}
}

func testJobs(t *testing.T, s server.Store) {
	j1, j2 := job("VIN1", "DCM1", now), job("VIN1", "HU1", now.Add(time.Second))
	j2.Forced, j2.Origin = true, server.OriginAutoAssign
	must(t, s.CreateJob(ctx, j1))
	must(t, s.CreateJob(ctx, j2))
	must(t, s.CreateJob(ctx, job("VIN2", "DCM2", now)))
	got, err := s.Job(ctx, j2.ID)
	must(t, err)
	if !got.Forced || got.Origin != server.OriginAutoAssign || got.State != server.JobQueued || len(got.Events) != 1 || got.Events[0].Kind != "queued" {
		t.Fatalf("got %+v", got)
	}
	list, err := s.JobsByVIN(ctx, "VIN1")
	must(t, err)
	if len(list) != 2 || list[0].ID != j1.ID {
		t.Fatalf("jobs by VIN: %+v", list)
	}
	j1.State, j1.Phase, j1.UpdatedAt = server.JobInProgress, "downloading", now.Add(time.Minute)
	must(t, s.UpdateJob(ctx, j1, server.JobQueued))
	wantErr(t, s.UpdateJob(ctx, j1, server.JobQueued), server.ErrConflict)
	must(t, s.AddJobEvent(ctx, j1.ID, server.JobEvent{At: now.Add(time.Minute), Kind: "downloading", Percent: 40}))
	got, _ = s.Job(ctx, j1.ID)
	if got.State != server.JobInProgress || got.Phase != "downloading" || len(got.Events) != 2 || got.Events[1].Percent != 40 {
		t.Fatalf("after update: %+v", got)
	}
	// A state change with its events is one write: both or neither.
	done := server.JobEvent{At: now.Add(2 * time.Minute), Kind: server.JobSucceeded, Percent: 100, Message: "booted"}
	stale := j1
	stale.State = server.JobFailed
	wantErr(t, s.UpdateJob(ctx, stale, server.JobQueued, done), server.ErrConflict)
	if head, err := s.JobHead(ctx, j1.ID); err != nil || head.EventCount != 2 || head.Events != nil || head.State != server.JobInProgress {
		t.Fatalf("a refused update wrote something: %+v %v", head, err)
	}
	// An outcome and its software record entry are one write too.
	rec := server.SoftwareRecord{VIN: "VIN1", ECUSerial: "DCM1", ECUType: "dcm", At: done.At, ToVersion: "2.0.0", Via: server.OriginDealer, JobID: j1.ID, Outcome: "installed"}
	wantErr(t, s.UpdateJobRecorded(ctx, stale, server.JobQueued, rec, done), server.ErrConflict)
	if recs, err := s.SoftwareRecords(ctx, "VIN1", server.RecordQuery{Limit: 10}); err != nil || len(recs) != 0 {
		t.Fatalf("a refused outcome wrote the software record: %+v %v", recs, err)
	}
	j1.State = server.JobSucceeded
	must(t, s.UpdateJobRecorded(ctx, j1, server.JobInProgress, rec, done))
	if recs, err := s.SoftwareRecords(ctx, "VIN1", server.RecordQuery{Limit: 10}); err != nil || len(recs) != 1 || recs[0].JobID != j1.ID {
		t.Fatalf("the outcome's software record: %+v %v", recs, err)
	}
	head, err := s.JobHead(ctx, j1.ID)
	must(t, err)
	if head.State != server.JobSucceeded || head.EventCount != 3 || head.VIN != "VIN1" {
		t.Fatalf("job head after the update: %+v", head)
	}
	if got, _ = s.Job(ctx, j1.ID); len(got.Events) != 3 || got.Events[2].Message != "booted" || got.EventCount != 3 {
		t.Fatalf("events after the update: %+v", got.Events)
	}
	_, err = s.JobHead(ctx, uuid.NewString())
	wantErr(t, err, server.ErrNotFound)
	open, err := s.OpenJobs(ctx, 10)
	must(t, err)
	if len(open) != 2 {
		t.Fatalf("open jobs: %d, want 2", len(open))
	}
	states, err := s.JobStates(ctx)
	must(t, err)
	if want := map[string]int{server.JobQueued: 2, server.JobSucceeded: 1}; !reflect.DeepEqual(states, want) {
		t.Fatalf("job states: %v, want %v", states, want)
	}
	_, err = s.Job(ctx, uuid.NewString())
	wantErr(t, err, server.ErrNotFound)
}

func testJobConcurrency(t *testing.T, s server.Store) {
	j := job("VIN1", "DCM1", now)
	must(t, s.CreateJob(ctx, j))
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			u := j
			u.State = []string{server.JobCanceled, server.JobInProgress}[i%2]
			if s.UpdateJob(ctx, u, server.JobQueued) == nil {
				wins.Add(1)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d concurrent transitions from queued succeeded, want 1", wins.Load())
	}
}

func testAudit(t *testing.T, s server.Store) {
	for i := range 5 {
		must(t, s.AppendAudit(ctx, server.AuditEntry{At: now, ActorID: "id-a", Actor: "a", Role: "admin", Action: fmt.Sprintf("act%d", i), Subject: "x"}))
	}
	first, err := s.ListAudit(ctx, 0, 3)
	must(t, err)
	if len(first) != 3 || first[0].Action != "act0" || first[0].ActorID != "id-a" || first[0].Role != "admin" {
		t.Fatalf("first page: %+v", first)
	}
	rest, err := s.ListAudit(ctx, first[2].ID, 10)
	must(t, err)
	if len(rest) != 2 || rest[1].Action != "act4" {
		t.Fatalf("second page: %+v", rest)
	}
	// Appends from many goroutines (replicas) still make one chain.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			if err := s.AppendAudit(ctx, server.AuditEntry{At: now, ActorID: "id-b", Actor: "b", Role: "dealer", Action: fmt.Sprintf("par%d", i), Subject: "y"}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	all, err := s.ListAudit(ctx, 0, 1000)
	must(t, err)
	var v auditlog.Verifier
	for _, e := range all {
		if err := v.Add(e); err != nil {
			t.Fatalf("chain: %v", err)
		}
	}
	if seq, _ := v.Head(); seq != 13 || v.Entries != 13 {
		t.Fatalf("chain head seq %d over %d entries, want 13", seq, v.Entries)
	}
	seq, hash := v.Head()
	cp := server.AuditCheckpoint{Seq: seq, Hash: hash, At: now, KeyID: "k", Signature: "00"}
	must(t, s.AddAuditCheckpoint(ctx, cp))
	later := cp
	later.At = now.Add(time.Minute)
	must(t, s.AddAuditCheckpoint(ctx, later)) // the head re-signed, unchanged
	cps, err := s.AuditCheckpoints(ctx)
	must(t, err)
	if len(cps) != 1 || cps[0].Seq != 13 || cps[0].Hash != hash || !cps[0].At.Equal(later.At) {
		t.Fatalf("checkpoints: %+v", cps)
	}

	// The genesis entry is sealed in its place, once.
	var sealedAt struct {
		seq    int64
		prev   string
		legacy int64
	}
	seal := func(seq int64, prev string, legacy int64) string {
		sealedAt.seq, sealedAt.prev, sealedAt.legacy = seq, prev, legacy
		return "sealed"
	}
	added, err := s.AppendAuditGenesis(ctx, server.AuditEntry{At: now, Actor: "roadsign-server", Subject: "audit"}, seal)
	must(t, err)
	if !added || sealedAt.seq != 14 || sealedAt.prev != hash || sealedAt.legacy != 0 {
		t.Fatalf("genesis: added %v, sealed at %+v", added, sealedAt)
	}
	if again, err := s.AppendAuditGenesis(ctx, server.AuditEntry{At: now, Subject: "audit"}, seal); err != nil || again {
		t.Fatalf("a second genesis: added %v, %v", again, err)
	}
	all, _ = s.ListAudit(ctx, 0, 1000)
	if g := all[len(all)-1]; len(all) != 14 || g.Action != auditlog.GenesisAction || g.Detail != "sealed" || g.Seq != 14 || g.Hash != auditlog.Hash(hash, g) {
		t.Fatalf("genesis entry: %+v of %d", g, len(all))
	}
	recent, err := s.RecentAudit(ctx, 0, 3)
	must(t, err)
	older, err := s.RecentAudit(ctx, recent[2].ID, 2)
	must(t, err)
	if len(recent) != 3 || recent[0].Seq != 14 || recent[2].Seq != 12 || len(older) != 2 || older[0].Seq != 11 || older[1].Seq != 10 {
		t.Fatalf("newest first: %v then %v", recent, older)
	}
}

func testDirector(t *testing.T, s server.Store) {
	h, err := s.DirectorHead(ctx, "VIN1")
	must(t, err)
	if h.TimestampVersion != 0 {
		t.Fatalf("fresh head: %+v", h)
	}
	next := server.DirectorHead{VIN: "VIN1", TargetsVersion: 1, SnapshotVersion: 1, TimestampVersion: 1, AssignmentHash: "a1", TimestampExpires: now}
	files := []server.DirectorMeta{{VIN: "VIN1", Role: "targets", Version: 1, Body: []byte("t1"), Expires: now},
		{VIN: "VIN1", Role: "timestamp", Version: 1, Body: []byte("ts1"), Expires: now}}
	must(t, s.SaveDirector(ctx, h, next, files))
	wantErr(t, s.SaveDirector(ctx, h, next, nil), server.ErrConflict) // someone else saved first
	got, err := s.DirectorHead(ctx, "VIN1")
	must(t, err)
	if string(got.Timestamp) != "ts1" { // the head carries its timestamp's body
		t.Fatalf("head's timestamp %q, want ts1", got.Timestamp)
	}
	if got.Timestamp = nil; !reflect.DeepEqual(got, next) {
		t.Fatalf("head %+v, want %+v", got, next)
	}
	f, err := s.DirectorFile(ctx, "VIN1", "targets", 1)
	must(t, err)
	if string(f.Body) != "t1" {
		t.Fatalf("file %q", f.Body)
	}
	// Versions climb; old files are pruned.
	prev := next
	for v := int64(2); v <= 20; v++ {
		n := prev
		n.TargetsVersion, n.TimestampVersion = v, v
		must(t, s.SaveDirector(ctx, prev, n, []server.DirectorMeta{{VIN: "VIN1", Role: "targets", Version: v, Body: []byte("t"), Expires: now}}))
		prev = n
	}
	_, err = s.DirectorFile(ctx, "VIN1", "targets", 1)
	wantErr(t, err, server.ErrNotFound)
	_, err = s.DirectorFile(ctx, "VIN1", "targets", 20)
	must(t, err)
	// Concurrent regenerations from one head: exactly one wins.
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			n := prev
			n.TimestampVersion++
			if s.SaveDirector(ctx, prev, n, nil) == nil {
				wins.Add(1)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d concurrent director saves from one head succeeded", wins.Load())
	}

	// USB bundle versions count per VIN, also before any online metadata,
	// and never hand out one number twice.
	b, err := s.NextBundleVersion(ctx, "VIN2")
	must(t, err)
	if b != 1 {
		t.Fatalf("first bundle version %d, want 1", b)
	}
	var mu sync.Mutex
	seen := map[int64]bool{}
	for range 6 {
		wg.Go(func() {
			v, err := s.NextBundleVersion(ctx, "VIN2")
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			seen[v] = true
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(seen) != 6 || seen[1] {
		t.Fatalf("concurrent bundle versions: %v", seen)
	}
	// A VIN whose bundle was counted first still gets its first online head.
	h2, err := s.DirectorHead(ctx, "VIN2")
	must(t, err)
	first := server.DirectorHead{VIN: "VIN2", TargetsVersion: 1, SnapshotVersion: 1, TimestampVersion: 1, AssignmentHash: "a", TimestampExpires: now}
	must(t, s.SaveDirector(ctx, h2, first, nil))
	wantErr(t, s.SaveDirector(ctx, h2, first, nil), server.ErrConflict)
	if b, _ := s.NextBundleVersion(ctx, "VIN2"); b != 8 {
		t.Fatalf("bundle version after an online save: %d, want 8", b)
	}
	if got, _ := s.DirectorHead(ctx, "VIN2"); !reflect.DeepEqual(got, first) {
		t.Fatalf("head after counting a bundle: %+v, want %+v", got, first)
	}
}

// testDirectorInputs: every change an assignment depends on counts in
// the vehicle's generation (its jobs, an ECU's first report or another
// image, a replaced ECU, a declined campaign member) or the campaigns'
// (any campaign change), in the transaction that made it, and nothing
// else does (a check-in saying what it said before); a head keeps its
// basis, replaced only at its own version.
func testDirectorInputs(t *testing.T, s server.Store) {
	const vin = "VIN00000000000042"
	must(t, s.CreateVehicle(ctx, vehicle(vin, "HU1", "DCM1")))
	head := func() server.DirectorHead {
		t.Helper()
		h, err := s.DirectorHead(ctx, vin)
		must(t, err)
		return h
	}
	report := func(sha string) func() {
		return func() {
			must(t, s.ReportECUs(ctx, vin, []server.ECU{{Serial: "DCM1", InstalledTarget: "dcm.img", InstalledSHA256: sha}}, server.Health{}, now))
		}
	}
	job := server.Job{ID: uuid.NewString(), VIN: vin, ECUSerial: "DCM1", ECUType: "dcm", TargetPath: "dcm.img", State: server.JobQueued,
		CreatedAt: now, UpdatedAt: now, MaxAttempts: 3, Origin: server.OriginDealer}
	e, _, err := s.AcquireLeadership(ctx, "leader", "a", time.Hour, now)
	must(t, err)
	fence := server.Fence{Name: "leader", Holder: "a", Epoch: e}
	steps := []struct {
		name              string
		do                func()
		vehicle, campaign int64 // how much each generation moves
	}{
		{"first report", report("aa"), 1, 0},
		{"the same report again", report("aa"), 0, 0},
		{"another image", report("bb"), 1, 0},
		{"a report of no ECU", func() { must(t, s.ReportECUs(ctx, vin, nil, server.Health{}, now)) }, 0, 0},
		{"a job", func() { must(t, s.CreateJob(ctx, job)) }, 1, 0},
		{"the job changes", func() {
			j := job
			j.State = server.JobInProgress
			must(t, s.UpdateJob(ctx, j, server.JobQueued, server.JobEvent{At: now, Kind: "started"}))
		}, 1, 0},
		{"a stale job change", func() {
			wantErr(t, s.UpdateJob(ctx, job, server.JobQueued), server.ErrConflict)
		}, 0, 0},
		{"a replaced ECU", func() {
			must(t, s.ReplaceECU(ctx, vin, "DCM1", server.ECU{Serial: "DCM9", HardwareID: "DCM-4G"}, []byte{9}))
		}, 1, 0},
		{"a campaign", func() {
			must(t, s.CreateCampaign(ctx, server.Campaign{ID: "c1", Name: "c", State: server.CampaignDraft, CreatedAt: now}))
		}, 0, 1},
		{"it starts", func() {
			must(t, s.StartCampaign(ctx, "c1", []server.CampaignMember{{CampaignID: "c1", VIN: vin, ECUSerial: "DCM9", Wave: -1, JoinedAt: now}}, now))
		}, 0, 1},
		{"a wave opens", func() { must(t, s.OpenCampaignWave(ctx, fence, "c1", 0, 1, true, now)) }, 0, 1},
		{"its member declines", func() { must(t, s.SetCampaignConsent(ctx, "c1", vin, "declined")) }, 1, 0},
		{"it pauses", func() {
			must(t, s.SetCampaignState(ctx, "c1", []string{server.CampaignRunning}, server.CampaignPaused, now))
		}, 0, 1},
		{"it resumes and ends", func() {
			must(t, s.SetCampaignState(ctx, "c1", []string{server.CampaignPaused}, server.CampaignRunning, now))
			must(t, s.EndCampaign(ctx, fence, "c1", server.CampaignCompleted, "", now))
		}, 0, 2},
	}
	for _, st := range steps {
		before := head()
		st.do()
		after := head()
		if dv, dc := after.VehicleGen-before.VehicleGen, after.CampaignGen-before.CampaignGen; dv != st.vehicle || dc != st.campaign {
			t.Fatalf("%s: vehicle generation +%d, campaigns +%d; want +%d, +%d", st.name, dv, dc, st.vehicle, st.campaign)
		}
	}
	// The basis is saved with the head, and replaced only at its version.
	next := server.DirectorHead{VIN: vin, TargetsVersion: 1, SnapshotVersion: 1, TimestampVersion: 1, AssignmentHash: "a", TimestampExpires: now, Basis: "b1"}
	must(t, s.SaveDirector(ctx, head(), next, []server.DirectorMeta{{VIN: vin, Role: "timestamp", Version: 1, Body: []byte("ts1"), Expires: now}}))
	must(t, s.SaveDirectorBasis(ctx, vin, 1, "b2"))
	must(t, s.SaveDirectorBasis(ctx, vin, 7, "stale"))
	if h := head(); h.Basis != "b2" || string(h.Timestamp) != "ts1" || h.TimestampVersion != 1 {
		t.Fatalf("head after saving bases: %+v", h)
	}
}

// testThrottles: concurrent updates of one key never see the same entry
// (every replica's increment counts), the zero entry deletes, pruning
// drops idle entries but not locked ones, and beyond its bound all but
// the most recent.
func testThrottles(t *testing.T, s server.Store) {
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				_, err := s.UpdateThrottle(ctx, "ip:192.0.2.1", func(e server.ThrottleEntry) server.ThrottleEntry {
					e.Failures++
					e.Tokens += 0.5
					e.Last = now
					return e
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	e, err := s.ThrottleEntry(ctx, "ip:192.0.2.1")
	must(t, err)
	if e.Failures != 80 || e.Tokens != 40 || !e.Last.Equal(now) {
		t.Fatalf("after 80 concurrent updates: %+v, want 80 failures and 40 tokens", e)
	}
	if _, err := s.UpdateThrottle(ctx, "ip:192.0.2.1", func(server.ThrottleEntry) server.ThrottleEntry { return server.ThrottleEntry{} }); err != nil {
		t.Fatal(err)
	}
	if e, err := s.ThrottleEntry(ctx, "ip:192.0.2.1"); err != nil || e != (server.ThrottleEntry{}) {
		t.Fatalf("after the zero entry: %+v, %v", e, err)
	}
	set := func(key string, last, until time.Time) {
		_, err := s.UpdateThrottle(ctx, key, func(server.ThrottleEntry) server.ThrottleEntry {
			return server.ThrottleEntry{Failures: 1, Last: last, Until: until}
		})
		must(t, err)
	}
	set("name:idle", now.Add(-time.Hour), time.Time{})
	set("name:locked", now.Add(-time.Hour), now.Add(time.Minute))
	for i := range 5 {
		set(fmt.Sprintf("name:recent-%d", i), now.Add(time.Duration(i)*time.Second), time.Time{})
	}
	must(t, s.PruneThrottles(ctx, now.Add(-15*time.Minute), now, 100))
	for key, kept := range map[string]bool{"name:idle": false, "name:locked": true, "name:recent-0": true} {
		e, err := s.ThrottleEntry(ctx, key)
		must(t, err)
		if got := e != (server.ThrottleEntry{}); got != kept {
			t.Errorf("after pruning idle entries, %s kept %v, want %v", key, got, kept)
		}
	}
	must(t, s.PruneThrottles(ctx, now.Add(-15*time.Minute), now, 3))
	for key, kept := range map[string]bool{"name:idle": false, "name:locked": false, "name:recent-0": false, "name:recent-1": false,
		"name:recent-2": true, "name:recent-3": true, "name:recent-4": true} {
		e, err := s.ThrottleEntry(ctx, key)
		must(t, err)
		if got := e != (server.ThrottleEntry{}); got != kept {
			t.Errorf("after pruning to 3, %s kept %v, want %v", key, got, kept)
		}
	}
}

func testLeases(t *testing.T, s server.Store) {
	got := func(holder string, at time.Time) bool {
		_, ok, err := s.AcquireLeadership(ctx, "image-repository", holder, time.Minute, at)
		must(t, err)
		return ok
	}
	if !got("a", now) {
		t.Fatal("a free lease was refused")
	}
	if got("b", now.Add(30*time.Second)) {
		t.Fatal("b took a lease a holds")
	}
	if !got("a", now.Add(30*time.Second)) {
		t.Fatal("a could not renew its lease")
	}
	if !got("b", now.Add(2*time.Minute)) {
		t.Fatal("b could not take an expired lease")
	}
	must(t, s.ReleaseLease(ctx, "image-repository", "a")) // not a's any more: no effect
	if got("a", now.Add(2*time.Minute)) {
		t.Fatal("a released b's lease")
	}
	must(t, s.ReleaseLease(ctx, "image-repository", "b"))
	if !got("a", now.Add(2*time.Minute)) {
		t.Fatal("a released lease was not free")
	}
	// Concurrent takers: exactly one wins.
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			if _, ok, _ := s.AcquireLeadership(ctx, "race", fmt.Sprint(i), time.Minute, now); ok {
				wins.Add(1)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d concurrent takers got the lease", wins.Load())
	}
}

func testOwners(t *testing.T, s server.Store) {
	must(t, s.CreateVehicle(ctx, vehicle("VIN00000000000001", "HU1", "DCM1")))
	must(t, s.SetLinkCode(ctx, "VIN00000000000001", "h1", now.Add(time.Minute)))
	wantErr(t, s.TakeLinkCode(ctx, "VIN00000000000001", "wrong", now), server.ErrNotFound)
	wantErr(t, s.TakeLinkCode(ctx, "VIN00000000000001", "h1", now.Add(2*time.Minute)), server.ErrNotFound) // expired
	must(t, s.SetLinkCode(ctx, "VIN00000000000001", "h2", now.Add(time.Minute)))
	must(t, s.TakeLinkCode(ctx, "VIN00000000000001", "h2", now))
	wantErr(t, s.TakeLinkCode(ctx, "VIN00000000000001", "h2", now), server.ErrNotFound) // one-time

	_, err := s.Link(ctx, "VIN00000000000001")
	wantErr(t, err, server.ErrNotFound)
	l := server.Link{VIN: "VIN00000000000001", OwnerID: "o1", LinkedAt: now, SubscriptionEnds: now.Add(time.Hour)}
	must(t, s.SaveLink(ctx, l))
	l.PendingOwnerID = "o2"
	must(t, s.SaveLink(ctx, l))
	got, err := s.Link(ctx, "VIN00000000000001")
	must(t, err)
	if got != l {
		t.Fatalf("link %+v, want %+v", got, l)
	}
	list, err := s.LinksByOwner(ctx, "o1")
	must(t, err)
	if len(list) != 1 {
		t.Fatalf("links of o1: %+v", list)
	}
	must(t, s.DeleteLink(ctx, "VIN00000000000001"))
	_, err = s.Link(ctx, "VIN00000000000001")
	wantErr(t, err, server.ErrNotFound)

	must(t, s.ReplaceECU(ctx, "VIN00000000000001", "DCM1", server.ECU{Serial: "DCM9", HardwareID: "DCM-5G"}, []byte{9}))
	v, err := s.Vehicle(ctx, "VIN00000000000001")
	must(t, err)
	if e, ok := v.ECUBySerial("DCM9"); !ok || e.HardwareID != "DCM-5G" || string(v.PublicKey) != "\x09" {
		t.Fatalf("after replace: %+v", v)
	}
	wantErr(t, s.ReplaceECU(ctx, "VIN00000000000001", "DCM1", server.ECU{Serial: "DCMx"}, []byte{9}), server.ErrNotFound)
}

func testAccountsAndSessions(t *testing.T, s server.Store) {
	a := server.Account{ID: uuid.NewString(), Roles: server.Roles{server.RoleOwner}, Name: "alice", PasswordHash: "p1", TokenHash: "t1", CreatedAt: now}
	b := server.Account{ID: uuid.NewString(), Roles: server.Roles{server.RoleDealer}, Name: "bob", TokenHash: "t2", CreatedAt: now}
	must(t, s.CreateAccount(ctx, a))
	must(t, s.CreateAccount(ctx, b))
	must(t, s.SetAccountDisabled(ctx, b.ID, true))
	must(t, s.SetAccountToken(ctx, a.ID, "t3"))
	must(t, s.SetAccountPassword(ctx, a.ID, "p2"))
	wantErr(t, s.SetAccountDisabled(ctx, uuid.NewString(), true), server.ErrNotFound)
	list, err := s.ListAccounts(ctx)
	must(t, err)
	if len(list) != 2 || list[0].Name != "alice" || list[0].TokenHash != "t3" || list[0].PasswordHash != "p2" || list[0].Disabled || !list[1].Disabled {
		t.Fatalf("accounts: %+v", list)
	}
	_, err = s.AccountByTokenHash(ctx, "t1")
	wantErr(t, err, server.ErrNotFound) // the old token is gone

	se := func(id, account string, exp time.Time) server.Session {
		return server.Session{IDHash: id, AccountID: account, CreatedAt: now, ExpiresAt: exp}
	}
	must(t, s.CreateSession(ctx, se("s1", a.ID, now.Add(time.Hour))))
	must(t, s.CreateSession(ctx, se("s2", a.ID, now.Add(time.Hour))))
	must(t, s.CreateSession(ctx, se("s3", b.ID, now.Add(time.Hour))))
	got, err := s.Session(ctx, "s1")
	must(t, err)
	if got.AccountID != a.ID || !got.ExpiresAt.Equal(now.Add(time.Hour)) {
		t.Fatalf("session: %+v", got)
	}
	must(t, s.DeleteSession(ctx, "s1"))
	_, err = s.Session(ctx, "s1")
	wantErr(t, err, server.ErrNotFound)
	must(t, s.DeleteSessions(ctx, a.ID))
	_, err = s.Session(ctx, "s2")
	wantErr(t, err, server.ErrNotFound)
	if _, err := s.Session(ctx, "s3"); err != nil {
		t.Fatal("ending alice's sessions ended bob's")
	}
	// Expired sessions are pruned as new ones are made.
	s4 := se("s4", b.ID, now.Add(time.Hour))
	s4.CreatedAt = now.Add(2 * time.Hour)
	must(t, s.CreateSession(ctx, s4))
	_, err = s.Session(ctx, "s3")
	wantErr(t, err, server.ErrNotFound)
}

// testLeadership: one holder at a time; renewal keeps the epoch; a new
// holder raises it; a write fenced by an old epoch is refused.
func testLeadership(t *testing.T, s server.Store) {
	take := func(holder string, at time.Time) (int64, bool) {
		e, ok, err := s.AcquireLeadership(ctx, "leader", holder, 10*time.Second, at)
		must(t, err)
		return e, ok
	}
	e1, ok := take("a", now)
	if !ok || e1 != 1 {
		t.Fatalf("first holder: epoch %d %v", e1, ok)
	}
	if _, ok := take("b", now.Add(time.Second)); ok {
		t.Fatal("b took a held lease")
	}
	if e, ok := take("a", now.Add(5*time.Second)); !ok || e != e1 {
		t.Fatalf("renewal: epoch %d %v, want %d", e, ok, e1)
	}
	e2, ok := take("b", now.Add(16*time.Second)) // a's lease ran out at 15 s
	if !ok || e2 != e1+1 {
		t.Fatalf("takeover: epoch %d %v, want %d", e2, ok, e1+1)
	}
	if _, ok := take("a", now.Add(17*time.Second)); ok {
		t.Fatal("a renewed a lease b holds")
	}
	must(t, s.CreateCampaign(ctx, server.Campaign{ID: "c1", Name: "c", State: server.CampaignRunning, Config: server.CampaignConfig{Waves: []int{100}}, CreatedAt: now}))
	stale := server.Fence{Name: "leader", Holder: "a", Epoch: e1}
	wantErr(t, s.OpenCampaignWave(ctx, stale, "c1", 0, 1, false, now.Add(17*time.Second)), server.ErrFenced)
	wantErr(t, s.EndCampaign(ctx, stale, "c1", server.CampaignHalted, "stale", now.Add(17*time.Second)), server.ErrFenced)
	fresh := server.Fence{Name: "leader", Holder: "b", Epoch: e2}
	must(t, s.OpenCampaignWave(ctx, fresh, "c1", 0, 1, false, now.Add(17*time.Second)))
	wantErr(t, s.OpenCampaignWave(ctx, fresh, "c1", 0, 1, false, now.Add(17*time.Second)), server.ErrConflict) // opened already
	wantErr(t, s.OpenCampaignWave(ctx, fresh, "c1", 1, 1, false, now.Add(30*time.Second)), server.ErrFenced)   // b's lease ran out too
}

// testCampaigns: selection, waves in draw order, one job per member,
// counts and holds.
func testCampaigns(t *testing.T, s server.Store) {
	for i := range 10 {
		v := vehicle(fmt.Sprintf("VIN%014d", i), fmt.Sprintf("HU%d", i), fmt.Sprintf("DCM%d", i))
		if i >= 8 {
			v.Region = "NA"
		}
		must(t, s.CreateVehicle(ctx, v))
	}
	must(t, s.ReportECUs(ctx, "VIN00000000000000", []server.ECU{{Serial: "DCM0", InstalledTarget: "dcm/1.img", InstalledVersion: "1", InstalledSHA256: "aa"}}, server.Health{}, now))
	cands, err := s.CampaignCandidates(ctx, "dcm", []string{"DCM-4G"}, server.Selector{Regions: []string{"EU"}})
	must(t, err)
	if len(cands) != 8 || cands[0].ECUSerial != "DCM0" || cands[0].HardwareID != "DCM-4G" || cands[0].Installed != "dcm/1.img" {
		t.Fatalf("candidates: %+v", cands)
	}
	must(t, s.CreateCampaign(ctx, server.Campaign{ID: "c1", Name: "c", State: server.CampaignDraft, Config: server.CampaignConfig{Waves: []int{50, 100}}, CreatedAt: now}))
	members := make([]server.CampaignMember, len(cands))
	for i, c := range cands {
		members[i] = server.CampaignMember{CampaignID: "c1", VIN: c.VIN, ECUSerial: c.ECUSerial, Wave: -1, Draw: int64(100 - i), JoinedAt: now} // reverse order
	}
	must(t, s.StartCampaign(ctx, "c1", members, now))
	wantErr(t, s.StartCampaign(ctx, "c1", nil, now), server.ErrConflict)
	// A running campaign holds its ECUs: another selects none of them.
	if again, _ := s.CampaignCandidates(ctx, "dcm", []string{"DCM-4G"}, server.Selector{}); len(again) != 2 {
		t.Fatalf("ECUs of a running campaign were selected again: %d", len(again))
	}
	if h, _ := s.CampaignHolds(ctx, "VIN00000000000007"); !h["DCM7"] {
		t.Fatal("a waiting member is not held")
	}
	e, _, err := s.AcquireLeadership(ctx, "leader", "a", time.Hour, now)
	must(t, err)
	f := server.Fence{Name: "leader", Holder: "a", Epoch: e}
	must(t, s.OpenCampaignWave(ctx, f, "c1", 0, 4, true, now))
	ms, err := s.CampaignMembersToAssign(ctx, "c1", 1, 10)
	must(t, err)
	if len(ms) != 0 {
		t.Fatalf("members asked for consent were offered for assignment: %+v", ms)
	}
	must(t, s.OpenCampaignWave(ctx, f, "c1", 1, 4, false, now))
	ms, err = s.CampaignMembersToAssign(ctx, "c1", 2, 10)
	must(t, err)
	if len(ms) != 4 || ms[0].Wave != 1 || ms[0].ECUSerial != "DCM3" { // draw order: DCM7..DCM4 in wave 1, DCM3..DCM0 in wave 2
		t.Fatalf("to assign: %+v", ms)
	}
	jobs := []server.Job{}
	for _, m := range ms {
		j := job(m.VIN, m.ECUSerial, now)
		j.Origin, j.CampaignID = server.OriginCampaign, "c1"
		jobs = append(jobs, j)
	}
	made, err := s.AssignCampaignJobs(ctx, f, "c1", jobs, now.Add(time.Second), now)
	must(t, err)
	again, err := s.AssignCampaignJobs(ctx, f, "c1", jobs[:1], now.Add(time.Second), now)
	must(t, err)
	if len(made) != 4 || len(again) != 0 {
		t.Fatalf("assigned %d, then %d again: a member got two jobs", len(made), len(again))
	}
	counts, total, err := s.CampaignCounts(ctx, "c1")
	must(t, err)
	if total != 8 || len(counts) != 2 || counts[0].Waiting != 4 || counts[1].Queued != 4 {
		t.Fatalf("counts: %d %+v", total, counts)
	}
	c, err := s.Campaign(ctx, "c1")
	must(t, err)
	if c.OpenWaves != 2 || len(c.WaveOpened) != 2 || !c.AssignClock.Equal(now.Add(time.Second)) {
		t.Fatalf("campaign: %+v", c)
	}
}

// testDiagnosisEvidence: trouble code episodes are upserted by first-seen
// time and kept when cleared; the signal and refused requests are kept on
// the vehicle (a new key forgets the bad signatures); findings open,
// stay open, resolve, and are counted.
func testDiagnosisEvidence(t *testing.T, s server.Store) {
	v := vehicle("VIN00000000000003", "HU3", "DCM3")
	must(t, s.CreateVehicle(ctx, v))
	got, _ := s.Vehicle(ctx, v.VIN)
	if got.SignalBars != -1 || !got.RequestFaults.BadSignatureAt.IsZero() {
		t.Fatalf("a new vehicle has no signal reading and no refused requests: %+v", got)
	}
	ep := server.DTCEpisode{Code: "B15C4", FirstSeen: now, LastSeen: now.Add(time.Minute), Count: 3, Detail: "no server", SignalBars: ptr(0)}
	must(t, s.ReportECUs(ctx, v.VIN, nil, server.Health{Active: "B15C4", Episodes: []server.DTCEpisode{ep}, SignalBars: 1, SignalAt: now}, now.Add(2*time.Minute)))
	ep.ClearedAt, ep.LastSeen, ep.Count = now.Add(3*time.Minute), now.Add(2*time.Minute), 4
	older := server.DTCEpisode{Code: "U1100", FirstSeen: now.Add(-72 * time.Hour), LastSeen: now.Add(-71 * time.Hour), Count: 1, ClearedAt: now.Add(-70 * time.Hour)}
	must(t, s.ReportECUs(ctx, v.VIN, nil, server.Health{Episodes: []server.DTCEpisode{ep, older}, SignalBars: 4, SignalAt: now.Add(3 * time.Minute)}, now.Add(4*time.Minute)))
	eps, err := s.DTCEpisodes(ctx, v.VIN, now.Add(-24*time.Hour))
	must(t, err)
	if len(eps) != 1 || eps[0].Count != 4 || !eps[0].ClearedAt.Equal(now.Add(3*time.Minute)) || eps[0].SignalBars == nil || *eps[0].SignalBars != 0 || eps[0].Active() {
		t.Fatalf("episodes since a day ago: %+v", eps)
	}
	if all, _ := s.DTCEpisodes(ctx, v.VIN, now.Add(-100*time.Hour)); len(all) != 2 {
		t.Fatalf("episodes since 100 h ago: %+v", all)
	}
	got, _ = s.Vehicle(ctx, v.VIN)
	if got.SignalBars != 4 || !got.SignalAt.Equal(now.Add(3*time.Minute)) || got.DTCs != "" {
		t.Fatalf("signal after the reports: %+v", got)
	}
	// However many new episodes a vehicle reports, the store keeps the
	// most recently seen MaxEpisodesPerVehicle.
	for r := range 20 {
		var batch []server.DTCEpisode
		for i := range 32 {
			at := now.Add(time.Duration(r*32+i+1) * time.Hour)
			batch = append(batch, server.DTCEpisode{Code: "P0420", FirstSeen: at, LastSeen: at, Count: 1})
		}
		must(t, s.ReportECUs(ctx, v.VIN, nil, server.Health{Episodes: batch}, now))
	}
	// (The hostile suite counts the rows; here the pruning runs on both
	// backends and keeps the newest.)
	kept, err := s.DTCEpisodes(ctx, v.VIN, time.Time{})
	must(t, err)
	if len(kept) == 0 || !kept[0].LastSeen.Equal(now.Add(640*time.Hour)) {
		t.Fatalf("the newest episode is gone: %+v", kept[:min(len(kept), 1)])
	}

	bad := server.RequestFault{Kind: server.FaultBadSignature}
	must(t, s.RecordRequestFault(ctx, v.VIN, bad, now))
	must(t, s.RecordRequestFault(ctx, v.VIN, bad, now.Add(time.Second)))
	must(t, s.RecordRequestFault(ctx, v.VIN, server.RequestFault{Kind: server.FaultClockSkew, Skew: -10 * time.Minute}, now))
	must(t, s.RecordRequestFault(ctx, v.VIN, server.RequestFault{Kind: server.FaultCheckInRefused, Detail: "manifest names an ECU X"}, now))
	must(t, s.RecordRequestFault(ctx, "VIN00000000000099", bad, now)) // unknown VIN: nothing
	got, _ = s.Vehicle(ctx, v.VIN)
	if f := got.RequestFaults; f.BadSignatureCount != 2 || !f.BadSignatureAt.Equal(now.Add(time.Second)) || f.ClockSkew != -10*time.Minute || !f.ClockSkewAt.Equal(now) ||
		!f.CheckInRefusedAt.Equal(now) || f.CheckInRefused != "manifest names an ECU X" {
		t.Fatalf("refused requests: %+v", f)
	}
	must(t, s.ReplaceECU(ctx, v.VIN, "DCM3", server.ECU{Serial: "DCM3b", HardwareID: "DCM-4G"}, []byte{9, 9}))
	got, _ = s.Vehicle(ctx, v.VIN)
	if f := got.RequestFaults; f.BadSignatureCount != 0 || !f.BadSignatureAt.IsZero() || f.ClockSkewAt.IsZero() {
		t.Fatalf("a new key forgets the bad signatures, not the clock: %+v", f)
	}

	opened, resolved, err := s.RecordFindings(ctx, v.VIN, []string{"subscription_expired", "vehicle_offline"}, now)
	if err != nil || len(opened) != 2 || len(resolved) != 0 {
		t.Fatalf("first findings: opened %v, resolved %v, %v", opened, resolved, err)
	}
	opened, resolved, err = s.RecordFindings(ctx, v.VIN, []string{"subscription_expired"}, now.Add(time.Hour))
	if err != nil || len(opened) != 0 || fmt.Sprint(resolved) != "[vehicle_offline]" {
		t.Fatalf("second findings: opened %v, resolved %v, %v", opened, resolved, err)
	}
	fs, err := s.Findings(ctx, v.VIN, 10)
	must(t, err)
	state := map[string]server.Finding{}
	for _, f := range fs {
		state[f.Code] = f
	}
	if len(fs) != 2 || !state["subscription_expired"].ResolvedAt.IsZero() || !state["subscription_expired"].LastSeen.Equal(now.Add(time.Hour)) ||
		!state["vehicle_offline"].ResolvedAt.Equal(now.Add(time.Hour)) {
		t.Fatalf("findings: %+v", fs)
	}
	opened, _, err = s.RecordFindings(ctx, v.VIN, []string{"vehicle_offline"}, now.Add(2*time.Hour)) // again: a new finding
	if err != nil || fmt.Sprint(opened) != "[vehicle_offline]" {
		t.Fatalf("third findings: opened %v, %v", opened, err)
	}
	counts, err := s.FindingCounts(ctx, now.Add(-time.Hour))
	must(t, err)
	want := []server.FindingCount{{Code: "subscription_expired", Open: 0, Resolved: 1}, {Code: "vehicle_offline", Open: 1, Resolved: 1}}
	if !reflect.DeepEqual(counts, want) {
		t.Fatalf("finding counts: %+v, want %+v", counts, want)
	}
}

// testRepoVersion: the repository's version row only goes up.
func testRepoVersion(t *testing.T, s server.Store) {
	if v, err := s.RepoVersion(ctx); err != nil || v != 0 {
		t.Fatalf("fresh store: %d, %v", v, err)
	}
	must(t, s.SetRepoVersion(ctx, 5))
	must(t, s.SetRepoVersion(ctx, 3)) // a late writer does not lower it
	if v, _ := s.RepoVersion(ctx); v != 5 {
		t.Fatalf("version row: %d, want 5", v)
	}
}

// testUpdateSets: a job's parts and a software record entry's parts come
// back as stored, in order; a one-ECU job has none.
func testUpdateSets(t *testing.T, s server.Store) {
	v := server.Vehicle{VIN: "VINSET", Model: "m", Year: 2026, Region: "EU", PublicKey: []byte{1}, CreatedAt: now,
		ECUs: []server.ECU{{Serial: "H1", Type: "head-unit", HardwareID: "HU"}, {Serial: "D1", Type: "dcm", HardwareID: "DCM"}}}
	must(t, s.CreateVehicle(ctx, v))
	parts := []server.JobPart{{ECUSerial: "H1", ECUType: "head-unit", TargetPath: "head-unit/hu-3.img", Version: "3.0.0"},
		{ECUSerial: "D1", ECUType: "dcm", TargetPath: "dcm/dcm-2.1.img", Version: "2.1.0"}}
	set := server.Job{ID: "00000000-0000-0000-0000-00000000005e", VIN: v.VIN, ECUSerial: "H1", ECUType: "head-unit", TargetPath: parts[0].TargetPath,
		Version: "3.0.0", State: server.JobQueued, Origin: server.OriginDealer, CreatedAt: now, UpdatedAt: now, MaxAttempts: 3, Parts: parts}
	one := set
	one.ID, one.Parts, one.CreatedAt = "00000000-0000-0000-0000-0000000000e1", nil, now.Add(time.Second)
	must(t, s.CreateJob(ctx, set))
	must(t, s.CreateJob(ctx, one))
	got, err := s.Job(ctx, set.ID)
	must(t, err)
	if fmt.Sprint(got.Parts) != fmt.Sprint(parts) {
		t.Fatalf("set job parts %+v, want %+v", got.Parts, parts)
	}
	byVIN, err := s.JobsByVIN(ctx, v.VIN)
	must(t, err)
	if len(byVIN) != 2 || len(byVIN[0].Parts) != 2 || byVIN[1].Parts != nil {
		t.Fatalf("jobs of %s: %+v", v.VIN, byVIN)
	}
	rp := []server.RecordPart{{ECUSerial: "H1", ECUType: "head-unit", FromVersion: "2.0.0", FromSHA256: "aa", ToVersion: "3.0.0", ToSHA256: "bb"},
		{ECUSerial: "D1", ECUType: "dcm", FromVersion: "1.0.0", FromSHA256: "cc", ToVersion: "2.1.0", ToSHA256: "dd"}}
	must(t, s.AddSoftwareRecord(ctx, server.SoftwareRecord{VIN: v.VIN, ECUSerial: "H1 + D1", ECUType: "set", At: now, Via: "dealer", JobID: set.ID, Outcome: "installed", Parts: rp}))
	recs, err := s.SoftwareRecords(ctx, v.VIN, server.RecordQuery{Limit: 5})
	must(t, err)
	if len(recs) != 1 || fmt.Sprint(recs[0].Parts) != fmt.Sprint(rp) {
		t.Fatalf("set record %+v, want parts %+v", recs, rp)
	}
}

func testSoftwareRecord(t *testing.T, s server.Store) {
	all := server.RecordQuery{Limit: server.MaxRecordPage}
	empty, err := s.SoftwareRecords(ctx, "VINX", all)
	must(t, err)
	if empty == nil || len(empty) != 0 {
		t.Fatalf("no record: want an empty list, got %#v", empty)
	}
	for i, r := range []server.SoftwareRecord{
		{VIN: "VINX", ECUSerial: "D1", ECUType: "dcm", At: now, FromVersion: "1.0.0", FromSHA256: "aa", ToVersion: "1.1.0", ToSHA256: "bb", Via: "usb", Outcome: "installed", Detail: "note"},
		{VIN: "VINY", ECUSerial: "H1", ECUType: "head-unit", At: now, ToVersion: "2.0.0", Via: "dealer", JobID: "j1", Outcome: "failed"},
		{VIN: "VINX", ECUSerial: "D1", ECUType: "dcm", At: now.Add(time.Second), FromVersion: "1.1.0", ToVersion: "2.1.0", Via: "campaign", JobID: "j2", CampaignID: "c1", Outcome: "rolled_back"},
		{VIN: "VINX", ECUSerial: "D1", ECUType: "dcm", At: now.Add(2 * time.Second), FromVersion: "1.1.0", ToVersion: "2.2.0", Via: "dealer", JobID: "j3", Outcome: "installed"},
	} {
		if err := s.AddSoftwareRecord(ctx, r); err != nil {
			t.Fatalf("add %d: %v", i, err)
		}
	}
	got, err := s.SoftwareRecords(ctx, "VINX", all)
	must(t, err)
	if len(got) != 3 || got[0].Via != "usb" || got[0].FromSHA256 != "aa" || got[0].Detail != "note" || !got[0].At.Equal(now) ||
		got[1].CampaignID != "c1" || got[1].Outcome != "rolled_back" || got[1].ID <= got[0].ID {
		t.Fatalf("record of VINX: %+v", got)
	}
	versions := func(rs []server.SoftwareRecord) string {
		var out []string
		for _, r := range rs {
			out = append(out, r.ToVersion)
		}
		return strings.Join(out, ",")
	}
	pages := []struct {
		name string
		q    server.RecordQuery
		want string
	}{
		{"first page, oldest first", server.RecordQuery{Limit: 2}, "1.1.0,2.1.0"},
		{"after the first", server.RecordQuery{AfterID: got[0].ID, Limit: 2}, "2.1.0,2.2.0"},
		{"after the last", server.RecordQuery{AfterID: got[2].ID, Limit: 2}, ""},
		{"newest first", server.RecordQuery{NewestFirst: true, Limit: 2}, "2.2.0,2.1.0"},
		{"newest first, before the newest", server.RecordQuery{NewestFirst: true, BeforeID: got[2].ID, Limit: 5}, "2.1.0,1.1.0"},
		{"a limit of 0 reads one", server.RecordQuery{}, "1.1.0"},
	}
	for _, p := range pages {
		rs, err := s.SoftwareRecords(ctx, "VINX", p.q)
		must(t, err)
		if v := versions(rs); v != p.want {
			t.Errorf("%s: %s, want %s", p.name, v, p.want)
		}
	}

	// USB installs: each once, at most perDay a day, however many
	// check-ins race.
	v := vehicle("VIN00000000000007", "HU7", "DCM7")
	must(t, s.CreateVehicle(ctx, v))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			recs := []server.SoftwareRecord{{ECUSerial: "DCM7", ECUType: "dcm", At: now, Outcome: "installed", Detail: "the same note"}}
			for j := range 4 {
				recs = append(recs, server.SoftwareRecord{ECUSerial: "DCM7", ECUType: "dcm", At: now, Outcome: "installed", Detail: fmt.Sprintf("note %d.%d", i, j)})
			}
			if _, err := s.AddUSBRecords(ctx, v.VIN, recs, 10, now.Add(-24*time.Hour)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	usb, err := s.SoftwareRecords(ctx, v.VIN, all)
	must(t, err)
	same := 0
	for _, r := range usb {
		if r.Detail == "the same note" {
			same++
		}
		if r.Via != "usb" || r.VIN != v.VIN {
			t.Fatalf("USB entry: %+v", r)
		}
	}
	if len(usb) != 10 || same != 1 {
		t.Fatalf("%d USB entries (%d of the repeated note) from 8 racing check-ins; want 10, one of them the repeated note", len(usb), same)
	}
	added, err := s.AddUSBRecords(ctx, v.VIN, []server.SoftwareRecord{{ECUSerial: "DCM7", At: now.Add(25 * time.Hour), Detail: "tomorrow"}}, 10, now.Add(time.Hour))
	must(t, err)
	if len(added) != 1 {
		t.Fatalf("a day later the cap opens again: added %d", len(added))
	}
}

// testErrorKinds: what is missing or taken comes out of every role as an
// error of its kind, which the HTTP layer answers 404 or 409 even when no
// service translated it (never a 500).
func testErrorKinds(t *testing.T, s server.Store) {
	v := vehicle("VIN00000000000001", "HU1", "DCM1")
	must(t, s.CreateVehicle(ctx, v))
	must(t, s.UseNonce(ctx, v.VIN, "n1", now))
	j := server.Job{ID: uuid.NewString(), VIN: v.VIN, ECUSerial: "HU1", ECUType: "head-unit", TargetPath: "hu.bin", State: server.JobQueued, CreatedAt: now, UpdatedAt: now}
	must(t, s.CreateJob(ctx, j))
	stale := j
	stale.State = server.JobInProgress
	must(t, s.UpdateJob(ctx, stale, server.JobQueued))

	missing := "VIN00000000000009"
	tests := []struct {
		role string
		err  func() error
		kind server.Kind
	}{
		{"Vehicles.Vehicle", func() error { _, err := s.Vehicle(ctx, missing); return err }, server.KindNotFound},
		{"Vehicles.VehicleKey", func() error { _, err := s.VehicleKey(ctx, missing); return err }, server.KindNotFound},
		{"Vehicles.CreateVehicle", func() error { return s.CreateVehicle(ctx, v) }, server.KindConflict},
		{"Vehicles.UseNonce", func() error { return s.UseNonce(ctx, v.VIN, "n1", now) }, server.KindConflict},
		{"Jobs.Job", func() error { _, err := s.Job(ctx, uuid.NewString()); return err }, server.KindNotFound},
		{"Jobs.UpdateJob", func() error { return s.UpdateJob(ctx, stale, server.JobQueued) }, server.KindConflict},
		{"Accounts.AccountByID", func() error { _, err := s.AccountByID(ctx, uuid.NewString()); return err }, server.KindNotFound},
		{"Accounts.AccountByName", func() error { _, err := s.AccountByName(ctx, "nobody"); return err }, server.KindNotFound},
		{"Sessions.Session", func() error { _, err := s.Session(ctx, "none"); return err }, server.KindNotFound},
		{"Links.Link", func() error { _, err := s.Link(ctx, v.VIN); return err }, server.KindNotFound},
		{"Links.TakeLinkCode", func() error { return s.TakeLinkCode(ctx, v.VIN, "x", now) }, server.KindNotFound},
		{"DirectorMetadata.DirectorFile", func() error { _, err := s.DirectorFile(ctx, v.VIN, "targets", 1); return err }, server.KindNotFound},
		{"Campaigns.Campaign", func() error { _, err := s.Campaign(ctx, uuid.NewString()); return err }, server.KindNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.role, func(t *testing.T) {
			err := tt.err()
			want := server.ErrNotFound
			if tt.kind == server.KindConflict {
				want = server.ErrConflict
			}
			if !errors.Is(err, want) {
				t.Fatalf("err = %v, want %v", err, want)
			}
			if got := server.ErrorOf(err); got.Kind != tt.kind || got.Message == "" {
				t.Fatalf("ErrorOf(%v) = %+v, want kind %v", err, got, tt.kind)
			}
		})
	}
}

func ptr(n int) *int { return &n }
