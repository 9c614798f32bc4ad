// Package tufcli is roadsign-tuf-client: the client command-line protocol
// of the public TUF conformance suite (init, refresh, download), run on the
// agent's own TUF code (client/tufclient for metadata, client/download for
// streamed targets), so the suite tests what vehicles run.
package tufcli

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/client/tufclient"
	"github.com/roadsign/roadsign/internal/atomicfile"
	"github.com/roadsign/roadsign/internal/buildinfo"
	"github.com/roadsign/roadsign/internal/exitcode"
)

// Env is the process environment Run works in.
type Env struct {
	Stdout, Stderr io.Writer
	// Now is the reference time for expiry. The suite runs clients under
	// faketime, which does not reach Go's clock, so main asks date(1).
	Now func() (time.Time, error)
}

const usage = `usage: roadsign-tuf-client --metadata-dir DIR [flags] COMMAND

commands (the TUF conformance suite's client protocol):
  init ROOT | init --trusted-root ROOT   trust ROOT (copied to DIR/root.json)
  refresh   --metadata-url URL           update the top-level metadata
  download  --metadata-url URL --target-name PATH ... --target-base-url URL --target-dir DIR
                                         refresh, then fetch and verify each target
  uptane-vectors --vectors-url URL --ecu-serial ID --hardware-id ID [--vector NAME ...]
                                         run the tuf-test-vectors suite's Uptane vectors
                                         (docs/conformance.md); --metadata-dir optional here

exit codes: 0 ok, 1 any failure (2 for a usage error).`

type options struct {
	metadataDir, metadataURL, trustedRoot string
	targetBaseURL, targetDir              string
	targetNames                           []string
}

type repeated struct{ v *[]string }

func (r repeated) String() string     { return "" }
func (r repeated) Set(s string) error { *r.v = append(*r.v, s); return nil }

// Run runs the client with args (without the program name).
func Run(ctx context.Context, args []string, env Env) int {
	log := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var o options
	fs := flag.NewFlagSet("roadsign-tuf-client", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() { fmt.Fprintf(env.Stderr, "%s\n\nflags:\n", usage); fs.PrintDefaults() }
	fs.StringVar(&o.metadataDir, "metadata-dir", "", "trusted metadata directory")
	fs.StringVar(&o.metadataURL, "metadata-url", "", "repository metadata URL")
	fs.StringVar(&o.trustedRoot, "trusted-root", "", "initial root.json (init)")
	fs.StringVar(&o.targetBaseURL, "target-base-url", "", "repository targets URL")
	fs.StringVar(&o.targetDir, "target-dir", "", "where verified targets are stored")
	fs.Var(repeated{&o.targetNames}, "target-name", "target path to download (repeatable)")
	var vo vectorsOptions
	fs.StringVar(&vo.server, "vectors-url", "", "uptane-vectors: the tuf-test-vectors server, e.g. http://127.0.0.1:8080")
	fs.StringVar(&vo.serial, "ecu-serial", "", "uptane-vectors: the ECU identifier the vectors were generated for")
	fs.StringVar(&vo.hardwareID, "hardware-id", "", "uptane-vectors: the hardware ID the vectors were generated for")
	fs.Var(repeated{&vo.only}, "vector", "uptane-vectors: run only this vector (repeatable)")
	if len(args) == 1 && args[0] == "--version" {
		fmt.Fprintln(env.Stdout, buildinfo.String("roadsign-tuf-client"))
		return exitcode.OK
	}
	// Flags may come before and after the command.
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return exitcode.OK
	} else if err != nil {
		return exitcode.Usage
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(env.Stderr, usage)
		return exitcode.Usage
	}
	cmd := fs.Arg(0)
	if err := fs.Parse(fs.Args()[1:]); errors.Is(err, flag.ErrHelp) {
		return exitcode.OK
	} else if err != nil {
		return exitcode.Usage
	}
	rest := fs.Args()
	if cmd == "uptane-vectors" {
		if vo.server == "" || vo.serial == "" || vo.hardwareID == "" {
			fmt.Fprintln(env.Stderr, "roadsign-tuf-client: uptane-vectors needs --vectors-url URL, --ecu-serial ID and --hardware-id ID")
			return exitcode.Usage
		}
		vo.work = o.metadataDir
		if vo.work == "" {
			dir, err := os.MkdirTemp("", "roadsign-uptane-vectors-")
			if err != nil {
				fmt.Fprintf(env.Stderr, "roadsign-tuf-client: %v\n", err)
				return exitcode.Error
			}
			defer os.RemoveAll(dir)
			vo.work = dir
		}
		if err := uptaneVectors(ctx, vo, env, slog.New(slog.DiscardHandler)); err != nil {
			fmt.Fprintf(env.Stderr, "roadsign-tuf-client: uptane-vectors: %v\n", err)
			return exitcode.Error
		}
		return exitcode.OK
	}
	if o.metadataDir == "" {
		fmt.Fprintln(env.Stderr, "roadsign-tuf-client: --metadata-dir DIR is required")
		return exitcode.Usage
	}
	var err error
	switch cmd {
	case "init":
		if o.trustedRoot == "" && len(rest) == 1 {
			o.trustedRoot = rest[0]
		}
		if o.trustedRoot == "" {
			fmt.Fprintln(env.Stderr, "roadsign-tuf-client: init needs the trusted root file: init ROOT")
			return exitcode.Usage
		}
		err = initialize(o)
	case "refresh", "download":
		if o.metadataURL == "" {
			fmt.Fprintf(env.Stderr, "roadsign-tuf-client: %s needs --metadata-url URL\n", cmd)
			return exitcode.Usage
		}
		if cmd == "download" && (o.targetBaseURL == "" || o.targetDir == "" || len(o.targetNames) == 0) {
			fmt.Fprintln(env.Stderr, "roadsign-tuf-client: download needs --target-name PATH, --target-base-url URL and --target-dir DIR")
			return exitcode.Usage
		}
		err = refreshAndDownload(ctx, o, env, log)
	default:
		fmt.Fprintf(env.Stderr, "roadsign-tuf-client: unknown command %q\n%s\n", cmd, usage)
		return exitcode.Usage
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "roadsign-tuf-client: %s: %v\n", cmd, err)
		return exitcode.Error
	}
	return exitcode.OK
}

// initialize trusts the given root as is: the protocol expects no checks
// here (the first refresh verifies it against itself).
func initialize(o options) error {
	b, err := os.ReadFile(o.trustedRoot)
	if err != nil {
		return fmt.Errorf("read trusted root: %w", err)
	}
	if _, err := metadata.Root().FromBytes(b); err != nil {
		return fmt.Errorf("%s is not root metadata: %w", o.trustedRoot, err)
	}
	if err := os.MkdirAll(o.metadataDir, 0o700); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(o.metadataDir, "root.json"), b, 0o600)
}

func refreshAndDownload(ctx context.Context, o options, env Env, log *slog.Logger) error {
	now, err := env.Now()
	if err != nil {
		return fmt.Errorf("reference time: %w", err)
	}
	repo := &tufclient.Repo{Name: "tuf", Dir: o.metadataDir, MetadataURL: o.metadataURL,
		Client: download.NewHTTPClient(), Log: log, Now: func() time.Time { return now }}
	trusted, err := repo.Refresh(ctx)
	if err != nil {
		return err
	}
	log.Info("refreshed", "root", trusted.Version(metadata.ROOT), "timestamp", trusted.Version(metadata.TIMESTAMP),
		"snapshot", trusted.Version(metadata.SNAPSHOT), "targets", trusted.Version(metadata.TARGETS))
	for _, name := range o.targetNames {
		if err := fetchTarget(ctx, trusted, o, name, log); err != nil {
			return err
		}
	}
	return nil
}

// fetchTarget resolves name through the delegations, and unless a file
// with the signed length and hashes is already there, streams it through
// every signed hash into a temporary file that is renamed into place only
// once it verifies.
func fetchTarget(ctx context.Context, trusted *tufclient.Trusted, o options, name string, log *slog.Logger) error {
	tf, err := trusted.TargetInfo(name)
	if err != nil {
		return fmt.Errorf("target %s: %w", name, err)
	}
	if err := os.MkdirAll(o.targetDir, 0o755); err != nil {
		return err
	}
	local := filepath.Join(o.targetDir, url.QueryEscape(name))
	if f, err := os.Open(local); err == nil {
		err := verify(f, tf)
		f.Close()
		if err == nil {
			log.Info("target already downloaded", "target", name)
			return nil
		}
	}
	rel := name
	if trusted.ConsistentSnapshot() {
		alg, sum, err := prefixHash(tf.Hashes)
		if err != nil {
			return fmt.Errorf("target %s: %w", name, err)
		}
		log.Debug("consistent snapshot target name", "hash", alg)
		dir, base := filepath.Split(name)
		rel = dir + sum + "." + base
	}
	h, err := newTargetHash(tf)
	if err != nil {
		return fmt.Errorf("target %s: %w", name, err)
	}
	tmp, err := os.CreateTemp(o.targetDir, ".download-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	p := download.DefaultPolicy()
	p.MaxAttempts = 2
	res, err := download.Fetch(ctx, download.NewHTTPClient(), download.Target{
		URL: strings.TrimRight(o.targetBaseURL, "/") + "/" + rel, Length: tf.Length, W: io.MultiWriter(tmp, h)}, p)
	if err != nil {
		return fmt.Errorf("target %s: %w", name, err)
	}
	if !res.Done {
		return fmt.Errorf("target %s: the server's file is shorter than the signed %d bytes", name, tf.Length)
	}
	if err := h.check(); err != nil {
		return fmt.Errorf("target %s: %w; not stored", name, err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), local); err != nil {
		return err
	}
	log.Info("target downloaded and verified", "target", name, "bytes", tf.Length)
	return nil
}

var hashes = map[string]func() hash.Hash{"sha256": sha256.New, "sha512": sha512.New}

// prefixHash picks the hash that names the file on a consistent-snapshot
// repository (sha256 when signed, so the choice is stable).
func prefixHash(h metadata.Hashes) (string, string, error) {
	if v, ok := h["sha256"]; ok {
		return "sha256", hex.EncodeToString(v), nil
	}
	algs := make([]string, 0, len(h))
	for a := range h {
		algs = append(algs, a)
	}
	sort.Strings(algs)
	if len(algs) == 0 {
		return "", "", errors.New("signed metadata lists no hash")
	}
	return algs[0], hex.EncodeToString(h[algs[0]]), nil
}

// targetHash takes a target's bytes through every signed hash.
type targetHash struct {
	tf   *metadata.TargetFiles
	sums map[string]hash.Hash
	w    io.Writer
	n    int64
}

// newTargetHash refuses metadata without a hash or with an algorithm it
// does not know: every signed hash must match.
func newTargetHash(tf *metadata.TargetFiles) (*targetHash, error) {
	if len(tf.Hashes) == 0 {
		return nil, errors.New("signed metadata lists no hash")
	}
	h := &targetHash{tf: tf, sums: map[string]hash.Hash{}}
	var ws []io.Writer
	for alg := range tf.Hashes {
		mk, ok := hashes[alg]
		if !ok {
			return nil, fmt.Errorf("signed hash algorithm %q is not supported (sha256, sha512 are)", alg)
		}
		h.sums[alg] = mk()
		ws = append(ws, h.sums[alg])
	}
	h.w = io.MultiWriter(ws...)
	return h, nil
}

func (h *targetHash) Write(p []byte) (int, error) {
	h.n += int64(len(p))
	return h.w.Write(p)
}

// check compares what went through with the signed length and hashes.
func (h *targetHash) check() error {
	if h.n != h.tf.Length {
		return fmt.Errorf("length %d, signed %d", h.n, h.tf.Length)
	}
	for alg, s := range h.sums {
		if got := hex.EncodeToString(s.Sum(nil)); got != hex.EncodeToString(h.tf.Hashes[alg]) {
			return fmt.Errorf("%s %s does not match the signed %s", alg, got, hex.EncodeToString(h.tf.Hashes[alg]))
		}
	}
	return nil
}

// verify reads r (at most one byte past the signed length) through every
// signed hash.
func verify(r io.Reader, tf *metadata.TargetFiles) error {
	h, err := newTargetHash(tf)
	if err != nil {
		return err
	}
	if _, err := io.Copy(h, io.LimitReader(r, tf.Length+1)); err != nil {
		return err
	}
	return h.check()
}

// DateNow asks date(1) for the time: under faketime, the time the suite set.
func DateNow() (time.Time, error) {
	out, err := exec.Command("date", "+%s").Output()
	if err != nil {
		return time.Time{}, fmt.Errorf("run date: %w", err)
	}
	s, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse date output %q: %w", out, err)
	}
	return time.Unix(s, 0), nil
}
