// Package cli is roadsign-agent's command line; cmd/roadsign-agent only
// calls Run. It must not import server code: the agent runs on an ECU.
package cli

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/agent"
	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/client/fault"
	"github.com/roadsign/roadsign/client/usb"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/client/wake"
	"github.com/roadsign/roadsign/internal/envflag"
	"github.com/roadsign/roadsign/internal/exitcode"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// Env is the process environment Run works in.
type Env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	Now            func() time.Time
	// Policy overrides the download retry policy (tests).
	Policy *download.Policy
	// Kill overrides how a simulated power loss ends the process (tests).
	Kill func()
}

const usage = `usage: roadsign-agent COMMAND --state DIR [flags]

commands:
  init     --state DIR --server URL --vin VIN --image-root FILE --director-root FILE --ecu TYPE:SERIAL:HWID:FIRMWARE_FILE ... [--token TOKEN]
  update   --state DIR [--simulate FAULT,...]
  run      --state DIR [--interval 1h] [--retry-min 10s] [--jitter 0.2]
  status   --state DIR [--json]
  install-usb --state DIR BUNDLE        offline install from a USB bundle (archive or directory)
  reauthorize --state DIR               connected-services handshake
  link-code   --state DIR [--json]      show a one-time code for the owner to link this vehicle
  replace-ecu --state DIR --serial OLD --new-serial NEW --hardware-id HWID --firmware FILE
                                        fit a replacement ECU (new key pair; prints the public key)
  client-cert --state DIR --cert FILE   install the certificate issued for the vehicle's key (mutual TLS)
  trust-ca    --state DIR --ca-cert FILE|system
                                        set or replace the CA the server's certificate must chain to
  init-secondary --state DIR --vin VIN --ecu TYPE:SERIAL:HWID:FIRMWARE_FILE --director-root FILE
                 [--image-root FILE] --verification full|partial
                                        create a secondary ECU (its own slots, pinned roots and key)
  secondary   --state DIR --listen HOST:PORT
                                        run a secondary ECU: it verifies and installs only what the
                                        director signed for it, whatever its primary sends

faults for --simulate: corrupt-download, truncate-download, network-drop:PCT,
power-loss:PHASE[:PCT] (download, write, switch, commit), flash-error, boot-fail,
signal:BARS (0 to 5; 0: nothing reaches the server), can-loss (the head unit
silent on the bus), corrupt-active (bytes flipped in the DCM's active slot),
corrupt-delta and truncate-delta (a delta damaged in transit: the full image follows),
rtc=+DURATION, rtc=-DURATION or rtc=YYYY-MM-DD (the vehicle's clock wrong; 30d, 5y),
attestation=stale|wrong-nonce|bad-sig (the cycle's time attestation damaged)

exit codes: 0 ok, 1 error, 2 usage, 3 refused for security (nothing installed),
4 install failed and the ECU rolled back. 'roadsign-agent COMMAND --help' lists flags.`

// Run runs roadsign-agent with args (without the program name).
func Run(ctx context.Context, args []string, env Env) int {
	if env.Now == nil {
		env.Now = time.Now
	}
	err := run(ctx, args, env)
	code := exitCode(err)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		msg := err.Error()
		msg = strings.TrimPrefix(msg, "usage: ")
		fmt.Fprintf(env.Stderr, "roadsign-agent: %s\n", msg)
	}
	return code
}

func exitCode(err error) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitcode.OK
	case errors.As(err, new(envflag.UsageError)), errors.Is(err, client.ErrUsage):
		return exitcode.Usage
	case errors.Is(err, client.ErrRefused):
		return exitcode.Refused
	case errors.Is(err, client.ErrRolledBack):
		return exitcode.RolledBack
	}
	return exitcode.Error
}

func run(ctx context.Context, args []string, env Env) error {
	return envflag.Dispatch("roadsign-agent", usage, args, env.Stdout, map[string]func([]string) error{
		"init":   func(a []string) error { return cmdInit(a, env) },
		"update": func(a []string) error { return cmdUpdate(ctx, a, env) },
		"status": func(a []string) error { return cmdStatus(a, env) },
		"run":    func(a []string) error { return cmdRun(ctx, a, env) },

		"install-usb": func(a []string) error { return cmdInstallUSB(ctx, a, env) },
		"reauthorize": func(a []string) error { return cmdReauthorize(ctx, a, env) },
		"link-code":   func(a []string) error { return cmdLinkCode(ctx, a, env) },
		"replace-ecu": func(a []string) error { return cmdReplaceECU(a, env) },
		"client-cert": func(a []string) error { return cmdClientCert(a, env) },
		"trust-ca":    func(a []string) error { return cmdTrustCA(a, env) },

		"init-secondary": func(a []string) error { return cmdInitSecondary(a, env) },
		"secondary":      func(a []string) error { return cmdSecondary(ctx, a, env) },
	})
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, " ") }
func (s *stringList) Set(v string) error { *s = append(*s, strings.Fields(v)...); return nil }

func cmdInit(args []string, env Env) error {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	server := fs.String("server", "", "server URL, e.g. http://127.0.0.1:8080")
	vinFlag := fs.String("vin", "", "vehicle identification number (17 characters)")
	imageRoot := fs.String("image-root", "", "image repository root to pin (WORKSPACE/image.root.json)")
	directorRoot := fs.String("director-root", "", "director repository root to pin (WORKSPACE/director.root.json)")
	var ecus, secondaries stringList
	fs.Var(&ecus, "ecu", "ECU as TYPE:SERIAL:HWID:FIRMWARE_FILE (repeat; the firmware boots from slot A)")
	fs.Var(&secondaries, "secondary", "a secondary ECU on the vehicle network as SERIAL=HOST:PORT (repeat; it runs roadsign-agent secondary)")
	token := fs.String("token", "", "admin or dealer token: also register the vehicle with the server")
	model := fs.String("model", "Roadsign demo car", "model, for registration")
	year := fs.Int("year", env.Now().Year(), "model year, for registration")
	region := fs.String("region", "NA", "region code, for registration")
	caCert := fs.String("ca-cert", "", "PEM CA certificate the server's TLS certificate must chain to (stored in the state)")
	synopsis := "roadsign-agent init --state DIR --server URL --vin VIN --image-root FILE --director-root FILE --ecu TYPE:SERIAL:HWID:FIRMWARE_FILE ..."
	state, _, err := parseState(fs, args, env, 0, synopsis)
	if err != nil {
		return err
	}
	if *server == "" || *vinFlag == "" || *imageRoot == "" || *directorRoot == "" {
		return envflag.Usagef("init needs --server, --vin, --image-root and --director-root; usage: %s", synopsis)
	}
	cfg := vehicle.Config{VIN: *vinFlag, Server: strings.TrimRight(*server, "/")}
	if *caCert != "" {
		b, err := os.ReadFile(*caCert)
		if err != nil {
			return envflag.Usagef("--ca-cert: %v", err)
		}
		cfg.CACert = string(b)
	}
	firmware := map[string]string{}
	for _, spec := range ecus {
		parts := strings.SplitN(spec, ":", 4)
		if len(parts) != 4 {
			return envflag.Usagef("--ecu %q: want TYPE:SERIAL:HWID:FIRMWARE_FILE", spec)
		}
		cfg.ECUs = append(cfg.ECUs, vehicle.ECUConfig{Type: parts[0], Serial: parts[1], HardwareID: parts[2]})
		firmware[parts[1]] = parts[3]
	}
	if len(secondaries) > 0 {
		if len(cfg.ECUs) == 0 {
			return envflag.Usagef("a vehicle with secondaries needs its primary's own ECU: give --ecu for the ECU this agent runs on")
		}
		// The first local ECU is the primary: its key is the vehicle's.
		cfg.Primary = cfg.ECUs[0].Serial
		for _, spec := range secondaries {
			e, err := secondaryECU(spec, cfg.VIN)
			if err != nil {
				return err
			}
			cfg.ECUs = append(cfg.ECUs, e)
		}
	}
	ir, err := os.ReadFile(*imageRoot)
	if err != nil {
		return envflag.Usagef("--image-root: %v", err)
	}
	dr, err := os.ReadFile(*directorRoot)
	if err != nil {
		return envflag.Usagef("--director-root: %v", err)
	}
	// The vehicle is made beside --state and takes its place only once
	// everything (registration included) worked: a failed init leaves
	// nothing behind, so running it again, corrected, just works.
	if err := vehicle.CheckFree(state); err != nil {
		return err
	}
	stage, err := vehicle.Stage(state)
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage) // gone once moved into place
	v, err := vehicle.Create(stage, cfg, ir, dr, firmware, env.Now)
	if err != nil {
		return err
	}
	if *token != "" {
		if err := register(v, *token, api.Registration{VIN: v.VIN, Model: *model, Year: *year, Region: *region}, env); err != nil {
			return fmt.Errorf("register %s with %s: %w; nothing was written: correct it and run init again", v.VIN, v.Server, err)
		}
	}
	if err := vehicle.MoveInto(stage, state); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "provisioned vehicle %s in %s with %d ECU%s\n", v.VIN, state, len(v.ECUs), map[bool]string{false: "s"}[len(v.ECUs) == 1])
	if *token == "" {
		return nil
	}
	fmt.Fprintf(env.Stdout, "registered %s with %s\n", v.VIN, v.Server)
	// The server learns the factory firmware at once.
	placed, err := vehicle.Open(state, env.Now)
	if err != nil {
		return err
	}
	defer placed.Close()
	a, err := newAgent(placed, fault.Set{}, env)
	if err != nil {
		return err
	}
	if err := a.CheckIn(context.Background()); err != nil {
		fmt.Fprintf(env.Stderr, "roadsign-agent: first check-in failed (the next update retries): %v\n", err)
	}
	return nil
}

// register registers v with the server (its key and ECUs filled in).
func register(v *vehicle.Vehicle, token string, reg api.Registration, env Env) error {
	key, err := keys.Load(v.KeyPath())
	if err != nil {
		return err
	}
	reg.PublicKey = key.Private.Public().(ed25519.PublicKey)
	for _, e := range v.ECUs {
		ae := api.ECU{Type: e.Type, Serial: e.Serial, HardwareID: e.HardwareID, PublicKey: e.PublicKey}
		if e.Addr == "" {
			ek, err := v.EncryptionKey(e.Serial)
			if err != nil {
				return err
			}
			ae.EncryptionKey = ek.PublicKey().Bytes()
		}
		reg.ECUs = append(reg.ECUs, ae)
	}
	a, err := newAgent(v, fault.Set{}, env)
	if err != nil {
		return err
	}
	return a.API.Register(context.Background(), token, reg)
}

// cmdTrustCA sets or replaces the CA certificate the vehicle trusts for
// the server's TLS certificate (none: the system's roots).
func cmdTrustCA(args []string, env Env) error {
	fs := flag.NewFlagSet("trust-ca", flag.ContinueOnError)
	caCert := fs.String("ca-cert", "", "PEM CA certificate the server's TLS certificate must chain to; \"system\" for the system's roots")
	state, _, err := parseState(fs, args, env, 0, "roadsign-agent trust-ca --state DIR --ca-cert FILE|system")
	if err != nil {
		return err
	}
	if *caCert == "" {
		return envflag.Usagef("trust-ca needs --ca-cert FILE (or --ca-cert system)")
	}
	pem := ""
	if *caCert != "system" {
		b, err := os.ReadFile(*caCert)
		if err != nil {
			return envflag.Usagef("--ca-cert: %v", err)
		}
		pem = string(b)
	}
	v, err := vehicle.Open(state, env.Now)
	if err != nil {
		return err
	}
	defer v.Close()
	if err := v.SetCACert(pem); err != nil {
		return err
	}
	if pem == "" {
		fmt.Fprintf(env.Stdout, "%s now trusts the system's CAs for %s\n", v.VIN, v.Server)
	} else {
		fmt.Fprintf(env.Stdout, "%s now trusts the CA in %s for %s\n", v.VIN, *caCert, v.Server)
	}
	return nil
}

func cmdUpdate(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("update", flag.ContinueOnError)
	simulate := fs.String("simulate", "", "faults to simulate, comma-separated (see roadsign-agent help)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	state, _, err := parseState(fs, args, env, 0, "roadsign-agent update --state DIR [--simulate FAULT,...] [--json]")
	if err != nil {
		return err
	}
	faults, err := fault.Parse(*simulate)
	if err != nil {
		return envflag.Usagef("--simulate: %v", err)
	}
	faults.Kill = env.Kill
	v, err := vehicle.Open(state, env.Now)
	if err != nil {
		return err
	}
	defer v.Close()
	a, err := newAgent(v, faults, env)
	if err != nil {
		return err
	}
	rep, err := a.Update(ctx)
	writeReport(env.Stdout, rep, *asJSON)
	return err
}

func cmdRun(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	interval := fs.Duration("interval", time.Hour, "time between check-ins")
	retryMin := fs.Duration("retry-min", 10*time.Second, "first retry after the server could not be reached (doubles up to --interval)")
	jitter := fs.Float64("jitter", 0.2, "spread each wait by up to this fraction")
	simulate := fs.String("simulate", "", "faults to simulate in every cycle, comma-separated (see roadsign-agent help)")
	state, _, err := parseState(fs, args, env, 0, "roadsign-agent run --state DIR [--interval 1h] [--retry-min 10s] [--jitter 0.2] [--simulate FAULT,...]")
	if err != nil {
		return err
	}
	if *interval <= 0 || *retryMin <= 0 || *jitter < 0 || *jitter >= 1 {
		return envflag.Usagef("--interval and --retry-min must be positive and --jitter in [0, 1)")
	}
	faults, err := fault.Parse(*simulate)
	if err != nil {
		return envflag.Usagef("--simulate: %v", err)
	}
	faults.Kill = env.Kill
	v, err := vehicle.OpenReadOnly(state, env.Now)
	if err != nil {
		return err
	}
	a, err := newAgent(v, faults, env)
	if err != nil {
		return err
	}
	a.Log = slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	a.Progress = io.Discard
	key, err := keys.Load(v.KeyPath())
	if err != nil {
		return fmt.Errorf("vehicle key: %w", err)
	}
	wctx, stopWake := context.WithCancel(ctx)
	defer stopWake()
	tlsCfg, err := v.TLS(key.Private)
	if err != nil {
		return fmt.Errorf("%w: %v", client.ErrUsage, err)
	}
	wakeups := wake.Start(wctx, a.API, v.VIN, key.Private, tlsCfg, env.Now, a.Log)
	return a.Run(ctx, agent.DaemonConfig{
		Interval: *interval, RetryMin: *retryMin, Jitter: *jitter, Sleep: download.DefaultPolicy().Sleep, Wake: wakeups.C,
		OnCycle: func(rep agent.Report, err error, wait time.Duration) {
			printReport(env.Stdout, rep)
			if err != nil {
				fmt.Fprintf(env.Stdout, "check-in failed: %v\n", err)
			}
			fmt.Fprintf(env.Stdout, "next check-in in %s\n", wait.Round(time.Second))
		},
	})
}

func newAgent(v *vehicle.Vehicle, faults fault.Set, env Env) (*agent.Agent, error) {
	policy := download.DefaultPolicy()
	if env.Policy != nil {
		policy = *env.Policy
	}
	key, err := keys.Load(v.KeyPath())
	if err != nil {
		return nil, fmt.Errorf("vehicle key: %w", err)
	}
	hc := download.NewHTTPClient()
	tlsCfg, err := v.TLS(key.Private)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", client.ErrUsage, err)
	}
	hc.Transport.(*http.Transport).TLSClientConfig = tlsCfg
	hc.Transport = faults.Transport(hc.Transport)
	now := faults.Clock(env.Now) // the vehicle's clock, right or (simulated) wrong
	return &agent.Agent{
		V: v, Client: hc, Progress: env.Stderr, Faults: faults, Policy: policy, Now: now,
		API: &api.Client{Base: v.Server, HTTP: hc, VIN: v.VIN, Key: key.Private, Now: now},
		Log: slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}, nil
}

// writeReport prints a cycle's report, as indented JSON or for people.
func writeReport(w io.Writer, rep agent.Report, asJSON bool) {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
		return
	}
	printReport(w, rep)
}

func printReport(w io.Writer, rep agent.Report) {
	for _, r := range rep.Recovery {
		fmt.Fprintf(w, "%s: recovered after an interruption: %s\n", r.Serial, r.What)
	}
	for _, e := range rep.ECUs {
		switch e.Outcome {
		case agent.Installed:
			fmt.Fprintf(w, "%s %s: %s -> %s installed\n", e.Type, e.Serial, e.From, e.To)
		case agent.UpToDate:
			fmt.Fprintf(w, "%s %s: %s is up to date", e.Type, e.Serial, e.From)
			if e.Detail != "" {
				fmt.Fprintf(w, " (%s)", e.Detail)
			}
			fmt.Fprintln(w)
		default:
			fmt.Fprintf(w, "%s %s: %s %s -> %s: %s\n", e.Type, e.Serial, e.Outcome, e.From, e.To, e.Detail)
		}
	}
}

func cmdStatus(args []string, env Env) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON (the shape is in docs/cli.md)")
	state, _, err := parseState(fs, args, env, 0, "roadsign-agent status --state DIR [--json]")
	if err != nil {
		return err
	}
	v, err := vehicle.OpenReadOnly(state, env.Now)
	if err != nil {
		return err
	}
	st, err := agent.VehicleStatus(v)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	signal := "signal: not read yet"
	if st.SignalBars >= 0 {
		signal = fmt.Sprintf("signal: %d bars", st.SignalBars)
	}
	fmt.Fprintf(env.Stdout, "VIN %s   authorization: %s   %s   DTCs: %s   time: %s\n", st.VIN, authDesc(st.Authorization), signal, dtcs(st.DTCs), timeDesc(st.Time))
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ECU\tSERIAL\tHARDWARE\tACTIVE\tVERSION\tSLOT A\tSLOT B\tLAST RESULT")
	for _, e := range st.ECUs {
		active := e.ActiveSlot
		if e.Trial {
			active += " (trial)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Type, e.Serial, e.HardwareID, active, e.Version,
			slotDesc(e.Slots["a"]), slotDesc(e.Slots["b"]), e.LastResult)
	}
	return tw.Flush()
}

func authDesc(a agent.AuthStatus) string {
	switch {
	case a.State == vehicle.Authorized && !a.ExpiresAt.IsZero():
		return fmt.Sprintf("%s until %s", a.State, a.ExpiresAt.Local().Format(time.DateTime))
	case a.Message != "":
		return a.State + " (" + a.Message + ")"
	}
	return a.State
}

func slotDesc(s *agent.SlotStatus) string {
	if s == nil {
		return "-"
	}
	return s.Version + " " + s.SHA256[:min(8, len(s.SHA256))]
}

func dtcs(d []vehicleauth.DTCEpisode) string {
	if len(d) == 0 {
		return "none"
	}
	var parts []string
	for _, x := range d {
		parts = append(parts, fmt.Sprintf("%s (%s since %s)", x.Code, x.Description, x.FirstSeen.Local().Format(time.DateTime)))
	}
	return strings.Join(parts, ", ")
}

// parseState declares --state on fs, parses args and requires --state.
func parseState(fs *flag.FlagSet, args []string, env Env, positional int, synopsis string) (string, []string, error) {
	state := fs.String("state", "", "state directory of the simulated vehicle")
	fs.SetOutput(env.Stderr)
	pos, err := envflag.Parse(fs, args, env.Getenv, positional, synopsis)
	if err != nil {
		return "", nil, err
	}
	if *state == "" {
		return "", nil, envflag.Usagef("--state DIR is required")
	}
	return *state, pos, nil
}

// openForCommand parses like parseState and opens the vehicle, taking its lock.
func openForCommand(fs *flag.FlagSet, args []string, env Env, positional int, synopsis string) (*vehicle.Vehicle, []string, error) {
	state, pos, err := parseState(fs, args, env, positional, synopsis)
	if err != nil {
		return nil, nil, err
	}
	v, err := vehicle.Open(state, env.Now)
	return v, pos, err
}

func cmdInstallUSB(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("install-usb", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	return withAgent(fs, args, env, 1, "roadsign-agent install-usb --state DIR BUNDLE", func(a *agent.Agent, pos []string) error {
		b, err := usb.Open(pos[0], a.V.Dir)
		if err != nil {
			return err
		}
		defer b.Close()
		rep, err := a.InstallUSB(ctx, b)
		writeReport(env.Stdout, rep, *asJSON)
		if err == nil && !*asJSON {
			fmt.Fprintln(env.Stdout, "installed from USB; the install is reported at the next online check-in")
		}
		return err
	})
}

// withAgent parses args with fs (plus --state), opens the vehicle (taking
// its lock) and runs fn with an agent for it and the positional arguments.
func withAgent(fs *flag.FlagSet, args []string, env Env, positional int, synopsis string, fn func(a *agent.Agent, pos []string) error) error {
	v, pos, err := openForCommand(fs, args, env, positional, synopsis)
	if err != nil {
		return err
	}
	defer v.Close()
	a, err := newAgent(v, fault.Set{}, env)
	if err != nil {
		return err
	}
	return fn(a, pos)
}

func cmdReauthorize(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("reauthorize", flag.ContinueOnError)
	return withAgent(fs, args, env, 0, "roadsign-agent reauthorize --state DIR", func(a *agent.Agent, _ []string) error {
		st, err := a.Reauthorize(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "connected services authorized until %s\n", st.ExpiresAt.Local().Format(time.DateTime))
		return nil
	})
}

func cmdLinkCode(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("link-code", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, `print {"vin", "code", "expiresAt"} as JSON`)
	return withAgent(fs, args, env, 0, "roadsign-agent link-code --state DIR [--json]", func(a *agent.Agent, _ []string) error {
		code, exp, err := a.API.LinkCode(ctx)
		if err != nil {
			return fmt.Errorf("get a link code: %w", err)
		}
		if *asJSON {
			return json.NewEncoder(env.Stdout).Encode(map[string]any{"vin": a.V.VIN, "code": code, "expiresAt": exp})
		}
		fmt.Fprintf(env.Stdout, "link code for %s: %s (valid until %s, once)\n", a.V.VIN, code, exp.Local().Format(time.TimeOnly))
		return nil
	})
}

func cmdReplaceECU(args []string, env Env) error {
	fs := flag.NewFlagSet("replace-ecu", flag.ContinueOnError)
	old := fs.String("serial", "", "serial of the ECU being replaced")
	n := fs.String("new-serial", "", "serial of the new ECU")
	hw := fs.String("hardware-id", "", "hardware ID of the new ECU")
	fw := fs.String("firmware", "", "factory firmware of the new ECU (boots from slot A)")
	sec := fs.String("secondary", "", "the new ECU is a secondary on the vehicle network: NEW_SERIAL=HOST:PORT (instead of --new-serial, --hardware-id and --firmware)")
	v, _, err := openForCommand(fs, args, env, 0, "roadsign-agent replace-ecu --state DIR --serial OLD (--new-serial NEW --hardware-id HWID --firmware FILE | --secondary NEW=HOST:PORT)")
	if err != nil {
		return err
	}
	defer v.Close()
	ne := vehicle.ECUConfig{Serial: *n, HardwareID: *hw}
	switch {
	case *sec != "" && (*n != "" || *hw != "" || *fw != ""):
		return envflag.Usagef("replace-ecu takes --secondary, or --new-serial, --hardware-id and --firmware, not both")
	case *sec != "" && !v.Keyed():
		return envflag.Usagef("--secondary: this vehicle's ECUs have no keys of their own (it was made without --secondary); fit a unit it runs itself")
	case *sec != "":
		if *old == "" {
			return envflag.Usagef("replace-ecu needs --serial")
		}
		if ne, err = secondaryECU(*sec, v.VIN); err != nil {
			return err
		}
		*n = ne.Serial
	case *old == "" || *n == "" || *hw == "" || *fw == "":
		return envflag.Usagef("replace-ecu needs --serial, --new-serial, --hardware-id and --firmware")
	}
	pub, err := v.ReplaceECU(*old, ne, *fw)
	if err != nil {
		return fmt.Errorf("%w: %v", client.ErrUsage, err)
	}
	what := "a new vehicle key"
	if v.Keyed() && *old != v.Primary && *n != v.Primary {
		what = "its own key (the vehicle key is unchanged)"
	}
	fmt.Fprintf(env.Stdout, "fitted %s in place of %s with %s; the dealer re-provisions it:\n", *n, *old, what)
	fmt.Fprintf(env.Stdout, "publicKey %s\n", base64.StdEncoding.EncodeToString(pub))
	return nil
}

func cmdClientCert(args []string, env Env) error {
	fs := flag.NewFlagSet("client-cert", flag.ContinueOnError)
	certFile := fs.String("cert", "", "PEM certificate issued for this vehicle's key by the CA the server trusts (--client-ca)")
	v, _, err := openForCommand(fs, args, env, 0, "roadsign-agent client-cert --state DIR --cert FILE")
	if err != nil {
		return err
	}
	defer v.Close()
	if *certFile == "" {
		return envflag.Usagef("client-cert needs --cert FILE")
	}
	b, err := os.ReadFile(*certFile)
	if err != nil {
		return envflag.Usagef("--cert: %v", err)
	}
	if err := v.SetClientCert(b); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "installed the client certificate for %s; requests to %s now present it\n", v.VIN, v.Server)
	return nil
}

// timeDesc says whether the vehicle holds a trusted time.
func timeDesc(t agent.TimeStatus) string {
	switch {
	case t.State == "trusted":
		return "trusted"
	case t.Untrusted != "":
		return "untrusted (" + t.Untrusted + ")"
	case !t.Floor.IsZero():
		return "untrusted until the next attestation (floor " + t.Floor.Local().Format(time.DateTime) + ")"
	}
	return "untrusted until the first attestation"
}
