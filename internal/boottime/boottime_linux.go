package boottime

import (
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Now reads CLOCK_BOOTTIME and the kernel's boot ID.
func Now() (Reading, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return Reading{}, err
	}
	id, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return Reading{}, err
	}
	return Reading{Boot: strings.TrimSpace(string(id)), Since: time.Duration(ts.Nano())}, nil
}
