// Package gobuild builds Roadsign's programs the way they ship: static,
// without cgo, then the signer again with cgo, where the host can, for
// its PKCS#11 keys, always with -trimpath (so every build of the same
// target shares the compiled packages in Go's build cache: make test
// builds for amd64 and arm64 in several tests). make release (internal/release) and the programs the
// tests and benchmarks run (internal/testsupport) both build through it,
// so what is measured is what ships.
package gobuild

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Build is how to run go build: in Dir (the module's folder; "" for the
// current one), with Env added to the environment (GOOS, GOARCH) and
// Flags before the packages (-ldflags …), after -trimpath.
type Build struct {
	Dir   string
	Env   []string
	Flags []string
}

// Programs builds pkgs into the folder out with one go build (it links
// them in parallel), without cgo; then ./cmd/roadsign-signer again with
// cgo when the target and the host are amd64 and gcc is found.
func (b Build) Programs(out string, pkgs ...string) error {
	if err := b.run("0", out+string(filepath.Separator), pkgs...); err != nil {
		return err
	}
	if b.goarch() != "amd64" || runtime.GOARCH != "amd64" {
		return nil
	}
	if _, err := exec.LookPath("gcc"); err != nil {
		return nil
	}
	return b.run("1", filepath.Join(out, "roadsign-signer"), "./cmd/roadsign-signer")
}

// goarch is the target architecture.
func (b Build) goarch() string {
	arch := runtime.GOARCH
	for _, e := range b.Env {
		if v, ok := strings.CutPrefix(e, "GOARCH="); ok {
			arch = v
		}
	}
	return arch
}

func (b Build) run(cgo, out string, pkgs ...string) error {
	args := append(append([]string{"build", "-trimpath"}, b.Flags...), "-o", out)
	cmd := exec.Command("go", append(args, pkgs...)...)
	cmd.Dir = b.Dir
	cmd.Env = append(append(os.Environ(), b.Env...), "CGO_ENABLED="+cgo)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s for %s (CGO_ENABLED=%s): %v\n%s", strings.Join(pkgs, " "), b.goarch(), cgo, err, msg)
	}
	return nil
}
