package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/vehicleauth"
	"github.com/roadsign/roadsign/server/director"
	"github.com/roadsign/roadsign/server/repo"
	"github.com/roadsign/roadsign/server/sqlite"
)

// api calls the server with a bearer token and decodes the JSON answer.
func (w *world) api(method, path, token string, body any, out any) int {
	w.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, w.url+path, rd)
	if err != nil {
		w.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			w.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
		}
	}
	return resp.StatusCode
}

func (w *world) account(role, name string) string {
	w.t.Helper()
	var out struct{ Token string }
	body := map[string]any{"role": role, "name": name}
	switch role {
	case "owner":
		body["password"] = "correct horse battery"
	case "dealer":
		body["regions"] = []string{"NA", "EU"} // where the test vehicles are
	}
	if code := w.api("POST", "/api/v1/accounts", adminToken, body, &out); code != 201 || out.Token == "" {
		w.t.Fatalf("create %s account: %d", role, code)
	}
	return out.Token
}

type jobView struct {
	ID      string `json:"id"`
	State   string `json:"state"`
	Target  string `json:"target"`
	Origin  string `json:"origin"`
	ECUType string `json:"ecuType"`
	Version string `json:"version"`
	Events  []struct {
		Kind    string `json:"kind"`
		Percent int    `json:"percent"`
		Message string `json:"message"`
	} `json:"events"`
}

func (w *world) job(token string, body map[string]any) jobView {
	w.t.Helper()
	var j jobView
	if code := w.api("POST", "/api/v1/jobs", token, body, &j); code != 201 {
		w.t.Fatalf("create job: %d %+v", code, j)
	}
	return j
}

func (w *world) getJob(token, id string) jobView {
	w.t.Helper()
	var j jobView
	if code := w.api("GET", "/api/v1/jobs/"+id, token, nil, &j); code != 200 {
		w.t.Fatalf("get job: %d", code)
	}
	return j
}

func kinds(j jobView) string {
	var k []string
	for _, e := range j.Events {
		k = append(k, e.Kind)
	}
	return strings.Join(k, ",")
}

// TestDealerJobInstallsExactlyTheChosenImage: with --auto-assign none, a
// dealer job for one VIN installs exactly the chosen image on exactly that
// ECU; a second vehicle with the same hardware is untouched; the job ends
// succeeded with its event history.
func TestDealerJobInstallsExactlyTheChosenImage(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.setup(nil)
	dealer := w.account("dealer", "dealer-berlin")
	v1, v2 := w.vehicle(1), w.vehicle(2)

	j := w.job(dealer, map[string]any{"vin": v1.vin, "ecu": "dcm", "version": "1.1.0", "reason": "DCM authorization failures"})
	if j.State != "queued" || j.Target != "dcm/dcm-DCM-4G-24MM-1.1.0.img" {
		t.Fatalf("job: %+v", j)
	}
	before2 := activeBytes(t, v2)
	for _, v := range []vehicleState{v1, v2} {
		update(t, v.dir, 0)
	}
	if got := versions(t, v1); got["dcm"] != "1.1.0" || got["head-unit"] != "1.0.0" {
		t.Fatalf("vehicle 1: %v, want dcm 1.1.0 and head unit untouched", got)
	}
	if after2 := activeBytes(t, v2); fmt.Sprint(after2) != fmt.Sprint(before2) {
		t.Fatalf("vehicle 2 changed: %v -> %v", before2, after2)
	}
	got := w.getJob(dealer, j.ID)
	if k := kinds(got); got.State != "succeeded" || !strings.HasPrefix(k, "queued,downloading,") || !strings.HasSuffix(k, ",downloading,installing,rebooting,succeeded") {
		t.Fatalf("job %s: %s", got.State, kinds(got))
	}
	// The check-in reported the new version to the inventory.
	var veh struct {
		Vehicle struct {
			ECUs []struct{ Serial, InstalledVersion string } `json:"ecus"`
		} `json:"vehicle"`
	}
	w.api("GET", "/api/v1/vehicles/"+v1.vin, dealer, nil, &veh)
	if fmt.Sprint(veh.Vehicle.ECUs) != "[{HU000001 1.0.0} {DCM000001 1.1.0}]" {
		t.Fatalf("inventory: %+v", veh.Vehicle.ECUs)
	}
	// Every dealer action and state change is in the audit log.
	var audit struct {
		Entries []struct{ Actor, Action, Subject, Detail string } `json:"entries"`
	}
	w.api("GET", "/api/v1/audit", adminToken, nil, &audit)
	var actions []string
	for _, e := range audit.Entries {
		if e.Subject == j.ID {
			actions = append(actions, e.Actor+":"+e.Action+":"+e.Detail)
		}
	}
	want := []string{"dealer-berlin:job.create", v1.vin + ":job.state:queued -> in_progress", v1.vin + ":job.state:in_progress -> succeeded"}
	if len(actions) != 3 || !strings.HasPrefix(actions[0], want[0]) || actions[1] != want[1] || actions[2] != want[2] {
		t.Fatalf("audit of the job: %q", actions)
	}
}

func TestJobWithUnbootableImageEndsRolledBack(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.signerInit()
	for _, s := range loadSamples(t) {
		if !s.Bootable {
			w.add(s)
		}
	}
	w.publish()
	v := w.vehicle(1)
	j := w.job(adminToken, map[string]any{"vin": v.vin, "ecu": "DCM000001", "version": "latest", "reason": "test"})
	update(t, v.dir, 4)
	if got := w.getJob(adminToken, j.ID); got.State != "rolled_back" || !strings.HasSuffix(kinds(got), "rebooting,rolled_back") {
		t.Fatalf("job %s: %s", got.State, kinds(got))
	}
	if versions(t, v)["dcm"] != "1.0.0" {
		t.Fatal("DCM is not back on 1.0.0")
	}
}

func TestCanceledJobInstallsNothing(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.setup(nil)
	v := w.vehicle(1)
	j := w.job(adminToken, map[string]any{"vin": v.vin, "ecu": "dcm", "version": "2.0.0", "reason": "test"})
	var canceled jobView
	if code := w.api("POST", "/api/v1/jobs/"+j.ID+"/cancel", adminToken, nil, &canceled); code != 200 || canceled.State != "canceled" {
		t.Fatalf("cancel: %d %+v", code, canceled)
	}
	before := activeBytes(t, v)
	update(t, v.dir, 0)
	if after := activeBytes(t, v); fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatal("a canceled job installed something")
	}
	if got := w.getJob(adminToken, j.ID); got.State != "canceled" || kinds(got) != "queued,canceled" {
		t.Fatalf("job: %s %s", got.State, kinds(got))
	}
	if code := w.api("POST", "/api/v1/jobs/"+j.ID+"/cancel", adminToken, nil, nil); code != 409 {
		t.Fatalf("second cancel: %d, want 409", code)
	}
}

// forgeDirector signs director targets for v with the server's online
// director keys and stores them as current, as a compromised server could.
func (w *world) forgeDirector(v vehicleState, targets map[string]*metadata.TargetFiles, vin string) {
	w.t.Helper()
	// Let the server create the head first, then supersede it.
	if r := agent(w.t, "update", "--state", v.dir); r.code != 0 {
		w.t.Fatalf("priming update: %s", r)
	}
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(w.data, "roadsign.db"))
	if err != nil {
		w.t.Fatal(err)
	}
	defer st.Close()
	k, err := repo.LoadKeys(w.data)
	if err != nil {
		w.t.Fatal(err)
	}
	d, err := director.New(director.Config{Store: st, Keys: k, Expiry: time.Hour, Now: time.Now, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		w.t.Fatal(err)
	}
	head, err := st.DirectorHead(ctx, v.vin)
	if err != nil {
		w.t.Fatal(err)
	}
	// Longer-lived than the server's own, so it does not re-sign over it.
	next, files, err := d.Sign(vin, head, targets, head.AssignmentHash, time.Now(), 72*time.Hour)
	if err != nil {
		w.t.Fatal(err)
	}
	next.VIN = v.vin // stored under this vehicle, whatever VIN is signed inside
	for i := range files {
		files[i].VIN = v.vin
	}
	if err := st.SaveDirector(ctx, head, next, files); err != nil {
		w.t.Fatal(err)
	}
}

func directorTarget(t *testing.T, hw, version string, serials map[string]string, mutate func(*metadata.TargetFiles)) (string, *metadata.TargetFiles) {
	t.Helper()
	s := findSample(t, hw, version)
	b, err := os.ReadFile(filepath.Join(samplesDir(), s.File))
	if err != nil {
		t.Fatal(err)
	}
	tf, err := metadata.TargetFile().FromBytes(s.ECU+"/"+s.File, b, "sha256")
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]any{}
	for serial, h := range serials {
		ids[serial] = map[string]string{"hardwareId": h}
	}
	c, _ := json.Marshal(map[string]any{"ecuIdentifiers": ids, "ecuType": s.ECU, "version": s.Version, "releaseCounter": s.ReleaseCounter})
	raw := json.RawMessage(c)
	tf.Custom = &raw
	if mutate != nil {
		mutate(tf)
	}
	return tf.Path, tf
}

// TestAgentRefusesBadDirectorTargets: what a compromised director could
// sign is still refused when the image repository or the vehicle disagree.
func TestAgentRefusesBadDirectorTargets(t *testing.T) {
	tests := []struct {
		name    string
		targets func(t *testing.T) map[string]*metadata.TargetFiles
		vin     func(v vehicleState) string
		wantMsg string
	}{
		{"hash differs from the image repository", func(t *testing.T) map[string]*metadata.TargetFiles {
			p, tf := directorTarget(t, dcmHW, "1.1.0", map[string]string{"DCM000001": dcmHW}, func(tf *metadata.TargetFiles) { tf.Hashes["sha256"][0] ^= 1 })
			return map[string]*metadata.TargetFiles{p: tf}
		}, nil, "hashes differ"},
		{"head-unit image named for the DCM serial", func(t *testing.T) map[string]*metadata.TargetFiles {
			p, tf := directorTarget(t, huHW, "1.1.0", map[string]string{"DCM000001": dcmHW}, nil)
			return map[string]*metadata.TargetFiles{p: tf}
		}, nil, "but ECU DCM000001 is a dcm"},
		{"hardware ID of the ECU differs", func(t *testing.T) map[string]*metadata.TargetFiles {
			p, tf := directorTarget(t, dcmHW, "1.1.0", map[string]string{"DCM000001": "DCM-5G-25MM"}, nil)
			return map[string]*metadata.TargetFiles{p: tf}
		}, nil, "is for hardware"},
		{"extraneous ECU serial", func(t *testing.T) map[string]*metadata.TargetFiles {
			p, tf := directorTarget(t, dcmHW, "1.1.0", map[string]string{"DCM999999": dcmHW}, nil)
			return map[string]*metadata.TargetFiles{p: tf}
		}, nil, "does not have"},
		{"duplicated ECU serial", func(t *testing.T) map[string]*metadata.TargetFiles {
			p1, tf1 := directorTarget(t, dcmHW, "1.1.0", map[string]string{"DCM000001": dcmHW}, nil)
			p2, tf2 := directorTarget(t, dcmHW, "2.0.0", map[string]string{"DCM000001": dcmHW}, nil)
			return map[string]*metadata.TargetFiles{p1: tf1, p2: tf2}
		}, nil, "assigned twice"},
		{"another VIN's metadata", func(t *testing.T) map[string]*metadata.TargetFiles {
			p, tf := directorTarget(t, dcmHW, "1.1.0", map[string]string{"DCM000001": dcmHW}, nil)
			return map[string]*metadata.TargetFiles{p: tf}
		}, func(v vehicleState) string { return testVIN(99) }, "is for VIN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, "--auto-assign", "none")
			w.setup(nil)
			v := w.vehicle(1)
			vin := v.vin
			if tt.vin != nil {
				vin = tt.vin(v)
			}
			w.forgeDirector(v, tt.targets(t), vin)
			before := activeBytes(t, v)
			r := agent(t, "update", "--state", v.dir)
			t.Logf("agent said: %s", r.stderr)
			if r.code != 3 || !strings.Contains(r.stderr, tt.wantMsg) || !strings.Contains(r.stderr, "nothing installed") {
				t.Fatalf("want exit 3 mentioning %q, got %s", tt.wantMsg, r)
			}
			if after := activeBytes(t, v); fmt.Sprint(before) != fmt.Sprint(after) {
				t.Fatal("active slots changed")
			}
		})
	}
}

// TestManifestReplayIsRejected: a check-in travels in a signed request,
// so it is taken once: a replay, a rogue key and a body changed after
// signing are refused, and a manifest naming another vehicle's ECU
// records nothing.
func TestManifestReplayIsRejected(t *testing.T) {
	w := newWorld(t)
	w.setup(nil)
	v := w.vehicle(1)
	k, err := keys.Load(filepath.Join(v.dir, "vehicle.key"))
	if err != nil {
		t.Fatal(err)
	}
	manifest := func(serial string) vehicleauth.SignedManifest {
		m, _ := json.Marshal(vehicleauth.Manifest{VIN: v.vin, Nonce: "0123456789abcdef0123456789abcdef", Time: time.Now().UTC(),
			ECUs: []vehicleauth.ECUReport{{Serial: serial, Version: "1.0.0"}}})
		return vehicleauth.SignedManifest{Signed: m, Signature: ed25519.Sign(k.Private, m)}
	}
	path := "/api/v1/vehicles/" + v.vin + "/manifest"
	signed := func(key ed25519.PrivateKey, sm vehicleauth.SignedManifest) *http.Request {
		body, _ := json.Marshal(sm)
		req, _ := http.NewRequest("POST", w.url+path, bytes.NewReader(body))
		vehicleauth.Sign(req, key, v.vin, body, time.Now())
		return req
	}
	send := func(req *http.Request) (int, string) {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	sm := manifest("DCM000001")
	first := signed(k.Private, sm)
	body, _ := json.Marshal(sm)
	if code, b := send(first); code != 200 {
		t.Fatalf("first check-in: %d %s", code, b)
	}
	replay, _ := http.NewRequest("POST", w.url+path, bytes.NewReader(body))
	replay.Header = first.Header.Clone()
	if code, b := send(replay); code != 401 || !strings.Contains(b, "replayed_request") {
		t.Fatalf("replayed check-in: %d %s, want 401 replayed_request", code, b)
	}
	_, rogue, _ := ed25519.GenerateKey(nil)
	if code, b := send(signed(rogue, sm)); code != 401 {
		t.Fatalf("check-in signed by an unknown key: %d %s, want 401", code, b)
	}
	changed := signed(k.Private, sm)
	altered := append(bytes.Clone(body[:len(body)-1]), []byte(` }`)...) // same length would do too
	changed.Body, changed.ContentLength = io.NopCloser(bytes.NewReader(altered)), int64(len(altered))
	if code, b := send(changed); code != 401 || !strings.Contains(b, "body_mismatch") {
		t.Fatalf("manifest changed after signing: %d %s, want 401 body_mismatch", code, b)
	}
	if code, b := send(signed(k.Private, manifest("DCM000002"))); code != 400 || !strings.Contains(b, "unregistered_ecu") {
		t.Fatalf("another vehicle's ECU: %d %s, want 400", code, b)
	}
}

// TestJobsForOneECUQueueBehindEachOther: two jobs for the same ECU never
// deadlock: the older runs first, the other waits, then runs.
func TestJobsForOneECUQueueBehindEachOther(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.setup(nil)
	v := w.vehicle(1)
	first := w.job(adminToken, map[string]any{"vin": v.vin, "ecu": "dcm", "version": "1.1.0", "reason": "first"})
	second := w.job(adminToken, map[string]any{"vin": v.vin, "ecu": "DCM000001", "version": "2.0.0", "reason": "second"})
	update(t, v.dir, 0)
	if got := versions(t, v)["dcm"]; got != "1.1.0" || w.getJob(adminToken, first.ID).State != "succeeded" || w.getJob(adminToken, second.ID).State != "queued" {
		t.Fatalf("after the first update: dcm %s, jobs %s/%s", got, w.getJob(adminToken, first.ID).State, w.getJob(adminToken, second.ID).State)
	}
	update(t, v.dir, 0)
	if got := versions(t, v)["dcm"]; got != "2.0.0" || w.getJob(adminToken, second.ID).State != "succeeded" {
		t.Fatalf("after the second update: dcm %s, job %s", got, w.getJob(adminToken, second.ID).State)
	}
}
