package run

import (
	"context"
	"strings"
	"testing"

	"snaplab/sim/script"
)

// semanticsSim is the simulator with its handover semantics forced: an
// executor that differs from Sim in known ways.
type semanticsSim struct {
	Sim
	sem string
}

func (s semanticsSim) Name() string { return "sim-" + s.sem }

func (s semanticsSim) Run(ctx context.Context, sc *script.Scenario, opts Options) (*Report, error) {
	opts.Semantics = s.sem
	return s.Sim.Run(ctx, sc, opts)
}

func TestCompareListsEveryDifference(t *testing.T) {
	sc, err := script.ParseFile("../../scenarios/library/h4-remove-source-cancels-handover.scn")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Compare(context.Background(), Sim{}, Sim{}, sc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Same() || !c.RepA.Pass() {
		t.Fatalf("the simulator differs from itself: %v %v", c.Diffs, c.RepA.Failures)
	}

	c, err = Compare(context.Background(), Sim{}, semanticsSim{sem: "seed"}, sc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	lines := map[int]bool{}
	for _, d := range c.Diffs {
		lines[d.Line] = true
	}
	// The seed patch hands over at a different point and fails the
	// mainline expectations early; the comparison must not stop there.
	if len(lines) < 3 {
		t.Fatalf("want differences on several steps, got %d:\n%v", len(c.Diffs), c.Diffs)
	}
	if c.RepB.Pass() {
		t.Fatalf("the seed semantics passed a mainline scenario")
	}
	firstFail := c.RepB.Failures[0].Line
	later := false
	for l := range lines {
		later = later || l > firstFail
	}
	if !later {
		t.Fatalf("no difference reported after B's first failure (line %d): %v", firstFail, c.Diffs)
	}
	rep := c.Report()
	if len(rep.Failures) != len(c.RepA.Failures)+len(c.Diffs) {
		t.Fatalf("report holds %d failures, want %d", len(rep.Failures), len(c.RepA.Failures)+len(c.Diffs))
	}
	if !strings.Contains(rep.Failures[len(rep.Failures)-1].Msg, "differs from sim-seed") {
		t.Fatalf("a difference's failure does not name the other executor: %q", rep.Failures[len(rep.Failures)-1].Msg)
	}
}

func TestCompareRefusesUnsupported(t *testing.T) {
	sc, err := script.Parse("x", "disk a 1MiB\n")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Compare(context.Background(), Sim{}, refusing{}, sc, Options{})
	if err == nil || !strings.Contains(err.Error(), "refusing executor: x:1: no") {
		t.Fatalf("got %v, want the refusal naming the executor", err)
	}
}

type refusing struct{ Sim }

func (refusing) Name() string                     { return "refusing" }
func (refusing) Supported(*script.Scenario) error { return errNo }

var errNo = &script.Error{File: "x", Line: 1, Msg: "no"}
