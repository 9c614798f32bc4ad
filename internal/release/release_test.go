package main

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRelease builds release 0.2.0 and checks what an operator relies on:
// SHA256SUMS matches every artifact, the tarballs hold every program for
// both architectures, the binaries carry the version, the .deb packages
// hold the binary, the hardened unit, the environment file (a conffile,
// not world-readable) and scripts that make the system user and state
// directory, and systemd-analyze verify accepts both units.
func TestRelease(t *testing.T) {
	for _, tool := range []string{"dpkg-deb", "systemd-analyze"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("ROADSIGN_REQUIRE_RELEASE_TOOLS") != "" {
				t.Fatalf("%s is required (apt-get install dpkg systemd): %v", tool, err)
			}
			t.Skipf("%s not installed", tool)
		}
	}
	out := t.TempDir()
	t.Chdir("../..")
	if err := run(options{version: "0.2.0", commit: "test", out: out, date: time.Unix(1764500000, 0).UTC()}, io.Discard); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"roadsign_0.2.0_linux_amd64.tar.gz", "roadsign_0.2.0_linux_arm64.tar.gz",
		"roadsign-server_0.2.0_amd64.deb", "roadsign-server_0.2.0_arm64.deb",
		"roadsign-agent_0.2.0_amd64.deb", "roadsign-agent_0.2.0_arm64.deb",
	}
	listed := map[string]string{}
	f, err := os.Open(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q is not in sha256sum's format", sc.Text())
		}
		listed[name] = sum
	}
	f.Close()
	for _, name := range want {
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Errorf("missing artifact: %v", err)
			continue
		}
		if got := fmt.Sprintf("%x", sha256.Sum256(b)); listed[name] != got {
			t.Errorf("SHA256SUMS says %s for %s, the file hashes to %s", listed[name], name, got)
		}
	}
	if len(listed) != len(want) {
		t.Errorf("SHA256SUMS lists %d files, want %d: %v", len(listed), len(want), listed)
	}

	for _, arch := range arches {
		names := tarNames(t, filepath.Join(out, "roadsign_0.2.0_linux_"+arch+".tar.gz"))
		for _, p := range programs {
			if !names["roadsign_0.2.0_linux_"+arch+"/bin/"+p] {
				t.Errorf("%s tarball lacks bin/%s", arch, p)
			}
		}
		for _, f := range []string{"README.md", "docs/operations.md", "firmware-samples/samples.json", "firmware-samples/dcm-DCM-4G-24MM-1.0.0.img"} {
			if !names["roadsign_0.2.0_linux_"+arch+"/"+f] {
				t.Errorf("%s tarball lacks %s (the README links to docs/; roadsign-demo needs the samples)", arch, f)
			}
		}
	}
	// The demo runs from the unpacked amd64 tarball as the README says,
	// and a missing samples directory is a usage error.
	unpacked := t.TempDir()
	if b, err := exec.Command("tar", "-xzf", filepath.Join(out, "roadsign_0.2.0_linux_amd64.tar.gz"), "-C", unpacked).CombinedOutput(); err != nil {
		t.Fatalf("unpack: %v\n%s", err, b)
	}
	top := filepath.Join(unpacked, "roadsign_0.2.0_linux_amd64")
	demo := exec.Command("bin/roadsign-demo", "--bin", "bin", "--samples", "nowhere")
	demo.Dir = top
	if b, err := demo.CombinedOutput(); demo.ProcessState.ExitCode() != 2 || !strings.Contains(string(b), "no firmware samples") {
		t.Errorf("the demo without samples: exit %d, want 2 naming the samples: %v\n%s", demo.ProcessState.ExitCode(), err, b)
	}
	demo = exec.Command("bin/roadsign-demo", "--bin", "bin", "--samples", "firmware-samples")
	demo.Dir = top
	if b, err := demo.CombinedOutput(); err != nil {
		t.Errorf("the demo from the tarball: %v\n%s", err, b)
	}
	// The amd64 server binary (this machine's) says its version.
	root := t.TempDir()
	deb := func(name string) string { return filepath.Join(out, name+"_0.2.0_amd64.deb") }
	for _, p := range pkgs {
		if b, err := exec.Command("dpkg-deb", "-x", deb(p.name), root).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb -x: %v\n%s", err, b)
		}
	}
	if b, err := exec.Command(filepath.Join(root, "usr/bin/roadsign-server"), "--version").CombinedOutput(); err != nil || !strings.Contains(string(b), "0.2.0") {
		t.Errorf("roadsign-server --version: %s %v", b, err)
	}

	for _, p := range pkgs {
		contents := run1(t, "dpkg-deb", "-c", deb(p.name))
		for _, want := range []string{
			"-rwxr-xr-x root/root .* ./usr/bin/" + p.program,
			"-rw-r--r-- root/root .* ./lib/systemd/system/" + p.unit,
			"-rw-r----- root/root .* ./etc/roadsign/" + p.env,
			"-rw-r--r-- root/root .* ./usr/share/doc/" + p.name + "/copyright",
			"-rw-r--r-- root/root .* ./usr/share/doc/" + p.name + "/docs/operations.md",
		} {
			if !matchLine(contents, want) {
				t.Errorf("%s: no entry like %q in:\n%s", p.name, want, contents)
			}
		}
		if hp := run1(t, "dpkg-deb", "-f", deb(p.name), "Homepage"); strings.TrimSpace(hp) != "" {
			t.Errorf("%s control names a Homepage that is not one: %q", p.name, hp)
		}
		fields := run1(t, "dpkg-deb", "-f", deb(p.name), "Package", "Version", "Architecture", "Depends")
		for _, w := range []string{"Package: " + p.name, "Version: 0.2.0", "Architecture: amd64", "adduser"} {
			if !strings.Contains(fields, w) {
				t.Errorf("%s control lacks %q:\n%s", p.name, w, fields)
			}
		}
		ctl := t.TempDir()
		run1(t, "dpkg-deb", "-e", deb(p.name), ctl)
		conf, _ := os.ReadFile(filepath.Join(ctl, "conffiles"))
		post, _ := os.ReadFile(filepath.Join(ctl, "postinst"))
		if !strings.Contains(string(conf), "/etc/roadsign/"+p.env) {
			t.Errorf("%s: the environment file is not a conffile: %q", p.name, conf)
		}
		if !strings.Contains(string(post), "adduser --system") || !strings.Contains(string(post), "install -d -m 0700") {
			t.Errorf("%s postinst does not make the system user and a 0700 state directory:\n%s", p.name, post)
		}
	}
	// Every setting the environment files name (set or commented out) is
	// a flag of the command the unit runs, and the programs read them.
	for _, c := range []struct{ env, bin, cmd string }{
		{"server.env", "roadsign-server", "serve"},
		{"agent.env", "roadsign-agent", "run"},
	} {
		help, _ := exec.Command(filepath.Join(root, "usr/bin", c.bin), c.cmd, "--help").CombinedOutput()
		envFile, _ := os.ReadFile(filepath.Join(root, "etc/roadsign", c.env))
		for _, line := range strings.Split(string(envFile), "\n") {
			name, _, ok := strings.Cut(strings.TrimPrefix(line, "#"), "=")
			if !ok || !strings.HasPrefix(name, "ROADSIGN_") {
				continue
			}
			flagName := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, "ROADSIGN_"), "_", "-"))
			if !strings.Contains(string(help), "  -"+flagName+" ") && !strings.Contains(string(help), "  -"+flagName+"\n") {
				t.Errorf("%s sets %s, but %s %s has no --%s", c.env, name, c.bin, c.cmd, flagName)
			}
		}
	}
	data := t.TempDir()
	cmd := exec.Command(filepath.Join(root, "usr/bin/roadsign-server"), "init")
	cmd.Env = []string{"ROADSIGN_DATA=" + data}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("roadsign-server init from the environment: %v\n%s", err, b)
	}
	if _, err := os.Stat(filepath.Join(data, "online-keys.json")); err != nil {
		t.Errorf("roadsign-server did not take ROADSIGN_DATA from the environment: %v", err)
	}
	state := filepath.Join(t.TempDir(), "vehicle")
	cmd = exec.Command(filepath.Join(root, "usr/bin/roadsign-agent"), "status")
	cmd.Env = []string{"ROADSIGN_STATE=" + state}
	if b, _ := cmd.CombinedOutput(); !strings.Contains(string(b), state) {
		t.Errorf("roadsign-agent did not take ROADSIGN_STATE from the environment:\n%s", b)
	}

	unit, _ := os.ReadFile(filepath.Join(root, "lib/systemd/system/roadsign-server.service"))
	for _, opt := range []string{"NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/var/lib/roadsign", "PrivateTmp=yes", "EnvironmentFile=/etc/roadsign/server.env"} {
		if !strings.Contains(string(unit), opt) {
			t.Errorf("the server unit lacks %s", opt)
		}
	}
	agentUnit, _ := os.ReadFile(filepath.Join(root, "lib/systemd/system/roadsign-agent.service"))
	if !strings.Contains(string(agentUnit), "Restart=on-failure") || !strings.Contains(string(agentUnit), "EnvironmentFile=/etc/roadsign/agent.env") {
		t.Errorf("the agent unit does not restart on failure or read its environment file:\n%s", agentUnit)
	}

	// systemd-analyze verify in a root holding the packages' files and
	// the host's systemd targets and /bin/kill (what an installed system has).
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	targets, _ := filepath.Glob("/lib/systemd/system/*.target")
	for _, tg := range targets {
		copyFile(t, tg, filepath.Join(root, "lib/systemd/system", filepath.Base(tg)), 0o644)
	}
	kill, err := exec.LookPath("kill")
	if err != nil {
		t.Fatalf("kill(1) is needed for the unit's ExecReload (apt-get install procps): %v", err)
	}
	copyFile(t, kill, filepath.Join(root, "bin/kill"), 0o755)
	for _, p := range pkgs {
		if b, err := exec.Command("systemd-analyze", "verify", "--man=no", "--root="+root, p.unit).CombinedOutput(); err != nil || len(strings.TrimSpace(string(b))) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", p.unit, err, b)
		}
	}
}

func run1(t *testing.T, name string, args ...string) string {
	t.Helper()
	b, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, b)
	}
	return string(b)
}

func matchLine(text, pattern string) bool {
	prefix, rest, _ := strings.Cut(pattern, " .* ")
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) && strings.HasSuffix(l, rest) {
			return true
		}
	}
	return false
}

func tarNames(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	names := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names[h.Name] = true
	}
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}
