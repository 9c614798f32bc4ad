package httpapi

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// permissionTable is the route table's authorization matrix as
// docs/roles.md writes it: one row per API route, a column per role.
func permissionTable() string {
	cols := []string{Admin, ReleaseManager, Approver, Support, Dealer, Owner, Vehicle, Bootstrap}
	var b strings.Builder
	b.WriteString("| route | " + strings.Join(cols, " | ") + " |\n|---|" + strings.Repeat("---|", len(cols)) + "\n")
	for _, rt := range (&api{}).apiRoutes() {
		if slices.Contains(rt.Who, Public) {
			continue
		}
		fmt.Fprintf(&b, "| `%s %s` |", rt.Method, OpenAPIPath(rt.Path))
		for _, c := range cols {
			mark := " "
			if slices.Contains(rt.Who, c) {
				mark = " ✓ "
			}
			b.WriteString(mark + "|")
		}
		b.WriteString("\n")
	}
	return b.String()
}

// TestPermissionTableIsTheRouteTable: the permission table in
// docs/roles.md is the route table's, so neither drifts from the other
// (ROADSIGN_WRITE_DOCS=1 rewrites it).
func TestPermissionTableIsTheRouteTable(t *testing.T) {
	const path = "../../docs/roles.md"
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?s)<!-- permissions -->\n(.*?)<!-- /permissions -->`)
	m := re.FindSubmatchIndex(raw)
	if m == nil {
		t.Fatal("docs/roles.md has no <!-- permissions --> table")
	}
	want := permissionTable()
	if got := string(raw[m[2]:m[3]]); got != want {
		if os.Getenv("ROADSIGN_WRITE_DOCS") == "1" {
			out := string(raw[:m[2]]) + want + string(raw[m[3]:])
			if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Fatalf("docs/roles.md's permission table is not the route table's; run ROADSIGN_WRITE_DOCS=1 go test -run TestPermissionTableIsTheRouteTable ./server/httpapi\nwant:\n%s", want)
	}
}
