package e2e

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestMakeFuzzRunsEveryTarget: the Makefile's FUZZ_TARGETS names every
// Fuzz function in the repository, in its package, so `make fuzz` runs
// them all.
func TestMakeFuzzRunsEveryTarget(t *testing.T) {
	mk := readDoc(t, "Makefile")
	m := regexp.MustCompile(`(?s)FUZZ_TARGETS := (.*?)\nfuzz:`).FindStringSubmatch(mk)
	if m == nil {
		t.Fatal("the Makefile has no FUZZ_TARGETS list before its fuzz target")
	}
	listed := strings.Fields(strings.ReplaceAll(m[1], "\\", " "))
	fuzzFunc := regexp.MustCompile(`(?m)^func (Fuzz\w+)\(f \*testing\.F\)`)
	var found []string
	for _, f := range repoTestFiles(t) {
		for _, m := range fuzzFunc.FindAllStringSubmatch(f.src, -1) {
			found = append(found, f.dir+":"+m[1])
		}
	}
	slices.Sort(found)
	slices.Sort(listed)
	if !slices.Equal(found, listed) {
		t.Fatalf("make fuzz runs %v\nthe repository has %v", listed, found)
	}
	if len(found) < 8 {
		t.Fatalf("only %d fuzz targets: %v", len(found), found)
	}
}

// testFile is one _test.go file of the repository: its package directory
// (slash-separated, from the root) and its source.
type testFile struct{ dir, src string }

// repoTestFiles reads every _test.go file of the repository, skipping
// hidden directories (.git, .tools).
func repoTestFiles(t *testing.T) []testFile {
	t.Helper()
	var out []testFile
	root := filepath.Join("..", "..")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != root && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(p))
		out = append(out, testFile{dir: filepath.ToSlash(rel), src: string(b)})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
