package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"snaplab/sim/script"
	"snaplab/sim/shexport"
)

// cmdExport writes a scenario as a reproducer for another machine: with
// --format sh, a standalone bash script (sim/shexport) that replays it as
// root with loop devices and the real dmsetup, prints PASS or FAIL per
// step next to the simulator's verdict, and cleans up on every exit.
func cmdExport(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("export", "export --format sh [-o FILE] [-prefix P] SCENARIO", stderr)
	format := fs.String("format", "sh", "what to write: sh (a bash script for a Linux machine, run as root)")
	out := fs.String("o", "", "write the script to FILE (mode 0755) instead of stdout")
	prefix := fs.String("prefix", "", "the script's default dm device name prefix (default snaplab-SCENARIO; $"+shexport.PrefixEnv+" overrides it when the script runs)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *format != "sh" {
		fmt.Fprintf(stderr, "snaplab export: --format %q: want sh\n", *format)
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "snaplab export: want one scenario file, got %d arguments\n", fs.NArg())
		return 2
	}
	path := fs.Arg(0)
	sc, err := script.ParseFile(path)
	if err != nil {
		fmt.Fprintf(stderr, "snaplab export: %v\n", err)
		return 1
	}
	b, err := shexport.Export(sc, shexport.Options{Prefix: *prefix, Source: path})
	if err != nil {
		fmt.Fprintf(stderr, "snaplab export: %v\n", err)
		return 1
	}
	if *out == "" {
		if _, err := stdout.Write(b); err != nil {
			fmt.Fprintf(stderr, "snaplab export: %v\n", err)
			return 1
		}
		return 0
	}
	if err := os.WriteFile(*out, b, 0o755); err != nil {
		fmt.Fprintf(stderr, "snaplab export: %v\n", err)
		return 1
	}
	return 0
}
