package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestSignerRefusals(t *testing.T) {
	w := newWorld(t)
	w.signerInit()
	dcm := findSample(t, dcmHW, "1.1.0")
	img := filepath.Join(samplesDir(), dcm.File)
	tests := []struct {
		name     string
		args     []string
		prepare  func()
		wantCode int
		wantMsg  string
	}{
		{"init into a used workspace", []string{"init", w.ws, "--online-keys", filepath.Join(w.data, "online-keys.json")}, nil, 2, "not empty"},
		{"init without online keys", []string{"init", filepath.Join(w.dir, "ws2")}, nil, 2, "--online-keys"},
		{"threshold above key count", []string{"init", filepath.Join(w.dir, "ws3"), "--online-keys", filepath.Join(w.data, "online-keys.json"), "--root-keys", "2", "--root-threshold", "3"}, nil, 2, "threshold"},
		{"wrong hardware for the image", []string{"add", w.ws, img, "--ecu", "dcm", "--hardware-id", "DCM-5G-25MM", "--version", "1.1.0"}, nil, 2, "hardware"},
		{"wrong ECU type for the image", []string{"add", w.ws, img, "--ecu", "head-unit", "--hardware-id", dcmHW, "--version", "1.1.0"}, nil, 2, "ECU type"},
		{"wrong version for the image", []string{"add", w.ws, img, "--ecu", "dcm", "--hardware-id", dcmHW, "--version", "1.2.0"}, nil, 2, "version"},
		{"not a semantic version", []string{"add", w.ws, img, "--ecu", "dcm", "--hardware-id", dcmHW, "--version", "v1"}, nil, 2, "semantic"},
		{"missing file", []string{"add", w.ws, "/nonexistent.img", "--ecu", "dcm", "--hardware-id", dcmHW, "--version", "1.1.0"}, nil, 2, "no such file"},
		{"not a workspace", []string{"status", w.dir}, nil, 2, "not a signing workspace"},
		{"unknown command", []string{"sigh"}, nil, 2, "unknown command"},
		{"sign without a key", []string{"sign", w.ws}, nil, 2, "--key"},
		{"sign with nothing staged", []string{"sign", w.ws, "--key", filepath.Join(w.ws, "keys", "image-root-1.key")}, nil, 2, "nothing is staged"},
		{"keygen over an existing key", []string{"keygen", "--out", filepath.Join(w.ws, "keys", "image-root-1.key")}, nil, 2, "already exists"},
		{"multi-party without targets keys", []string{"init", filepath.Join(w.dir, "ws4"), "--online-keys", filepath.Join(w.data, "online-keys.json"), "--root-key", filepath.Join(w.ws, "image.root.json")}, nil, 2, "public key"},
		{"key readable by others", []string{"add", w.ws, img, "--ecu", "dcm", "--hardware-id", dcmHW, "--version", "1.1.0"}, func() {
			if err := os.Chmod(filepath.Join(w.ws, "keys", "image-targets-1.key"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, 3, "chmod 600"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.prepare != nil {
				tt.prepare()
			}
			r := w.signer(tt.args...)
			if r.code != tt.wantCode || !strings.Contains(r.stderr, tt.wantMsg) {
				t.Fatalf("want exit %d mentioning %q, got %s", tt.wantCode, tt.wantMsg, r)
			}
			if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n > 0 {
				t.Errorf("error should be one line, got %d:\n%s", n+1, r.stderr)
			}
		})
	}
	if st, err := os.Stat(filepath.Join(w.ws, "keys", "image-root-1.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key files must be 0600: %v %v", st.Mode(), err)
	}
}

// TestKeyRotation rotates the root and targets keys and checks that a
// vehicle provisioned with root v1 follows the chain and keeps updating,
// and that the new chain is published idempotently.
func TestKeyRotation(t *testing.T) {
	w := newWorld(t)
	w.signerInit()
	w.add(findSample(t, huHW, "1.1.0"))
	w.add(findSample(t, dcmHW, "1.1.0"))
	w.publish()
	v := w.vehicle(1) // pinned to root v1
	update(t, v.dir, 0)

	w.mustSigner("rotate", w.ws, "--role", "root", "--root-keys", "4", "--root-threshold", "3")
	w.mustSigner("rotate", w.ws, "--role", "targets")
	w.mustSigner("rotate", w.ws, "--role", "root", "--repository", "director")
	w.mustSigner("extend", w.ws, "--role", "root", "--repository", "director") // director root v3, same keys
	w.mustSigner("extend", w.ws, "--role", "targets")
	w.add(findSample(t, huHW, "2.0.0"))
	w.add(findSample(t, dcmHW, "2.0.0"))
	r := w.publish()
	if !strings.Contains(r.stdout, "root v3") {
		t.Fatalf("publish after two rotations should be at root v3: %s", r)
	}
	st := w.mustSigner("status", w.ws)
	if !strings.Contains(st.stdout, "image       root") || !strings.Contains(st.stdout, "3          offline") {
		t.Errorf("status does not show the rotated 3-of-4 root:\n%s", st.stdout)
	}
	if entries, _ := os.ReadDir(filepath.Join(w.ws, "keys", "retired")); len(entries) != 7 {
		t.Errorf("want 3+1+3 retired keys, got %d", len(entries))
	}

	update(t, v.dir, 0)
	if got := versions(t, v); got["head-unit"] != "2.0.0" || got["dcm"] != "2.0.0" {
		t.Fatalf("after rotation: %v", got)
	}
	if r := w.publish(); !strings.Contains(r.stdout, "nothing changed") {
		t.Fatalf("republish: %s", r)
	}
}

// TestAgentBinaryLinksNoServerCode keeps the agent small: it runs on an
// ECU and must not link gin, SQL drivers or server packages.
func TestAgentBinaryLinksNoServerCode(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "../../cmd/roadsign-agent").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/gin-gonic/", "database/sql", "github.com/jackc/pgx", "modernc.org/sqlite", "github.com/minio/", "github.com/roadsign/roadsign/server"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("roadsign-agent links %s", dep)
			}
		}
	}
}
