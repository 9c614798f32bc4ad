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
	"syscall"
	"time"

	"github.com/roadsign/roadsign/internal/atomicfile"
	"github.com/roadsign/roadsign/server/sqlite"
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
	return m, atomicfile.SyncDir(filepath.Dir(o.Out))
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
	// PublishedAt is the first publish after the restore: until then,
	// vehicles that saw targets or roots published after the backup refuse
	// the older ones the restored server has.
	PublishedAt time.Time `json:"publishedAt,omitzero"`
}

// Load reads DATA/restored.json; ok is false for a server never restored.
func Load(data string) (r Restored, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(data, RestoredFile))
	if errors.Is(err, fs.ErrNotExist) {
		return r, false, nil
	}
	if err != nil {
		return r, false, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, false, fmt.Errorf("%s: %w", RestoredFile, err)
	}
	return r, true, nil
}

// MarkPublished records the first publish after a restore (nothing for a
// server never restored, or one already published to).
func MarkPublished(data string, at time.Time) error {
	r, ok, err := Load(data)
	if err != nil || !ok || !r.PublishedAt.IsZero() {
		return err
	}
	r.PublishedAt = at.UTC()
	b, _ := json.MarshalIndent(r, "", "  ")
	return atomicfile.Write(filepath.Join(data, RestoredFile), append(b, '\n'), 0o600)
}

// PublishNeeded is what a restored server says until the signer publishes
// to it again.
const PublishNeeded = "restored from a backup: publish again from the signer's workspace (roadsign-signer publish); until then vehicles that saw anything published after the backup refuse the older metadata this server has"

// RestoreOptions say what to restore where.
type RestoreOptions struct {
	From  string
	Data  string
	Force bool
	Now   func() time.Time
}

// ErrNotEmpty refuses to restore over existing data without Force.
var ErrNotEmpty = errors.New("data directory is not empty")

// Restore unpacks an archive into o.Data (blobs into DATA/blobs). It
// reads the archive twice: first only its headers, to refuse before
// writing anything an archive that is not a Roadsign backup, names a file
// outside the data directory, or declares more than the disk has room for
// (or far more than an archive of its size holds: a decompression bomb);
// then it writes each file, never more than its header declares, with
// modes of its own (0600 files, 0700 directories; the archive's are
// ignored), into a directory beside o.Data that takes o.Data's place only
// when everything is written. A failed restore leaves o.Data as it was.
func Restore(o RestoreOptions) (Manifest, error) {
	var m Manifest
	if entries, err := os.ReadDir(o.Data); err == nil && len(entries) > 0 && !o.Force {
		return m, fmt.Errorf("%w: %s; restore into a new directory, or give --force to replace what is there", ErrNotEmpty, o.Data)
	}
	st, err := os.Stat(o.From)
	if err != nil {
		return m, fmt.Errorf("open backup: %w", err)
	}
	m, declared, err := scan(o.From, maxExpansion*st.Size()+expansionSlack)
	if err != nil {
		return m, err
	}
	parent := filepath.Dir(filepath.Clean(o.Data))
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return m, err
	}
	if free, err := freeBytes(parent); err == nil && declared+diskReserve > free {
		return m, fmt.Errorf("%s needs %d bytes and %s has %d free (keeping %d in reserve): free some space or restore elsewhere",
			o.From, declared, parent, free, diskReserve)
	}
	stage, err := os.MkdirTemp(parent, "."+filepath.Base(o.Data)+".restore-*")
	if err != nil {
		return m, err
	}
	defer os.RemoveAll(stage) // gone once renamed; a failed restore leaves nothing
	if err := extractAll(o.From, stage, declared); err != nil {
		return m, err
	}
	now := o.Now().UTC()
	r := Restored{RestoredAt: now, BackupCreatedAt: m.CreatedAt, From: o.From, VersionFloor: now.Unix()}
	b, _ := json.MarshalIndent(r, "", "  ")
	if err := atomicfile.Write(filepath.Join(stage, RestoredFile), append(b, '\n'), 0o600); err != nil {
		return m, err
	}
	return m, swapIn(stage, o.Data)
}

// Restore's limits: an archive's files may add up to maxExpansion times
// its size plus expansionSlack (a database compresses perhaps tenfold,
// firmware hardly at all; gzip's most is about a thousandfold), and
// diskReserve bytes stay free after it.
const (
	maxExpansion   = 100
	expansionSlack = 64 << 20
	diskReserve    = 64 << 20
)

// scan reads an archive's headers and its manifest: the bytes its files
// declare, after checking every name. It stops as soon as they add up to
// more than limit, before reading through the entry that does.
func scan(from string, limit int64) (Manifest, int64, error) {
	var m Manifest
	var declared int64
	seen := false
	err := eachEntry(from, func(h *tar.Header, r io.Reader) error {
		if h.Name == manifestName {
			if err := json.NewDecoder(io.LimitReader(r, 1<<20)).Decode(&m); err != nil {
				return fmt.Errorf("backup manifest: %w", err)
			}
			seen = true
			return nil
		}
		if _, err := target("", h.Name); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			if h.Size < 0 {
				return fmt.Errorf("backup entry %q declares a negative size", h.Name)
			}
			declared += h.Size
			if declared > limit {
				return fmt.Errorf("%s declares %d bytes of files by %q, more than %d times its own size: refusing what looks like a decompression bomb",
					from, declared, h.Name, maxExpansion)
			}
		}
		return nil
	})
	if err != nil {
		return m, 0, err
	}
	if !seen {
		return m, 0, fmt.Errorf("%s has no %s: not a Roadsign backup", from, manifestName)
	}
	return m, declared, nil
}

// extractAll writes the archive's files under dir, at most budget bytes
// in all (what the headers declared when scanned).
func extractAll(from, dir string, budget int64) error {
	return eachEntry(from, func(h *tar.Header, r io.Reader) error {
		if h.Name == manifestName || h.Typeflag != tar.TypeReg {
			return nil
		}
		if h.Size > budget {
			return fmt.Errorf("backup entry %q is larger than the archive declared when it was read: it changed while being restored", h.Name)
		}
		budget -= h.Size
		dest, err := target(dir, h.Name)
		if err != nil {
			return err
		}
		return extract(io.LimitReader(r, h.Size), dest, h.Size)
	})
}

// eachEntry calls fn with each entry of a gzipped tar archive.
func eachEntry(from string, fn func(*tar.Header, io.Reader) error) error {
	f, err := os.Open(from)
	if err != nil {
		return fmt.Errorf("open backup: %w", err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("%s is not a Roadsign backup (not gzip): %w", from, err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read backup %s: %w", from, err)
		}
		if err := fn(h, tr); err != nil {
			return err
		}
	}
}

// swapIn puts the restored directory stage in data's place: data, if
// there, moves aside first and is removed once stage is in.
func swapIn(stage, data string) error {
	old := ""
	if _, err := os.Stat(data); err == nil {
		old = stage + ".old"
		if err := os.Rename(data, old); err != nil {
			return fmt.Errorf("move %s aside: %w", data, err)
		}
	}
	if err := os.Rename(stage, data); err != nil {
		if old != "" {
			os.Rename(old, data)
		}
		return fmt.Errorf("put the restored data in %s: %w", data, err)
	}
	if old != "" {
		if err := os.RemoveAll(old); err != nil {
			return err
		}
	}
	return atomicfile.SyncDir(filepath.Dir(data))
}

// freeBytes is the space an unprivileged writer has left under dir.
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
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

// extract writes size bytes from r to dest, mode 0600 whatever the
// archive said (it holds private keys).
func extract(r io.Reader, dest string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(dest), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, r, size); err != nil {
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
	r, _, err := Load(data)
	return r.VersionFloor, err
}
