// Package archtest checks the shape of the code that issue reviews rely
// on: which rooms import which, how large the server's interfaces grow,
// that services take store roles rather than the whole store, and that no
// API error code is compared as a string literal.
package archtest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/roadsign/roadsign/"

// root is the repository's top folder.
func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func goList(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = root(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	return strings.Fields(string(out))
}

func TestRoomsImportOnlyWhatTheyMay(t *testing.T) {
	tests := []struct {
		name      string
		pkgs      []string
		forbidden []string
	}{
		{"the vehicle's code imports nothing of the signer or the server",
			[]string{"./client/...", "./cmd/roadsign-agent", "./cmd/roadsign-tuf-client", "./cmd/roadsign-fleetsim"},
			[]string{module + "signer", module + "server"}},
		{"the signer imports nothing of the vehicle or the server",
			[]string{"./signer/...", "./cmd/roadsign-signer"},
			[]string{module + "client", module + "server"}},
		{"the server imports nothing of the vehicle or the signer",
			[]string{"./server/...", "./cmd/roadsign-server"},
			[]string{module + "client", module + "signer"}},
		{"no program carries the test identity provider",
			[]string{"./cmd/..."},
			[]string{module + "internal/testoidc", "github.com/zitadel/oidc"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			deps := goList(t, append([]string{"-deps"}, tt.pkgs...)...)
			for _, d := range deps {
				for _, f := range tt.forbidden {
					if d == f || strings.HasPrefix(d, f+"/") {
						t.Errorf("%v depends on %s", tt.pkgs, d)
					}
				}
			}
		})
	}
}

// serverFiles are the non-test Go files under server/.
func serverFiles(t *testing.T) map[string]*ast.File {
	t.Helper()
	fset := token.NewFileSet()
	files := map[string]*ast.File{}
	err := filepath.WalkDir(filepath.Join(root(t), "server"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		files[path] = f
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestServerInterfacesStaySmall: an interface declares at most a dozen
// methods of its own (a larger one is composed of roles).
func TestServerInterfacesStaySmall(t *testing.T) {
	const most = 12
	for path, f := range serverFiles(t) {
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok {
				return true
			}
			it, ok := ts.Type.(*ast.InterfaceType)
			if !ok {
				return true
			}
			methods := 0
			for _, m := range it.Methods.List {
				if _, isFunc := m.Type.(*ast.FuncType); isFunc {
					methods += len(m.Names)
				}
			}
			if methods > most {
				t.Errorf("%s: interface %s declares %d methods (at most %d: split it into roles)", rel(t, path), ts.Name.Name, methods, most)
			}
			return true
		})
	}
}

// TestServicesTakeStoreRoles: only the backends, their conformance suite
// and the wiring see the whole server.Store.
func TestServicesTakeStoreRoles(t *testing.T) {
	allowed := regexp.MustCompile(`^server/(store\.go|sqlstore/|storetest/|sqlite/|postgres/|cli/)`)
	for path, f := range serverFiles(t) {
		r := rel(t, path)
		if allowed.MatchString(r) {
			continue
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok && sel.Sel.Name == "Store" {
				if id, ok := sel.X.(*ast.Ident); ok && id.Name == "server" {
					t.Errorf("%s uses the whole server.Store; take the roles it needs", r)
				}
			}
			return true
		})
	}
}

// TestNoErrorCodeComparedAsLiteral: codes that cross the wire are
// compared through internal/errcode's constants, never as literals.
func TestNoErrorCodeComparedAsLiteral(t *testing.T) {
	codes := map[string]bool{}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, filepath.Join(root(t), "internal", "errcode", "errcode.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	ast.Inspect(f, func(n ast.Node) bool {
		if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
			v, _ := strconv.Unquote(lit.Value)
			codes[v] = true
		}
		return true
	})
	if len(codes) < 20 {
		t.Fatalf("found %d codes in internal/errcode; the test reads the wrong file", len(codes))
	}
	for _, dir := range []string{"server", "client", "signer", "cmd", "internal/vehicleauth", "internal/tlsconf"} {
		err := filepath.WalkDir(filepath.Join(root(t), dir), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			file, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
			if err != nil {
				return err
			}
			literal := func(e ast.Expr) (string, bool) {
				lit, ok := e.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					return "", false
				}
				v, _ := strconv.Unquote(lit.Value)
				return v, codes[v]
			}
			ast.Inspect(file, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.BinaryExpr:
					if n.Op != token.EQL && n.Op != token.NEQ {
						return true
					}
					for _, side := range []ast.Expr{n.X, n.Y} {
						if v, ok := literal(side); ok {
							t.Errorf("%s compares the error code %q as a literal; use internal/errcode", rel(t, path), v)
						}
					}
				case *ast.CallExpr:
					// server.CodedErrorf(kind, "code", ...)
					if sel, ok := n.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "CodedErrorf" && len(n.Args) > 1 {
						if v, ok := literal(n.Args[1]); ok {
							t.Errorf("%s writes the error code %q as a literal; use internal/errcode", rel(t, path), v)
						}
					}
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func rel(t *testing.T, path string) string {
	r, err := filepath.Rel(root(t), path)
	if err != nil {
		return path
	}
	return filepath.ToSlash(r)
}
