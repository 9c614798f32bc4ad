//go:build !linux

package bootctl

import "os"

// dropCache is a no-op where posix_fadvise is not available.
func dropCache(f *os.File, off, n int64) {}
