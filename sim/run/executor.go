package run

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"snaplab/sim/record"
	"snaplab/sim/script"
)

// Executor runs scenarios somewhere: in process (Sim), with a guest doing
// the I/O, against a guest's real kernel (vmtest/guestexec), and whatever
// comes next. Adding an executor means implementing this interface; the
// CLI, the suites and the benchmarks reach every executor through it, and
// Compare compares any two.
type Executor interface {
	// Name is the executor's name, as recordings' headers and the CLI's
	// -executor flag spell it.
	Name() string
	// Supported is nil, or why sc cannot run here (a step kind the
	// executor has no means for), naming the line.
	Supported(sc *script.Scenario) error
	// Run executes sc. The report holds every failed assertion; err is
	// the infrastructure failing (QEMU, NBD, the guest), not the scenario.
	Run(ctx context.Context, sc *script.Scenario, opts Options) (*Report, error)
}

// Sim is the in-process simulator as an Executor.
type Sim struct{}

// Name is "sim".
func (Sim) Name() string { return "sim" }

// Supported is always nil: every line runs on the simulator.
func (Sim) Supported(*script.Scenario) error { return nil }

// Run is the package's Run; it returns ctx's error if ctx is already done.
func (Sim) Run(ctx context.Context, sc *script.Scenario, opts Options) (*Report, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return Run(sc, opts), nil
}

// Comparison is one scenario run on two executors, A and B.
type Comparison struct {
	A, B       string  // the executors' names
	RepA, RepB *Report // their reports
	// Diffs lists every field of every step on which the two disagree:
	// stdout, stderr, exit status, kernel log lines, I/O result, data
	// hash, and the number of steps run.
	Diffs []record.Difference
}

// Same reports whether the executors agreed on every step.
func (c *Comparison) Same() bool { return len(c.Diffs) == 0 }

// Report is A's report with every difference added as a failure of its
// step, so that one report lists A's own failures and all disagreements.
func (c *Comparison) Report() *Report {
	rep := *c.RepA
	rep.Failures = append([]Failure(nil), c.RepA.Failures...)
	for _, d := range c.Diffs {
		rep.Failures = append(rep.Failures, Failure{Line: d.Line, Text: d.Text,
			Msg: fmt.Sprintf("%s differs from %s: %q (%s) vs %q (%s)", d.Field, c.B, d.A, c.A, d.B, c.B)})
	}
	return &rep
}

// Compare runs sc on a, then on b, and lists every step on which their
// results differ. Both run with KeepGoing, so a step that fails does not
// hide the differences after it. opts.Record (and Blobs, DumpDir) receive
// a's run only; b's recording is kept in memory for the comparison. err is
// either executor's infrastructure failing.
func Compare(ctx context.Context, a, b Executor, sc *script.Scenario, opts Options) (*Comparison, error) {
	for _, x := range []Executor{a, b} {
		if err := x.Supported(sc); err != nil {
			return nil, fmt.Errorf("%s executor: %w", x.Name(), err)
		}
	}
	var ra, rb bytes.Buffer
	oa := opts
	oa.KeepGoing = true
	if opts.Record != nil {
		oa.Record = io.MultiWriter(&ra, opts.Record)
	} else {
		oa.Record = &ra
	}
	repA, err := a.Run(ctx, sc, oa)
	if err != nil {
		return nil, fmt.Errorf("%s executor: %w", a.Name(), err)
	}
	ob := opts
	ob.KeepGoing = true
	ob.Record, ob.Blobs, ob.DumpDir = &rb, nil, ""
	repB, err := b.Run(ctx, sc, ob)
	if err != nil {
		return nil, fmt.Errorf("%s executor: %w", b.Name(), err)
	}
	sa, err := stepResults(ra.Bytes())
	if err != nil {
		return nil, fmt.Errorf("%s executor's recording: %w", a.Name(), err)
	}
	sb, err := stepResults(rb.Bytes())
	if err != nil {
		return nil, fmt.Errorf("%s executor's recording: %w", b.Name(), err)
	}
	return &Comparison{A: a.Name(), B: b.Name(), RepA: repA, RepB: repB, Diffs: record.CompareResults(sa, sb)}, nil
}

// stepResults reads a recording's step results.
func stepResults(rec []byte) ([]record.StepResult, error) {
	r, err := record.Read(bytes.NewReader(rec))
	if err != nil {
		return nil, err
	}
	return record.Results(r)
}
