package e2e

import (
	"regexp"
	"strings"
	"testing"
)

// TestAttackListNamesRealTests: every test docs/attacks.md cites exists,
// and so does each subtest it names (t.Run names have their spaces as
// underscores), so the list cannot quietly outlive its tests.
func TestAttackListNamesRealTests(t *testing.T) {
	doc := readDoc(t, "docs/attacks.md")
	var src strings.Builder
	for _, f := range repoTestFiles(t) {
		src.WriteString(f.src)
	}
	all := src.String()
	cited := regexp.MustCompile("`((?:Test|Fuzz)\\w+)(/[^`]+)?`").FindAllStringSubmatch(doc, -1)
	if len(cited) < 12 {
		t.Fatalf("docs/attacks.md cites only %d tests", len(cited))
	}
	for _, c := range cited {
		if !strings.Contains(all, "func "+c[1]+"(") {
			t.Errorf("docs/attacks.md cites %s, which no test file defines", c[1])
		}
		if sub := strings.TrimPrefix(c[2], "/"); sub != "" && !strings.Contains(all, `"`+strings.ReplaceAll(sub, "_", " ")+`"`) {
			t.Errorf("docs/attacks.md cites %s/%s, but no test runs a subtest named %q", c[1], sub, strings.ReplaceAll(sub, "_", " "))
		}
	}
}
