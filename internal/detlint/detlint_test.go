package detlint

import (
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"slices"
	"strings"
	"testing"

	"golang.org/x/tools/go/analysis"
)

// errgroupSrc stands in for golang.org/x/sync/errgroup, which the module
// does not build.
const errgroupSrc = `package errgroup
type Group struct{}
func (g *Group) Go(f func() error) {}
func (g *Group) TryGo(f func() error) bool { return true }
func (g *Group) Wait() error { return nil }
`

// lint type-checks src as package p and returns the rule of each
// diagnostic, in order, with its message.
func lint(t *testing.T, src string) (rules, msgs []string) {
	t.Helper()
	fset := token.NewFileSet()
	std := importer.Default()
	imp := importerFunc(func(path string) (*types.Package, error) {
		if path == "golang.org/x/sync/errgroup" {
			f, err := parser.ParseFile(fset, "errgroup.go", errgroupSrc, 0)
			if err != nil {
				return nil, err
			}
			return (&types.Config{}).Check(path, fset, []*ast.File{f}, nil)
		}
		return std.Import(path)
	})
	f, err := parser.ParseFile(fset, "p.go", src, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	info := &types.Info{
		Types: map[ast.Expr]types.TypeAndValue{}, Defs: map[*ast.Ident]types.Object{},
		Uses: map[*ast.Ident]types.Object{}, Selections: map[*ast.SelectorExpr]*types.Selection{},
		Implicits: map[ast.Node]types.Object{},
	}
	pkg, err := (&types.Config{Importer: imp}).Check("p", fset, []*ast.File{f}, info)
	if err != nil {
		t.Fatalf("type-checking the snippet: %v\n%s", err, src)
	}
	pass := &analysis.Pass{
		Analyzer: Analyzer, Fset: fset, Files: []*ast.File{f}, Pkg: pkg, TypesInfo: info,
		ResultOf: map[*analysis.Analyzer]any{},
		Report: func(d analysis.Diagnostic) {
			rules = append(rules, d.Category)
			msgs = append(msgs, fset.Position(d.Pos).String()+": "+d.Message)
		},
	}
	if _, err := Analyzer.Run(pass); err != nil {
		t.Fatal(err)
	}
	return rules, msgs
}

type importerFunc func(path string) (*types.Package, error)

func (f importerFunc) Import(path string) (*types.Package, error) { return f(path) }

// TestRules: each forbidden thing, in a small source file, is reported
// under its rule (want lists the rules in source order), and the allowed
// neighbours of each are not (want empty).
func TestRules(t *testing.T) {
	cases := []struct {
		name, src string
		want      []string
	}{
		// goroutine
		{"go statement", `package p
func f() { go f() }`, []string{"goroutine"}},
		{"WaitGroup.Go", `package p
import "sync"
func f(wg *sync.WaitGroup) { wg.Go(func() {}) }`, []string{"goroutine"}},
		{"WaitGroup.Go as a method value", `package p
import "sync"
func f(wg *sync.WaitGroup) func(func()) { return wg.Go }`, []string{"goroutine"}},
		{"errgroup.Group.Go", `package p
import "golang.org/x/sync/errgroup"
func f(g *errgroup.Group) { g.Go(func() error { return nil }) }`, []string{"goroutine"}},
		{"time.AfterFunc", `package p
import "time"
func f() { time.AfterFunc(time.Second, func() {}) }`, []string{"goroutine"}},
		{"WaitGroup.Add and Wait pass", `package p
import "sync"
func f(wg *sync.WaitGroup) { wg.Add(1); wg.Done(); wg.Wait() }`, nil},

		// select
		{"select", `package p
func f(c chan int) { select { case <-c: default: } }`, []string{"select"}},

		// wallclock
		{"time.Now", `package p
import "time"
func f() time.Time { return time.Now() }`, []string{"wallclock"}},
		{"aliased time import", `package p
import clock "time"
func f() clock.Time { return clock.Now() }`, []string{"wallclock"}},
		{"dot import of time", `package p
import . "time"
func f() Duration { return Since(Time{}) }`, []string{"wallclock"}},
		{"time.Now as a value", `package p
import "time"
var now = time.Now`, []string{"wallclock"}},
		{"time.Sleep, After, Tick, NewTimer, NewTicker, Until", `package p
import "time"
func f() {
	time.Sleep(1)
	<-time.After(1)
	_ = time.Tick(1)
	_ = time.NewTimer(1)
	_ = time.NewTicker(1)
	_ = time.Until(time.Time{})
}`, []string{"wallclock", "wallclock", "wallclock", "wallclock", "wallclock", "wallclock"}},
		{"durations and Time values pass", `package p
import "time"
func f(a, b time.Time) time.Duration { return a.Sub(b) + 3*time.Second }`, nil},

		// random
		{"global math/rand", `package p
import "math/rand"
func f() int { return rand.Intn(6) }`, []string{"random"}},
		{"global math/rand/v2, aliased", `package p
import r "math/rand/v2"
func f() uint64 { return r.Uint64() }`, []string{"random"}},
		{"crypto/rand", `package p
import "crypto/rand"
func f(b []byte) { rand.Read(b) }`, []string{"random"}},
		{"a seeded source passes", `package p
import "math/rand/v2"
func f(seed uint64) int { return rand.New(rand.NewPCG(seed, 1)).IntN(6) }`, nil},
		{"a seeded v1 source passes", `package p
import "math/rand"
func f() int { return rand.New(rand.NewSource(1)).Intn(6) }`, nil},

		// environment
		{"os.Getenv", `package p
import "os"
func f() string { return os.Getenv("HOME") }`, []string{"environment"}},
		{"os.Environ", `package p
import "os"
func f() []string { return os.Environ() }`, []string{"environment"}},
		{"os.LookupEnv, os.Args, syscall.Getenv", `package p
import ("os"; "syscall")
func f() {
	_, _ = os.LookupEnv("A")
	_ = os.Args
	_, _ = syscall.Getenv("A")
}`, []string{"environment", "environment", "environment"}},
		{"other os functions pass", `package p
import "os"
func f() (*os.File, error) { return os.Open("x") }`, nil},

		// maprange
		{"range over a map", `package p
func f(m map[string]int) (out []string) {
	for k := range m {
		out = append(out, k)
	}
	return out
}`, []string{"maprange"}},
		{"range over a named map type", `package p
type set map[int]bool
func f(s set, g func(int)) {
	for k := range s {
		g(k)
	}
}`, []string{"maprange"}},
		{"range over a generic map", `package p
func f[M ~map[int]string](m M, g func(int)) {
	for k := range m {
		g(k)
	}
}`, []string{"maprange"}},
		{"maps.Keys unsorted", `package p
import "maps"
func f(m map[int]int, g func(int)) {
	for k := range maps.Keys(m) {
		g(k)
	}
}`, []string{"maprange"}},
		{"a copy keyed by another expression leaks", `package p
func f(m map[int]int) map[int]int {
	inv := map[int]int{}
	for k, v := range m {
		inv[v] = k
	}
	return inv
}`, []string{"maprange"}},
		{"a sum reading what it writes leaks", `package p
func f(m map[int]int, out map[int]int) {
	n := 0
	for k := range m {
		out[k] = n
		n++
	}
}`, []string{"maprange"}},
		{"collecting without sorting right after leaks", `package p
import "sort"
func f(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	println(len(out))
	sort.Strings(out)
	return out
}`, []string{"maprange"}},
		{"an empty order-free comment does not count", `package p
func f(m map[int]int, g func(int)) {
	// order-free:
	for k := range m {
		g(k)
	}
}`, []string{"maprange"}},
		{"order-free map ranges pass", `package p
import ("maps"; "slices"; "sort")
func f(m map[string]int, dst map[string]int, lo int) (n int, keys []string) {
	for k, v := range m {
		if v < lo {
			delete(m, k)
		}
	}
	for _, v := range m {
		n += v
	}
	for k, v := range m {
		dst[k] = v + lo
	}
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range slices.Sorted(maps.Keys(m)) {
		n += len(k)
	}
	// order-free: g is commutative
	for k := range m {
		g(k)
	}
	// A block comment whose last line is above the loop:
	// order-free: g is commutative.
	for k := range m {
		g(k)
	}
	return n, keys
}
func g(string) {}`, nil},
	}
	covered := map[string]bool{}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, msgs := lint(t, tc.src)
			if !slices.Equal(got, tc.want) {
				t.Errorf("rules %q, want %q\n%s", got, tc.want, strings.Join(msgs, "\n"))
			}
		})
		for _, r := range tc.want {
			covered[r] = true
		}
	}
	for _, r := range Rules {
		if !covered[r] {
			t.Errorf("no case fails rule %s", r)
		}
	}
}
