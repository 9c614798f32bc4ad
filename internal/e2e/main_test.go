package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/roadsign/roadsign/internal/testsupport"
)

// agentBin is the real roadsign-agent binary, built once for the tests
// that must kill a real process (power loss) or measure its memory.
var agentBin string

func TestMain(m *testing.M) {
	dir, err := testsupport.Programs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		testsupport.Clean()
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "roadsign-agent")
	code := m.Run()
	testsupport.Clean()
	os.Exit(code)
}
