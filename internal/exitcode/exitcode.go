// Package exitcode holds the exit codes every Roadsign program uses
// (docs/cli.md): scripts rely on them.
package exitcode

const (
	// OK: the command did what it was asked.
	OK = 0
	// Error: anything else went wrong (I/O, an unreachable server, ...).
	Error = 1
	// Usage: bad flags or arguments; nothing was done.
	Usage = 2
	// Refused: a security check failed (a signature, a hash, a certificate);
	// nothing unverified was used.
	Refused = 3
	// RolledBack: an install failed and the ECU is back on its previous
	// image (roadsign-agent).
	RolledBack = 4
)
