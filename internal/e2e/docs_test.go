package e2e

import (
	"github.com/roadsign/roadsign/client/fault"

	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func readDoc(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// docSection returns the part of a markdown document from heading to the
// next heading of the same or a higher level.
func docSection(doc, heading string) (string, bool) {
	level := strings.Index(heading, " ")
	i := strings.Index(doc, "\n"+heading+"\n")
	if i < 0 {
		return "", false
	}
	rest := doc[i+1+len(heading):]
	for _, line := range regexp.MustCompile(`\n#{1,6} `).FindAllStringIndex(rest, -1) {
		if line[1]-line[0]-2 <= level {
			return rest[:line[0]], true
		}
	}
	return rest, true
}

// TestCLIReferenceMatchesHelp: every flag each command lists in --help is
// named in that command's section of docs/cli.md.
func TestCLIReferenceMatchesHelp(t *testing.T) {
	bin := builtPrograms(t)
	doc := readDoc(t, "docs/cli.md")
	commands := map[string][]string{
		"roadsign-server":     {"init", "serve", "backup", "restore"},
		"roadsign-signer":     {"init", "add", "publish", "status", "rotate"},
		"roadsign-agent":      {"init", "update", "run", "status", "install-usb", "reauthorize", "link-code", "replace-ecu", "client-cert", "trust-ca"},
		"roadsign-demo":       {""},
		"roadsign-fleetsim":   {""},
		"roadsign-tuf-client": {""},
	}
	flagRE := regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)`)
	for prog, cmds := range commands {
		for _, cmd := range cmds {
			heading, args := "### "+prog+" "+cmd, []string{cmd, "--help"}
			if cmd == "" {
				heading, args = "## "+prog, []string{"--help"}
			}
			out, _ := exec.Command(filepath.Join(bin, prog), args...).CombinedOutput()
			flags := flagRE.FindAllStringSubmatch(string(out), -1)
			if len(flags) == 0 {
				t.Errorf("%s %s --help lists no flags:\n%s", prog, cmd, out)
				continue
			}
			section, ok := docSection(doc, heading)
			if !ok {
				t.Errorf("docs/cli.md has no section %q", heading)
				continue
			}
			for _, f := range flags {
				if !strings.Contains(section, "`--"+f[1]+"`") {
					t.Errorf("docs/cli.md %q does not name `--%s`", heading, f[1])
				}
			}
		}
	}
}

// TestHelpNamesEverything: roadsign-server --help names every command,
// and roadsign-agent --help every fault --simulate takes.
func TestHelpNamesEverything(t *testing.T) {
	bin := builtPrograms(t)
	server, _ := exec.Command(filepath.Join(bin, "roadsign-server"), "--help").CombinedOutput()
	for _, c := range []string{"roadsign-server init", "roadsign-server backup", "roadsign-server restore", "roadsign-server audit verify",
		"roadsign-server audit export-checkpoints", "roadsign-server record verify"} {
		if !strings.Contains(string(server), c) {
			t.Errorf("roadsign-server --help does not name %q:\n%s", c, server)
		}
	}
	agentHelp, _ := exec.Command(filepath.Join(bin, "roadsign-agent"), "--help").CombinedOutput()
	for _, f := range strings.Split(strings.NewReplacer(" or ", ", ").Replace(fault.Names), ", ") {
		name, _, _ := strings.Cut(f, ":")
		name, _, _ = strings.Cut(name, "=")
		if !strings.Contains(string(agentHelp), name) {
			t.Errorf("roadsign-agent --help does not name the fault %s", name)
		}
	}
}

// TestAPIReferenceMatchesOpenAPI: every route the server serves (its
// OpenAPI document comes from the same table as gin's routes) is in
// docs/api.md.
func TestAPIReferenceMatchesOpenAPI(t *testing.T) {
	w := newWorld(t)
	doc := readDoc(t, "docs/api.md")
	var spec struct {
		Paths map[string]map[string]any `json:"paths"`
	}
	if code := w.api("GET", "/api/v1/openapi.json", "", nil, &spec); code != 200 || len(spec.Paths) == 0 {
		t.Fatalf("openapi: %d", code)
	}
	for p, ops := range spec.Paths {
		for m := range ops {
			if route := "`" + strings.ToUpper(m) + " " + p + "`"; !strings.Contains(doc, route) {
				t.Errorf("docs/api.md does not describe %s", route)
			}
		}
	}
}

// TestDocsLinkOnlyIntoTheRepository: the README and docs/ link to files
// that are in the repository, and nowhere else.
func TestDocsLinkOnlyIntoTheRepository(t *testing.T) {
	files := []string{"README.md"}
	entries, err := os.ReadDir(filepath.Join("..", "..", "docs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".md") {
			files = append(files, "docs/"+e.Name())
		}
	}
	linkRE := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, f := range files {
		for _, m := range linkRE.FindAllStringSubmatch(readDoc(t, f), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "//") {
				t.Errorf("%s links outside the repository: %s", f, target)
				continue
			}
			path, _, _ := strings.Cut(target, "#")
			if path == "" {
				continue
			}
			if _, err := os.Stat(filepath.Join("..", "..", filepath.Dir(f), path)); err != nil {
				t.Errorf("%s links to %s, which is not in the repository", f, target)
			}
		}
	}
}
