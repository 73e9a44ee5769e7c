// Command snaplab-bench measures snaplab's speed and memory figures and
// prints one line per figure:
//
//	bench: NAME VALUE UNIT (target OP TARGET: ok|miss)
//
// Where a figure is a ratio, its reference is measured in the same run.
// Each area of the project adds its figures in a file of its own with
// register; -run selects groups by a regular expression on their names.
//
// A miss is reported, never hidden: the exit status is 0 either way unless a
// measurement itself failed.
package main

import (
	"flag"
	"fmt"
	"os"
	"regexp"
	"sort"

	"snaplab/vmtest/qemu"
)

// Result is one measured figure.
type Result struct {
	Name   string
	Value  float64
	Unit   string
	Op     string // "<=" or ">="
	Target float64
}

func (r Result) String() string {
	ok := r.Value <= r.Target
	if r.Op == ">=" {
		ok = r.Value >= r.Target
	}
	verdict := "ok"
	if !ok {
		verdict = "miss"
	}
	return fmt.Sprintf("bench: %s %s %s (target %s %s: %s)", r.Name, num(r.Value), r.Unit, r.Op, num(r.Target), verdict)
}

func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

type group struct {
	name string
	run  func(emit func(Result)) error
}

var groups []group

// vmOpts are the options every guest the benchmarks boot gets (-accel).
var vmOpts []qemu.Option

// register adds a group of figures. Called from init functions of this
// package's files only.
func register(name string, run func(emit func(Result)) error) {
	groups = append(groups, group{name, run})
}

func main() {
	pattern := flag.String("run", ".", "regular expression selecting figure groups")
	list := flag.Bool("list", false, "list the figure groups and exit")
	accel := flag.String("accel", "", "guests' accelerator: auto, kvm or tcg (default $SNAPLAB_ACCEL, else auto)")
	flag.Parse()
	if *accel != "" {
		a, err := qemu.ParseAccel(*accel)
		if err != nil {
			fmt.Fprintf(os.Stderr, "snaplab-bench: -accel: %v\n", err)
			os.Exit(2)
		}
		vmOpts = append(vmOpts, qemu.WithAccelFrom(a, "-accel "+*accel))
	}
	re, err := regexp.Compile(*pattern)
	if err != nil {
		fmt.Fprintf(os.Stderr, "snaplab-bench: -run: %v\n", err)
		os.Exit(2)
	}
	sort.SliceStable(groups, func(i, j int) bool { return groups[i].name < groups[j].name })
	failed := false
	for _, g := range groups {
		if *list {
			fmt.Println(g.name)
			continue
		}
		if !re.MatchString(g.name) {
			continue
		}
		if err := g.run(func(r Result) { fmt.Println(r.String()) }); err != nil {
			fmt.Fprintf(os.Stderr, "snaplab-bench: %s: %v\n", g.name, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
