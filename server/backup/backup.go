// Package backup writes and restores a server's data: a consistent
// snapshot of the SQLite database (taken with VACUUM INTO while the
// server runs), the local blobs, and the online keys, as one gzipped tar
// archive with a manifest. With PostgreSQL pg_dump owns the database and
// with S3 the bucket's own versioning or replication owns the blobs; the
// archive then holds the rest and its manifest says so.
//
// A restored server must never sign a version of any metadata that is
// not above every version the lost server served, or vehicles that saw
// those would refuse it as a rollback. Restore records its time; the
// server then signs each online role's next version at no less than that
// time in Unix seconds (VersionFloor). Versions before were counters that
// grow by one per signing from 1, far below it, unless a server signed
// more than once a second on average since its previous restore.
package backup

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/roadsign/roadsign/server/sqlite"
	"github.com/roadsign/roadsign/signer/keys"
)

const (
	manifestName = "roadsign-backup.json"
	// RestoredFile in the data directory marks a restored server.
	RestoredFile = "restored.json"
	dbName       = "roadsign.db"
	blobsDir     = "blobs"
)

// Manifest describes an archive.
type Manifest struct {
	Format    int       `json:"format"`
	CreatedAt time.Time `json:"createdAt"`
	// Database is "sqlite" when the archive holds it, else who owns it.
	Database string `json:"database"`
	// Blobs is "local" when the archive holds them, else who owns them.
	Blobs string   `json:"blobs"`
	Files int      `json:"files"`
	Notes []string `json:"notes,omitempty"`
}

// Options say what to back up.
type Options struct {
	Data string
	Out  string
	// External names the database when it is not SQLite in Data
	// (a postgres:// URL); empty for SQLite.
	Database string
	// BlobDir is where local blobs live ("" for DATA/blobs); S3 is set
	// when blobs are in a bucket instead.
	BlobDir string
	S3      bool
	Now     func() time.Time
}

// Create writes the archive to o.Out (through a temporary file renamed at
// the end: a failed backup leaves no half-written archive).
func Create(ctx context.Context, o Options) (Manifest, error) {
	m := Manifest{Format: 1, CreatedAt: o.Now().UTC(), Database: "sqlite", Blobs: "local"}
	if st, err := os.Stat(filepath.Join(o.Data, "keys")); err != nil || !st.IsDir() {
		return m, fmt.Errorf("%s holds no server data (no keys directory); give the server's --data", o.Data)
	}
	tmp, err := os.CreateTemp(filepath.Dir(o.Out), "."+filepath.Base(o.Out)+".tmp-*")
	if err != nil {
		return m, fmt.Errorf("create %s: %w", o.Out, err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := tmp.Chmod(0o600); err != nil { // it holds private keys
		return m, err
	}
	gz := gzip.NewWriter(tmp)
	tw := tar.NewWriter(gz)

	// The database first: blobs it refers to were written before it.
	if o.Database == "" {
		snap, err := os.MkdirTemp("", "roadsign-backup-")
		if err != nil {
			return m, err
		}
		defer os.RemoveAll(snap)
		p := filepath.Join(snap, dbName)
		if err := sqlite.Snapshot(ctx, filepath.Join(o.Data, dbName), p); err != nil {
			return m, err
		}
		if err := addFile(tw, p, dbName); err != nil {
			return m, err
		}
		m.Files++
	} else {
		m.Database = "external"
		m.Notes = append(m.Notes, "the database is PostgreSQL: back it up with pg_dump and restore it with pg_restore; this archive holds the online keys and the rest")
	}
	blobDir := o.BlobDir
	if blobDir == "" {
		blobDir = filepath.Join(o.Data, blobsDir)
	}
	if o.S3 {
		m.Blobs = "external"
		m.Notes = append(m.Notes, "the blobs are in S3: keep the bucket versioned or replicated; this archive does not copy it")
	} else {
		n, err := addTree(tw, blobDir, blobsDir, nil)
		if err != nil {
			return m, err
		}
		m.Files += n
	}
	// The online keys and everything else in the data directory.
	skip := func(rel string) bool {
		return rel == blobsDir || strings.HasPrefix(rel, dbName) || rel == RestoredFile
	}
	n, err := addTree(tw, o.Data, "data", skip)
	if err != nil {
		return m, err
	}
	m.Files += n
	mb, _ := json.MarshalIndent(m, "", "  ")
	if err := tw.WriteHeader(&tar.Header{Name: manifestName, Mode: 0o600, Size: int64(len(mb)), ModTime: m.CreatedAt, Typeflag: tar.TypeReg}); err != nil {
		return m, err
	}
	if _, err := tw.Write(mb); err != nil {
		return m, err
	}
	if err := tw.Close(); err != nil {
		return m, err
	}
	if err := gz.Close(); err != nil {
		return m, err
	}
	if err := tmp.Sync(); err != nil {
		return m, err
	}
	if err := tmp.Close(); err != nil {
		return m, err
	}
	if err := os.Rename(tmp.Name(), o.Out); err != nil {
		return m, fmt.Errorf("write %s: %w", o.Out, err)
	}
	return m, keys.SyncDir(filepath.Dir(o.Out))
}

// addTree adds the regular files under dir as prefix/REL, skipping
// temporary files and what skip names.
func addTree(tw *tar.Writer, dir, prefix string, skip func(string) bool) (int, error) {
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == dir {
				return filepath.SkipDir
			}
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") || (skip != nil && skip(filepath.ToSlash(rel))) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if err := addFile(tw, p, path.Join(prefix, filepath.ToSlash(rel))); err != nil {
			return err
		}
		n++
		return nil
	})
	return n, err
}

func addFile(tw *tar.Writer, file, name string) error {
	f, err := os.Open(file)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while we walked (a blob replaced)
		}
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: int64(st.Mode().Perm()), Size: st.Size(), ModTime: st.ModTime(), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := io.CopyN(tw, f, st.Size()); err != nil {
		return fmt.Errorf("back up %s: %w", file, err)
	}
	return nil
}

// Restored is DATA/restored.json.
type Restored struct {
	RestoredAt      time.Time `json:"restoredAt"`
	BackupCreatedAt time.Time `json:"backupCreatedAt"`
	From            string    `json:"from"`
	// VersionFloor is the least version the server signs for any online
	// role from now on (see the package comment).
	VersionFloor int64 `json:"versionFloor"`
}

// RestoreOptions say what to restore where.
type RestoreOptions struct {
	From  string
	Data  string
	Force bool
	Now   func() time.Time
}

// ErrNotEmpty refuses to restore over existing data without Force.
var ErrNotEmpty = errors.New("data directory is not empty")

// Restore unpacks an archive into o.Data (blobs into DATA/blobs).
func Restore(o RestoreOptions) (Manifest, error) {
	var m Manifest
	if entries, err := os.ReadDir(o.Data); err == nil && len(entries) > 0 {
		if !o.Force {
			return m, fmt.Errorf("%w: %s; restore into a new directory, or give --force to replace what is there", ErrNotEmpty, o.Data)
		}
		for _, e := range entries {
			if err := os.RemoveAll(filepath.Join(o.Data, e.Name())); err != nil {
				return m, err
			}
		}
	}
	if err := os.MkdirAll(o.Data, 0o700); err != nil {
		return m, err
	}
	f, err := os.Open(o.From)
	if err != nil {
		return m, fmt.Errorf("open backup: %w", err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		return m, fmt.Errorf("%s is not a Roadsign backup (not gzip): %w", o.From, err)
	}
	tr := tar.NewReader(gz)
	seen := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return m, fmt.Errorf("read backup %s: %w", o.From, err)
		}
		if h.Name == manifestName {
			if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(&m); err != nil {
				return m, fmt.Errorf("backup manifest: %w", err)
			}
			seen = true
			continue
		}
		dest, err := target(o.Data, h.Name)
		if err != nil {
			return m, err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if err := extract(tr, dest, os.FileMode(h.Mode).Perm()); err != nil {
			return m, err
		}
	}
	if !seen {
		return m, fmt.Errorf("%s has no %s: not a Roadsign backup", o.From, manifestName)
	}
	now := o.Now().UTC()
	r := Restored{RestoredAt: now, BackupCreatedAt: m.CreatedAt, From: o.From, VersionFloor: now.Unix()}
	b, _ := json.MarshalIndent(r, "", "  ")
	return m, keys.WriteFileAtomic(filepath.Join(o.Data, RestoredFile), append(b, '\n'), 0o600)
}

// target maps an archive name into the data directory, refusing any name
// that would land outside it.
func target(data, name string) (string, error) {
	clean := path.Clean(name)
	if clean != name || path.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("backup entry %q escapes the data directory; refusing the archive", name)
	}
	switch {
	case clean == dbName:
		return filepath.Join(data, dbName), nil
	case strings.HasPrefix(clean, blobsDir+"/"):
		return filepath.Join(data, filepath.FromSlash(clean)), nil
	case strings.HasPrefix(clean, "data/"):
		return filepath.Join(data, filepath.FromSlash(strings.TrimPrefix(clean, "data/"))), nil
	}
	return "", fmt.Errorf("backup entry %q is not part of a Roadsign backup", name)
}

func extract(r io.Reader, dest string, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dest), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("restore %s: %w", dest, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Floor reads the version floor of a restored data directory (0 if it
// was never restored).
func Floor(data string) (int64, error) {
	b, err := os.ReadFile(filepath.Join(data, RestoredFile))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var r Restored
	if err := json.Unmarshal(b, &r); err != nil {
		return 0, fmt.Errorf("%s: %w", RestoredFile, err)
	}
	return r.VersionFloor, nil
}
