package signer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/testsupport"
	"github.com/roadsign/roadsign/internal/timeattest"
	"github.com/roadsign/roadsign/signer"
)

var clock = func() time.Time { return time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC) }

func imageFile(t *testing.T, ecu, hw, version string) string {
	return testsupport.ImageFile(t, testsupport.Image{ECU: ecu, HardwareID: hw, Version: version})
}

func initWorkspace(t *testing.T, o signer.InitOptions) *signer.Workspace {
	t.Helper()
	if o.RootExpiry == 0 {
		o.RootExpiry, o.TargetsExpiry = 365*24*time.Hour, 90*24*time.Hour
	}
	o.OnlineKeys = testsupport.OnlineKeys(t)
	w, err := signer.Init(filepath.Join(t.TempDir(), "ws"), o, clock)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func TestInitRefusesBadThresholds(t *testing.T) {
	holder := func() *metadata.Key {
		k, err := keys.Generate(filepath.Join(t.TempDir(), "h"))
		if err != nil {
			t.Fatal(err)
		}
		return k.Public
	}
	tests := []struct {
		name string
		o    signer.InitOptions
	}{
		{"no root keys", signer.InitOptions{RootKeys: 0, RootThreshold: 1}},
		{"threshold above the keys", signer.InitOptions{RootKeys: 2, RootThreshold: 3}},
		{"threshold zero", signer.InitOptions{RootKeys: 2, RootThreshold: 0}},
		{"holders without targets holders", signer.InitOptions{RootHolders: []*metadata.Key{holder()}, RootThreshold: 1}},
		{"targets threshold above its holders", signer.InitOptions{RootHolders: []*metadata.Key{holder()}, RootThreshold: 1,
			TargetsHolders: []*metadata.Key{holder()}, TargetsThreshold: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.OnlineKeys = testsupport.OnlineKeys(t)
			if _, err := signer.Init(filepath.Join(t.TempDir(), "ws"), tt.o, clock); !errors.Is(err, signer.ErrUsage) {
				t.Fatalf("Init: %v, want a usage error", err)
			}
		})
	}
	t.Run("missing online key", func(t *testing.T) {
		o := signer.InitOptions{RootKeys: 1, RootThreshold: 1, OnlineKeys: testsupport.OnlineKeys(t)}
		o.OnlineKeys.Director.Timestamp = nil
		if _, err := signer.Init(filepath.Join(t.TempDir(), "ws"), o, clock); !errors.Is(err, signer.ErrUsage) || !strings.Contains(err.Error(), "director.timestamp") {
			t.Fatalf("Init: %v", err)
		}
	})
	t.Run("a workspace that is not empty", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "x"), nil, 0o600)
		if _, err := signer.Init(dir, signer.InitOptions{RootKeys: 1, RootThreshold: 1, OnlineKeys: testsupport.OnlineKeys(t)}, clock); !errors.Is(err, signer.ErrUsage) {
			t.Fatalf("Init: %v", err)
		}
	})
	if _, err := signer.Open(t.TempDir(), clock); !errors.Is(err, signer.ErrUsage) {
		t.Fatalf("Open an empty folder: %v", err)
	}
}

// TestAddStagesTargets: each add signs a new targets version with the
// image's custom metadata; the release counter rises by itself; the
// image's header must agree with what is claimed.
func TestAddStagesTargets(t *testing.T) {
	w := initWorkspace(t, signer.InitOptions{RootKeys: 3, RootThreshold: 2})
	hu1 := imageFile(t, "head-unit", "HU-A", "1.0.0")
	res, err := w.Add(signer.AddOptions{File: hu1, ECU: "head-unit", HardwareIDs: []string{"HU-A"}, Version: "1.0.0", ReleaseNotes: "first"})
	if err != nil {
		t.Fatal(err)
	}
	if res.TargetsVersion != 2 || res.ReleaseCounter != 1 || !res.Changed || res.Length != 4096 {
		t.Fatalf("first add: %+v", res)
	}
	again, err := w.Add(signer.AddOptions{File: hu1, ECU: "head-unit", HardwareIDs: []string{"HU-A"}, Version: "1.0.0", ReleaseNotes: "first"})
	if err != nil || again.Changed || again.TargetsVersion != 2 {
		t.Fatalf("the same add again: %+v %v (want nothing changed)", again, err)
	}
	hu2 := imageFile(t, "head-unit", "HU-A", "2.0.0")
	res, err = w.Add(signer.AddOptions{File: hu2, ECU: "head-unit", HardwareIDs: []string{"HU-A"}, Version: "2.0.0"})
	if err != nil || res.ReleaseCounter != 2 || res.TargetsVersion != 3 {
		t.Fatalf("second image: %+v %v", res, err)
	}
	tm, _, err := w.Targets()
	if err != nil {
		t.Fatal(err)
	}
	c, err := meta.TargetCustom(tm.Signed.Targets[res.Path])
	if err != nil || c.ECU != "head-unit" || c.Version != "2.0.0" || c.ReleaseCounter != 2 || !c.Supports("head-unit", "HU-A") {
		t.Fatalf("custom of %s: %+v %v", res.Path, c, err)
	}

	hu3 := imageFile(t, "head-unit", "HU-A", "3.0.0")
	res, err = w.Add(signer.AddOptions{File: hu3, ECU: "head-unit", HardwareIDs: []string{"HU-A"}, Version: "3.0.0", Requires: []string{"dcm>=2.1.0"}})
	if err != nil {
		t.Fatal(err)
	}
	tm, _, _ = w.Targets()
	if c, err := meta.TargetCustom(tm.Signed.Targets[res.Path]); err != nil || len(c.Requires) != 1 || c.Requires[0] != (meta.Requirement{ECU: "dcm", MinVersion: "2.1.0"}) {
		t.Fatalf("custom of %s: %+v %v (want requires dcm>=2.1.0)", res.Path, c, err)
	}

	dcm := imageFile(t, "dcm", "DCM-A", "1.0.0")
	refusals := []struct {
		name string
		o    signer.AddOptions
	}{
		{"unknown ECU", signer.AddOptions{File: dcm, ECU: "radio", HardwareIDs: []string{"DCM-A"}, Version: "1.0.0"}},
		{"no hardware ID", signer.AddOptions{File: dcm, ECU: "dcm", Version: "1.0.0"}},
		{"not a version", signer.AddOptions{File: dcm, ECU: "dcm", HardwareIDs: []string{"DCM-A"}, Version: "one"}},
		{"header of another ECU", signer.AddOptions{File: dcm, ECU: "head-unit", HardwareIDs: []string{"HU-A"}, Version: "1.0.0"}},
		{"header of another hardware", signer.AddOptions{File: dcm, ECU: "dcm", HardwareIDs: []string{"DCM-B"}, Version: "1.0.0"}},
		{"header of another version", signer.AddOptions{File: dcm, ECU: "dcm", HardwareIDs: []string{"DCM-A"}, Version: "1.0.1"}},
		{"no such file", signer.AddOptions{File: dcm + ".missing", ECU: "dcm", HardwareIDs: []string{"DCM-A"}, Version: "1.0.0"}},
		{"requirement not TYPE>=VERSION", signer.AddOptions{File: dcm, ECU: "dcm", HardwareIDs: []string{"DCM-A"}, Version: "1.0.0", Requires: []string{"head-unit=3.0.0"}}},
		{"requirement on its own ECU type", signer.AddOptions{File: dcm, ECU: "dcm", HardwareIDs: []string{"DCM-A"}, Version: "1.0.0", Requires: []string{"dcm>=1.0.0"}}},
		{"requirement twice", signer.AddOptions{File: dcm, ECU: "dcm", HardwareIDs: []string{"DCM-A"}, Version: "1.0.0", Requires: []string{"head-unit>=1.0.0", "head-unit>=2.0.0"}}},
	}
	for _, r := range refusals {
		t.Run(r.name, func(t *testing.T) {
			if _, err := w.Add(r.o); err == nil {
				t.Fatal("added")
			}
			if tm, _, _ := w.Targets(); tm.Signed.Version != 4 {
				t.Fatalf("a refused add changed targets to v%d", tm.Signed.Version)
			}
		})
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestPublishUploadsOnce(t *testing.T) {
	rs := testsupport.NewPublishServer("tok")
	defer rs.Close()
	srv := rs
	w := initWorkspace(t, signer.InitOptions{RootKeys: 1, RootThreshold: 1})
	for _, v := range []string{"1.0.0", "2.0.0"} {
		if _, err := w.Add(signer.AddOptions{File: imageFile(t, "dcm", "DCM-A", v), ECU: "dcm", HardwareIDs: []string{"DCM-A"}, Version: v}); err != nil {
			t.Fatal(err)
		}
	}
	var progress bytes.Buffer
	res, err := w.Publish(context.Background(), signer.PublishOptions{Server: srv.URL, Token: "tok", Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	if res.Uploaded != 2 || res.UploadedBytes != 8192 || res.Targets != 3 || rs.Publishes() != 1 {
		t.Fatalf("first publish: %+v, server saw %d publishes", res, rs.Publishes())
	}
	res, err = w.Publish(context.Background(), signer.PublishOptions{Server: srv.URL + "/", Token: "tok"})
	if err != nil || res.Uploaded != 0 || res.AlreadyThere != 2 || rs.Uploads() != 2 {
		t.Fatalf("second publish: %+v %v (%d uploads in all)", res, err, rs.Uploads())
	}

	tests := []struct {
		name     string
		o        signer.PublishOptions
		refuse   string
		security bool
		says     string
	}{
		{"no token", signer.PublishOptions{Server: srv.URL}, "", false, "--token"},
		{"wrong token", signer.PublishOptions{Server: srv.URL, Token: "nope"}, "", false, "unknown bearer token"},
		{"a signature the server refuses", signer.PublishOptions{Server: srv.URL, Token: "tok"}, "bad_signature", true, "bad_signature"},
		{"expired metadata", signer.PublishOptions{Server: srv.URL, Token: "tok"}, "expired", true, "expired"},
		{"another refusal", signer.PublishOptions{Server: srv.URL, Token: "tok"}, "invalid", false, "refused by the test"},
		{"no server there", signer.PublishOptions{Server: "http://127.0.0.1:1", Token: "tok"}, "", false, "127.0.0.1:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs.Refuse(tt.refuse)
			_, err := w.Publish(context.Background(), tt.o)
			if err == nil || errors.Is(err, signer.ErrSecurity) != tt.security || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("publish: %v, want an error saying %q (security %v)", err, tt.says, tt.security)
			}
		})
	}
}

// TestRotateAndExtend: a rotated root is signed by the old root's
// threshold and the new one's, so vehicles follow the chain; a rotated
// targets key signs the next targets; extend re-signs with a new expiry.
func TestRotateAndExtend(t *testing.T) {
	w := initWorkspace(t, signer.InitOptions{RootKeys: 3, RootThreshold: 2})
	v, err := w.RotateRoot(signer.Image, 5, 3, nil)
	if err != nil || v != 2 {
		t.Fatalf("rotate root: v%d %v", v, err)
	}
	chain, err := w.RootChain(signer.Image)
	if err != nil || len(chain) != 2 {
		t.Fatalf("root chain: %d %v", len(chain), err)
	}
	r1, _ := (&metadata.Metadata[metadata.RootType]{}).FromBytes(chain[0])
	r2, _ := (&metadata.Metadata[metadata.RootType]{}).FromBytes(chain[1])
	if err := meta.VerifyNextRoot(r1, r2); err != nil {
		t.Fatalf("root v2 does not follow v1: %v", err)
	}
	if ids, th := meta.RoleKeyIDs(&r2.Signed, metadata.ROOT); len(ids) != 5 || th != 3 {
		t.Fatalf("root v2: %d keys, threshold %d", len(ids), th)
	}
	if _, err := w.RotateRoot(signer.Image, 2, 3, nil); !errors.Is(err, signer.ErrUsage) {
		t.Fatalf("threshold above keys: %v", err)
	}
	rootV, targetsV, err := w.RotateTargets(1, nil)
	if err != nil || rootV != 3 || targetsV != 2 {
		t.Fatalf("rotate targets: root v%d targets v%d %v", rootV, targetsV, err)
	}
	tm, _, err := w.Targets()
	if err != nil {
		t.Fatal(err)
	}
	root, err := w.CurrentRoot(signer.Image)
	if err != nil {
		t.Fatal(err)
	}
	if err := root.VerifyDelegate(metadata.TARGETS, tm); err != nil {
		t.Fatalf("targets after rotation do not verify: %v", err)
	}
	before := tm.Signed.Expires
	if v, err := w.Extend(metadata.TARGETS, signer.Image); err != nil || v != 3 {
		t.Fatalf("extend targets: v%d %v", v, err)
	}
	if v, err := w.Extend(metadata.ROOT, signer.Director); err != nil || v != 2 {
		t.Fatalf("extend director root: v%d %v", v, err)
	}
	if tm, _, _ := w.Targets(); !tm.Signed.Expires.After(before) && !tm.Signed.Expires.Equal(before) {
		t.Fatalf("extended targets expire %v, before %v", tm.Signed.Expires, before)
	}
	st, err := w.Status()
	if err != nil || len(st) != 8 {
		t.Fatalf("status: %d roles %v", len(st), err)
	}
	if st[0].Repository != signer.Image || st[0].Role != metadata.ROOT || st[0].Version != 3 || st[0].Threshold != 3 || st[0].Online {
		t.Fatalf("image root status: %+v", st[0])
	}
}

// TestMultiPartyThresholds: with key holders, every change is staged;
// publish refuses below a threshold and goes through once enough holders
// signed; a holder signs once however often they run sign.
func TestMultiPartyThresholds(t *testing.T) {
	dir := t.TempDir()
	var holders []*keys.Key
	var pubs []*metadata.Key
	for i := range 3 {
		k, err := signer.GenerateKey(filepath.Join(dir, "holder"+itoa(int64(i))+".key"), filepath.Join(dir, "holder"+itoa(int64(i))+".pub"))
		if err != nil {
			t.Fatal(err)
		}
		holders, pubs = append(holders, k), append(pubs, k.Public)
	}
	loaded, err := signer.LoadPublicKeys([]string{filepath.Join(dir, "holder0.pub")})
	if err != nil || meta.KeyID(loaded[0]) != holders[0].ID {
		t.Fatalf("load public key: %v", err)
	}
	w := initWorkspace(t, signer.InitOptions{RootHolders: pubs, RootThreshold: 2, TargetsHolders: pubs[:2], TargetsThreshold: 2})
	if !w.MultiParty() {
		t.Fatal("not multi-party")
	}
	if _, err := w.Add(signer.AddOptions{File: imageFile(t, "dcm", "DCM-A", "1.0.0"), ECU: "dcm", HardwareIDs: []string{"DCM-A"}, Version: "1.0.0"}); err != nil {
		t.Fatal(err)
	}
	rs := testsupport.NewPublishServer("tok")
	defer rs.Close()
	srv := rs
	publish := func() error {
		_, err := w.Publish(context.Background(), signer.PublishOptions{Server: srv.URL, Token: "tok"})
		return err
	}
	if err := publish(); !errors.Is(err, signer.ErrSecurity) || !strings.Contains(err.Error(), "below threshold") {
		t.Fatalf("publish with no signature: %v", err)
	}
	for range 2 { // the same holder twice is one signature
		if _, err := w.Sign(holders[0]); err != nil {
			t.Fatal(err)
		}
	}
	staged, err := w.StagedStatus()
	if err != nil || len(staged) == 0 {
		t.Fatalf("staged: %v %v", staged, err)
	}
	for _, s := range staged {
		if s.Complete() {
			t.Fatalf("%s complete with one holder's signature: %+v", s.File, s.Requirements)
		}
	}
	if err := publish(); !errors.Is(err, signer.ErrSecurity) {
		t.Fatalf("publish with one of two: %v", err)
	}
	if _, err := w.Sign(holders[2]); err != nil { // a root holder, not a targets holder
		t.Fatal(err)
	}
	if err := publish(); !errors.Is(err, signer.ErrSecurity) || !strings.Contains(err.Error(), "targets") {
		t.Fatalf("publish with the roots signed but one targets signature: %v", err)
	}
	if _, err := w.Sign(holders[1]); err != nil {
		t.Fatal(err)
	}
	if err := publish(); err != nil {
		t.Fatalf("publish at threshold: %v", err)
	}
	if rs.Publishes() != 1 {
		t.Fatalf("the server saw %d publishes", rs.Publishes())
	}
	if staged, _ := w.StagedStatus(); len(staged) != 0 {
		t.Fatalf("still staged after publish: %+v", staged)
	}
	if got := signer.ShortIDs([]string{holders[0].ID}); len(got) != 12 || signer.ShortIDs(nil) != "-" {
		t.Fatalf("ShortIDs: %q", got)
	}
}

// TestAdoptTimeKey: a workspace made before its server had a time key
// takes it in with the server's online-keys.json again, and the next
// director root lists it under the role "time" (vehicles then trust the
// server's time attestations), chained to the previous root.
func TestAdoptTimeKey(t *testing.T) {
	w := initWorkspace(t, signer.InitOptions{RootKeys: 1, RootThreshold: 1})
	chain, err := w.RootChain(signer.Director)
	if err != nil {
		t.Fatal(err)
	}
	r1, _ := (&metadata.Metadata[metadata.RootType]{}).FromBytes(chain[len(chain)-1])
	if _, ok := r1.Signed.Roles[timeattest.Role]; ok {
		t.Fatal("a workspace without a time key lists one")
	}
	ok := w.State.OnlineKeys
	k, err := keys.Generate(filepath.Join(t.TempDir(), "time.key"))
	if err != nil {
		t.Fatal(err)
	}
	ok.Director.Time = k.Public
	if err := w.AdoptOnlineKeys(ok); err != nil {
		t.Fatal(err)
	}
	if _, err := w.RotateRoot(signer.Director, 0, 0, nil); err != nil {
		t.Fatal(err)
	}
	chain, _ = w.RootChain(signer.Director)
	r2, _ := (&metadata.Metadata[metadata.RootType]{}).FromBytes(chain[len(chain)-1])
	if err := meta.VerifyNextRoot(r1, r2); err != nil {
		t.Fatalf("the new director root does not follow the old: %v", err)
	}
	if ids, th := meta.RoleKeyIDs(&r2.Signed, timeattest.Role); len(ids) != 1 || ids[0] != k.ID || th != 1 {
		t.Fatalf("director root v%d time role: %v threshold %d, want %s", r2.Signed.Version, ids, th, k.ID)
	}
	broken := ok
	broken.Director.Targets = nil
	if err := w.AdoptOnlineKeys(broken); !errors.Is(err, signer.ErrUsage) {
		t.Fatalf("incomplete online keys: %v", err)
	}
}
