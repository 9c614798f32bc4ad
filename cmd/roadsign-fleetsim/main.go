// Command roadsign-fleetsim simulates a fleet of vehicles against a
// server, with the agent's own code: to rehearse rollouts and to measure
// the server. See docs/cli.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/roadsign/roadsign/client/fleetsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := fleetsim.Run(ctx, os.Args[1:], fleetsim.Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv})
	stop()
	os.Exit(code)
}
