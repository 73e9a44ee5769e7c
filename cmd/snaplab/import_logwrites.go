package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"snaplab/sim/logwrites"
	"snaplab/sim/script"
)

const importLogWritesSynopsis = `import log-writes [-device NAME] [-size SIZE] [-o OUT.scn] LOG

Turns a dm-log-writes log (the log device of a "log-writes" target, or what
snaplab export --format log-writes wrote) into a scenario (.scn) that replays
its entries in order onto a disk: each write as a direct write of its bytes
(data=LOG@OFFSET: the scenario reads them from the log, so keep the log where
the scenario names it), FUA writes with fua, flushes as flush lines (a flush
with data: the flush, then the write), discards as discard lines, marks as
comments. Run it with snaplab run: the disk ends as the logged device did.

The disk is as large as the highest sector written (rounded up to 4 KiB)
unless -size says otherwise; its logical block size is the log's. data=
names the log relative to OUT's directory (-o), or as given on the command
line when the scenario goes to stdout.`

// importLogWrites is `snaplab import log-writes`.
func importLogWrites(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("import", importLogWritesSynopsis, stderr)
	out := fs.String("o", "", "write the scenario to this file (default stdout)")
	device := fs.String("device", "disk", "the name of the scenario's disk")
	size := fs.String("size", "", "the disk's size (default: what the log's entries reach, rounded up to 4 KiB)")
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "snaplab import log-writes: want one log file")
		return 2
	}
	path := fs.Arg(0)
	f, err := os.Open(path)
	if err != nil {
		fmt.Fprintf(stderr, "snaplab import log-writes: %v\n", err)
		return 1
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		fmt.Fprintf(stderr, "snaplab import log-writes: %v\n", err)
		return 1
	}
	l, err := logwrites.Read(f, fi.Size())
	if err != nil {
		fmt.Fprintf(stderr, "snaplab import log-writes: %s: %v\n", path, err)
		return 1
	}
	var want int64
	if *size != "" {
		if want, err = script.ParseSize(*size); err != nil || want <= 0 || want%int64(l.SectorSize) != 0 {
			fmt.Fprintf(stderr, "snaplab import log-writes: -size %q: want a positive multiple of the log's %d-byte sectors\n", *size, l.SectorSize)
			return 2
		}
	}
	ref := path
	if *out != "" {
		if ref, err = relTo(filepath.Dir(*out), path); err != nil {
			fmt.Fprintf(stderr, "snaplab import log-writes: %v\n", err)
			return 1
		}
	}
	name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	text, err := logScenario(l, *device, ref, want, filepath.Base(path))
	if err != nil {
		fmt.Fprintf(stderr, "snaplab import log-writes: %s: %v\n", path, err)
		return 1
	}
	if _, err := script.Parse(name, text); err != nil {
		fmt.Fprintf(stderr, "snaplab import log-writes: %s: the scenario made of it does not parse: %v\n", path, err)
		return 1
	}
	if err := writeOut(*out, []byte(text), 0o644, stdout); err != nil {
		fmt.Fprintf(stderr, "snaplab import log-writes: %v\n", err)
		return 1
	}
	if *out == "" {
		return 0
	}
	fmt.Fprintf(stderr, "snaplab import log-writes: %d entries of %s in %s\n", len(l.Entries), path, *out)
	return 0
}

// relTo is target's path relative to dir (absolute when it cannot be).
func relTo(dir, target string) (string, error) {
	ad, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	at, err := filepath.Abs(target)
	if err != nil {
		return "", err
	}
	if rel, err := filepath.Rel(ad, at); err == nil {
		return rel, nil
	}
	return at, nil
}

// maxIO is the most a scenario's I/O line moves.
const maxIO = 64 << 20

// logScenario is the scenario replaying l on disk dev; ref is how its
// data= words name the log. size 0: what the entries reach.
func logScenario(l *logwrites.Log, dev, ref string, size int64, logName string) (string, error) {
	if err := checkName(dev); err != nil {
		return "", err
	}
	if strings.ContainsAny(ref, " \t\"'#\\") {
		return "", fmt.Errorf("the log's path %q has a character a scenario word cannot hold unquoted; rename it", ref)
	}
	ss := int64(l.SectorSize)
	var end int64
	for i, e := range l.Entries {
		if e.Sector > 1<<50 || e.NrSectors > 1<<50 {
			return "", fmt.Errorf("entry %d: sector %d, %d sectors: beyond what a scenario disk holds", i, e.Sector, e.NrSectors)
		}
		end = max(end, int64(e.Sector+e.NrSectors)*ss)
	}
	need := (end + 4095) / 4096 * 4096
	if need == 0 {
		need = 4096
	}
	if size == 0 {
		size = need
	} else if size < end {
		return "", fmt.Errorf("-size %d: the log writes up to byte %d", size, end)
	}
	offs := logwrites.Offsets(l)
	var b strings.Builder
	fmt.Fprintf(&b, "# Imported by snaplab import log-writes from %s: %d entries of %d-byte sectors.\n", logName, len(l.Entries), ss)
	fmt.Fprintf(&b, "# Each write's bytes are read from the log itself (data=%s@OFFSET).\n", ref)
	fmt.Fprintf(&b, "disk %s %d lbs=%d\n", dev, size, ss)
	for i, e := range l.Entries {
		off, n := int64(e.Sector)*ss, int64(e.NrSectors)*ss
		switch {
		case e.Flags&logwrites.FlagMark != 0:
			fmt.Fprintf(&b, "# entry %d: mark %s\n", i, markComment(e.Mark))
			continue
		case e.Flags&logwrites.FlagDiscard != 0:
			fmt.Fprintf(&b, "# entry %d: %s\n", i, e)
			for done := int64(0); done < n; done += maxIO {
				fmt.Fprintf(&b, "discard %s %d %d\n", dev, off+done, min(maxIO, n-done))
			}
			continue
		}
		fmt.Fprintf(&b, "# entry %d: %s\n", i, e)
		if e.Flags&logwrites.FlagFlush != 0 {
			fmt.Fprintf(&b, "flush %s\n", dev)
		}
		fua := ""
		if e.Flags&logwrites.FlagFUA != 0 {
			fua = " fua"
		}
		for done := int64(0); done < n; done += maxIO {
			fmt.Fprintf(&b, "write %s %d %d data=%s@%d%s\n", dev, off+done, min(maxIO, n-done), ref, offs[i]+ss+done, fua)
		}
	}
	return b.String(), nil
}

// markComment shows a mark's name on a comment line, quoted with control
// characters escaped.
func markComment(s string) string { return fmt.Sprintf("%q", s) }

// checkName refuses a disk name the scenario language would not take.
func checkName(s string) error {
	if s == "" {
		return fmt.Errorf("-device: empty disk name")
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("_-.", c)) {
			return fmt.Errorf("-device %q: a disk name holds letters, digits, '_', '-' and '.' only", s)
		}
	}
	return nil
}
