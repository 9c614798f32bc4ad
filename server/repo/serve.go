package repo

import (
	"context"
	"errors"
	"io"
	"net/url"
	"path"
	"strings"
	"time"

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
	case strings.HasPrefix(name, "sealed/"):
		if !sealedNameRE.MatchString(name) {
			return nil, server.Errorf(server.KindNotFound, "no such sealed file %q", name)
		}
		f.Kind = Immutable
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

// Presigner is a blob store that can hand out short-lived URLs to read a
// blob straight from it (S3).
type Presigner interface {
	PresignGet(ctx context.Context, key string, ttl time.Duration) (*url.URL, error)
}

// redirectTTL is how long a presigned target URL works: long enough for a
// slow download to start and resume (each resume asks the server again).
const redirectTTL = 15 * time.Minute

// presigner is the blob store under b (and its wrappers) that presigns
// URLs, for target redirects (Config.Redirects).
func presigner(b server.BlobStore) (Presigner, error) {
	for {
		if p, ok := b.(Presigner); ok {
			return p, nil
		}
		u, ok := b.(interface{ Unwrap() server.BlobStore })
		if !ok {
			return nil, errors.New("target redirects need a blob store that presigns URLs (s3://...)")
		}
		b = u.Unwrap()
	}
}

// TargetRedirect is where to send a client for the target file name, when
// redirects are on (ok false otherwise, or for anything but a target).
// The client trusts only the target's signed length and hashes, wherever
// the bytes come from.
func (r *Repo) TargetRedirect(ctx context.Context, name string) (string, bool, error) {
	name = strings.TrimPrefix(name, "/")
	target := strings.HasPrefix(name, "targets/") && targetFileRE.FindStringSubmatch(path.Base(name)) != nil
	if r.presign == nil || !(target || sealedNameRE.MatchString(name)) || server.CheckBlobKey(name) != nil {
		return "", false, nil
	}
	u, err := r.presign.PresignGet(ctx, imagePrefix+name, redirectTTL)
	if err != nil {
		return "", false, err
	}
	r.m.redirects.Inc()
	return u.String(), true, nil
}
