package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"snaplab/sim/explore"
	"snaplab/sim/run"
	"snaplab/vmtest/guestexec"
	"snaplab/vmtest/qemu"
)

// coverageMin is the smallest campaign whose unreached coverage
// properties fail it: below it a property may be missed by chance.
const coverageMin = 200

// cmdExplore runs a campaign of generated scenarios (sim/explore), or
// merges shards' summaries (explore merge).
func cmdExplore(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "merge" {
		return cmdExploreMerge(args[1:], stdout, stderr)
	}
	fs := newFlags("explore", "explore [--seeds N | --for DURATION] [flags]\n       snaplab explore merge [-partial] [-o FILE] SUMMARY...", stderr)
	seeds := fs.Uint64("seeds", 100, "number of generated scenarios (cases); case i uses generator seed --seed+i")
	dur := fs.Duration("for", 0, "run cases until this much time has passed instead of --seeds (e.g. 10m)")
	ops := fs.Int("ops", 60, "random steps per scenario")
	semFlag := fs.String("semantics", "both", "handover semantics: mainline, seed, or both (alternating by case)")
	faults := onOff(fs, "faults", true, "fault campaigns: named fault sites on the disks, seeded activation")
	swarm := onOff(fs, "swarm", true, "swarm testing: each seed switches some op kinds and fault sites off and boosts others")
	inter := onOff(fs, "interleave", true, "seeded interleavings: asynchronous I/O and a seed line (sim executor only)")
	doShrink := onOff(fs, "shrink", true, "shrink the first failing case of each signature")
	base := fs.Uint64("seed", 1, "generator seed of case 0")
	jobs := fs.Int("jobs", runtime.NumCPU(), "cases run at once (sim executor)")
	shardFlag := fs.String("shard", "", "run only part I of N of the cases (I/N, e.g. $JOB_COMPLETION_INDEX/8): case i when i mod N == I")
	outDir := fs.String("out", "out/explore", "directory for failing cases' scenarios, recordings, shrunk scenarios, and the summary")
	sumFile := fs.String("summary", "", "summary file (JSON; default OUT/summary.json, or OUT/summary-I-of-N.json for a shard)")
	maxFail := fs.Uint64("max-failures", 0, "stop after this many failing cases (0: run them all)")
	detEvery := fs.Uint64("determinism-every", 50, "run every Nth case twice and require identical recordings (0: none)")
	cutEvery := fs.Uint64("power-cut-every", 10, "check every Nth passing case's crash consistency (power cuts at every flush/FUA boundary and seeded points; 0: none)")
	cutSeeds := fs.Int("power-cut-seeds", 4, "seeded power cuts per crash-checked case, besides the boundaries")
	progress := fs.String("progress", "auto", "progress on stderr: auto (a bar on a terminal, else lines), bar, lines or off")
	executor := fs.String("executor", "sim", "sim, or kernel (the real dm-snapshot in guests; needs --compare sim)")
	compare := fs.String("compare", "", "with --executor kernel: sim, to diff every case with the simulator")
	guests := fs.Int("guests", 1, "with --executor kernel: guests booted, cases run on them in parallel")
	accel := fs.String("accel", "", "with --executor kernel: the guests' accelerator, auto, kvm or tcg (default $SNAPLAB_ACCEL, else auto)")
	kernelSpec := kernelFlag(fs)
	shrinkRuns := fs.Int("shrink-runs", 150, "with --executor kernel: at most this many kernel runs to shrink one difference")
	plant := plantFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "snaplab explore: "+format+"\n", a...)
		return 2
	}
	if err := plant.apply(); err != nil {
		return usage("%v", err)
	}
	if fs.NArg() != 0 {
		return usage("unexpected argument %q (flags only; merge is \"snaplab explore merge\")", fs.Arg(0))
	}
	sems, err := explore.ParseSemantics(*semFlag)
	if err != nil {
		return usage("--%v", err)
	}
	var shard explore.Shard
	if *shardFlag != "" {
		if shard, err = explore.ParseShard(*shardFlag); err != nil {
			return usage("--%v", err)
		}
	}
	if *jobs < 1 {
		return usage("--jobs %d: want 1 or more", *jobs)
	}
	if *progress != "auto" && *progress != "bar" && *progress != "lines" && *progress != "off" {
		return usage("--progress %q: want auto, bar, lines or off", *progress)
	}
	kernel := false
	if err := checkKernel(*kernelSpec, *executor); err != nil {
		return usage("%v", err)
	}
	switch {
	case *executor == "sim" && *compare == "":
	case *executor == "kernel" && *compare == "sim":
		kernel = true
		if *guests < 1 {
			return usage("--guests %d: want 1 or more", *guests)
		}
		if slicesHas(sems, "seed") {
			sems = []string{"mainline"}
			if *semFlag != "both" {
				return usage("--semantics seed with --executor kernel: the real kernel has mainline's handover")
			}
		}
		if inter.set && inter.on {
			return usage("--interleave on with --executor kernel: the kernel's timing is not the simulator's; generated cases for the kernel have no seeded interleavings")
		}
		inter.on = false
	case *executor == "kernel":
		return usage("--executor kernel needs --compare sim (the simulator is the reference)")
	default:
		return usage("--executor %q --compare %q: want --executor sim, or --executor kernel --compare sim", *executor, *compare)
	}
	cfg := explore.Config{Seed: *base, Ops: *ops, Semantics: sems, Faults: faults.on, Swarm: swarm.on,
		Interleave: inter.on, DeterminismEvery: *detEvery, PowerCutEvery: *cutEvery, PowerCutSeeds: *cutSeeds}
	if kernel {
		// The kernel's runs are not byte-identical recordings, and crash
		// states are the simulator's (the kernel suite loads a sample).
		cfg.DeterminismEvery, cfg.PowerCutEvery, cfg.PowerCutSeeds = 0, 0, 0
	}
	if err := cfg.Validate(); err != nil {
		return usage("%v", err)
	}
	if *sumFile == "" {
		*sumFile = filepath.Join(*outDir, "summary.json")
		if !shard.Whole() {
			*sumFile = filepath.Join(*outDir, fmt.Sprintf("summary-%d-of-%d.json", shard.I, shard.N))
		}
	}

	// The cases this shard runs, in index order.
	var total uint64 // 0 with --for: unbounded
	if *dur == 0 {
		total = *seeds
	}
	next := uint64(0)
	var mu sync.Mutex
	start := time.Now()
	deadline := time.Time{}
	if *dur > 0 {
		deadline = start.Add(*dur)
	}
	stopped := false
	take := func() (explore.Case, bool) {
		mu.Lock()
		defer mu.Unlock()
		for {
			if stopped || (total > 0 && next >= total) || (!deadline.IsZero() && time.Now().After(deadline)) {
				return explore.Case{}, false
			}
			i := next
			next++
			if shard.Has(i) {
				return cfg.Case(i), true
			}
		}
	}
	want := total
	if !shard.Whole() && total > 0 {
		want = (total - shard.I + shard.N - 1) / shard.N
	}
	executorName := "sim"
	if kernel {
		executorName = "kernel/sim"
	}
	col := explore.NewCollector(explore.NewSummary(cfg, executorName, 0, shard))
	prog := newProgress(stderr, *progress, want)

	// Workers: sim cases in process, or kernel cases on one guest each.
	type worker func(explore.Case) explore.Result
	var workers []worker
	var kernelExecs []run.Executor
	if kernel {
		s := poolSpec{mode: guestexec.GuestKernel, kernel: *kernelSpec, backend: "qemu", n: *guests,
			consoleLog: func(g int) string { return filepath.Join(*outDir, fmt.Sprintf("console-guest%d.log", g)) }}
		if *accel != "" {
			a, err := qemu.ParseAccel(*accel)
			if err != nil {
				return usage("--accel: %v", err)
			}
			s.accel, s.accelSource = a, "--accel "+*accel
		}
		if err := os.MkdirAll(*outDir, 0o755); err != nil {
			fmt.Fprintf(stderr, "snaplab explore: %v\n", err)
			return 1
		}
		p, err := startPool(stderr, s)
		if err != nil {
			fmt.Fprintf(stderr, "snaplab explore: %v\n", err)
			return 1
		}
		defer p.stop()
		for _, ex := range p.execs {
			kernelExecs = append(kernelExecs, ex)
			workers = append(workers, func(k explore.Case) explore.Result {
				return explore.CompareCase(context.Background(), cfg, k, ex, run.Sim{})
			})
		}
	} else {
		for range *jobs {
			workers = append(workers, func(k explore.Case) explore.Result { return explore.RunCase(cfg, k) })
		}
	}
	// An interrupt (SIGINT, SIGTERM) stops the campaign after the cases
	// running: their results and the summary are kept, no case is
	// shrunk. A second one ends the process at once.
	interrupted := false
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
	defer signal.Stop(sigs)
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		select {
		case sig := <-sigs:
			signal.Stop(sigs)
			mu.Lock()
			stopped, interrupted = true, true
			prog.interrupted(sig)
			mu.Unlock()
		case <-quit:
		}
	}()
	prog.started(len(workers), executorName)

	var wg sync.WaitGroup
	var failures uint64
	for _, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k, ok := take()
				if !ok {
					return
				}
				r := w(k)
				mu.Lock()
				col.Add(r)
				if !r.Pass {
					failures++
					prog.failure(r)
					if *maxFail > 0 && failures >= *maxFail {
						stopped = true
					}
				}
				prog.tick(col.Sum.Ran, failures)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	prog.done()
	elapsed := time.Since(start)
	mu.Lock()
	col.Sum.Cases = next
	if total > 0 && !stopped {
		col.Sum.Cases = total
	}
	col.Sum.Interrupted = interrupted
	mu.Unlock()

	var shrinker explore.Shrinker
	if doShrink.on && !interrupted {
		if kernel {
			shrinker = func(r explore.Result) (string, error) {
				return explore.ShrinkCompare(context.Background(), r, kernelExecs[0], run.Sim{}, *shrinkRuns), nil
			}
		} else {
			shrinker = func(r explore.Result) (string, error) { return explore.Shrink(cfg, r), nil }
		}
	}
	if err := col.Finish(*outDir, shrinker); err != nil {
		fmt.Fprintf(stderr, "snaplab explore: %v\n", err)
		return 1
	}
	if err := writeSummary(*sumFile, col.Sum); err != nil {
		fmt.Fprintf(stderr, "snaplab explore: %v\n", err)
		return 1
	}
	code := printSummary(stdout, col.Sum, *outDir, *sumFile, elapsed, len(workers))
	if code == 0 && interrupted {
		return 130
	}
	if code == 0 && !stopped && col.Sum.Ran >= coverageMin && len(col.Sum.Unreached()) > 0 {
		code = 1
	}
	return code
}

// onOffValue is a flag taking on or off.
type onOffValue struct {
	on, set bool
}

func (v *onOffValue) String() string {
	if v.on {
		return "on"
	}
	return "off"
}

func (v *onOffValue) Set(s string) error {
	switch s {
	case "on", "true", "1":
		v.on = true
	case "off", "false", "0":
		v.on = false
	default:
		return fmt.Errorf("want on or off")
	}
	v.set = true
	return nil
}

func onOff(fs *flag.FlagSet, name string, def bool, usage string) *onOffValue {
	v := &onOffValue{on: def}
	fs.Var(v, name, usage+" (on or off)")
	return v
}

func slicesHas(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func writeSummary(path string, s *explore.Summary) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	var b bytes.Buffer
	if err := s.WriteJSON(&b); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// printSummary prints a campaign's summary; it returns 1 when a case
// failed.
func printSummary(w io.Writer, s *explore.Summary, outDir, sumFile string, elapsed time.Duration, jobs int) int {
	c := s.Config
	what := fmt.Sprintf("%s; faults %s; swarm %s; interleave %s; %d ops", strings.Join(c.Semantics, "+"),
		onWord(c.Faults), onWord(c.Swarm), onWord(c.Interleave), c.Ops)
	if len(s.Shards) > 0 {
		what += "; shard " + strings.Join(s.Shards, ",")
	}
	rate := ""
	if elapsed > 0 {
		secs := elapsed.Seconds()
		rate = fmt.Sprintf(" in %.1f s (%.1f seeds/s, %d jobs)", secs, float64(s.Ran)/secs, jobs)
		if s.Executor != "sim" {
			rate = fmt.Sprintf(" in %.1f s (%.1f scenarios/min, %d guests)", secs, float64(s.Ran)/secs*60, jobs)
		}
	}
	fmt.Fprintf(w, "explore: %d seeds from %d on %s (%s)%s\n", s.Ran, c.Seed, s.Executor, what, rate)
	switch {
	case s.Interrupted && s.Cases == 0:
		fmt.Fprintf(w, "  interrupted before any case ran\n")
	case s.Interrupted:
		fmt.Fprintf(w, "  interrupted: cases 0 to %d were taken (generator seeds %d to %d), failures not shrunk; --seed %d continues\n",
			s.Cases-1, c.Seed, c.Seed+s.Cases-1, c.Seed+s.Cases)
	}
	fmt.Fprintf(w, "  passed %d, failed %d; %d steps; the oracle checked %d sectors; %d power-cut states checked\n", s.Passed, s.Failed, s.Steps, s.Checks, s.States)
	var reached, beyond []string
	reachable := c.Reachable()
	for _, p := range explore.Properties() {
		if !slicesHas(reachable, p) {
			beyond = append(beyond, p)
			continue
		}
		reached = append(reached, fmt.Sprintf("%s %d", p, s.Coverage[p]))
	}
	fmt.Fprintf(w, "  coverage: %s\n", strings.Join(reached, ", "))
	if len(beyond) > 0 {
		fmt.Fprintf(w, "  not reachable without interleavings, the seed's semantics or power cuts: %s\n", strings.Join(beyond, ", "))
	}
	if un := s.Unreached(); len(un) > 0 {
		if s.Ran >= coverageMin {
			fmt.Fprintf(w, "  FAIL: never reached in %d seeds: %s\n", s.Ran, strings.Join(un, ", "))
		} else {
			fmt.Fprintf(w, "  never reached: %s (a campaign of %d seeds or more fails on this)\n", strings.Join(un, ", "), coverageMin)
		}
	}
	code := 0
	if len(s.Failures) > 0 {
		code = 1
		fmt.Fprintf(w, "  failures, by signature:\n")
	}
	for _, f := range s.Failures {
		fmt.Fprintf(w, "  %d× %s\n", f.Count, f.Signature)
		fmt.Fprintf(w, "     first: seed %d (%s), line %d: %s\n", f.First.Seed, f.First.Semantics, f.Line, f.Text)
		fmt.Fprintf(w, "       %s\n", f.Msg)
		if f.Scenario == "" {
			continue
		}
		scn := filepath.Join(outDir, f.Scenario)
		if f.Shrunk != "" {
			fmt.Fprintf(w, "     shrunk to %d lines: %s\n", f.ShrunkLines, filepath.Join(outDir, f.Shrunk))
		}
		if f.Recording != "" {
			fmt.Fprintf(w, "     replay: snaplab replay %s\n", filepath.Join(outDir, f.Recording))
		}
		if f.CrashArgs != "" {
			fmt.Fprintf(w, "     reproduce: snaplab crash %s %s\n", f.CrashArgs, scn)
		} else {
			fmt.Fprintf(w, "     shrink: snaplab shrink %s\n", scn)
		}
		if s.Executor != "sim" {
			fmt.Fprintf(w, "     rerun:  snaplab run -executor kernel -compare sim %s\n", scn)
		}
	}
	fmt.Fprintf(w, "  summary: %s\n", sumFile)
	return code
}

func onWord(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// cmdExploreMerge combines shards' summaries into the campaign's.
func cmdExploreMerge(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("explore merge", "explore merge [-partial] [-o FILE] SUMMARY...", stderr)
	out := fs.String("o", "", "write the merged summary (JSON) to FILE")
	partial := fs.Bool("partial", false, "merge even when shards are missing (they are listed)")
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "snaplab explore merge: no summary files given")
		return 2
	}
	var sums []*explore.Summary
	for _, file := range fs.Args() {
		f, err := os.Open(file)
		if err != nil {
			fmt.Fprintf(stderr, "snaplab explore merge: %v\n", err)
			return 1
		}
		s, err := explore.ReadSummary(f)
		f.Close()
		if err != nil {
			fmt.Fprintf(stderr, "snaplab explore merge: %s: %v\n", file, err)
			return 1
		}
		sums = append(sums, s)
	}
	m, err := explore.Merge(sums, *partial)
	if err != nil {
		fmt.Fprintf(stderr, "snaplab explore merge: %v\n", err)
		return 1
	}
	sumFile := *out
	if sumFile != "" {
		if err := writeSummary(sumFile, m); err != nil {
			fmt.Fprintf(stderr, "snaplab explore merge: %v\n", err)
			return 1
		}
	} else {
		sumFile = "(not written: -o FILE)"
	}
	// Failure files stay where each shard wrote them, relative to its
	// output directory; the merged report names them that way.
	code := printSummary(stdout, m, filepath.Dir(fs.Arg(0)), sumFile, 0, 0)
	if code == 0 && len(m.Shards) == 0 && m.Ran >= coverageMin && len(m.Unreached()) > 0 {
		code = 1
	}
	return code
}

// progress reports a campaign's progress on stderr: a bar redrawn in
// place on a terminal, else a plain line every tenth of the way (or
// every 10 s for a --for campaign).
type progress struct {
	w     io.Writer
	mode  string
	want  uint64
	start time.Time
	last  time.Time
	step  uint64
}

func newProgress(w io.Writer, mode string, want uint64) *progress {
	if mode == "auto" {
		mode = "lines"
		if f, ok := w.(*os.File); ok && isTerminal(f) {
			mode = "bar"
		}
	}
	p := &progress{w: w, mode: mode, want: want, start: time.Now()}
	p.step = max(want/10, 1)
	return p
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func (p *progress) rate(done uint64) float64 {
	if s := time.Since(p.start).Seconds(); s > 0 {
		return float64(done) / s
	}
	return 0
}

func (p *progress) tick(done, failed uint64) {
	switch p.mode {
	case "bar":
		if time.Since(p.last) < 100*time.Millisecond && done != p.want {
			return
		}
		p.last = time.Now()
		const width = 30
		bar := strings.Repeat("-", width)
		of := "?"
		if p.want > 0 {
			n := int(done * width / p.want)
			bar = strings.Repeat("#", n) + strings.Repeat("-", width-n)
			of = fmt.Sprint(p.want)
		}
		fmt.Fprintf(p.w, "\r[%s] %d/%s seeds  %.1f seeds/s  %d failed ", bar, done, of, p.rate(done), failed)
	case "lines":
		if (p.want > 0 && done%p.step == 0) || (p.want == 0 && time.Since(p.last) >= 10*time.Second) {
			p.last = time.Now()
			of := ""
			if p.want > 0 {
				of = fmt.Sprintf("/%d", p.want)
			}
			fmt.Fprintf(p.w, "explore: %d%s seeds, %.1f seeds/s, %d failed\n", done, of, p.rate(done), failed)
		}
	}
}

func (p *progress) failure(r explore.Result) {
	if p.mode == "off" {
		return
	}
	if p.mode == "bar" {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintf(p.w, "explore: seed %d (%s) failed: line %d: %s\n    %s\n", r.Seed, r.Semantics, r.Failure.Line, r.Failure.Text, r.Failure.Msg)
}

// started says, in lines mode, what runs and how to stop it.
func (p *progress) started(workers int, executor string) {
	if p.mode != "lines" {
		return
	}
	of := "until the time is up"
	if p.want > 0 {
		of = fmt.Sprintf("%d seeds", p.want)
	}
	unit := "jobs"
	if executor != "sim" {
		unit = "guests"
	}
	fmt.Fprintf(p.w, "explore: %s on %s, %d %s; an interrupt stops after the running cases and writes the summary\n", of, executor, workers, unit)
}

// interrupted says that the campaign stops; the caller holds the lock.
func (p *progress) interrupted(sig os.Signal) {
	if p.mode == "off" {
		return
	}
	if p.mode == "bar" {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintf(p.w, "explore: %v: finishing the running cases, then writing the summary (again to quit at once)\n", sig)
}

func (p *progress) done() {
	if p.mode == "bar" {
		fmt.Fprintln(p.w)
	}
}
