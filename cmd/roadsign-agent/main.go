// Command roadsign-agent is the in-vehicle update agent. See docs/cli.md
// and README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/roadsign/roadsign/client/cli"
)

// memoryLimit is the Go runtime's soft memory limit for the agent (heap,
// stacks and runtime structures; GOMEMLIMIT overrides it): a vehicle ECU
// gives the agent 16 MiB in all, and the garbage collector keeps the
// heap's peaks low rather than letting it double between collections.
const memoryLimit = 8 << 20

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Now: time.Now})
	stop()
	os.Exit(code)
}
