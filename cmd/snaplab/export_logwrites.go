package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/logwrites"
	"snaplab/sim/run"
	"snaplab/sim/script"
)

// exportLogWrites replays the recording at path in process with a tap on
// disk dev and returns, in dm-log-writes format, what a log-writes target
// over that disk would have logged during the run: its writes (with their
// bytes), FUA writes, flushes and discards, in the order the target logs
// them (writes wait for the next flush), a mark before each control step
// (dmsetup, lvm), and at the end what the target's removal logs.
func exportLogWrites(path, dev string, anywhere bool) ([]byte, *logwrites.Log, error) {
	rec, err := readRecording(path)
	if err != nil {
		return nil, nil, err
	}
	defer rec.Close()
	sc, err := script.Parse(rec.Header.Scenario, rec.Header.Text)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: the recording's scenario: %v", path, err)
	}
	var disks, dms []string
	lbs := uint32(0)
	for _, st := range sc.Steps {
		switch {
		case st.Kind == script.KDisk:
			disks = append(disks, st.Dev)
			if st.Dev == dev {
				lbs = max(st.LBS, block.SectorSize)
			}
		case st.Kind == script.KDmsetup:
			if a, err := dm.ParseArgs(st.Argv); err == nil && a.Cmd == "create" && len(a.Operands) > 0 {
				dms = append(dms, a.Operands[0])
			}
		}
	}
	if lbs == 0 {
		msg := fmt.Sprintf("%s: no disk named %q in the recording (disks: %s", path, dev, strings.Join(disks, ", "))
		if len(dms) > 0 {
			msg += "; dm devices, which export does not tap: " + strings.Join(dms, ", ")
		}
		return nil, nil, fmt.Errorf("%s)", msg)
	}
	tg := logwrites.NewTarget(lbs)
	var tapErr error
	tap := func(disk string, r block.Request) {
		if disk != dev || tapErr != nil {
			return
		}
		switch r.Op {
		case block.OpWrite:
			tapErr = tg.Write(r.Off, r.Data, false, r.FUA)
		case block.OpFlush:
			tapErr = tg.Flush(r.Off)
		case block.OpDiscard:
			tapErr = tg.Discard(r.Off, r.Len)
		}
	}
	before := func(st *script.Step, _ *run.Session) {
		if name := markName(st); name != "" {
			tg.Mark(name)
		}
	}
	_, diff, err := replayRecovered(rec, run.Options{AllowImagesOutside: anywhere, Tap: tap, BeforeStep: before})
	switch {
	case err != nil:
		return nil, nil, fmt.Errorf("%s: %v", path, err)
	case diff != "":
		return nil, nil, fmt.Errorf("%s: the replay diverged from the recording, so its requests are not the recorded run's:\n%s", path, diff)
	case tapErr != nil:
		return nil, nil, fmt.Errorf("%s: disk %s: %v", path, dev, tapErr)
	}
	tg.End()
	l := tg.Log()
	b, err := logwrites.Encode(l)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %v", path, err)
	}
	return b, l, nil
}

// markName is the name of the mark a control step gets in an exported log
// ("" for other steps): a `dmsetup message DEV SECTOR mark NAME` is the
// kernel's mark NAME itself; any other is "lineN:VERB-DEV" ("line12:suspend-snap1",
// "line3:lvm-lvcreate"), without spaces. The target cuts it to
// logwrites.MaxMark bytes.
func markName(st *script.Step) string {
	switch st.Kind {
	case script.KDmsetup:
		a, err := dm.ParseArgs(st.Argv)
		if err != nil {
			return fmt.Sprintf("line%d:%s", st.Line, strings.Join(strings.Fields(st.Argv[0]), "_"))
		}
		if a.Cmd == "message" && len(a.Operands) == 4 && strings.EqualFold(a.Operands[2], "mark") {
			return a.Operands[3]
		}
		name := a.Cmd
		if len(a.Operands) > 0 {
			name += "-" + a.Operands[0]
		}
		return fmt.Sprintf("line%d:%s", st.Line, strings.Join(strings.Fields(name), "_"))
	case script.KLvm:
		return fmt.Sprintf("line%d:lvm-%s", st.Line, st.Argv[0])
	}
	return ""
}

// exportLogWritesCmd is `export --format log-writes`.
func exportLogWritesCmd(fs *flag.FlagSet, device, out string, anywhere bool, stdout, stderr io.Writer) int {
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "snaplab export: --format log-writes: want one recording (.jsonl), got %d arguments\n", fs.NArg())
		return 2
	}
	if device == "" {
		fmt.Fprintln(stderr, "snaplab export: --format log-writes: --device DISK says which disk's requests to log")
		return 2
	}
	b, l, err := exportLogWrites(fs.Arg(0), device, anywhere)
	if err != nil {
		fmt.Fprintf(stderr, "snaplab export: %v\n", err)
		return 1
	}
	if err := writeOut(out, b, 0o644, stdout); err != nil {
		fmt.Fprintf(stderr, "snaplab export: %v\n", err)
		return 1
	}
	if out == "" {
		return 0
	}
	fmt.Fprintf(stderr, "snaplab export: %d entries (%d-byte sectors) of disk %s in %s\n", len(l.Entries), l.SectorSize, device, out)
	return 0
}
