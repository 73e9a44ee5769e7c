// Package sim_test holds checks that span the simulated world's packages.
package sim_test

import (
	"sort"
	"testing"

	"golang.org/x/tools/go/analysis"
	"golang.org/x/tools/go/packages"

	"snaplab/internal/detlint"
)

// exempt are the packages under sim/ outside the determinism rules, each
// with its reason.
var exempt = map[string]string{
	// blocktest is a conformance tester for block.Device implementations,
	// not part of the simulated world: it hammers a device from many
	// goroutines at once (the NBD server's devices are used concurrently)
	// and draws its workloads from its own seeded source. Nothing in the
	// simulator imports it; only tests do.
	"snaplab/sim/block/blocktest": "a concurrent conformance tester, used by tests only",
}

// TestNoNondeterminismInSim runs the determinism lint (internal/detlint:
// goroutines, select, the wall clock, global or crypto randomness, the
// environment, map iteration order; on the type-checked syntax tree) on
// every package under sim/, tests excepted.
func TestNoNondeterminismInSim(t *testing.T) {
	cfg := &packages.Config{Mode: packages.NeedName | packages.NeedFiles | packages.NeedSyntax |
		packages.NeedTypes | packages.NeedTypesInfo | packages.NeedTypesSizes | packages.NeedImports}
	pkgs, err := packages.Load(cfg, "./...")
	if err != nil {
		t.Fatal(err)
	}
	if packages.PrintErrors(pkgs) > 0 {
		t.Fatal("the packages under sim/ do not load")
	}
	sort.Slice(pkgs, func(i, j int) bool { return pkgs[i].PkgPath < pkgs[j].PkgPath })
	files, seen := 0, map[string]bool{}
	for _, p := range pkgs {
		if _, ok := exempt[p.PkgPath]; ok {
			seen[p.PkgPath] = true
			continue
		}
		for _, imp := range p.Imports {
			if _, ok := exempt[imp.PkgPath]; ok {
				t.Errorf("%s imports %s, which is outside the determinism rules (%s)", p.PkgPath, imp.PkgPath, exempt[imp.PkgPath])
			}
		}
		files += len(p.Syntax)
		pass := &analysis.Pass{
			Analyzer:   detlint.Analyzer,
			Fset:       p.Fset,
			Files:      p.Syntax,
			Pkg:        p.Types,
			TypesInfo:  p.TypesInfo,
			TypesSizes: p.TypesSizes,
			ResultOf:   map[*analysis.Analyzer]any{},
			Report: func(d analysis.Diagnostic) {
				t.Errorf("%s: %s", p.Fset.Position(d.Pos), d.Message)
			},
		}
		if _, err := detlint.Analyzer.Run(pass); err != nil {
			t.Fatalf("%s: %v", p.PkgPath, err)
		}
	}
	for path := range exempt {
		if !seen[path] {
			t.Errorf("exempt package %s no longer exists: drop its exemption", path)
		}
	}
	if files < 20 {
		t.Fatalf("checked only %d files", files)
	}
}
