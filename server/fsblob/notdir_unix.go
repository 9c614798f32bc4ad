package fsblob

import "syscall"

// errNotDir is what opening "a/b" returns when "a" is a file.
var errNotDir = syscall.ENOTDIR
