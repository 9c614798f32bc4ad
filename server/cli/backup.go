package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/roadsign/roadsign/internal/envflag"
	"github.com/roadsign/roadsign/server/backup"
)

func cmdBackup(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("roadsign-server backup", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	var o backup.Options
	fs.StringVar(&o.Data, "data", "./roadsign-data", "the server's data directory (the server may keep running)")
	fs.StringVar(&o.Out, "out", "", "archive to write (gzipped tar; holds the online private keys: keep it like them)")
	fs.StringVar(&o.Database, "database", "", "the server's --database when it is PostgreSQL (pg_dump backs that up)")
	blob := fs.String("blob", "", "the server's --blob when it is not DATA/blobs")
	if _, err := envflag.Parse(fs, args, env.Getenv, 0, "roadsign-server backup --data DIR --out FILE"); err != nil {
		return err
	}
	if o.Out == "" {
		return envflag.Usagef("backup needs --out FILE")
	}
	if st, err := os.Stat(filepath.Dir(o.Out)); err != nil || !st.IsDir() {
		return envflag.Usagef("--out %s: the directory %s does not exist; create it or choose another", o.Out, filepath.Dir(o.Out))
	}
	switch {
	case *blob == "":
	case strings.HasPrefix(*blob, "file://"):
		o.BlobDir = strings.TrimPrefix(*blob, "file://")
	case strings.HasPrefix(*blob, "s3://"):
		o.S3 = true
	default:
		return envflag.Usagef("--blob %q: want file:///DIR or s3://BUCKET", *blob)
	}
	o.Now = time.Now
	m, err := backup.Create(ctx, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "backed up %s to %s: %d files (database: %s, blobs: %s)\n", o.Data, o.Out, m.Files, m.Database, m.Blobs)
	for _, n := range m.Notes {
		fmt.Fprintf(env.Stdout, "note: %s\n", n)
	}
	return nil
}

func cmdRestore(args []string, env Env) error {
	fs := flag.NewFlagSet("roadsign-server restore", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	var o backup.RestoreOptions
	fs.StringVar(&o.Data, "data", "", "data directory to restore into (new or empty)")
	fs.StringVar(&o.From, "from", "", "archive written by roadsign-server backup")
	fs.BoolVar(&o.Force, "force", false, "replace what the data directory holds")
	if _, err := envflag.Parse(fs, args, env.Getenv, 0, "roadsign-server restore --data DIR --from FILE [--force]"); err != nil {
		return err
	}
	if o.Data == "" || o.From == "" {
		return envflag.Usagef("restore needs --data DIR and --from FILE")
	}
	o.Now = time.Now
	m, err := backup.Restore(o)
	if errors.Is(err, backup.ErrNotEmpty) {
		return envflag.Usagef("%v", err)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "restored the backup of %s into %s; start roadsign-server serve --data %s: it signs every online role above what the old server served\n",
		m.CreatedAt.Format(time.RFC3339), o.Data, o.Data)
	fmt.Fprintln(env.Stdout, "then publish again from the signer's workspace (roadsign-signer publish WORKSPACE --server URL --token TOKEN): vehicles that saw anything published after this backup refuse the older metadata until then; /status and /readyz say so until it is done")
	for _, n := range m.Notes {
		fmt.Fprintf(env.Stdout, "note: %s\n", n)
	}
	return nil
}
