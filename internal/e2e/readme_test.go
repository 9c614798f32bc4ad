package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeAddr is the address the README's walkthrough uses; the test runs
// it on a free port instead.
const readmeAddr = "127.0.0.1:8080"

// walkthroughBlocks returns the ```sh code blocks of the README's
// "## Walkthrough" section, in order.
func walkthroughBlocks(readme string) []string {
	start := strings.Index(readme, "\n## Walkthrough\n")
	if start < 0 {
		return nil
	}
	section := readme[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)\n```sh\n(.*?)\n```").FindAllStringSubmatch(section, -1) {
		blocks = append(blocks, m[1])
	}
	return blocks
}

// TestReadmeWalkthrough runs the README's walkthrough as written: every
// sh block, in order, in one bash with errexit and pipefail, in a fresh
// directory holding bin/ and firmware-samples/, on a free port. Any step
// that fails fails the test, naming the block.
func TestReadmeWalkthrough(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := walkthroughBlocks(string(readme))
	if len(blocks) < 10 {
		t.Fatalf("found %d sh blocks in the README's walkthrough; the section or its blocks moved", len(blocks))
	}
	for _, tool := range []string{"bash", "curl", "jq", "tar", "awk"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the walkthrough needs %s (make test installs jq)", tool)
		}
	}
	bin := builtPrograms(t)
	dir := t.TempDir()
	samples, _ := filepath.Abs(samplesDir())
	for link, target := range map[string]string{"bin": bin, "firmware-samples": samples} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	var script strings.Builder
	script.WriteString("set -euo pipefail\n")
	for i, b := range blocks {
		// The marker says which block a failure is in; $SECONDS times them.
		fmt.Fprintf(&script, "echo '### README walkthrough block %d' >&2\n%s\n", i+1, strings.ReplaceAll(b, readmeAddr, addr))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script.String())
	cmd.Dir = dir
	walkTmp := t.TempDir() // where the walkthrough makes its own directory
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "LANG=C.UTF-8", "TMPDIR=" + walkTmp}
	// Its own process group: whatever it left running (the server) goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err != nil {
		failed := "?"
		if m := regexp.MustCompile(`### README walkthrough block (\d+)`).FindAllStringSubmatch(string(out), -1); m != nil {
			failed = m[len(m)-1][1]
		}
		logs, _ := filepath.Glob(filepath.Join(walkTmp, "*", "server.log"))
		var log []byte
		if len(logs) > 0 {
			log, _ = os.ReadFile(logs[0])
		}
		t.Fatalf("README walkthrough failed in block %s (%v):\n%s\n--- server.log (tail):\n%s", failed, err, out, tail(string(log), 3000))
	}
	// It worked in a directory of its own: where it started (the
	// clone's root) holds only what was there, and it can run again.
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("the walkthrough left files where it started: %v (want only bin and firmware-samples)", names)
	}
	walked, _ := filepath.Glob(filepath.Join(walkTmp, "roadsign-walkthrough.*"))
	if len(walked) != 1 {
		t.Fatalf("the walkthrough's own directory: %v", walked)
	}
	dir = walked[0]

	// Where the story ends: both ECUs on 2.0.0 (the replaced DCM updated
	// online), authorized, and the jobs as told.
	st, err := exec.Command(filepath.Join(bin, "roadsign-agent"), "status", "--state", filepath.Join(dir, "car"), "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var status struct {
		ECUs []struct {
			Type, Serial, Version string
		} `json:"ecus"`
		Authorization struct{ State string } `json:"authorization"`
	}
	if err := json.Unmarshal(st, &status); err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(status.ECUs)
	if got != "[{head-unit HU000001 2.0.0} {dcm DCM000002 2.0.0}]" || status.Authorization.State != "authorized" {
		t.Fatalf("after the walkthrough the car should run 2.0.0 everywhere, authorized: %s %s\n%s", got, status.Authorization.State, out)
	}
	for _, want := range []string{`"state":"succeeded","events":["queued","downloading"`, `{"state":"canceled"}`, "director/timestamp.json", "pending_reauthorization", "refused until re-provisioned", "unknown_vehicle_key: If the DCM was replaced", "repo.publish", "campaign.start",
		// The car with a DCM secondary: both ECUs on 2.0.0 from one set job.
		`[{"type":"head-unit","serial":"HU000101","version":"2.0.0"},{"type":"dcm","serial":"DCM000101","version":"2.0.0"}]`,
		`{"state":"succeeded","ecus":["head-unit 2.0.0","dcm 2.0.0"]}`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the walkthrough's output should show %s:\n%s", want, out)
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
