// Package fsblob is a BlobStore on the local file system: the embedded
// default. Writes go to a temporary file that is fsynced and renamed into
// place, so a crash never leaves a half-written blob.
package fsblob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/roadsign/roadsign/server"
)

// Store keeps blobs as files under a root directory.
type Store struct {
	root string
}

var _ server.BlobStore = (*Store)(nil)

// tmpDir holds uploads in progress; it is on the same file system as the
// blobs so that rename is atomic, and no valid key can name it.
const tmpDir = ".tmp"

// New returns a store rooted at dir, creating it if needed.
func New(dir string) (*Store, error) {
	if err := os.MkdirAll(filepath.Join(dir, tmpDir), 0o755); err != nil {
		return nil, fmt.Errorf("blob store %s: %w", dir, err)
	}
	return &Store{root: dir}, nil
}

func (s *Store) path(key string) (string, error) {
	if err := server.CheckBlobKey(key); err != nil {
		return "", err
	}
	if key == tmpDir || filepath.Dir(filepath.FromSlash(key)) == tmpDir {
		return "", fmt.Errorf("invalid blob key %q", key)
	}
	return filepath.Join(s.root, filepath.FromSlash(key)), nil
}

// Put implements server.BlobStore.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Join(s.root, tmpDir), "put-*")
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, io.LimitReader(ctxReader{ctx, r}, size))
	if err == nil && n != size {
		err = fmt.Errorf("got %d of %d bytes: %w", n, size, io.ErrUnexpectedEOF)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	d, err := os.Open(filepath.Dir(p))
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	defer d.Close()
	return d.Sync()
}

// Open implements server.BlobStore.
func (s *Store) Open(ctx context.Context, key string) (io.ReadSeekCloser, server.BlobInfo, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, server.BlobInfo{}, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, server.BlobInfo{}, mapErr(key, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, server.BlobInfo{}, fmt.Errorf("stat %s: %w", key, err)
	}
	if st.IsDir() {
		f.Close()
		return nil, server.BlobInfo{}, fmt.Errorf("open %s: %w", key, server.ErrBlobNotFound)
	}
	return f, server.BlobInfo{Size: st.Size(), ModTime: st.ModTime()}, nil
}

// Stat implements server.BlobStore.
func (s *Store) Stat(ctx context.Context, key string) (server.BlobInfo, error) {
	p, err := s.path(key)
	if err != nil {
		return server.BlobInfo{}, err
	}
	st, err := os.Stat(p)
	if err != nil {
		return server.BlobInfo{}, mapErr(key, err)
	}
	if st.IsDir() {
		return server.BlobInfo{}, fmt.Errorf("stat %s: %w", key, server.ErrBlobNotFound)
	}
	return server.BlobInfo{Size: st.Size(), ModTime: st.ModTime()}, nil
}

// Delete implements server.BlobStore.
func (s *Store) Delete(ctx context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// Ping implements server.BlobStore.
func (s *Store) Ping(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(s.root, tmpDir)); err != nil {
		return fmt.Errorf("blob store: %w", err)
	}
	return nil
}

func mapErr(key string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrInvalid) {
		return fmt.Errorf("%s: %w", key, server.ErrBlobNotFound)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && errors.Is(pe.Err, errNotDir) {
		return fmt.Errorf("%s: %w", key, server.ErrBlobNotFound)
	}
	return fmt.Errorf("%s: %w", key, err)
}

// ctxReader stops a long copy when the request is canceled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
