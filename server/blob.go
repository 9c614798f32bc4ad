package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// ErrBlobNotFound is returned by a BlobStore for a key it does not hold.
var ErrBlobNotFound = errors.New("blob not found")

// BlobInfo describes a stored blob.
type BlobInfo struct {
	Size    int64
	ModTime time.Time
}

// BlobStore keeps the repository's files: metadata and target images.
// Implementations stream; none holds a whole blob in memory.
type BlobStore interface {
	// Put stores exactly size bytes read from r under key, replacing any
	// blob there. It is atomic: if r fails or ends early nothing changes,
	// and readers see either the old blob or the whole new one.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Open returns the blob's content, seekable for Range requests.
	// It returns ErrBlobNotFound for a missing key before any byte is read.
	Open(ctx context.Context, key string) (io.ReadSeekCloser, BlobInfo, error)
	// Stat returns ErrBlobNotFound for a missing key.
	Stat(ctx context.Context, key string) (BlobInfo, error)
	// Delete removes key; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// Ping reports whether the store is reachable (for /readyz).
	Ping(ctx context.Context) error
}

// CheckBlobKey rejects keys that could escape the store or are ambiguous:
// empty, absolute, with empty, "." or ".." segments, or backslashes.
func CheckBlobKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") || strings.ContainsAny(key, "\\\x00") {
		return fmt.Errorf("invalid blob key %q", key)
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("invalid blob key %q", key)
		}
	}
	return nil
}

// ReadBlob reads a whole small blob (metadata), refusing more than limit bytes.
func ReadBlob(ctx context.Context, bs BlobStore, key string, limit int64) ([]byte, error) {
	r, info, err := bs.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if info.Size > limit {
		return nil, fmt.Errorf("blob %s is %d bytes, over the %d-byte limit", key, info.Size, limit)
	}
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", key, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("blob %s is over the %d-byte limit", key, limit)
	}
	return b, nil
}

// PutBytes stores a small blob.
func PutBytes(ctx context.Context, bs BlobStore, key string, b []byte) error {
	return bs.Put(ctx, key, strings.NewReader(string(b)), int64(len(b)))
}
