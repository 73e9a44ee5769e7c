package run

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

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
	// RecA and RecB are the two runs' recordings (B's without a blob
	// sidecar), for a report or a timeline of a disagreement.
	RecA, RecB []byte
}

// Same reports whether the executors agreed on every step.
func (c *Comparison) Same() bool { return len(c.Diffs) == 0 }

// KernelProfiler is an executor that runs a real kernel: KernelProfile
// names the sim/profile the simulator must model to be compared with it.
type KernelProfiler interface {
	KernelProfile() string
}

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
// either executor's infrastructure failing. When a runs a real kernel
// (KernelProfiler), b models that kernel's profile.
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
	if kp, ok := a.(KernelProfiler); ok && kp.KernelProfile() != "" {
		ob.Kernel = kp.KernelProfile() // the simulator models a's kernel
	}
	if lvm, err := LVMOps(ra.Bytes()); err != nil {
		return nil, fmt.Errorf("%s executor's recording: %w", a.Name(), err)
	} else if len(lvm) > 0 {
		ob.LVM = lvm // b repeats what LVM did on a
	}
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
	return &Comparison{A: a.Name(), B: b.Name(), RepA: repA, RepB: repB, Diffs: record.CompareResults(sa, sb),
		RecA: ra.Bytes(), RecB: rb.Bytes()}, nil
}

// stepResults reads a recording's step results.
func stepResults(rec []byte) ([]record.StepResult, error) {
	r, err := record.Read(bytes.NewReader(rec))
	if err != nil {
		return nil, err
	}
	return record.Results(r)
}

// LVMOps collects, by line, the device-mapper operations a recording's
// lvm steps performed (their results' dm_lines; none is an empty list).
func LVMOps(rec []byte) (map[int][]string, error) {
	r, err := record.Read(bytes.NewReader(rec))
	if err != nil {
		return nil, err
	}
	var out map[int][]string
	lvmOp := map[int]bool{}
	for _, line := range r.Lines {
		var k struct {
			Kind string `json:"kind"`
			I    int    `json:"i"`
			Text string `json:"text"`
		}
		if !strings.HasPrefix(line, `{"kind":"op"`) && !strings.HasPrefix(line, `{"kind":"result"`) {
			continue
		}
		if err := json.Unmarshal([]byte(line), &k); err != nil {
			return nil, err
		}
		if k.Kind == "op" {
			if strings.HasPrefix(k.Text, script.KLvm+" ") {
				lvmOp[k.I] = true
			}
			continue
		}
		if !lvmOp[k.I] {
			continue
		}
		var res record.Result
		if err := json.Unmarshal([]byte(line), &res); err != nil {
			return nil, err
		}
		if out == nil {
			out = map[int][]string{}
		}
		out[res.Line] = append([]string{}, res.DMLines...)
	}
	return out, nil
}
