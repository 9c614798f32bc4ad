// Command roadsign-tuf-client is the agent's TUF client behind the public
// TUF conformance suite's client protocol. See docs/conformance.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/roadsign/roadsign/client/tufcli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := tufcli.Run(ctx, os.Args[1:], tufcli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Now: tufcli.DateNow})
	stop()
	os.Exit(code)
}
