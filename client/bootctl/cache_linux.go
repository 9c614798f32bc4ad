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

// reserve allocates the slot's blocks for n bytes before the download
// starts, keeping the file's size: a slot that cannot hold the image
// fails now rather than after most of it was downloaded, and the writes
// land in allocated blocks instead of asking the file system for each.
// A file system that cannot preallocate is not an error: the writes
// allocate as they go.
func reserve(f *os.File, n int64) error {
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, n)
	if err == unix.EOPNOTSUPP || err == unix.ENOSYS {
		return nil
	}
	return err
}

// startWriteback asks the kernel to start writing [off, off+n) of the
// slot to its device, without waiting for it.
func startWriteback(f *os.File, off, n int64) {
	unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
