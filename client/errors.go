// Package client is the in-vehicle agent: TUF verification of the image
// and director repositories, streaming downloads, the A/B installer,
// failure simulation and reporting. This package holds the error classes
// the agent's exit codes come from; the work is in the subpackages.
package client

import "errors"

// Error classes; wrap them with %w and test with errors.Is.
var (
	// ErrRefused: a security check failed and nothing was installed (exit 3).
	ErrRefused = errors.New("refused")
	// ErrRolledBack: an install failed and the ECU is back on its previous image (exit 4).
	ErrRolledBack = errors.New("rolled back")
	// ErrUsage: bad flags or arguments (exit 2).
	ErrUsage = errors.New("usage")
	// ErrUnreachable: the server could not be reached or answered 5xx
	// (exit 1; the daemon backs off and records DTC B15C4).
	ErrUnreachable = errors.New("server unreachable")
)
