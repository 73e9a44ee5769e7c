// Package detlint is the simulator's determinism lint: an analysis on the
// type-checked syntax tree (golang.org/x/tools/go/analysis), so that what a
// name refers to decides, not how it is spelt. sim/determinism_test.go runs
// it on the simulated world's packages.
//
// It reports, each with its rule name:
//   - goroutine: a go statement, or a call that starts one
//     ((*sync.WaitGroup).Go, (*errgroup.Group).Go, time.AfterFunc);
//   - select: a select statement;
//   - wallclock: the time package's clock and timers (time.Now, Since,
//     Until, Sleep, After, Tick, NewTimer, NewTicker);
//   - random: math/rand's and math/rand/v2's global source (their
//     package-level functions other than the constructors of a seeded
//     source, New, NewSource, NewPCG, NewChaCha8, NewZipf), and crypto/rand;
//   - environment: os.Getenv, LookupEnv, Environ, ExpandEnv, Hostname,
//     Getpid, os.Args, syscall.Getenv and syscall.Environ;
//   - maprange: a range over a map, or over maps.Keys, maps.Values or
//     maps.All not sorted at once by slices.Sorted or slices.SortedFunc:
//     their order differs from run to run.
//
// Any reference counts, not only a call: an aliased or dot import, a
// method value (f := wg.Go) or a function value (f := time.Now) is caught.
//
// A map range whose order cannot leak passes when its body is only
// order-free statements (see orderFreeBody: delete, integer sums, a copy
// keyed by the range's key, collecting into a slice sorted right after), or when the line before it, or its own line,
// carries a comment "order-free: REASON" giving the reason.
package detlint

import (
	"fmt"
	"go/ast"
	"go/token"
	"go/types"
	"strings"

	"golang.org/x/tools/go/analysis"
)

// Analyzer is the determinism lint.
var Analyzer = &analysis.Analyzer{
	Name: "detlint",
	Doc:  "reports nondeterminism in the simulated world: goroutines, select, the wall clock, global or crypto randomness, the environment, and map iteration order",
	Run:  run,
}

// Rules are the rule names a diagnostic's Category holds.
var Rules = []string{"goroutine", "select", "wallclock", "random", "environment", "maprange"}

// banned maps a package path and object name (a method as
// "(*pkg.Type).Name", as types.Func.FullName spells it) to its rule.
var banned = map[string]string{
	"time.Now": "wallclock", "time.Since": "wallclock", "time.Until": "wallclock",
	"time.Sleep": "wallclock", "time.After": "wallclock", "time.Tick": "wallclock",
	"time.NewTimer": "wallclock", "time.NewTicker": "wallclock",

	"time.AfterFunc":                            "goroutine",
	"(*sync.WaitGroup).Go":                      "goroutine",
	"(*golang.org/x/sync/errgroup.Group).Go":    "goroutine",
	"(*golang.org/x/sync/errgroup.Group).TryGo": "goroutine",

	"os.Getenv": "environment", "os.LookupEnv": "environment", "os.Environ": "environment",
	"os.ExpandEnv": "environment", "os.Hostname": "environment", "os.Getpid": "environment",
	"os.Args": "environment", "syscall.Getenv": "environment", "syscall.Environ": "environment",
}

// seededRand are the constructors of an explicitly seeded source in
// math/rand and math/rand/v2.
var seededRand = map[string]bool{"New": true, "NewSource": true, "NewPCG": true, "NewChaCha8": true, "NewZipf": true}

func run(pass *analysis.Pass) (any, error) {
	for _, f := range pass.Files {
		c := &checker{pass: pass, file: f, sortedArg: map[ast.Expr]bool{}, next: map[*ast.RangeStmt]ast.Stmt{}}
		ast.Inspect(f, c.visit)
	}
	return nil, nil
}

type checker struct {
	pass      *analysis.Pass
	file      *ast.File
	sortedArg map[ast.Expr]bool           // maps.* calls that are slices.Sorted's argument
	next      map[*ast.RangeStmt]ast.Stmt // the statement after a range, in its block
}

func (c *checker) report(pos token.Pos, rule, format string, args ...any) {
	c.pass.Report(analysis.Diagnostic{Pos: pos, Category: rule, Message: rule + ": " + fmt.Sprintf(format, args...)})
}

func (c *checker) visit(n ast.Node) bool {
	var list []ast.Stmt
	switch x := n.(type) {
	case *ast.BlockStmt:
		list = x.List
	case *ast.CaseClause:
		list = x.Body
	case *ast.CommClause:
		list = x.Body
	}
	for i, st := range list {
		if r, ok := st.(*ast.RangeStmt); ok && i+1 < len(list) {
			c.next[r] = list[i+1]
		}
	}
	switch x := n.(type) {
	case *ast.GoStmt:
		c.report(x.Pos(), "goroutine", "go statement (no goroutines in the simulated world)")
	case *ast.SelectStmt:
		c.report(x.Pos(), "select", "select statement")
	case *ast.RangeStmt:
		c.rangeStmt(x)
	case *ast.CallExpr:
		if fn := c.funcOf(x.Fun); fn != nil && fn.Pkg() != nil && fn.Pkg().Path() == "slices" &&
			(fn.Name() == "Sorted" || fn.Name() == "SortedFunc" || fn.Name() == "SortedStableFunc") && len(x.Args) > 0 {
			c.sortedArg[ast.Unparen(x.Args[0])] = true
		}
		if fn := c.funcOf(x.Fun); fn != nil && fn.Pkg() != nil && fn.Pkg().Path() == "maps" &&
			(fn.Name() == "Keys" || fn.Name() == "Values" || fn.Name() == "All") && !c.sortedArg[x] {
			c.report(x.Pos(), "maprange", "maps.%s yields in random order: sort it (slices.Sorted(maps.%s(...)))", fn.Name(), fn.Name())
		}
	case *ast.Ident:
		c.ident(x)
	}
	return true
}

// funcOf is the function or method fun refers to, if any.
func (c *checker) funcOf(fun ast.Expr) *types.Func {
	switch f := ast.Unparen(fun).(type) {
	case *ast.Ident:
		fn, _ := c.pass.TypesInfo.Uses[f].(*types.Func)
		return fn
	case *ast.SelectorExpr:
		fn, _ := c.pass.TypesInfo.Uses[f.Sel].(*types.Func)
		return fn
	case *ast.IndexExpr: // an instantiated generic function
		return c.funcOf(f.X)
	case *ast.IndexListExpr:
		return c.funcOf(f.X)
	}
	return nil
}

// ident reports a reference to a banned object, however it is reached.
func (c *checker) ident(id *ast.Ident) {
	obj := c.pass.TypesInfo.Uses[id]
	if obj == nil || obj.Pkg() == nil {
		return
	}
	path := obj.Pkg().Path()
	key := path + "." + obj.Name()
	if fn, ok := obj.(*types.Func); ok {
		key = fn.FullName()
	}
	if rule, ok := banned[key]; ok {
		c.report(id.Pos(), rule, "%s", key)
		return
	}
	switch path {
	case "crypto/rand":
		c.report(id.Pos(), "random", "%s (crypto randomness)", key)
	case "math/rand", "math/rand/v2":
		// Package-level functions draw from the global source; methods
		// of a *Rand the caller seeded do not.
		if fn, ok := obj.(*types.Func); ok && fn.Signature().Recv() == nil && !seededRand[fn.Name()] {
			c.report(id.Pos(), "random", "%s (the global source)", key)
		}
	}
}

func (c *checker) rangeStmt(r *ast.RangeStmt) {
	t := c.pass.TypesInfo.TypeOf(r.X)
	if t == nil {
		return
	}
	if _, ok := t.Underlying().(*types.Map); !ok {
		if tp, ok := types.Unalias(t).(*types.TypeParam); !ok || !mapCore(tp) {
			return
		}
	}
	if c.orderFreeBody(r) || c.annotated(r) {
		return
	}
	c.report(r.For, "maprange", "range over a map: the order differs from run to run; range over sorted keys (slices.Sorted(maps.Keys(m))), or say why the order cannot leak in a comment \"order-free: REASON\"")
}

// mapCore reports whether every type in tp's constraint is a map.
func mapCore(tp *types.TypeParam) bool {
	iface, ok := tp.Constraint().Underlying().(*types.Interface)
	if !ok {
		return false
	}
	n := 0
	for i := 0; i < iface.NumEmbeddeds(); i++ {
		u, ok := iface.EmbeddedType(i).(*types.Union)
		if !ok {
			return false
		}
		for j := 0; j < u.Len(); j++ {
			if _, ok := u.Term(j).Type().Underlying().(*types.Map); !ok {
				return false
			}
			n++
		}
	}
	return n > 0
}

// orderFreeBody reports whether the loop body's effect is the same in any
// order: its statements are only delete(...), an integer x += e, x -= e,
// x++ or x--, an assignment m2[k] = e to a map element at the range's own
// key k, s = append(s, e) when the statement after the loop sorts s, or an
// if (without init) of such statements; every e and condition reads only
// no variable the body writes, and calls only len, cap and conversions.
func (c *checker) orderFreeBody(r *ast.RangeStmt) bool {
	// Variables the body writes (directly, or an element of) are not
	// read order-free; every other variable is.
	written := map[types.Object]bool{}
	ast.Inspect(r.Body, func(n ast.Node) bool {
		var lhs []ast.Expr
		switch x := n.(type) {
		case *ast.AssignStmt:
			lhs = x.Lhs
		case *ast.IncDecStmt:
			lhs = []ast.Expr{x.X}
		}
		for _, l := range lhs {
			for {
				switch e := ast.Unparen(l).(type) {
				case *ast.IndexExpr:
					l = e.X
					continue
				case *ast.SelectorExpr:
					l = e.X
					continue
				case *ast.StarExpr:
					l = e.X
					continue
				case *ast.Ident:
					if obj := c.pass.TypesInfo.ObjectOf(e); obj != nil {
						written[obj] = true
					}
				}
				break
			}
		}
		return true
	})
	key, _ := r.Key.(*ast.Ident)
	if key != nil && key.Name == "_" {
		key = nil
	}
	appended := map[types.Object]bool{}
	if !c.orderFree(r.Body.List, written, key, appended) {
		return false
	}
	for s := range appended { // order-free: every one is checked, the answer is a conjunction
		if !c.sorts(c.next[r], s) {
			return false
		}
	}
	return true
}

// sorts reports whether st sorts the slice variable s: slices.Sort,
// SortFunc or SortStableFunc, sort.Slice, SliceStable, Strings, Ints or
// Float64s, with s as the first argument.
func (c *checker) sorts(st ast.Stmt, s types.Object) bool {
	es, ok := st.(*ast.ExprStmt)
	if !ok {
		return false
	}
	call, ok := es.X.(*ast.CallExpr)
	if !ok || len(call.Args) == 0 {
		return false
	}
	fn := c.funcOf(call.Fun)
	if fn == nil || fn.Pkg() == nil {
		return false
	}
	switch fn.Pkg().Path() + "." + fn.Name() {
	case "slices.Sort", "slices.SortFunc", "slices.SortStableFunc",
		"sort.Slice", "sort.SliceStable", "sort.Strings", "sort.Ints", "sort.Float64s":
	default:
		return false
	}
	id, ok := ast.Unparen(call.Args[0]).(*ast.Ident)
	return ok && c.pass.TypesInfo.ObjectOf(id) == s
}

func (c *checker) orderFree(list []ast.Stmt, written map[types.Object]bool, key *ast.Ident, appended map[types.Object]bool) bool {
	for _, st := range list {
		switch s := st.(type) {
		case *ast.ExprStmt:
			call, ok := s.X.(*ast.CallExpr)
			if !ok {
				return false
			}
			if b, ok := c.pass.TypesInfo.Uses[calleeIdent(call.Fun)].(*types.Builtin); !ok || b.Name() != "delete" {
				return false
			}
			for _, a := range call.Args {
				if !c.pure(a, written) {
					return false
				}
			}
		case *ast.IncDecStmt:
			if !c.isInteger(s.X) {
				return false
			}
		case *ast.AssignStmt:
			if obj := c.appendTo(s, written); obj != nil {
				appended[obj] = true
				continue
			}
			if len(s.Lhs) != 1 || len(s.Rhs) != 1 || !c.pure(s.Rhs[0], written) {
				return false
			}
			switch s.Tok {
			case token.ADD_ASSIGN, token.SUB_ASSIGN:
				if !c.isInteger(s.Lhs[0]) {
					return false
				}
			case token.ASSIGN:
				ix, ok := s.Lhs[0].(*ast.IndexExpr)
				if !ok || key == nil {
					return false
				}
				if _, ok := c.pass.TypesInfo.TypeOf(ix.X).Underlying().(*types.Map); !ok {
					return false
				}
				if id, ok := ast.Unparen(ix.Index).(*ast.Ident); !ok || c.pass.TypesInfo.ObjectOf(id) != c.pass.TypesInfo.ObjectOf(key) {
					return false
				}
			default:
				return false
			}
		case *ast.IfStmt:
			if s.Init != nil || !c.pure(s.Cond, written) || !c.orderFree(s.Body.List, written, key, appended) {
				return false
			}
			switch e := s.Else.(type) {
			case nil:
			case *ast.BlockStmt:
				if !c.orderFree(e.List, written, key, appended) {
					return false
				}
			default:
				if !c.orderFree([]ast.Stmt{e}, written, key, appended) {
					return false
				}
			}
		default:
			return false
		}
	}
	return true
}

// appendTo returns the slice variable s of "s = append(s, e...)" whose
// elements e are pure, or nil.
func (c *checker) appendTo(a *ast.AssignStmt, written map[types.Object]bool) types.Object {
	if a.Tok != token.ASSIGN || len(a.Lhs) != 1 || len(a.Rhs) != 1 {
		return nil
	}
	lhs, ok := a.Lhs[0].(*ast.Ident)
	if !ok {
		return nil
	}
	call, ok := a.Rhs[0].(*ast.CallExpr)
	if !ok || len(call.Args) < 2 || call.Ellipsis.IsValid() {
		return nil
	}
	if b, ok := c.pass.TypesInfo.Uses[calleeIdent(call.Fun)].(*types.Builtin); !ok || b.Name() != "append" {
		return nil
	}
	first, ok := call.Args[0].(*ast.Ident)
	obj := c.pass.TypesInfo.ObjectOf(lhs)
	if !ok || obj == nil || c.pass.TypesInfo.ObjectOf(first) != obj {
		return nil
	}
	for _, e := range call.Args[1:] {
		if !c.pure(e, written) {
			return nil
		}
	}
	return obj
}

// pure reports whether e reads no variable in written and calls only len,
// cap and conversions.
func (c *checker) pure(e ast.Expr, written map[types.Object]bool) bool {
	ok := true
	ast.Inspect(e, func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.FuncLit:
			ok = false
		case *ast.CallExpr:
			if b, isB := c.pass.TypesInfo.Uses[calleeIdent(x.Fun)].(*types.Builtin); !isB || (b.Name() != "len" && b.Name() != "cap") {
				if tv, isT := c.pass.TypesInfo.Types[x.Fun]; !isT || !tv.IsType() { // a conversion is pure
					ok = false
				}
			}
		case *ast.Ident:
			switch obj := c.pass.TypesInfo.Uses[x].(type) {
			case nil, *types.Const, *types.TypeName, *types.PkgName, *types.Nil, *types.Builtin:
			case *types.Var:
				if !obj.IsField() && written[obj] {
					ok = false
				}
			default:
				ok = false
			}
		}
		return ok
	})
	return ok
}

func calleeIdent(fun ast.Expr) *ast.Ident {
	id, _ := ast.Unparen(fun).(*ast.Ident)
	return id
}

func (c *checker) isInteger(e ast.Expr) bool {
	b, ok := c.pass.TypesInfo.TypeOf(e).Underlying().(*types.Basic)
	return ok && b.Info()&types.IsInteger != 0
}

// annotated reports whether a comment "order-free: REASON", with a reason,
// sits on r's line or in the comment block that ends on the line before.
func (c *checker) annotated(r *ast.RangeStmt) bool {
	line := c.pass.Fset.Position(r.For).Line
	for _, g := range c.file.Comments {
		if end := c.pass.Fset.Position(g.End()).Line; end != line && end != line-1 {
			continue
		}
		_, reason, ok := strings.Cut(g.Text(), "order-free:")
		if ok && strings.TrimSpace(reason) != "" {
			return true
		}
	}
	return false
}
