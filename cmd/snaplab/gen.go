package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"snaplab/sim/gen"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/sim/shrink"
)

// cmdGen writes a generated scenario (sim/gen) to stdout or a file.
func cmdGen(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("gen", "gen [--seed S] [--ops M] [--faults] [--semantics mainline|seed] [--swarm] [--interleave] [-o FILE]", stderr)
	seed := fs.Uint64("seed", 1, "seed of the generated scenario (same seed, ops and options: same bytes)")
	ops := fs.Int("ops", 40, "number of random steps after the setup")
	faults := fs.Bool("faults", false, "add fault windows (fault DISK RULE site=NAME ... fault DISK clear) with modelled outcomes")
	semantics := fs.String("semantics", "", "handover semantics to model: mainline or seed (either selects the extended op set)")
	swarm := fs.Bool("swarm", false, "swarm testing: the seed switches some kinds and fault sites off and boosts others")
	interleave := fs.Bool("interleave", false, "add a seed line and asynchronous I/O whose outcomes do not depend on completion order")
	out := fs.String("o", "", "write the scenario to FILE instead of stdout")
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "snaplab gen: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *ops < 0 {
		fmt.Fprintf(stderr, "snaplab gen: --ops %d: want 0 or more\n", *ops)
		return 2
	}
	cfg := gen.Config{Ops: *ops, Semantics: *semantics, Faults: *faults, Swarm: *swarm, Interleave: *interleave}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "snaplab gen: --semantics: %v\n", err)
		return 2
	}
	text, _ := gen.GenerateConfig(*seed, cfg)
	if err := writeOut(*out, []byte(text), 0o644, stdout); err != nil {
		fmt.Fprintf(stderr, "snaplab gen: %v\n", err)
		return 1
	}
	return 0
}

// cmdShrink minimises a scenario that fails on the sim executor, keeping
// its failure signature (the failing line and message), and prints it.
func cmdShrink(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("shrink", "shrink [-o FILE] [-any] [-images-anywhere] SCENARIO", stderr)
	out := fs.String("o", "", "also write the minimal scenario to FILE")
	anyFail := fs.Bool("any", false, "keep any failure on the simulator, not only the original one (failing line and message)")
	anywhere := imagesAnywhereFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "snaplab shrink: want exactly one scenario file")
		return 2
	}
	file := fs.Arg(0)
	b, err := os.ReadFile(file)
	if err != nil {
		fmt.Fprintf(stderr, "snaplab shrink: %v\n", err)
		return 1
	}
	text := string(b)
	dir, opts := filepath.Dir(file), run.Options{AllowImagesOutside: *anywhere}
	sig := shrink.SignatureIn(dir, opts, text)
	if sig == "" {
		fmt.Fprintf(stderr, "snaplab shrink: %s does not fail on the sim executor (or does not parse): nothing to shrink\n", file)
		return 1
	}
	fails := shrink.SimFailsIn(dir, opts, sig)
	if *anyFail {
		fails = func(t string) bool { return shrink.SignatureIn(dir, opts, t) != "" }
	}
	runs := 0
	counted := func(t string) bool { runs++; return fails(t) }
	small := shrink.Shrink(text, counted)
	fmt.Fprint(stdout, small)
	fmt.Fprintf(stderr, "snaplab shrink: %s: %d step lines -> %d (%d runs)\n", file, steps(text), steps(small), runs)
	if sc, err := script.Parse(file, small); err == nil {
		sc.Dir = dir
		if rep := run.Run(sc, opts); !rep.Pass() {
			fmt.Fprintf(stderr, "  %s\n", rep.Failures[0])
		}
	}
	if *out != "" {
		if err := os.WriteFile(*out, []byte(small), 0o644); err != nil {
			fmt.Fprintf(stderr, "snaplab shrink: %v\n", err)
			return 1
		}
	}
	return 0
}

func steps(text string) int {
	n := 0
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			n++
		}
	}
	return n
}
