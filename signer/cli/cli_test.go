package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/exitcode"
	"github.com/roadsign/roadsign/internal/testsupport"
	"github.com/roadsign/roadsign/signer/cli"
)

type result struct {
	code           int
	stdout, stderr string
}

func run(args ...string) result {
	var out, errb bytes.Buffer
	code := cli.Run(context.Background(), args, cli.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" },
		Now: func() time.Time { return time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC) }})
	return result{code, out.String(), errb.String()}
}

func (r result) String() string { return fmt.Sprintf("exit %d\n%s%s", r.code, r.stdout, r.stderr) }

func must(t *testing.T, want int, args ...string) result {
	t.Helper()
	r := run(args...)
	if r.code != want {
		t.Fatalf("roadsign-signer %s: want exit %d, got %s", strings.Join(args, " "), want, r)
	}
	return r
}

// onlineKeysFile writes an online-keys.json as roadsign-server init does.
func onlineKeysFile(t *testing.T) string {
	t.Helper()
	b, _ := json.Marshal(testsupport.OnlineKeys(t))
	p := filepath.Join(t.TempDir(), "online-keys.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func imageFile(t *testing.T, ecu, hw, version string) string {
	return testsupport.ImageFile(t, testsupport.Image{ECU: ecu, HardwareID: hw, Version: version})
}

// TestReleaseEngineerWorkflow: init, add, status, publish, rotate and
// extend through the command line, with the exit codes scripts rely on.
func TestReleaseEngineerWorkflow(t *testing.T) {
	srv := testsupport.NewPublishServer("tok")
	defer srv.Close()
	ws := filepath.Join(t.TempDir(), "ws")
	keysFile := onlineKeysFile(t)
	must(t, exitcode.OK, "init", ws, "--online-keys", keysFile, "--root-keys", "3", "--root-threshold", "2")
	must(t, exitcode.Usage, "init", ws, "--online-keys", keysFile) // not empty
	img := imageFile(t, "dcm", "DCM-A", "1.0.0")
	r := must(t, exitcode.OK, "add", ws, img, "--ecu", "dcm", "--hardware-id", "DCM-A", "--version", "1.0.0", "--release-notes", "first")
	if !strings.Contains(r.stdout, "1.0.0") {
		t.Fatalf("add said: %s", r)
	}
	must(t, exitcode.Usage, "add", ws, img, "--ecu", "dcm", "--hardware-id", "DCM-A", "--version", "one")
	must(t, exitcode.Usage, "add", ws, img, "--ecu", "dcm", "--version", "1.0.0")
	if r := must(t, exitcode.Usage, "add", ws, imageFile(t, "head-unit", "HU-A", "3.0.0"), "--ecu", "head-unit", "--hardware-id", "HU-A", "--version", "3.0.0", "--requires", "dcm"); !strings.Contains(r.stderr, "TYPE>=VERSION") {
		t.Fatalf("add --requires dcm said: %s", r)
	}
	must(t, exitcode.OK, "add", ws, imageFile(t, "head-unit", "HU-A", "3.0.0"), "--ecu", "head-unit", "--hardware-id", "HU-A", "--version", "3.0.0", "--requires", "dcm>=1.0.0")
	r = must(t, exitcode.OK, "status", ws, "--json")
	var st []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || len(st) != 8 {
		t.Fatalf("status --json: %v\n%s", err, r)
	}
	if r = must(t, exitcode.OK, "status", ws); !strings.Contains(r.stdout, "targets") {
		t.Fatalf("status: %s", r)
	}
	r = must(t, exitcode.OK, "publish", ws, "--server", srv.URL, "--token", "tok")
	if srv.Uploads() != 2 || srv.Publishes() != 1 {
		t.Fatalf("publish: %s (uploads %d, publishes %d)", r, srv.Uploads(), srv.Publishes())
	}
	must(t, exitcode.Usage, "publish", ws, "--server", srv.URL)
	must(t, exitcode.Error, "publish", ws, "--server", srv.URL, "--token", "wrong")
	srv.Refuse("bad_signature")
	must(t, exitcode.Refused, "publish", ws, "--server", srv.URL, "--token", "tok")
	srv.Refuse("")
	must(t, exitcode.OK, "rotate", ws, "--role", "root", "--repository", "director", "--root-keys", "4", "--root-threshold", "3")
	must(t, exitcode.OK, "rotate", ws, "--role", "targets")
	must(t, exitcode.Usage, "rotate", ws, "--role", "targets", "--repository", "director")
	must(t, exitcode.Usage, "rotate", ws, "--role", "snapshot")
	must(t, exitcode.OK, "extend", ws, "--role", "targets")
	must(t, exitcode.OK, "extend", ws, "--role", "root", "--repository", "image")
	must(t, exitcode.OK, "publish", ws, "--server", srv.URL, "--token", "tok")
	if srv.Uploads() != 2 {
		t.Fatalf("the image was uploaded again: %d uploads", srv.Uploads())
	}
}

// TestKeyHoldersWorkflow: keygen, a multi-party init, sign and publish
// at the threshold.
func TestKeyHoldersWorkflow(t *testing.T) {
	srv := testsupport.NewPublishServer("tok")
	defer srv.Close()
	dir := t.TempDir()
	var pubs []string
	for _, h := range []string{"alice", "bob"} {
		r := must(t, exitcode.OK, "keygen", "--out", filepath.Join(dir, h+".key"))
		if !strings.Contains(r.stdout, ".pub") && !strings.Contains(r.stdout, "ID") && r.stdout == "" {
			t.Fatalf("keygen said nothing: %s", r)
		}
		pubs = append(pubs, filepath.Join(dir, h+".key.pub"))
	}
	must(t, exitcode.Usage, "keygen")
	ws := filepath.Join(dir, "ws")
	must(t, exitcode.OK, "init", ws, "--online-keys", onlineKeysFile(t), "--root-key", pubs[0], "--root-key", pubs[1], "--root-threshold", "2",
		"--targets-key", pubs[0], "--targets-key", pubs[1], "--targets-threshold", "2")
	must(t, exitcode.OK, "add", ws, imageFile(t, "head-unit", "HU-A", "1.0.0"), "--ecu", "head-unit", "--hardware-id", "HU-A", "--version", "1.0.0")
	must(t, exitcode.Refused, "publish", ws, "--server", srv.URL, "--token", "tok")
	must(t, exitcode.OK, "sign", ws, "--key", filepath.Join(dir, "alice.key"))
	if r := must(t, exitcode.OK, "status", ws); !strings.Contains(r.stdout, "MISSING") || !strings.Contains(r.stdout, "1 of 2") {
		t.Fatalf("status names no missing signature: %s", r)
	}
	must(t, exitcode.Refused, "publish", ws, "--server", srv.URL, "--token", "tok")
	must(t, exitcode.Usage, "sign", ws)
	must(t, exitcode.OK, "sign", ws, "--key", filepath.Join(dir, "bob.key"))
	must(t, exitcode.OK, "publish", ws, "--server", srv.URL, "--token", "tok")
	if srv.Publishes() != 1 {
		t.Fatalf("%d publishes", srv.Publishes())
	}
}

func TestUsageAndHelp(t *testing.T) {
	tests := []struct {
		args []string
		code int
		says string
	}{
		{nil, exitcode.Usage, "usage"},
		{[]string{"--help"}, exitcode.OK, "commands"},
		{[]string{"--version"}, exitcode.OK, "roadsign-signer"},
		{[]string{"fly"}, exitcode.Usage, "fly"},
		{[]string{"init", t.TempDir()}, exitcode.Usage, "--online-keys"},
		{[]string{"init", t.TempDir(), "--online-keys", "/nonexistent/keys.json"}, exitcode.Usage, "--online-keys"},
		{[]string{"status", t.TempDir()}, exitcode.Usage, "not a signing workspace"},
		{[]string{"add", t.TempDir()}, exitcode.Usage, ""},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := run(tt.args...)
			if r.code != tt.code || !strings.Contains(r.stdout+r.stderr, tt.says) {
				t.Fatalf("want exit %d saying %q, got %s", tt.code, tt.says, r)
			}
		})
	}
}
