package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"snaplab/sim/crash"
	"snaplab/sim/script"
)

// cmdCrash is `snaplab crash`: the scenario's crash states (sim/crash),
// each listed, then a summary and the first bad state. Exit status 1 when
// a state broke the promise (or the check could not run), 2 on usage
// errors.
func cmdCrash(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("crash", "crash [--seeds K] [--torn] [--dump DIR] [-q] SCENARIO", stderr)
	seeds := fs.Int("seeds", 0, "also cut the power at K seeded points (seeds 1..K) that keep a random subset of the volatile writes")
	torn := fs.Bool("torn", false, "seeded cuts keep each volatile sector on its own, and tear the write in flight")
	dump := fs.String("dump", "", "write a sample state (the first bad one, else the last) to DIR/cut-N/: raw images and a scenario that loads them")
	sem := fs.String("semantics", "", "override the scenario's handover semantics: mainline or seed")
	quiet := fs.Bool("q", false, "print only the summary and the first bad state, not every state")
	anywhere := imagesAnywhereFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "snaplab crash: want exactly one scenario file")
		return 2
	}
	if *seeds < 0 {
		fmt.Fprintf(stderr, "snaplab crash: --seeds %d: want 0 or more\n", *seeds)
		return 2
	}
	if *sem != "" && *sem != "mainline" && *sem != "seed" {
		fmt.Fprintf(stderr, "snaplab crash: --semantics %q: want mainline or seed\n", *sem)
		return 2
	}
	file := fs.Arg(0)
	sc, err := script.ParseFile(file)
	if err != nil {
		fmt.Fprintf(stderr, "snaplab crash: %v\n", err)
		return 1
	}
	sc.Dir = filepath.Dir(file)
	res, err := crash.Check(sc, crash.Options{Seeds: *seeds, Torn: *torn, DumpDir: *dump, Semantics: *sem, AllowImagesOutside: *anywhere})
	if err != nil {
		fmt.Fprintf(stderr, "snaplab crash: %v\n", err)
		return 1
	}
	if !*quiet {
		for _, c := range res.Cuts {
			fmt.Fprintln(stdout, c)
		}
	}
	fmt.Fprintf(stdout, "%s: %d disk operations, %d states checked (%d boundary, %d seeded), %d sectors read, %d judged unread (holes nothing maps)\n",
		sc.Name, res.Ops, res.States, res.Boundaries, res.Seeded, res.Sectors, res.Untouched)
	if !res.Run.Pass() {
		fmt.Fprintf(stdout, "note: the scenario's own checks failed on the simulator (%d), first: %s\n", len(res.Run.Failures), res.Run.Failures[0])
	}
	for _, p := range res.Dumped {
		fmt.Fprintf(stdout, "dumped %s\n", p)
	}
	if res.Bad != nil {
		fmt.Fprintf(stdout, "BAD %s\n", res.Bad)
		return 1
	}
	fmt.Fprintln(stdout, "ok: every state kept the promise")
	return 0
}
