package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"snaplab/sim/lvmlog"
	"snaplab/sim/script"
)

// cmdImport turns another tool's record of a session into a scenario.
func cmdImport(args []string, stdout, stderr io.Writer) int {
	const synopsis = `import lvm [-o OUT.scn] LOG
       import log-writes [-device NAME] [-size SIZE] [-o OUT.scn] LOG (import log-writes -h)

Turns an LVM debug log into a scenario (.scn): the device-mapper operations LVM
performed, in order, as dmsetup lines (and LVM's zeroing of a new volume's
start as a write), with a disk for each physical volume. Device numbers in
tables become names; UUIDs are dropped. Run the scenario with snaplab run
(any executor) to replay a real LVM session without LVM.

The log is LVM's debug output at level 7 for every command of the session:
lvm.conf's log { file = "/tmp/lvm.log" level = 7 activation = 1 overwrite = 0 }
(activation = 1 keeps the lines LVM logs while devices are suspended), or
the commands' stderr with -vvvv. Not -q: it silences the debug log.`
	fs := newFlags("import", synopsis, stderr)
	out := fs.String("o", "", "write the scenario to this file (default stdout)")
	if len(args) == 0 {
		fs.Usage()
		return 2
	}
	format := args[0]
	if format == "-h" || format == "--help" || format == "-help" {
		fs.Usage()
		return 0
	}
	if format == "log-writes" {
		return importLogWrites(args[1:], stdout, stderr)
	}
	if err := parseFlags(fs, args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if format != "lvm" {
		fmt.Fprintf(stderr, "snaplab import: format %q: want lvm or log-writes\n", format)
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "snaplab import lvm: want one log file")
		return 2
	}
	path := fs.Arg(0)
	f, err := os.Open(path)
	if err != nil {
		fmt.Fprintf(stderr, "snaplab import lvm: %v\n", err)
		return 1
	}
	defer f.Close()
	ops, err := lvmlog.Parse(f)
	if err != nil {
		fmt.Fprintf(stderr, "snaplab import lvm: %s: %v\n", path, err)
		return 1
	}
	if len(ops) == 0 {
		fmt.Fprintf(stderr, "snaplab import lvm: %s: no device-mapper operation in it (is it LVM's debug log at level 7, without -q?)\n", path)
		return 1
	}
	name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	text, err := lvmlog.Scenario(ops, name)
	if err != nil {
		fmt.Fprintf(stderr, "snaplab import lvm: %s: %v\n", path, err)
		return 1
	}
	// What is written must be a scenario snaplab reads.
	if _, err := script.Parse(name, text); err != nil {
		fmt.Fprintf(stderr, "snaplab import lvm: %s: the scenario made of it does not parse: %v\n", path, err)
		return 1
	}
	if err := writeOut(*out, []byte(text), 0o644, stdout); err != nil {
		fmt.Fprintf(stderr, "snaplab import lvm: %v\n", err)
		return 1
	}
	if *out == "" {
		return 0
	}
	fmt.Fprintf(stderr, "snaplab import lvm: %d operations of %s in %s\n", len(ops), path, *out)
	return 0
}
