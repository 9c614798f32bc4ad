//go:build !linux

package bootctl

import "os"

// dropCache is a no-op where posix_fadvise is not available.
func dropCache(f *os.File, off, n int64) {}

// reserve is a no-op where fallocate is not available: the writes
// allocate the slot's blocks as they go.
func reserve(f *os.File, n int64) error { return nil }

// startWriteback is a no-op where sync_file_range is not available: the
// checkpoints' fsyncs write the slot.
func startWriteback(f *os.File, off, n int64) {}
