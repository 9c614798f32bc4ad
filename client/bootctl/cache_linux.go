package bootctl

import (
	"os"

	"golang.org/x/sys/unix"
)

// dropCache tells the kernel that the slot's bytes in [off, off+n) are
// not needed in the page cache any more. They must be clean (fsynced):
// dirty pages are not dropped. A slot is written and read once, in order;
// keeping a gigabyte of it cached only pushes out what the vehicle's
// programs use, and recycling the same few megabytes of cache is faster
// than taking fresh pages for every byte.
func dropCache(f *os.File, off, n int64) {
	if n > 0 {
		unix.Fadvise(int(f.Fd()), off, n, unix.FADV_DONTNEED)
	}
}
