// Package explore is snaplab's seeded exploration: campaigns of generated
// scenarios (sim/gen) run on the simulator with every check on, the way
// FoundationDB's simulator and TigerBeetle's VOPR search for bugs nobody
// imagined.
//
// A campaign is a Config and a range of case indices. Case i is a pure
// function of the Config and i: its generator seed is Config.Seed+i, its
// semantics Config.Semantics[i mod len], and the scenario text
// gen.GenerateConfig makes of them. RunCase runs one case and returns its
// Result: pass or the first failure (an assertion the generator's model
// annotated, the oracle on every read, the simulator's invariants after
// every step), its failure Signature, the coverage properties it reached
// and the step kinds it generated. Every DeterminismEvery-th case runs
// twice and its two recordings must be identical byte for byte.
//
// Cases are split over shards by index (case i belongs to shard i mod N),
// so a campaign fans out over machines deterministically; each shard's
// Summary is a JSON file, and Merge combines the shards' summaries into the
// one the unsharded campaign writes. A Summary holds no wall-clock figure:
// the same campaign gives the same summary on any machine, at any speed,
// with any number of jobs.
//
// The package runs one case at a time and draws no randomness of its own;
// running cases in parallel is the caller's (cmd/snaplab's explore).
package explore

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"

	"snaplab/sim/crash"
	"snaplab/sim/gen"
	"snaplab/sim/invariant"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/sim/shrink"
)

// Config is a campaign: what every case's scenario is generated with.
type Config struct {
	// Seed is the generator seed of case 0; case i uses Seed+i.
	Seed uint64 `json:"seed"`
	// Ops is the number of random steps of each scenario.
	Ops int `json:"ops"`
	// Semantics are cycled over the cases: ["mainline"], ["seed"] or both.
	Semantics []string `json:"semantics"`
	// Faults adds fault campaigns (named fault sites, seeded activation).
	Faults bool `json:"faults"`
	// Swarm switches op kinds and fault sites off or boosts them per seed.
	Swarm bool `json:"swarm"`
	// Interleave gives scenarios a seed line and asynchronous I/O, so the
	// simulator explores seeded interleavings. Off for scenarios that run
	// on the real kernel (their outcome must not depend on timing).
	Interleave bool `json:"interleave"`
	// DeterminismEvery: every this many cases (by index) run twice, and
	// their recordings must be identical. 0 checks none.
	DeterminismEvery uint64 `json:"determinism_every"`
	// PowerCutEvery: every this many cases (by index) that pass are also
	// checked for crash consistency (sim/crash): power cut at every
	// flush/FUA boundary and at PowerCutSeeds seeded points, every other
	// such case with torn writes. 0 checks none.
	PowerCutEvery uint64 `json:"power_cut_every"`
	PowerCutSeeds int    `json:"power_cut_seeds"`
}

// Validate names what is wrong with c.
func (c Config) Validate() error {
	if c.Ops < 0 {
		return fmt.Errorf("ops %d: want 0 or more", c.Ops)
	}
	if len(c.Semantics) == 0 {
		return fmt.Errorf("no semantics: want mainline, seed or both")
	}
	for _, s := range c.Semantics {
		if s != "mainline" && s != "seed" {
			return fmt.Errorf("semantics %q: want mainline or seed", s)
		}
	}
	return nil
}

// ParseSemantics turns a --semantics value (mainline, seed, both) into
// Config.Semantics.
func ParseSemantics(s string) ([]string, error) {
	switch s {
	case "mainline", "seed":
		return []string{s}, nil
	case "both":
		return []string{"mainline", "seed"}, nil
	}
	return nil, fmt.Errorf("semantics %q: want mainline, seed or both", s)
}

// Case is one scenario of a campaign.
type Case struct {
	Index     uint64 `json:"index"`
	Seed      uint64 `json:"seed"` // the generator's seed
	Semantics string `json:"semantics"`
}

// Case returns case i of the campaign.
func (c Config) Case(i uint64) Case {
	return Case{Index: i, Seed: c.Seed + i, Semantics: c.Semantics[i%uint64(len(c.Semantics))]}
}

// GenConfig is the generator configuration of case k.
func (c Config) GenConfig(k Case) gen.Config {
	return gen.Config{Ops: c.Ops, Semantics: k.Semantics, Faults: c.Faults, Swarm: c.Swarm, Interleave: c.Interleave}
}

// Scenario is the text of case k's scenario.
func (c Config) Scenario(k Case) string {
	text, _ := gen.GenerateConfig(k.Seed, c.GenConfig(k))
	return text
}

// Name is the file name (without extension) case k's files are written
// under.
func (k Case) Name() string { return fmt.Sprintf("explore-%s-%d", k.Semantics, k.Seed) }

// Result is the outcome of one case.
type Result struct {
	Case
	Pass bool
	// Failure is the first failure (Pass false).
	Failure run.Failure
	// Signature names the failure's kind for deduplication: the failing
	// step's verb and the message without digits.
	Signature string
	Coverage  map[string]int // coverage properties reached, with counts
	Kinds     map[string]int // generated step kinds, with counts
	Steps     int
	Checks    int // sectors the oracle checked
	Text      string
	// Recording is the failing run's recording (nil when it passed).
	Recording []byte
	// CrashArgs, for a failed crash check, are the `snaplab crash` flags
	// that reproduce it (e.g. "--seeds 4 --torn").
	CrashArgs string
	// States is the number of power-cut states checked.
	States int
}

// RunCase generates case k and runs it on the simulator.
func RunCase(c Config, k Case) Result {
	text, kinds := gen.GenerateConfig(k.Seed, c.GenConfig(k))
	res := Result{Case: k, Kinds: kinds, Text: text}
	sc, err := script.Parse(k.Name()+".scn", text)
	if err != nil {
		// The generator's contract is a scenario that parses: a parse
		// error is a generator bug, reported like any failure.
		res.Failure = run.Failure{Msg: fmt.Sprintf("generated scenario does not parse: %v", err)}
		res.Signature = "generator: " + shrink.Digitless(err.Error())
		return res
	}
	var rec bytes.Buffer
	twice := c.DeterminismEvery > 0 && k.Index%c.DeterminismEvery == 0
	opts := run.Options{}
	if twice {
		opts.Record = &rec
	}
	rep := runSafe(sc, opts)
	res.Pass, res.Steps, res.Checks, res.Coverage = rep.Pass(), rep.Steps, rep.Checks, rep.Coverage
	if twice {
		var again bytes.Buffer
		runSafe(sc, run.Options{Record: &again})
		if !bytes.Equal(rec.Bytes(), again.Bytes()) {
			res.Pass = false
			res.Failure = run.Failure{Msg: "nondeterminism: two runs of the same scenario and seed wrote different recordings (" + firstDiff(rec.Bytes(), again.Bytes()) + ")"}
			res.Signature = DeterminismSignature
			res.Recording = rec.Bytes()
			return res
		}
	}
	if res.Pass {
		if c.PowerCutEvery > 0 && k.Index%c.PowerCutEvery == 0 {
			powerCuts(c, k, sc, &res)
		}
		return res
	}
	res.Failure = rep.Failures[0]
	res.Signature = Signature(res.Failure)
	if !twice {
		runSafe(sc, run.Options{Record: &rec})
	}
	res.Recording = rec.Bytes()
	return res
}

// crashOptions are the crash check options of case k.
func crashOptions(c Config, k Case) crash.Options {
	return crash.Options{Seeds: c.PowerCutSeeds, Torn: (k.Index/c.PowerCutEvery)%2 == 1}
}

func crashArgs(o crash.Options) string {
	a := fmt.Sprintf("--seeds %d", o.Seeds)
	if o.Torn {
		a += " --torn"
	}
	return a
}

// powerCuts checks case k's crash consistency and counts its states and
// coverage into res; a bad state or an error fails the case.
func powerCuts(c Config, k Case, sc *script.Scenario, res *Result) {
	o := crashOptions(c, k)
	cr, err := crashSafe(sc, o)
	if cr != nil {
		res.States = cr.States
		if cr.Run != nil {
			// order-free: integer sums keyed by the range's key.
			for p, n := range cr.Run.Coverage {
				if p == invariant.ReloadAfterPowerCut {
					res.Coverage = addCount(res.Coverage, p, n)
				}
			}
		}
	}
	switch {
	case err != nil:
		res.Pass = false
		res.Failure = run.Failure{Msg: "crash check: " + err.Error()}
		res.Signature = "crash: " + shrink.Digitless(firstLine(err.Error()))
	case cr.Bad != nil:
		res.Pass = false
		res.Failure = run.Failure{Msg: "crash check " + cr.Bad.Check + ": " + cr.Bad.String()}
		res.Signature = "crash " + cr.Bad.Check + ": " + shrink.Digitless(crashWhere(cr.Bad))
	default:
		return
	}
	res.CrashArgs = crashArgs(o)
}

// crashWhere is the part of a bad state's description a signature keeps:
// the check and the device's kind of content, not the cut.
func crashWhere(b *crash.Bad) string {
	return fmt.Sprintf("%s on %s: expected %s, got %s", b.Check, b.Device, kindOf(b.Expect), kindOf(b.Got))
}

// kindOf keeps the first word of a description of data ("pattern w3 at
// ...", "zero", "EIO") so that signatures group bad states by kind.
func kindOf(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return s
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func addCount(m map[string]int, k string, n int) map[string]int {
	if m == nil {
		m = map[string]int{}
	}
	m[k] += n
	return m
}

// crashSafe is crash.Check with a panic turned into an error.
func crashSafe(sc *script.Scenario, o crash.Options) (res *crash.Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			res, err = nil, fmt.Errorf("panic: %v", p)
		}
	}()
	return crash.Check(sc, o)
}

// runSafe is run.Run with a panic of the simulator turned into the run's
// failure ("panic: VALUE"), so that a campaign reports a crash as a case
// that failed and goes on.
func runSafe(sc *script.Scenario, opts run.Options) (rep *run.Report) {
	defer func() {
		if p := recover(); p != nil {
			rep = &run.Report{Scenario: sc.Name, Failures: []run.Failure{{Msg: fmt.Sprintf("panic: %v", p)}}}
		}
	}()
	return run.Run(sc, opts)
}

// DeterminismSignature is the signature of a case whose two runs wrote
// different recordings.
const DeterminismSignature = "determinism: recordings differ"

// determinismRuns is how many runs of a shrink candidate are compared
// with its first before it counts as deterministic: a nondeterminism that
// shows in one run of two (a map of two keys) escapes all of them once in
// 2^7 candidates.
const determinismRuns = 8

// Shrink minimises a failing case's scenario on the simulator: a candidate
// keeps the failure when its first failure is on the same step text with
// the same signature (a panic too); a failed crash check's candidate must
// pass its run and fail the crash check with the same signature; a
// nondeterministic case's candidate must write a recording, in one of up
// to determinismRuns runs, that differs from its first run's.
func Shrink(c Config, r Result) string {
	if r.Pass {
		return r.Text
	}
	if r.Signature == DeterminismSignature {
		return shrink.Shrink(r.Text, func(text string) bool {
			sc, err := script.Parse("shrink.scn", text)
			if err != nil {
				return false
			}
			var first bytes.Buffer
			runSafe(sc, run.Options{Record: &first})
			for range determinismRuns - 1 {
				var again bytes.Buffer
				runSafe(sc, run.Options{Record: &again})
				if !bytes.Equal(first.Bytes(), again.Bytes()) {
					return true
				}
			}
			return false
		})
	}
	if r.CrashArgs != "" {
		return shrink.Shrink(r.Text, func(text string) bool {
			sc, err := script.Parse("shrink.scn", text)
			if err != nil {
				return false
			}
			if rep := runSafe(sc, run.Options{}); !rep.Pass() {
				return false
			}
			var t Result
			powerCuts(c, r.Case, sc, &t)
			return t.Signature == r.Signature
		})
	}
	return shrink.Shrink(r.Text, func(text string) bool {
		sc, err := script.Parse("shrink.scn", text)
		if err != nil {
			return false
		}
		rep := runSafe(sc, run.Options{})
		return !rep.Pass() && rep.Failures[0].Text == r.Failure.Text && Signature(rep.Failures[0]) == r.Signature
	})
}

// Signature is a failure's kind: the failing step's verb (the first word,
// two for dmsetup and fault lines) and its message with every run of
// digits as '#', so the same defect found by two seeds (other offsets,
// devices, pattern names) has one signature.
func Signature(f run.Failure) string {
	return stepVerb(f.Text) + ": " + shrink.Digitless(f.Msg)
}

func stepVerb(line string) string {
	w := strings.Fields(line)
	switch {
	case len(w) == 0:
		return "-"
	case (w[0] == "dmsetup" || w[0] == "fault") && len(w) > 1:
		return w[0] + " " + w[1]
	}
	return w[0]
}

// firstDiff names the first line on which two recordings differ.
func firstDiff(a, b []byte) string {
	la, lb := bytes.Split(a, []byte("\n")), bytes.Split(b, []byte("\n"))
	for i := 0; i < len(la) && i < len(lb); i++ {
		if !bytes.Equal(la[i], lb[i]) {
			return fmt.Sprintf("line %d", i+1)
		}
	}
	return fmt.Sprintf("lengths %d and %d lines", len(la), len(lb))
}

// Properties are the coverage properties a campaign must reach.
func Properties() []string { return slices.Clone(invariant.Properties) }

// Reachable lists, sorted, the coverage properties a campaign of c can
// reach, the ones whose absence fails it. The others need what c turns
// off, as sim/gen's steps for them do: a handover with copies in flight
// needs the seed's semantics and seeded interleavings, a suspend with
// pending exceptions needs interleavings (a copy stays in flight only
// between scheduled events), and a reload after a power cut needs
// power-cut checks. A kernel-differential campaign has neither
// interleavings nor power cuts.
func (c Config) Reachable() []string {
	var out []string
	for _, p := range invariant.Properties {
		switch p {
		case invariant.HandoverCopiesInFlight:
			if !c.Interleave || !slices.Contains(c.Semantics, "seed") {
				continue
			}
		case invariant.SuspendPendingExceptions:
			if !c.Interleave {
				continue
			}
		case invariant.ReloadAfterPowerCut:
			if c.PowerCutEvery == 0 {
				continue
			}
		}
		out = append(out, p)
	}
	return out
}

// CompareCase runs case k on executor a (the real kernel) and on b (the
// simulator, the reference), as `snaplab run -executor kernel -compare sim`
// does, and reports every difference as the case's failure: the first in
// Failure, all of them in the recording of a's run. Steps, checks and
// coverage are b's. An executor's infrastructure failing (a guest lost) is
// a failure with signature "executor: ...".
func CompareCase(ctx context.Context, c Config, k Case, a, b run.Executor) Result {
	text, kinds := gen.GenerateConfig(k.Seed, c.GenConfig(k))
	r := Result{Case: k, Kinds: kinds, Text: text}
	sc, err := script.Parse(k.Name()+".scn", text)
	if err != nil {
		r.Failure = run.Failure{Msg: fmt.Sprintf("generated scenario does not parse: %v", err)}
		r.Signature = "generator: " + shrink.Digitless(err.Error())
		return r
	}
	var rec bytes.Buffer
	cmp, err := run.Compare(ctx, a, b, sc, run.Options{Record: &rec})
	if err != nil {
		r.Failure = run.Failure{Msg: err.Error()}
		r.Signature = "executor: " + shrink.Digitless(err.Error())
		return r
	}
	rep := cmp.Report()
	r.Steps, r.Checks, r.Coverage = cmp.RepB.Steps, cmp.RepB.Checks, cmp.RepB.Coverage
	if rep.Pass() {
		r.Pass = true
		return r
	}
	r.Failure = rep.Failures[0]
	r.Signature = Signature(r.Failure)
	r.Recording = rec.Bytes()
	return r
}

// ShrinkCompare shrinks a CompareCase failure with at most runs
// comparisons: a candidate keeps the failure when its first failure is on
// the same step text with the same signature. It returns the smallest
// text found within the budget.
func ShrinkCompare(ctx context.Context, r Result, a, b run.Executor, runs int) string {
	fails := func(text string) bool {
		if runs <= 0 || ctx.Err() != nil {
			return false
		}
		runs--
		sc, err := script.Parse("shrink.scn", text)
		if err != nil {
			return false
		}
		cmp, err := run.Compare(ctx, a, b, sc, run.Options{})
		if err != nil {
			return false
		}
		rep := cmp.Report()
		return !rep.Pass() && rep.Failures[0].Text == r.Failure.Text && Signature(rep.Failures[0]) == r.Signature
	}
	return shrink.Shrink(r.Text, fails)
}
