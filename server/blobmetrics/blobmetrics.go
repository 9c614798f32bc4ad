// Package blobmetrics counts a blob store's operations on /metrics
// (roadsign_blob_operations_total{op,result}), so an operator sees what
// the fleet costs the store, and a test can prove what it does not.
package blobmetrics

import (
	"context"
	"io"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roadsign/roadsign/server"
)

// Store is a server.BlobStore that counts what it is asked.
type Store struct {
	server.BlobStore
	ops *prometheus.CounterVec
}

// Wrap counts b's operations in reg.
func Wrap(b server.BlobStore, reg prometheus.Registerer) *Store {
	s := &Store{BlobStore: b, ops: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "roadsign_blob_operations_total", Help: "Blob store operations by kind and result.",
	}, []string{"op", "result"})}
	if reg != nil {
		reg.MustRegister(s.ops)
	}
	return s
}

func (s *Store) count(op string, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	s.ops.WithLabelValues(op, result).Inc()
}

// Put implements server.BlobStore.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	err := s.BlobStore.Put(ctx, key, r, size)
	s.count("put", err)
	return err
}

// Open implements server.BlobStore.
func (s *Store) Open(ctx context.Context, key string) (io.ReadSeekCloser, server.BlobInfo, error) {
	rc, info, err := s.BlobStore.Open(ctx, key)
	s.count("open", err)
	return rc, info, err
}

// Stat implements server.BlobStore.
func (s *Store) Stat(ctx context.Context, key string) (server.BlobInfo, error) {
	info, err := s.BlobStore.Stat(ctx, key)
	s.count("stat", err)
	return info, err
}

// Delete implements server.BlobStore.
func (s *Store) Delete(ctx context.Context, key string) error {
	err := s.BlobStore.Delete(ctx, key)
	s.count("delete", err)
	return err
}

// Unwrap returns the counted store (for its optional abilities, such as
// presigned URLs).
func (s *Store) Unwrap() server.BlobStore { return s.BlobStore }
