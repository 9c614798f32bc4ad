// Package cli is roadsign-server's command line: it parses flags, wires the
// stores and services together and runs the HTTP server until its context
// ends. cmd/roadsign-server only calls Run.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/roadsign/roadsign/internal/buildinfo"
	"github.com/roadsign/roadsign/internal/envflag"
	"github.com/roadsign/roadsign/internal/exitcode"
)

// errRefused marks a security refusal (exit 3): a signature that does not
// verify.
var errRefused = errors.New("refused")

// commands is every command, for --help and help.
const commands = `roadsign-server [serve] [flags]          run the server (the default; its flags are below)
       roadsign-server init --data DIR          create the online keys and DIR/online-keys.json for the signer
       roadsign-server backup --data DIR --out FILE   archive a server's data while it runs
       roadsign-server restore --data DIR --from FILE [--force]
       roadsign-server audit verify [--data DIR | --database URL] [--checkpoints FILE ...]
       roadsign-server audit export-checkpoints [--data DIR | --database URL] --out FILE
       roadsign-server record verify --vin VIN [--online-keys FILE | --data DIR] RECORD
       roadsign-server COMMAND --help lists that command's flags`

// Env is the process environment Run works in; tests pass their own.
type Env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// OnListen, if set, is called with the bound address once the server
	// accepts connections (tests listen on 127.0.0.1:0).
	OnListen func(addr string)
	// Reload, if set, delivers a value whenever the TLS certificate and
	// key should be read again (main sends one on SIGHUP).
	Reload <-chan os.Signal
}

// Run runs roadsign-server with args (without the program name) and
// returns the process exit code.
func Run(ctx context.Context, args []string, env Env) int {
	err := run(ctx, args, env)
	switch {
	case err == nil:
		return exitcode.OK
	case errors.Is(err, flag.ErrHelp):
		return exitcode.OK
	case errors.As(err, new(envflag.UsageError)):
		fmt.Fprintf(env.Stderr, "roadsign-server: %v\n", err)
		return exitcode.Usage
	case errors.Is(err, errRefused):
		fmt.Fprintf(env.Stderr, "roadsign-server: %v\n", err)
		return exitcode.Refused
	default:
		fmt.Fprintf(env.Stderr, "roadsign-server: %v\n", err)
		return exitcode.Error
	}
}

func run(ctx context.Context, args []string, env Env) error {
	if len(args) > 0 && envflag.IsVersion(args[0]) {
		fmt.Fprintln(env.Stdout, buildinfo.String("roadsign-server"))
		return nil
	}
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve", "init":
	case "backup":
		return cmdBackup(ctx, args, env)
	case "restore":
		return cmdRestore(args, env)
	case "audit":
		switch {
		case len(args) > 0 && args[0] == "verify":
			return cmdAuditVerify(ctx, args[1:], env)
		case len(args) > 0 && args[0] == "export-checkpoints":
			return cmdAuditExport(ctx, args[1:], env)
		}
		return envflag.Usagef("usage: roadsign-server audit verify [--data DIR | --database URL] [--checkpoints FILE ...] | audit export-checkpoints [--data DIR | --database URL] --out FILE")
	case "record":
		if len(args) == 0 || args[0] != "verify" {
			return envflag.Usagef("usage: roadsign-server record verify --vin VIN [--online-keys FILE | --data DIR] RECORD")
		}
		return cmdRecordVerify(args[1:], env)
	case "help":
		fmt.Fprintf(env.Stdout, "usage: %s\n", commands)
		return nil
	default:
		return envflag.Usagef("unknown command %q; want init, serve, backup, restore, audit or record", cmd)
	}
	cfg, err := parseFlags(cmd, args, env)
	if err != nil {
		return err
	}
	if cmd == "init" {
		return initData(cfg.data, env.Stdout)
	}
	return serve(ctx, cfg, env)
}
