// Package sim_test holds checks that span the simulated world's packages.
package sim_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// TestNoNondeterminismInSim enforces the simulator's determinism rules on
// its source: no goroutines, no select, no wall clock, no global or crypto
// randomness, no environment reads inside sim/ (tests excepted).
func TestNoNondeterminismInSim(t *testing.T) {
	banned := map[string]string{
		"time.Now": "wall clock", "time.Sleep": "wall clock", "time.After": "wall clock",
		"time.Since": "wall clock", "time.Tick": "wall clock", "time.NewTimer": "wall clock",
		"rand.Int": "global randomness", "rand.IntN": "global randomness", "rand.Int64N": "global randomness",
		"rand.Uint64": "global randomness", "rand.Float64": "global randomness", "rand.Perm": "global randomness",
		"rand.Shuffle": "global randomness", "rand.N": "global randomness",
		"os.Getenv": "environment", "os.LookupEnv": "environment",
	}
	n := 0
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		n++
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			if imp.Path.Value == `"crypto/rand"` || imp.Path.Value == `"math/rand"` {
				t.Errorf("%s imports %s", path, imp.Path.Value)
			}
		}
		ast.Inspect(f, func(node ast.Node) bool {
			switch x := node.(type) {
			case *ast.GoStmt:
				t.Errorf("%s: go statement (no goroutines in the simulated world)", fset.Position(x.Pos()))
			case *ast.SelectStmt:
				t.Errorf("%s: select statement", fset.Position(x.Pos()))
			case *ast.SelectorExpr:
				if id, ok := x.X.(*ast.Ident); ok {
					if why, bad := banned[id.Name+"."+x.Sel.Name]; bad {
						t.Errorf("%s: %s.%s (%s)", fset.Position(x.Pos()), id.Name, x.Sel.Name, why)
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
	if n < 20 {
		t.Fatalf("checked only %d files", n)
	}
}
