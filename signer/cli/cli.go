// Package cli is roadsign-signer's command line; cmd/roadsign-signer only
// calls Run.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/envflag"
	"github.com/roadsign/roadsign/internal/exitcode"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/tlsconf"
	"github.com/roadsign/roadsign/signer"
	"github.com/roadsign/roadsign/signer/hsm"
)

// Env is the process environment Run works in.
type Env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	Now            func() time.Time
}

const usage = `usage: roadsign-signer COMMAND WORKSPACE [flags]

commands:
  init     WORKSPACE --online-keys FILE [--root-keys 3 --root-threshold 2]
  add      WORKSPACE FILE --ecu head-unit|dcm --hardware-id ID... --version SEMVER [--release-counter N] [--release-notes TEXT] [--requires TYPE>=VERSION]...
  delta    WORKSPACE --from TARGET --to TARGET [--hardware-id ID]   make and sign a delta offline
  publish  WORKSPACE --server URL --token TOKEN
  status   WORKSPACE [--json]
  rotate   WORKSPACE --role root|targets [--repository image|director] [--root-keys N --root-threshold M]
  extend   WORKSPACE --role root|targets [--repository image|director]   re-sign with a fresh expiry, keys unchanged

multi-party (each holder keeps their own key; changes are staged for them to sign):
  keygen   --out FILE|pkcs11:URI [--pub FILE]     create a holder's key, print its public key and ID
  init     WORKSPACE --online-keys FILE --root-key PUB... --root-threshold M --targets-key PUB... --targets-threshold M
  sign     WORKSPACE --key FILE|pkcs11:URI        add one holder's signature to the staged metadata
  rotate   WORKSPACE --role root --root-key PUB... [--root-threshold M] | --role targets --targets-key PUB... [--targets-threshold M]
  status   WORKSPACE                              also shows who has signed the staged metadata and who is missing
  publish  refuses while staged metadata is below a threshold

'roadsign-signer COMMAND --help' lists a command's flags.`

// Run runs roadsign-signer with args (without the program name).
func Run(ctx context.Context, args []string, env Env) int {
	if env.Now == nil {
		env.Now = time.Now
	}
	err := run(ctx, args, env)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitcode.OK
	case errors.As(err, new(envflag.UsageError)), errors.Is(err, signer.ErrUsage):
		fmt.Fprintf(env.Stderr, "roadsign-signer: %v\n", strings.TrimPrefix(err.Error(), "usage: "))
		return exitcode.Usage
	case errors.Is(err, signer.ErrSecurity):
		fmt.Fprintf(env.Stderr, "roadsign-signer: %v\n", err)
		return exitcode.Refused
	default:
		fmt.Fprintf(env.Stderr, "roadsign-signer: %v\n", err)
		return exitcode.Error
	}
}

func run(ctx context.Context, args []string, env Env) error {
	return envflag.Dispatch("roadsign-signer", usage, args, env.Stdout, map[string]func([]string) error{
		"init":    func(a []string) error { return cmdInit(a, env) },
		"add":     func(a []string) error { return cmdAdd(a, env) },
		"delta":   func(a []string) error { return cmdDelta(ctx, a, env) },
		"publish": func(a []string) error { return cmdPublish(ctx, a, env) },
		"status":  func(a []string) error { return cmdStatus(a, env) },
		"rotate":  func(a []string) error { return cmdRotate(a, env) },
		"keygen":  func(a []string) error { return cmdKeygen(a, env) },
		"sign":    func(a []string) error { return cmdSign(a, env) },
		"extend":  func(a []string) error { return cmdExtend(a, env) },
	})
}

func parse(fs *flag.FlagSet, args []string, env Env, positional int, synopsis string) ([]string, error) {
	fs.SetOutput(env.Stderr)
	return envflag.Parse(fs, args, env.Getenv, positional, synopsis)
}

func cmdInit(args []string, env Env) error {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	online := fs.String("online-keys", "", "the server's online-keys.json (from roadsign-server init)")
	n := fs.Int("root-keys", 3, "number of root keys for each repository")
	m := fs.Int("root-threshold", 2, "signatures of root keys needed to sign a root")
	rootExp := fs.Duration("root-expiry", 365*24*time.Hour, "lifetime of root metadata")
	targetsExp := fs.Duration("targets-expiry", 365*24*time.Hour, "lifetime of targets metadata (cars park for months)")
	var holders holderFlags
	holders.register(fs, "multi-party: a root key holder's public key file (repeat per holder)", "multi-party: a targets key holder's public key file (repeat per holder)")
	tm := fs.Int("targets-threshold", 1, "multi-party: signatures of targets keys needed to sign targets")
	pos, err := parse(fs, args, env, 1, "roadsign-signer init WORKSPACE --online-keys FILE [--root-keys 3 --root-threshold 2 | --root-key PUB... --root-threshold M --targets-key PUB... --targets-threshold M]")
	if err != nil {
		return err
	}
	if *online == "" {
		return envflag.Usagef("init needs --online-keys FILE (written by roadsign-server init)")
	}
	b, err := os.ReadFile(*online)
	if err != nil {
		return envflag.Usagef("--online-keys: %v", err)
	}
	var ok meta.OnlineKeys
	if err := json.Unmarshal(b, &ok); err != nil {
		return envflag.Usagef("--online-keys %s: not an online-keys.json: %v", *online, err)
	}
	rootHolders, targetsHolders, err := holders.load()
	if err != nil {
		return err
	}
	w, err := signer.Init(pos[0], signer.InitOptions{
		OnlineKeys: ok, RootKeys: *n, RootThreshold: *m, RootExpiry: *rootExp, TargetsExpiry: *targetsExp,
		RootHolders: rootHolders, TargetsHolders: targetsHolders, TargetsThreshold: *tm,
	}, env.Now)
	if err != nil {
		return err
	}
	if w.MultiParty() {
		fmt.Fprintf(env.Stdout, "created multi-party workspace %s: root %d-of-%d, targets %d-of-%d; no private keys are kept here\n",
			w.Dir, *m, len(rootHolders), *tm, len(targetsHolders))
		fmt.Fprintf(env.Stdout, "root v1 and targets v1 are staged in %s/staged: each holder runs roadsign-signer sign %s --key THEIR-KEY, then publish\n", w.Dir, w.Dir)
		return nil
	}
	fmt.Fprintf(env.Stdout, "created workspace %s: root keys %d-of-%d per repository, one targets key\n", w.Dir, *m, *n)
	fmt.Fprintf(env.Stdout, "provision vehicles with %s/image.root.json and %s/director.root.json\n", w.Dir, w.Dir)
	return nil
}

func cmdAdd(args []string, env Env) error {
	fs := flag.NewFlagSet("add", flag.ContinueOnError)
	var o signer.AddOptions
	var hw, requires envflag.List
	fs.StringVar(&o.ECU, "ecu", "", "ECU type: head-unit or dcm")
	fs.Var(&hw, "hardware-id", "hardware ID the image runs on (repeat for several)")
	fs.StringVar(&o.Version, "version", "", "firmware version (semantic version)")
	fs.Int64Var(&o.ReleaseCounter, "release-counter", 0, "anti-rollback counter (default: one above the highest for this ECU type)")
	fs.StringVar(&o.ReleaseNotes, "release-notes", "", "release notes shown to owners and dealers")
	fs.BoolVar(&o.AllowDowngrade, "allow-downgrade", false, "let a forced dealer job install this image over a newer one")
	fs.Var(&requires, "requires", "TYPE>=VERSION another ECU of the vehicle must run with this image (repeat for several)")
	pos, err := parse(fs, args, env, 2, "roadsign-signer add WORKSPACE FILE --ecu head-unit|dcm --hardware-id ID --version SEMVER")
	if err != nil {
		return err
	}
	o.File, o.HardwareIDs, o.Requires, o.Progress = pos[1], hw, requires, env.Stderr
	w, err := signer.Open(pos[0], env.Now)
	if err != nil {
		return err
	}
	res, err := w.Add(o)
	if err != nil {
		return err
	}
	if !res.Changed {
		fmt.Fprintf(env.Stdout, "%s is already signed (release counter %d, targets v%d); nothing changed\n", res.Path, res.ReleaseCounter, res.TargetsVersion)
		return nil
	}
	verb := "signed"
	if w.MultiParty() {
		verb = "staged (to be signed by the targets key holders)"
	}
	fmt.Fprintf(env.Stdout, "added %s (%d bytes, sha256 %s, release counter %d); %s targets v%d\n",
		res.Path, res.Length, res.SHA256, res.ReleaseCounter, verb, res.TargetsVersion)
	return nil
}

func cmdDelta(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("delta", flag.ContinueOnError)
	var o signer.DeltaOptions
	fs.StringVar(&o.From, "from", "", "target path of the image vehicles run (the delta's base), as add printed it")
	fs.StringVar(&o.To, "to", "", "target path of the image the delta rebuilds")
	fs.StringVar(&o.HardwareID, "hardware-id", "", "hardware ID the delta is for (needed when --to is for several)")
	pos, err := parse(fs, args, env, 1, "roadsign-signer delta WORKSPACE --from TARGET --to TARGET [--hardware-id ID]")
	if err != nil {
		return err
	}
	w, err := signer.Open(pos[0], env.Now)
	if err != nil {
		return err
	}
	res, err := w.Delta(ctx, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "delta %s: %d bytes (%.1f %% of the full image); targets v%d\n", res.Path, res.Length, res.Percent, res.TargetsVersion)
	return nil
}

func cmdPublish(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	var o signer.PublishOptions
	fs.StringVar(&o.Server, "server", "", "server URL, e.g. http://127.0.0.1:8080")
	fs.StringVar(&o.Token, "token", "", "admin bearer token")
	caCert := fs.String("ca-cert", "", "PEM CA certificate the server's TLS certificate must chain to")
	pos, err := parse(fs, args, env, 1, "roadsign-signer publish WORKSPACE --server URL --token TOKEN")
	if err != nil {
		return err
	}
	if *caCert != "" {
		tlsCfg, err := tlsconf.ClientFile(*caCert)
		if err != nil {
			return envflag.Usagef("%v", err)
		}
		o.Client = signer.NewHTTPClient()
		o.Client.Transport.(*http.Transport).TLSClientConfig = tlsCfg
	}
	o.Progress = env.Stderr
	w, err := signer.Open(pos[0], env.Now)
	if err != nil {
		return err
	}
	res, err := w.Publish(ctx, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "uploaded %d target file(s) (%d bytes), %d already on the server\n", res.Uploaded, res.UploadedBytes, res.AlreadyThere)
	if res.Changed {
		fmt.Fprintf(env.Stdout, "published: root v%d, targets v%d, snapshot v%d, timestamp v%d\n", res.RootVersion, res.Targets, res.Snapshot, res.Timestamp)
	} else {
		fmt.Fprintf(env.Stdout, "server already has this: root v%d, targets v%d; nothing changed\n", res.RootVersion, res.Targets)
	}
	return nil
}

func cmdStatus(args []string, env Env) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args, env, 1, "roadsign-signer status WORKSPACE [--json]")
	if err != nil {
		return err
	}
	w, err := signer.Open(pos[0], env.Now)
	if err != nil {
		return err
	}
	st, err := w.Status()
	if err != nil {
		return err
	}
	staged, err := w.StagedStatus()
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		if !w.MultiParty() {
			return enc.Encode(st)
		}
		return enc.Encode(map[string]any{"roles": st, "staged": staged})
	}
	defer printStaged(env.Stdout, staged)
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REPOSITORY\tROLE\tVERSION\tEXPIRES\tTHRESHOLD\tKEYS\tKEY IDS")
	now := env.Now()
	for _, r := range st {
		ver, exp := "-", "-"
		if r.Version > 0 {
			ver = fmt.Sprint(r.Version)
			exp = r.Expires.Format(time.DateOnly)
			if left := r.Expires.Sub(now); left < 30*24*time.Hour {
				exp += fmt.Sprintf(" (in %s!)", left.Round(time.Hour))
			}
		}
		kind := "offline"
		if r.Online {
			kind = "online"
		}
		ids := make([]string, len(r.KeyIDs))
		for i, id := range r.KeyIDs {
			ids[i] = id[:min(12, len(id))]
		}
		role := r.Role
		if r.Targets > 0 {
			role += fmt.Sprintf(" (%d images)", r.Targets)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.Repository, role, ver, exp, r.Threshold, kind, strings.Join(ids, " "))
	}
	return tw.Flush()
}

func cmdRotate(args []string, env Env) error {
	fs := flag.NewFlagSet("rotate", flag.ContinueOnError)
	role := fs.String("role", "", "role whose keys to replace: root or targets")
	repoName := fs.String("repository", signer.Image, "for --role root: image or director")
	n := fs.Int("root-keys", 0, "for --role root: number of new root keys (default: as now)")
	m := fs.Int("root-threshold", 0, "for --role root: new threshold (default: as now)")
	var holders holderFlags
	holders.register(fs, "multi-party, --role root: a new root key holder's public key file (repeat)", "multi-party, --role targets: a new targets key holder's public key file (repeat)")
	tm := fs.Int("targets-threshold", 0, "multi-party, --role targets: new threshold (default: as now)")
	online := fs.String("online-keys", "", "with --role root: the server's online-keys.json again, for the keys it gained since init (the director's time key: rotate the director root with it)")
	pos, err := parse(fs, args, env, 1, "roadsign-signer rotate WORKSPACE --role root|targets [--repository image|director] [--online-keys FILE]")
	if err != nil {
		return err
	}
	if *online != "" && *role != "root" {
		return envflag.Usagef("--online-keys goes with --role root")
	}
	rootHolders, targetsHolders, err := holders.load()
	if err != nil {
		return err
	}
	w, err := signer.Open(pos[0], env.Now)
	if err != nil {
		return err
	}
	if *online != "" {
		b, err := os.ReadFile(*online)
		if err != nil {
			return envflag.Usagef("--online-keys: %v", err)
		}
		var ok meta.OnlineKeys
		if err := json.Unmarshal(b, &ok); err != nil {
			return envflag.Usagef("--online-keys %s: not an online-keys.json: %v", *online, err)
		}
		if err := w.AdoptOnlineKeys(ok); err != nil {
			return err
		}
	}
	switch *role {
	case "root":
		v, err := w.RotateRoot(*repoName, *n, *m, rootHolders)
		if err != nil {
			return err
		}
		if w.MultiParty() {
			fmt.Fprintf(env.Stdout, "staged %s root v%d: it needs a threshold of the old and of the new root keys (roadsign-signer sign %s --key ...), then publish\n", *repoName, v, w.Dir)
			return nil
		}
		fmt.Fprintf(env.Stdout, "rotated %s root keys: root v%d is signed by the old and the new keys; publish it\n", *repoName, v)
	case "targets":
		if *repoName != signer.Image {
			return envflag.Usagef("--role targets applies to the image repository; the director's targets key is the server's online key")
		}
		rv, tv, err := w.RotateTargets(*tm, targetsHolders)
		if err != nil {
			return err
		}
		if w.MultiParty() {
			fmt.Fprintf(env.Stdout, "staged image root v%d listing the new targets keys and targets v%d signed by them: sign, then publish\n", rv, tv)
			return nil
		}
		fmt.Fprintf(env.Stdout, "rotated the targets key: root v%d lists it, targets v%d is signed with it; publish them\n", rv, tv)
	default:
		return envflag.Usagef("--role %q: want root or targets", *role)
	}
	return nil
}

func printStaged(out io.Writer, staged []signer.Staged) {
	if len(staged) == 0 {
		return
	}
	fmt.Fprintln(out, "\nSTAGED (not yet published)")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FILE\tVERSION\tSIGNERS\tNEEDED\tSIGNED\tMISSING")
	for _, s := range staged {
		for _, r := range s.Requirements {
			state := fmt.Sprintf("%d of %d", len(r.Signed), r.Threshold)
			if r.Met() {
				state += " ok"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", s.File, s.Version, r.Of, state, signer.ShortIDs(r.Signed), signer.ShortIDs(r.Missing))
		}
	}
	tw.Flush()
}

func cmdKeygen(args []string, env Env) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	out := fs.String("out", "", "new key: a file (ed25519, mode 0600) or a PKCS#11 URI (ECDSA P-256 made on the token)")
	pub := fs.String("pub", "", "where to write the public key (default: FILE.pub, or OBJECT.pub for a token)")
	if _, err := parse(fs, args, env, 0, "roadsign-signer keygen --out FILE|pkcs11:URI [--pub FILE]"); err != nil {
		return err
	}
	if *out == "" {
		return envflag.Usagef("keygen needs --out FILE or --out pkcs11:token=...;object=...?module-path=...&pin-source=...")
	}
	if *pub == "" {
		*pub = *out + ".pub"
		if hsm.IsURI(*out) {
			u, err := hsm.ParseURI(*out)
			if err != nil {
				return envflag.Usagef("--out: %v", err)
			}
			*pub = u.Object + ".pub"
		}
	}
	k, err := signer.GenerateKey(*out, *pub)
	if err != nil {
		return err
	}
	defer k.Close()
	fmt.Fprintf(env.Stdout, "created key %s (%s)\npublic key: %s\nkey ID: %s\n", *out, k.Public.Scheme, *pub, k.ID)
	return nil
}

func cmdSign(args []string, env Env) error {
	fs := flag.NewFlagSet("sign", flag.ContinueOnError)
	ref := fs.String("key", "", "your key: a key file or a PKCS#11 URI")
	pos, err := parse(fs, args, env, 1, "roadsign-signer sign WORKSPACE --key FILE|pkcs11:URI")
	if err != nil {
		return err
	}
	if *ref == "" {
		return envflag.Usagef("sign needs --key FILE or --key pkcs11:URI")
	}
	w, err := signer.Open(pos[0], env.Now)
	if err != nil {
		return err
	}
	k, err := signer.OpenKey(*ref)
	if err != nil {
		return err
	}
	defer k.Close()
	did, err := w.Sign(k)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "signed with key %s: %s\n", k.ID[:12], strings.Join(did, ", "))
	staged, err := w.StagedStatus()
	if err != nil {
		return err
	}
	printStaged(env.Stdout, staged)
	return nil
}

func cmdExtend(args []string, env Env) error {
	fs := flag.NewFlagSet("extend", flag.ContinueOnError)
	role := fs.String("role", "", "role to re-sign with a fresh expiry: root or targets")
	repoName := fs.String("repository", signer.Image, "image or director (targets: image only)")
	pos, err := parse(fs, args, env, 1, "roadsign-signer extend WORKSPACE --role root|targets [--repository image|director]")
	if err != nil {
		return err
	}
	w, err := signer.Open(pos[0], env.Now)
	if err != nil {
		return err
	}
	v, err := w.Extend(*role, *repoName)
	if err != nil {
		return err
	}
	verb := "signed"
	if w.MultiParty() {
		verb = "staged (sign it, then publish)"
	}
	fmt.Fprintf(env.Stdout, "%s %s v%d with a fresh expiry: %s\n", *repoName, *role, v, verb)
	return nil
}

// holderFlags are the holders' public key files of init and rotate.
type holderFlags struct{ root, targets envflag.List }

func (h *holderFlags) register(fs *flag.FlagSet, rootUsage, targetsUsage string) {
	fs.Var(&h.root, "root-key", rootUsage)
	fs.Var(&h.targets, "targets-key", targetsUsage)
}

func (h *holderFlags) load() (root, targets []*metadata.Key, err error) {
	if root, err = signer.LoadPublicKeys(h.root); err != nil {
		return nil, nil, err
	}
	targets, err = signer.LoadPublicKeys(h.targets)
	return root, targets, err
}
