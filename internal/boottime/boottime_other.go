//go:build !linux

package boottime

import (
	"fmt"
	"os"
	"time"
)

var start = time.Now()

// Now counts from the process's start (no boot clock here): a restart is
// a new "boot", so the time must be attested again.
func Now() (Reading, error) {
	return Reading{Boot: fmt.Sprintf("process-%d-%d", os.Getpid(), start.UnixNano()), Since: time.Since(start)}, nil
}
