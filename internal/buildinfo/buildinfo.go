// Package buildinfo is what every Roadsign program prints for --version:
// the version, commit and build date stamped in at build time by
// `make build` (-ldflags -X), or "devel" for a plain `go build` or
// `go install`.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set at build time with -ldflags "-X github.com/roadsign/roadsign/internal/buildinfo.Version=...".
var (
	Version = "devel"
	Commit  = ""
	Date    = ""
)

// String is the --version line for program, e.g.
// "roadsign-agent 0.2.0 (commit 1a2b3c4d5e6f, built 2026-11-29T10:00:00Z, go1.26.8)".
func String(program string) string {
	commit, date := Commit, Date
	if commit == "" {
		// A plain `go build` in a checkout still records the revision.
		commit = vcsRevision()
	}
	if commit == "" {
		commit = "unknown"
	}
	if date == "" {
		date = "unknown"
	}
	return fmt.Sprintf("%s %s (commit %s, built %s, %s)", program, Version, commit, date, runtime.Version())
}

func vcsRevision() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" && dirty {
		rev += "-dirty"
	}
	return rev
}
