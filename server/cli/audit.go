package cli

import (
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/roadsign/roadsign/internal/envflag"
	"github.com/roadsign/roadsign/server/auditlog"
	"github.com/roadsign/roadsign/server/repo"
	"github.com/roadsign/roadsign/server/sqlstore"
)

// cmdAuditVerify walks the audit log's hash chain and its signed
// checkpoints, in the database and in files outside it: exit 0 when
// intact, 1 naming the first entry altered, removed or reordered.
func cmdAuditVerify(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("roadsign-server audit verify", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	var c config
	var files envflag.List
	fs.StringVar(&c.data, "data", "./roadsign-data", "the server's data directory (SQLite, and online-keys.json to check signatures)")
	fs.StringVar(&c.database, "database", "", "the server's --database (postgres://...) instead of SQLite in --data")
	fs.Var(&files, "checkpoints", "a file of checkpoints kept outside the database (--audit-checkpoint-file, or audit export-checkpoints); repeatable: each checkpoint must still match the chain")
	fs.DurationVar(&c.auditCheckpoint, "audit-checkpoint-interval", 10*time.Minute, "the server's --audit-checkpoint-interval: with --checkpoints, the newest may be at most two intervals old")
	synopsis := "roadsign-server audit verify [--data DIR | --database URL] [--checkpoints FILE ...] [--audit-checkpoint-interval 10m]"
	if _, err := envflag.Parse(fs, args, env.Getenv, 0, synopsis); err != nil {
		return err
	}
	store, err := openAuditStore(ctx, c)
	if err != nil {
		return err
	}
	defer store.Close()
	o := auditlog.Options{MaxAge: 2 * c.auditCheckpoint, Now: time.Now()}
	if o.Pub, err = checkpointKey(c.data); err != nil {
		return err
	}
	for _, f := range files {
		cps, err := auditlog.ReadFile(f)
		if err != nil {
			return envflag.Usagef("--checkpoints: %v", err)
		}
		if len(cps) == 0 {
			return fmt.Errorf("--checkpoints %s holds no checkpoint: nothing outside the database vouches for the log", f)
		}
		o.External = append(o.External, cps...)
	}
	r, err := auditlog.Verify(ctx, store, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "audit log intact: %d entries (%d from before the chain), sealed by its genesis at seq %d, head seq %d\n", r.Entries, r.Legacy, r.GenesisSeq, r.HeadSeq)
	switch {
	case r.Checkpoints+r.External == 0:
		fmt.Fprintln(env.Stdout, "no signed checkpoint yet (the server signs one every --audit-checkpoint-interval)")
	case !r.SignaturesChecked:
		fmt.Fprintf(env.Stdout, "%d checkpoints match the chain; signatures were not checked (no %s in --data)\n", r.Checkpoints+r.External, repo.PublicKeysFile)
	default:
		fmt.Fprintf(env.Stdout, "%d signed checkpoints verified (%d in the database, %d outside it), the latest at seq %d (%s)\n",
			r.Checkpoints+r.External, r.Checkpoints, r.External, r.LatestCheckpoint.Seq, r.LatestCheckpoint.At.Format(time.RFC3339))
	}
	if len(files) == 0 {
		fmt.Fprintln(env.Stdout, "note: only the database's own checkpoints were checked; whoever can rewrite the database can rewrite those too: give --checkpoints FILE")
	}
	return nil
}

// cmdAuditExport writes the database's signed checkpoints to a file, to
// keep where the database's writers cannot reach.
func cmdAuditExport(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("roadsign-server audit export-checkpoints", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	var c config
	out := fs.String("out", "", "file to write (one checkpoint a line)")
	fs.StringVar(&c.data, "data", "./roadsign-data", "the server's data directory (SQLite)")
	fs.StringVar(&c.database, "database", "", "the server's --database (postgres://...) instead of SQLite in --data")
	if _, err := envflag.Parse(fs, args, env.Getenv, 0, "roadsign-server audit export-checkpoints [--data DIR | --database URL] --out FILE"); err != nil {
		return err
	}
	if *out == "" {
		return envflag.Usagef("audit export-checkpoints needs --out FILE")
	}
	store, err := openAuditStore(ctx, c)
	if err != nil {
		return err
	}
	defer store.Close()
	n, err := auditlog.Export(ctx, store, *out)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "exported %d audit checkpoints to %s\n", n, *out)
	return nil
}

// openAuditStore opens the store the audit commands read, refusing to
// create an empty SQLite database where none is.
func openAuditStore(ctx context.Context, c config) (*sqlstore.Store, error) {
	if c.database == "" {
		if _, err := os.Stat(filepath.Join(c.data, "roadsign.db")); err != nil {
			return nil, envflag.Usagef("no database at %s: give the server's --data or --database", filepath.Join(c.data, "roadsign.db"))
		}
	}
	return openStore(ctx, c, 0, nil)
}

// checkpointKey is the online key that signs audit checkpoints (the image
// timestamp key), from DATA/online-keys.json; nil when there is none.
func checkpointKey(data string) (ed25519.PublicKey, error) {
	pub, err := timestampKey(filepath.Join(data, repo.PublicKeysFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return pub, err
}
