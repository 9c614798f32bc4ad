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
	root := filepath.Join("..", "..")
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != root && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir // .git, .tools
		}
		if d.IsDir() || !strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, filepath.Dir(p))
		for _, f := range fuzzFunc.FindAllStringSubmatch(string(b), -1) {
			found = append(found, filepath.ToSlash(rel)+":"+f[1])
		}
		return nil
	})
	slices.Sort(found)
	slices.Sort(listed)
	if !slices.Equal(found, listed) {
		t.Fatalf("make fuzz runs %v\nthe repository has %v", listed, found)
	}
	if len(found) < 8 {
		t.Fatalf("only %d fuzz targets: %v", len(found), found)
	}
}
