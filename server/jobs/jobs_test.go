package jobs_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/jobs"
	"github.com/roadsign/roadsign/server/sqlite"
)

type images map[string]*metadata.TargetFiles

func (i images) CurrentTargets(context.Context) (map[string]*metadata.TargetFiles, int64, error) {
	return i, 1, nil
}

func image(version string, counter int64, allowDowngrade bool) *metadata.TargetFiles {
	b, _ := json.Marshal(meta.Custom{ECU: "dcm", HardwareIDs: []string{"DCM-4G"}, Version: version, ReleaseCounter: counter, AllowDowngrade: allowDowngrade})
	raw := json.RawMessage(b)
	return &metadata.TargetFiles{Length: 10, Hashes: metadata.Hashes{"sha256": make([]byte, 32)}, Custom: &raw}
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func setup(t *testing.T) (*jobs.Service, server.Store, *clock) {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	v := server.Vehicle{VIN: "VIN1", Model: "m", Year: 2024, Region: "EU", PublicKey: []byte{1},
		ECUs: []server.ECU{{Serial: "DCM1", Type: "dcm", HardwareID: "DCM-4G", InstalledTarget: ""}}}
	if err := st.CreateVehicle(context.Background(), v); err != nil {
		t.Fatal(err)
	}
	st.ReportECUs(context.Background(), "VIN1", []server.ECU{{Serial: "DCM1", InstalledTarget: "dcm/2.img", InstalledVersion: "2.0.0"}}, server.Health{}, time.Now())
	imgs := images{"dcm/1.img": image("1.0.0", 1, false), "dcm/1b.img": image("1.0.1", 2, true), "dcm/2.img": image("2.0.0", 3, false), "dcm/3.img": image("3.0.0", 4, false)}
	c := &clock{t: time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)}
	svc, err := jobs.New(jobs.Config{Store: st, Images: imgs, MaxAttempts: 3, RetryBase: time.Minute, Timeout: time.Hour, Now: c.now, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return svc, st, c
}

var dealer = server.Principal{ID: "d", Name: "dealer-1", Roles: server.Roles{server.RoleDealer}, Regions: []string{"EU"}}

func create(t *testing.T, svc *jobs.Service, version string, forced bool) server.Job {
	t.Helper()
	j, err := svc.Create(context.Background(), dealer, jobs.CreateRequest{VIN: "VIN1", ECU: "dcm", Version: version, Forced: forced, Reason: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// imageSHA is the sha256 every test image is listed with.
var imageSHA = strings.Repeat("00", 32)

func event(t *testing.T, svc *jobs.Service, id, kind string) (server.Job, error) {
	t.Helper()
	r := jobs.EventRequest{Kind: kind}
	if kind == server.JobSucceeded {
		r.SHA256 = imageSHA
	}
	return svc.Event(context.Background(), "VIN1", id, r)
}

// TestEventsFollowTheStateMachine: a vehicle's reports are held to the
// job's state machine and to size limits.
func TestEventsFollowTheStateMachine(t *testing.T) {
	svc, _, _ := setup(t)
	ctx := context.Background()
	tests := []struct {
		name   string
		before []string
		req    jobs.EventRequest
		want   string // error text; "" for accepted
	}{
		{"succeeded without the image's hash", nil, jobs.EventRequest{Kind: "succeeded"}, "must name the job's image"},
		{"succeeded with another image's hash", nil, jobs.EventRequest{Kind: "succeeded", SHA256: strings.Repeat("ab", 32)}, "must name the job's image"},
		{"succeeded naming the image (already installed)", nil, jobs.EventRequest{Kind: "succeeded", SHA256: imageSHA}, ""},
		{"rolled back without a switch", []string{"downloading"}, jobs.EventRequest{Kind: "rolled_back"}, "cannot have rolled back"},
		{"rolled back after the switch", []string{"downloading", "installing", "rebooting"}, jobs.EventRequest{Kind: "rolled_back"}, ""},
		{"back from rebooting to downloading", []string{"installing", "rebooting"}, jobs.EventRequest{Kind: "downloading"}, "cannot go back"},
		{"a 2 KiB message", nil, jobs.EventRequest{Kind: "downloading", Message: strings.Repeat("x", 2048)}, "at most 1024"},
		{"percent over 100", nil, jobs.EventRequest{Kind: "downloading", Percent: 250}, "want 0 to 100"},
		{"an unknown kind", nil, jobs.EventRequest{Kind: "hacked"}, "want downloading"},
		{"failed from queued", nil, jobs.EventRequest{Kind: "failed"}, ""},
		// A vehicle whose answer was lost repeats its outcome: it lands once.
		{"succeeded again (a retry)", []string{"downloading", "succeeded"}, jobs.EventRequest{Kind: "succeeded", SHA256: imageSHA}, ""},
		{"succeeded again with another hash", []string{"downloading", "succeeded"}, jobs.EventRequest{Kind: "succeeded", SHA256: strings.Repeat("ab", 32)}, "must name the job's image"},
		{"failed after succeeded", []string{"downloading", "succeeded"}, jobs.EventRequest{Kind: "failed"}, "already succeeded"},
		{"rolled back again (a retry)", []string{"installing", "rolled_back"}, jobs.EventRequest{Kind: "rolled_back"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := create(t, svc, "3.0.0", false)
			for _, k := range tt.before {
				if _, err := event(t, svc, j.ID, k); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := svc.Get(ctx, j.ID)
			_, err := svc.Event(ctx, "VIN1", j.ID, tt.req)
			if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if after, _ := svc.Get(ctx, j.ID); server.JobTerminal(before.State) && len(after.Events) != len(before.Events) {
				t.Fatalf("a repeated outcome was recorded: %d events, before %d", len(after.Events), len(before.Events))
			}
		})
	}
	j := create(t, svc, "3.0.0", false)
	for i := 0; ; i++ {
		_, err := event(t, svc, j.ID, "downloading")
		if err != nil {
			if !strings.Contains(err.Error(), "the most it keeps") || i < 400 {
				t.Fatalf("after %d events: %v", i, err)
			}
			break
		}
	}
}

func TestCreateValidation(t *testing.T) {
	svc, _, _ := setup(t)
	tests := []struct {
		req  jobs.CreateRequest
		want string
	}{
		{jobs.CreateRequest{VIN: "VIN9", ECU: "dcm", Version: "latest", Reason: "x"}, "no vehicle"},
		{jobs.CreateRequest{VIN: "VIN1", ECU: "head-unit", Version: "latest", Reason: "x"}, "no ECU of that type"},
		{jobs.CreateRequest{VIN: "VIN1", ECU: "dcm", Version: "9.9.9", Reason: "x"}, "no image version 9.9.9"},
		{jobs.CreateRequest{VIN: "VIN1", ECU: "dcm", Version: "latest"}, "reason is required"},
		{jobs.CreateRequest{VIN: "VIN1", ECU: "dcm", Version: "1.0.0", Reason: "x"}, "set forced to downgrade"},
		{jobs.CreateRequest{VIN: "VIN1", ECU: "dcm", Version: "1.0.0", Forced: true, Reason: "x"}, "does not permit downgrades"},
	}
	for _, tt := range tests {
		_, err := svc.Create(context.Background(), dealer, tt.req)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: err = %v, want %q", tt.req, err, tt.want)
		}
	}
	if j := create(t, svc, "1.0.1", true); j.TargetPath != "dcm/1b.img" {
		t.Fatalf("forced downgrade to an image that permits it: %+v", j)
	}
	if j := create(t, svc, "latest", false); j.TargetPath != "dcm/3.img" {
		t.Fatalf("latest: %+v", j)
	}
}

func TestJobLifecycle(t *testing.T) {
	svc, _, _ := setup(t)
	j := create(t, svc, "3.0.0", false)
	for _, k := range []string{"downloading", "installing", "rebooting", "succeeded"} {
		if _, err := event(t, svc, j.ID, k); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
	}
	got, _ := svc.Get(context.Background(), j.ID)
	if got.State != server.JobSucceeded || len(got.Events) != 5 {
		t.Fatalf("job: %s with %d events", got.State, len(got.Events))
	}
	if _, err := event(t, svc, j.ID, "downloading"); err == nil {
		t.Fatal("an event after success was accepted")
	}
	if _, err := svc.Event(context.Background(), "VIN2", j.ID, jobs.EventRequest{Kind: "downloading"}); err == nil {
		t.Fatal("another vehicle reported on the job")
	}
}

func TestFailedJobsRetryBoundedThenFail(t *testing.T) {
	svc, _, c := setup(t)
	j := create(t, svc, "3.0.0", false)
	for attempt := 1; attempt <= 3; attempt++ {
		event(t, svc, j.ID, "downloading")
		got, err := event(t, svc, j.ID, "failed")
		if err != nil {
			t.Fatal(err)
		}
		if attempt < 3 {
			if got.State != server.JobQueued || !got.NextAttemptAt.Equal(c.t.Add(time.Minute<<(attempt-1))) {
				t.Fatalf("attempt %d: %s next %s", attempt, got.State, got.NextAttemptAt)
			}
		} else if got.State != server.JobFailed {
			t.Fatalf("after %d failures: %s, want failed", attempt, got.State)
		}
	}
}

func TestCancelSemantics(t *testing.T) {
	svc, _, _ := setup(t)
	ctx := context.Background()

	// Before or during the download: canceled, and the vehicle is told.
	j := create(t, svc, "3.0.0", false)
	event(t, svc, j.ID, "downloading")
	got, err := svc.Cancel(ctx, dealer, j.ID)
	if err != nil || got.State != server.JobCanceled {
		t.Fatalf("cancel while downloading: %s %v", got.State, err)
	}
	var e *server.Error
	if _, err := event(t, svc, j.ID, "downloading"); !errors.As(err, &e) || e.Code != "job_canceled" {
		t.Fatalf("event after cancel: %v, want job_canceled", err)
	}

	// While flashing: the install finishes (or rolls back) and the job says so.
	for _, end := range []string{server.JobSucceeded, server.JobRolledBack} {
		j := create(t, svc, "3.0.0", false)
		event(t, svc, j.ID, "installing")
		got, err := svc.Cancel(ctx, dealer, j.ID)
		if err != nil || got.State != server.JobInProgress || !got.CancelRequested {
			t.Fatalf("cancel while flashing: %+v %v", got, err)
		}
		got, err = event(t, svc, j.ID, end)
		if err != nil || got.State != end {
			t.Fatalf("end after cancel request: %s %v", got.State, err)
		}
		got, _ = svc.Get(ctx, j.ID)
		if last := got.Events[len(got.Events)-1].Message; !strings.Contains(last, "cancel was requested while flashing") {
			t.Fatalf("last event should say what became of the cancel: %q", last)
		}
	}
}

func TestSweepTimesOutSilentJobs(t *testing.T) {
	svc, _, c := setup(t)
	quiet := create(t, svc, "3.0.0", false)
	c.t = c.t.Add(50 * time.Minute)
	active := create(t, svc, "3.0.0", false)
	event(t, svc, active.ID, "downloading")
	c.t = c.t.Add(20 * time.Minute) // quiet: 70 min, active: 20 min
	n, err := svc.Sweep(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("sweep: %d %v", n, err)
	}
	if got, _ := svc.Get(context.Background(), quiet.ID); got.State != server.JobTimedOut {
		t.Fatalf("quiet job: %s", got.State)
	}
	if got, _ := svc.Get(context.Background(), active.ID); got.State != server.JobInProgress {
		t.Fatalf("active job: %s", got.State)
	}
}
