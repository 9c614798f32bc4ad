//go:build !cgo

package hsm

import (
	"errors"

	"github.com/roadsign/roadsign/internal/keys"
)

// Supported reports whether this build can use PKCS#11 tokens.
const Supported = false

var errNoCgo = errors.New("this roadsign-signer was built without cgo and cannot load a PKCS#11 module; use a build with CGO_ENABLED=1")

// Open needs cgo.
func Open(string) (*keys.Key, error) { return nil, errNoCgo }

// Generate needs cgo.
func Generate(string) (*keys.Key, error) { return nil, errNoCgo }
