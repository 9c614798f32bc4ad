package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// agentBin is the real roadsign-agent binary, built once for the tests
// that must kill a real process (power loss) or measure its memory.
var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "roadsign-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "roadsign-agent")
	if out, err := exec.Command("go", "build", "-o", agentBin, "../../cmd/roadsign-agent").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build roadsign-agent: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if programsDir != "" {
		os.RemoveAll(programsDir)
	}
	os.Exit(code)
}
