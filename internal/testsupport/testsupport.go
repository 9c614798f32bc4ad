// Package testsupport is what several test packages share: the real
// programs, built once per test binary, and small helpers. Only tests
// import it.
package testsupport

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/gobuild"
	"github.com/roadsign/roadsign/internal/vin"
)

// Root is the repository's top folder (the one holding go.mod), found
// from the test's working folder.
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the test's folder")
		}
		dir = parent
	}
}

// builds are the program folders built in this test binary, by ldflags.
var builds struct {
	mu   sync.Mutex
	dirs map[string]*build
}

type build struct {
	once sync.Once
	dir  string
	err  error
}

// Programs builds every program of ./cmd once per test binary (a plain go
// build: --version says devel) and returns the folder holding them.
func Programs() (string, error) { return StampedPrograms("") }

// StampedPrograms is Programs built with these -ldflags (for example the
// version stamps make build sets), once per distinct ldflags.
func StampedPrograms(ldflags string) (string, error) {
	builds.mu.Lock()
	if builds.dirs == nil {
		builds.dirs = map[string]*build{}
	}
	b := builds.dirs[ldflags]
	if b == nil {
		b = &build{}
		builds.dirs[ldflags] = b
	}
	builds.mu.Unlock()
	b.once.Do(func() {
		root, err := Root()
		if err != nil {
			b.err = err
			return
		}
		if b.dir, b.err = os.MkdirTemp("", "roadsign-programs-"); b.err != nil {
			return
		}
		// As they ship (static, the signer with cgo), so the agent
		// measured is the one that ships.
		build := gobuild.Build{Dir: root}
		if ldflags != "" {
			build.Flags = []string{"-ldflags", ldflags}
		}
		b.err = build.Programs(b.dir, "./cmd/...")
	})
	return b.dir, b.err
}

// MustPrograms is Programs for a test: a build error fails tb.
func MustPrograms(tb testing.TB) string {
	tb.Helper()
	dir, err := Programs()
	if err != nil {
		tb.Fatal(err)
	}
	return dir
}

// Clean removes every program folder built; TestMain calls it after the
// tests ran.
func Clean() {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	for _, b := range builds.dirs {
		if b.dir != "" {
			os.RemoveAll(b.dir)
		}
	}
	builds.dirs = nil
}

// LockedBuffer is a bytes.Buffer that several goroutines may write (a
// server's log) while a test reads it.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String is what was written so far.
func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Epoch is a fixed time tests sign and check metadata against.
var Epoch = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

// VIN is v (17 characters) with its check digit (position 9) set, so
// that it validates.
func VIN(v string) string {
	d, err := vin.CheckDigit(v)
	if err != nil {
		panic(err)
	}
	return v[:8] + string(d) + v[9:]
}
