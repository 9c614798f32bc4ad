package repo

import (
	"context"
	"errors"
	"io"
	"path"
	"strings"

	"github.com/roadsign/roadsign/server"
)

// FileKind says how a repository file may be cached.
type FileKind int

// File kinds.
const (
	// Mutable files (timestamp.json, root.json) must be revalidated.
	Mutable FileKind = iota
	// Immutable files (versioned metadata, hash-prefixed targets) never change.
	Immutable
	// Target is an immutable, content-addressed target file.
	Target
)

// File is an opened repository file.
type File struct {
	io.ReadSeekCloser
	server.BlobInfo
	Kind FileKind
	// SHA256 is the hex digest from a target's consistent-snapshot name.
	SHA256 string
	// ETag is a strong validator of the content, when known.
	ETag string
}

// Open opens a file of the image repository by its path under /repo/.
// The head (timestamp, root, current snapshot and targets) comes from
// memory; targets and older versions from the blob store.
func (r *Repo) Open(ctx context.Context, name string) (*File, error) {
	name = strings.TrimPrefix(name, "/")
	if f, ok, err := r.openCached(ctx, name); err != nil || ok {
		return f, err
	}
	return openRepoFile(ctx, r.blobs, imagePrefix, name)
}

func openRepoFile(ctx context.Context, blobs server.BlobStore, prefix, name string) (*File, error) {
	name = strings.TrimPrefix(name, "/")
	if err := server.CheckBlobKey(name); err != nil {
		return nil, server.Errorf(server.KindNotFound, "no such repository file %q", name)
	}
	f := &File{Kind: Mutable}
	switch {
	case strings.HasPrefix(name, "targets/"):
		m := targetFileRE.FindStringSubmatch(path.Base(name))
		if m == nil {
			return nil, server.Errorf(server.KindNotFound, "no such target file %q (want targets/[DIR/]SHA256.NAME)", name)
		}
		f.Kind, f.SHA256 = Target, m[1]
	case name == "timestamp.json" || name == "root.json":
	default:
		if _, _, ok := ParseVersionedName(name); !ok || strings.Contains(name, "/") {
			return nil, server.Errorf(server.KindNotFound, "no such repository file %q", name)
		}
		f.Kind = Immutable
	}
	rc, info, err := blobs.Open(ctx, prefix+name)
	if err != nil {
		if errors.Is(err, server.ErrBlobNotFound) {
			return nil, server.Errorf(server.KindNotFound, "no such repository file %q", name)
		}
		return nil, err
	}
	f.ReadSeekCloser, f.BlobInfo = rc, info
	return f, nil
}
