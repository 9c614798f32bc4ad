package e2e

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/roadsign/roadsign/internal/testsupport"
)

// What the release build stamps (make build does the same with git's).
const (
	stampVersion = "9.8.7-test"
	stampCommit  = "0123456789ab"
	stampDate    = "2026-11-29T12:00:00Z"
)

// programs are the ones users run, all built into one bin directory.
var programs = []string{"roadsign-server", "roadsign-signer", "roadsign-agent", "roadsign-demo", "roadsign-fleetsim"}

// builtPrograms builds every program once, version-stamped as make build
// does, and returns the directory holding them.
func builtPrograms(t testing.TB) string {
	t.Helper()
	pkg := "github.com/roadsign/roadsign/internal/buildinfo."
	dir, err := testsupport.StampedPrograms("-X " + pkg + "Version=" + stampVersion + " -X " + pkg + "Commit=" + stampCommit + " -X " + pkg + "Date=" + stampDate)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestVersionOfEveryProgram: --version names the program, the version,
// commit and build date stamped at build time; a plain go build says devel.
func TestVersionOfEveryProgram(t *testing.T) {
	dir := builtPrograms(t)
	want := regexp.MustCompile(`^(roadsign-[a-z]+) ` + regexp.QuoteMeta(stampVersion) + ` \(commit ` + stampCommit + `, built ` + stampDate + `, go1\.\d+`)
	for _, p := range programs {
		for _, arg := range []string{"--version", "version"} {
			if (p == "roadsign-demo" || p == "roadsign-fleetsim") && arg == "version" {
				continue // no subcommands
			}
			out, err := exec.Command(filepath.Join(dir, p), arg).CombinedOutput()
			m := want.FindStringSubmatch(string(out))
			if err != nil || m == nil || m[1] != p {
				t.Errorf("%s %s: %v\n%s", p, arg, err, out)
			}
		}
	}
	// agentBin (TestMain) is a plain go build.
	out, err := exec.Command(agentBin, "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "roadsign-agent devel ") {
		t.Errorf("plain build --version: %v %s", err, out)
	}
}
