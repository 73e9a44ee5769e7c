package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"snaplab/sim/script"
	"snaplab/sim/shexport"
)

// cmdExport writes a scenario as a reproducer for another machine: with
// --format sh, a standalone bash script (sim/shexport) that replays it as
// root with loop devices and the real dmsetup, prints PASS or FAIL per
// step next to the simulator's verdict, and cleans up on every exit.
// With --format log-writes, what one disk received during a recorded run,
// as the log of a dm-log-writes target over it (export_logwrites.go).
func cmdExport(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("export", "export --format sh [-o FILE] [-prefix P] SCENARIO\n       export --format log-writes --device DISK [-o FILE] [-images-anywhere] RECORDING.jsonl", stderr)
	format := fs.String("format", "sh", "what to write: sh (a bash script for a Linux machine, run as root), log-writes (a dm-log-writes log of one disk's requests in a recorded run)")
	out := fs.String("o", "", "write the script (mode 0755) or the log to FILE instead of stdout")
	prefix := fs.String("prefix", "", "the script's default dm device name prefix (default snaplab-SCENARIO; $"+shexport.PrefixEnv+" overrides it when the script runs)")
	device := fs.String("device", "", "log-writes: the disk whose requests to log")
	anywhere := imagesAnywhereFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *format == "log-writes" {
		return exportLogWritesCmd(fs, *device, *out, *anywhere, stdout, stderr)
	}
	if *format != "sh" {
		fmt.Fprintf(stderr, "snaplab export: --format %q: want sh or log-writes\n", *format)
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
	if err := writeOut(*out, b, 0o755, stdout); err != nil {
		fmt.Fprintf(stderr, "snaplab export: %v\n", err)
		return 1
	}
	return 0
}
