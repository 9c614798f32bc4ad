package fleetsim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/internal/buildinfo"
	"github.com/roadsign/roadsign/internal/envflag"
	"github.com/roadsign/roadsign/internal/exitcode"
	"github.com/roadsign/roadsign/internal/fwimage"
	"github.com/roadsign/roadsign/internal/progress"
	"github.com/roadsign/roadsign/internal/tlsconf"
)

// Env is the process environment Run works in.
type Env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
}

const synopsis = "roadsign-fleetsim --server URL --token TOKEN --vehicles N [--register] [--concurrency C] [--interval 1s] [--cycles K | --duration D] [--warmup N] [--until-campaign ID] [--seed S] [--ecu TYPE:HWID:VERSION ...] [--fail VERSION=RATE ...] [--rollback VERSION=RATE ...] [--download] [--check-in-only]"

type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// Run runs roadsign-fleetsim with args (without the program name) and
// returns the exit code: 0 when every check-in went through, 1 if some
// failed (the summary says how many), 2 for usage errors.
func Run(ctx context.Context, args []string, env Env) int {
	if len(args) > 0 && envflag.IsVersion(args[0]) {
		fmt.Fprintln(env.Stdout, buildinfo.String("roadsign-fleetsim"))
		return exitcode.OK
	}
	err := run(ctx, args, env)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitcode.OK
	case errors.As(err, new(envflag.UsageError)):
		fmt.Fprintf(env.Stderr, "roadsign-fleetsim: %v\n", err)
		return exitcode.Usage
	}
	fmt.Fprintf(env.Stderr, "roadsign-fleetsim: %v\n", err)
	return exitcode.Error
}

func run(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("roadsign-fleetsim", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	server := fs.String("server", "", "server URL")
	token := fs.String("token", "", "admin or dealer token (for --register and --until-campaign)")
	n := fs.Int("vehicles", 100, "how many vehicles")
	register := fs.Bool("register", false, "register the vehicles first (already registered ones are fine)")
	conc := fs.Int("concurrency", 32, "vehicles in flight at once")
	interval := fs.Duration("interval", time.Second, "time between a vehicle's cycles (0: as fast as the server answers)")
	cycles := fs.Int("cycles", 0, "cycles per vehicle (0: until --duration)")
	duration := fs.Duration("duration", 0, "how long to measure (0: until --cycles): no vehicle starts a cycle after it, those in flight finish")
	warmup := fs.Int("warmup", 0, "whole-fleet cycles to run first, untimed (first director metadata, caches); the summary covers only what follows")
	until := fs.String("until-campaign", "", "stop once this campaign is no longer running or paused, and print how it ended (needs --token)")
	seed := fs.Int64("seed", 1, "makes the fleet (VINs, keys, who fails): the same seed is the same fleet")
	var ecus, fails, rollbacks list
	fs.Var(&ecus, "ecu", "TYPE:HWID:VERSION of a factory image in --samples (repeat; default: a head unit and a DCM on the oldest sample of the first hardware ID of each type)")
	fs.Var(&fails, "fail", "VERSION=RATE: that share of installs of VERSION fail (repeat)")
	fs.Var(&rollbacks, "rollback", "VERSION=RATE: that share of installs of VERSION roll back after the trial boot (repeat)")
	dl := fs.Bool("download", false, "download each assigned image and check its signed hash")
	checkInOnly := fs.Bool("check-in-only", false, "each cycle is the signed check-in alone, without the director poll (to measure check-ins)")
	secondaries := fs.Bool("secondaries", false, "each vehicle is a primary (its first ECU) and secondaries: every ECU has its own key and signs its own version report at each check-in")
	samples := fs.String("samples", "firmware-samples", "firmware samples directory (factory images)")
	stateDir := fs.String("state", "", "where vehicles keep their verified director metadata (default: a temporary directory)")
	report := fs.String("report", "", "write every vehicle's assignments and outcomes to this JSON file")
	rootFile := fs.String("director-root", "", "director root to pin (WORKSPACE/director.root.json; default: fetched from the server)")
	model := fs.String("model", "Roadster", "model of every vehicle")
	year := fs.Int("year", 2025, "model year of every vehicle")
	region := fs.String("region", "EU", "region of every vehicle")
	caCert := fs.String("ca-cert", "", "PEM CA certificate the server's TLS certificate must chain to")
	if _, err := envflag.Parse(fs, args, env.Getenv, 0, synopsis); err != nil {
		return err
	}
	switch {
	case *server == "":
		return envflag.Usagef("--server is required; usage: %s", synopsis)
	case *n < 1 || *conc < 1 || *interval < 0 || *cycles < 0 || *duration < 0 || *warmup < 0:
		return envflag.Usagef("--vehicles and --concurrency must be positive, --interval, --cycles, --duration and --warmup not negative")
	case *cycles == 0 && *duration == 0 && !*register:
		return envflag.Usagef("give --cycles or --duration (or only --register)")
	case *until != "" && *token == "":
		return envflag.Usagef("--until-campaign needs --token (admin or dealer)")
	case *register && *token == "":
		return envflag.Usagef("--register needs --token (admin or dealer)")
	}
	cfg := Config{Server: strings.TrimRight(*server, "/"), Token: *token, Vehicles: *n, Concurrency: *conc, Seed: *seed,
		Model: *model, Year: *year, Region: *region, Download: *dl, CheckInOnly: *checkInOnly, Secondaries: *secondaries, Fail: map[string]float64{}, Rollback: map[string]float64{}}
	var err error
	if cfg.ECUs, err = ecuSpecs(*samples, ecus); err != nil {
		return err
	}
	for _, r := range []struct {
		l list
		m map[string]float64
	}{{fails, cfg.Fail}, {rollbacks, cfg.Rollback}} {
		for _, kv := range r.l {
			k, v, ok := strings.Cut(kv, "=")
			rate, err := strconv.ParseFloat(v, 64)
			if !ok || err != nil || rate < 0 || rate > 1 {
				return envflag.Usagef("%q: want VERSION=RATE with RATE from 0 to 1", kv)
			}
			r.m[k] = rate
		}
	}
	if *rootFile != "" {
		if cfg.DirectorRoot, err = os.ReadFile(*rootFile); err != nil {
			return envflag.Usagef("--director-root: %v", err)
		}
	}
	if *caCert != "" {
		tlsCfg, err := tlsconf.ClientFile(*caCert)
		if err != nil {
			return envflag.Usagef("%v", err)
		}
		cfg.HTTP = download.NewHTTPClient()
		tr := cfg.HTTP.Transport.(*http.Transport)
		tr.TLSClientConfig, tr.MaxIdleConnsPerHost = tlsCfg, cfg.Concurrency*2
	}
	cfg.StateDir = *stateDir
	if cfg.StateDir == "" {
		if cfg.StateDir, err = os.MkdirTemp("", "roadsign-fleetsim-"); err != nil {
			return err
		}
		defer os.RemoveAll(cfg.StateDir)
	}
	cfg.Log = slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	f, err := New(cfg)
	if err != nil {
		return envflag.UsageError{Err: err}
	}
	if *register {
		bar := progress.NewCount(env.Stderr, "registering vehicles", int64(*n))
		err := f.Register(ctx, func() { bar.Add(1) })
		bar.Finish()
		if err != nil {
			return err
		}
	}
	if *cycles == 0 && *duration == 0 {
		fmt.Fprintf(env.Stdout, "%d vehicles registered\n", *n)
		return nil
	}
	if *warmup > 0 {
		bar := progress.NewCount(env.Stderr, "warm-up cycles", int64(*warmup))
		for range *warmup {
			f.Cycle(ctx)
			bar.Add(1)
		}
		bar.Finish()
		f.ResetStats()
	}
	end := time.Time{}
	if *duration > 0 {
		end = time.Now().Add(*duration)
	}
	ended := ""
	for i := 0; *cycles == 0 || i < *cycles; i++ {
		if !end.IsZero() && !time.Now().Before(end) || ctx.Err() != nil {
			break
		}
		start := time.Now()
		f.CycleUntil(ctx, end)
		if *until != "" {
			c, err := f.Campaign(ctx, *until)
			if err != nil {
				return err
			}
			if c.State != "running" && c.State != "paused" {
				ended = "campaign " + c.ID + ": " + c.State
				if c.HaltReason != "" {
					ended += ": " + c.HaltReason
				}
				break
			}
		}
		wait := *interval - time.Since(start)
		if !end.IsZero() {
			wait = min(wait, time.Until(end)) // the run ends at the deadline, not after a whole wait
		}
		if wait > 0 && (*cycles == 0 || i < *cycles-1) {
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
	}
	if *report != "" {
		b, _ := json.MarshalIndent(f.Receipts(), "", "  ")
		if err := os.WriteFile(*report, b, 0o644); err != nil {
			return err
		}
	}
	s := f.Summary()
	fmt.Fprintln(env.Stdout, s)
	if ended != "" {
		fmt.Fprintln(env.Stdout, ended)
	}
	if s.Errors > 0 {
		return fmt.Errorf("%d vehicle cycles failed, the last: %s (run with a smaller --concurrency, or see the server)", s.Errors, s.LastError)
	}
	return nil
}

// ecuSpecs resolves --ecu flags (or the defaults) against the samples.
func ecuSpecs(dir string, flags []string) ([]ECUSpec, error) {
	samples, err := fwimage.LoadSamples(dir)
	if err != nil {
		return nil, envflag.Usagef("--samples: %v", err)
	}
	if len(flags) == 0 {
		seen := map[string]bool{}
		best := map[string]fwimage.Sample{}
		var order []string
		for _, s := range samples {
			if !s.Bootable || (seen[s.ECU] && best[s.ECU].HardwareID != s.HardwareID) {
				continue
			}
			if !seen[s.ECU] {
				seen[s.ECU] = true
				order = append(order, s.ECU)
			}
			if b, ok := best[s.ECU]; !ok || s.ReleaseCounter < b.ReleaseCounter {
				best[s.ECU] = s
			}
		}
		for _, typ := range order {
			s := best[typ]
			flags = append(flags, s.ECU+":"+s.HardwareID+":"+s.Version)
		}
	}
	var out []ECUSpec
	for _, f := range flags {
		p := strings.Split(f, ":")
		if len(p) != 3 {
			return nil, envflag.Usagef("--ecu %q: want TYPE:HWID:VERSION", f)
		}
		found := false
		for _, s := range samples {
			if s.ECU == p[0] && s.HardwareID == p[1] && s.Version == p[2] {
				b, err := os.ReadFile(filepath.Join(dir, s.File))
				if err != nil {
					return nil, err
				}
				sum := sha256.Sum256(b)
				out = append(out, ECUSpec{Type: s.ECU, HardwareID: s.HardwareID, Version: s.Version, SHA256: hex.EncodeToString(sum[:]), Length: int64(len(b))})
				found = true
			}
		}
		if !found {
			return nil, envflag.Usagef("--ecu %q: no such sample in %s", f, dir)
		}
	}
	return out, nil
}
