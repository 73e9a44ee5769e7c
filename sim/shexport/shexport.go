// Package shexport turns a scenario into a standalone bash script that
// replays it on any Linux machine as root, without snaplab: a reproducer a
// kernel developer can run on a plain box (`snaplab export --format sh`).
//
// Contract:
//   - Export runs the scenario on the simulator first (deterministically,
//     every step even past a failure) and embeds, per step, the simulator's
//     verdict, the SHA-256 of what each read returned there, and the
//     device numbers the simulator gave each device.
//   - The script makes every scenario disk a sparse file on a loop device
//     wrapped in a dm linear device ("$P+NAME"), names every scenario dm
//     device "$P-NAME", where P is $SNAPLAB_PREFIX or a default derived
//     from the scenario, and touches no other device: it refuses to start
//     when a device of its prefix exists.
//   - dmsetup lines run the real dmsetup (DM_DISABLE_UDEV=1: libdm makes
//     the /dev/mapper nodes) with names prefixed and disks and devices in
//     tables named by their /dev/mapper paths; their output is put back in
//     the simulator's form (names without the prefix, the simulator's
//     device numbers, listings of the scenario's devices only) and checked
//     against the line's assertions.
//   - Writes are dd with oflag=direct of the pattern's exact bytes for
//     that offset (sim/pattern), embedded in base64; reads are dd
//     iflag=direct, compared with the simulator's SHA-256 of the same read;
//     expect=ERRNO checks the failure by its strerror text.
//   - fault DISK RULE swaps the disk wrapper's table for linear, error and
//     delay segments over the failing range, as lvm2's test helpers
//     (test/lib/aux.sh) do: error for read and write faults, delay with its
//     read or write half on an all-error device for one-sided faults.
//     Rules a table cannot express (after=, count=, ratio=, an errno other
//     than EIO, flush and discard rules, ranges not in whole sectors) and
//     disks with image= make Export fail with an *Error naming the line.
//   - Approximations, stated in the script too: async I/O runs in the
//     background and gets 0.3 s to be under way; fsync DEV fsyncs a new
//     file on DEV (errseq still reports an unreported write-back error
//     once); buffered writes go through a file the script holds open until
//     it ends; the block layer's "I/O error, dev DISK" lines the simulator
//     logs for faulted requests are not checked (a dm table above the loop
//     device fails them); `run` polls dmsetup status as the kernel
//     executor does.
//   - The script prints "PASS line N: TEXT" or "FAIL line N: TEXT (why)"
//     per step, noting where the simulator's verdict differs, then a
//     summary; it exits 1 if a step failed, 2 if it could not start, and
//     removes its dm devices, loop devices and files on every exit (trap).
//
// The exporter is deterministic: the same scenario gives the same script.
package shexport

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/pattern"
	"snaplab/sim/profile"
	"snaplab/sim/run"
	"snaplab/sim/script"
)

// PrefixEnv is the environment variable that overrides a script's device
// name prefix.
const PrefixEnv = "SNAPLAB_PREFIX"

// Options change an export.
type Options struct {
	// Prefix is the script's default dm device name prefix; "" derives
	// "snaplab-" and the scenario's name.
	Prefix string
	// Source names where the scenario came from, for the script's header.
	Source string
	// Kernel is the kernel profile (sim/profile) whose verdicts the
	// script expects, for the machine it will run on; "" is 6.1.
	Kernel string
}

// Error is a step the script cannot express.
type Error struct {
	Scenario string
	Line     int
	Text     string
	Msg      string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s:%d: %s: %s", e.Scenario, e.Line, e.Text, e.Msg)
}

// DefaultPrefix is the prefix a script uses unless told otherwise:
// "snaplab-" and the scenario's name, with characters dm names do not take
// unmangled replaced by '_', at most 48 characters.
func DefaultPrefix(name string) string {
	b := []byte("snaplab-" + name)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_.:=@#-", c) >= 0) {
			b[i] = '_'
		}
	}
	if len(b) > 48 {
		b = b[:48]
	}
	return string(b)
}

var prefixRE = regexp.MustCompile(`^[A-Za-z0-9_.:=@#-]{1,64}$`)

// exporter holds what the steps declared so far.
type exporter struct {
	sc       *script.Scenario
	disks    map[string]int // disk name -> declaration index
	diskSize map[string]int64
	faulty   map[string]bool     // disks with fault lines: they get an error helper
	rules    map[string][]rule   // active fault rules per disk, in order
	created  map[string]bool     // dm names created so far (tables may name them)
	blobs    map[string]int      // pattern data key -> blob index
	blobData [][]byte            // blob contents
	out      bytes.Buffer        // the steps
	notes    map[string]struct{} // approximations used
}

type rule struct {
	site     string
	op       block.Op
	off, len int64
}

// Export writes sc as a bash script (see the package comment). An *Error
// names the first line the script cannot express.
func Export(sc *script.Scenario, opts Options) ([]byte, error) {
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultPrefix(sc.Name)
	}
	if !prefixRE.MatchString(prefix) {
		return nil, fmt.Errorf("prefix %q: want 1 to 64 characters from A-Z a-z 0-9 _ . : = @ # -", prefix)
	}
	if _, err := profile.Lookup(opts.Kernel); err != nil {
		return nil, err
	}
	sc = sc.ForKernel(profile.NameOf(opts.Kernel))
	x := &exporter{sc: sc, disks: map[string]int{}, diskSize: map[string]int64{}, faulty: map[string]bool{},
		rules: map[string][]rule{}, created: map[string]bool{}, blobs: map[string]int{}, notes: map[string]struct{}{}}
	if err := x.check(); err != nil {
		return nil, err
	}
	sess := run.NewSession(sc, run.Options{Kernel: opts.Kernel})
	for i := range sc.Steps {
		st := &sc.Steps[i]
		before := simDevices(sess.Control())
		sess.Exec(st)
		res := sess.LastResult()
		after := simDevices(sess.Control())
		if err := x.step(st, res.Check, res.Data, before, after); err != nil {
			return nil, err
		}
	}
	sess.Finish()
	return x.script(prefix, opts.Source), nil
}

// check refuses, before anything runs, the lines a script cannot express.
func (x *exporter) check() error {
	for i := range x.sc.Steps {
		st := &x.sc.Steps[i]
		bad := func(format string, a ...any) error {
			return &Error{Scenario: x.sc.Name, Line: st.Line, Text: st.Text, Msg: fmt.Sprintf(format, a...)}
		}
		switch st.Kind {
		case script.KLvm:
			return bad("lvm lines are not exported (the script replays device-mapper operations): export the library's lvm-NAME.scn, the session expanded into the operations LVM performed, or snaplab import lvm's scenario")
		case script.KDisk:
			if st.Image != "" {
				return bad("a disk with image= cannot be exported (the script does not carry image files)")
			}
		case script.KWrite:
			if st.DataFile != "" {
				return bad("a write with data= cannot be exported (the script does not carry data files)")
			}
		case script.KFault:
			if st.Fault == "clear" || strings.HasPrefix(st.Fault, "clear ") {
				x.faulty[st.Dev] = true
				continue
			}
			r, err := block.ParseRule(st.Fault)
			if err != nil {
				return bad("%v", err)
			}
			switch {
			case r.After > 0:
				return bad("after=%d: a dm table fails every matching request, it cannot let the first ones pass", r.After)
			case r.Count > 0:
				return bad("count=%d: a dm table fails every matching request, it cannot stop after some", r.Count)
			case r.Ratio.Den > 0:
				return bad("ratio=%d/%d: a dm table cannot fail requests at random", r.Ratio.Num, r.Ratio.Den)
			case r.Errno != syscall.EIO:
				return bad("errno %s: dm-error and dm-delay's failing half return EIO only", block.ErrnoName(r.Errno))
			case r.Op == block.OpFlush || r.Op == block.OpDiscard:
				return bad("a %s rule: no dm table fails only %ses", r.Op, r.Op)
			case r.Off%block.SectorSize != 0 || r.Len%block.SectorSize != 0:
				return bad("off=%d len=%d: a dm table's segments are whole 512-byte sectors", r.Off, r.Len)
			}
			x.faulty[st.Dev] = true
		case script.KDmsetup:
			for _, a := range st.Argv {
				switch {
				case a == "-j" || a == "-m" || strings.HasPrefix(a, "--major") || strings.HasPrefix(a, "--minor"):
					return bad("dmsetup %s: device numbers differ on another machine; name the device", a)
				case a == "-c" || a == "-C" || a == "--columns":
					return bad("dmsetup %s: column output is not put back in the simulator's form; use info NAME", a)
				}
			}
		}
	}
	return nil
}

// simDevices is the simulator's name -> MAJ:MIN of its dm devices.
func simDevices(c *dm.Control) map[string]string {
	m := map[string]string{}
	for _, md := range c.Devices() {
		m[md.Name()] = md.Dev().String()
	}
	return m
}

// word is one bash word made of literal text and the prefix variable.
type word []part

type part struct {
	lit  string
	kind byte // 0: literal; '-': "$P-"; '+': "$P+"; 'L': "${SL_LOOP[lit]}"
}

func (w word) String() string {
	var b strings.Builder
	for _, p := range w {
		switch p.kind {
		case 0:
			if p.lit != "" {
				b.WriteString(ansi(p.lit))
			}
		case '-', '+':
			b.WriteString(`"$P` + string(p.kind) + `"`)
		case 'L':
			b.WriteString(`"${SL_LOOP[` + ansi(p.lit) + `]}"`)
		}
	}
	if b.Len() == 0 {
		return "''"
	}
	return b.String()
}

func lit(s string) word { return word{{lit: s}} }

// ansi quotes s as a bash $'...' word (or '...' when plain).
func ansi(s string) string {
	plain := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c == '\'' || c == '\\' {
			plain = false
		}
	}
	if plain {
		return "'" + s + "'"
	}
	var b strings.Builder
	b.WriteString("$'")
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\t':
			b.WriteString(`\t`)
		case c == '\'' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

// devPath is the /dev/mapper path of a scenario disk or dm device.
func (x *exporter) devPath(name string) word {
	if _, ok := x.disks[name]; ok {
		return word{{lit: "/dev/mapper/"}, {kind: '+'}, {lit: name}}
	}
	return word{{lit: "/dev/mapper/"}, {kind: '-'}, {lit: name}}
}

func (x *exporter) emit(format string, a ...any) { fmt.Fprintf(&x.out, format, a...) }

func (x *exporter) note(n string) { x.notes[n] = struct{}{} }

// step writes one step: its start (line, text, the simulator's verdict),
// its expectations and the simulator's device numbers, and its call.
func (x *exporter) step(st *script.Step, check, data string, before, after map[string]string) error {
	bad := func(format string, a ...any) error {
		return &Error{Scenario: x.sc.Name, Line: st.Line, Text: st.Text, Msg: fmt.Sprintf(format, a...)}
	}
	x.emit("\n# line %d\nsl_begin %d %s %s\n", st.Line, st.Line, ansi(st.Text), ansi(check))
	e := st.Expect
	if e.Stdout != nil {
		x.emit("SL_X_HAS_STDOUT=1 SL_X_STDOUT=%s\n", ansi(*e.Stdout))
	}
	for _, re := range e.StdoutMatch {
		x.emit("SL_X_MATCH+=(%s)\n", ansi(script.StdoutPattern(re)))
	}
	for _, l := range e.StdoutLines {
		x.emit("SL_X_LINES+=(%s)\n", ansi(l))
	}
	for _, l := range e.Stderr {
		x.emit("SL_X_STDERR+=(%s)\n", ansi(l))
	}
	if e.Exit != nil {
		x.emit("SL_X_EXIT=%d\n", *e.Exit)
	}
	for _, l := range e.Log {
		x.emit("SL_X_LOG+=(%s)\n", ansi(l))
		if strings.HasPrefix(l, "I/O error, dev ") {
			x.note("the block layer's \"I/O error, dev DISK\" lines the simulator logs for faulted requests are not checked: here a dm table above the loop device fails them")
		}
	}
	if e.NoLog {
		x.emit("SL_X_NOLOG=1\n")
	}
	if e.Errno != nil {
		x.emit("SL_X_ERRNO=%s\n", block.ErrnoName(*e.Errno))
	}
	if e.Data != "" {
		x.emit("SL_X_DATA=%s\n", ansi(e.Data))
	}
	if data != "" {
		x.emit("SL_SIMHASH=%s\n", ansi(data))
	}
	// The simulator's device numbers around this step: before it, while
	// it ran (a create's new device) and after it.
	sim := map[string]string{}
	// order-free: a map filled from a map
	for n, d := range before {
		sim[n] = d
	}
	if st.Kind == script.KDmsetup && len(st.Argv) >= 2 && st.Argv[0] == "create" {
		if _, ok := after[st.Argv[1]]; !ok {
			sim[st.Argv[1]] = fmt.Sprintf("%d:%d", dm.DMMajor, freeMinor(before))
		}
	}
	// order-free: a map filled from a map
	for n, d := range after {
		sim[n] = d
	}
	names := make([]string, 0, len(sim))
	// order-free: sorted below
	for n := range sim {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		x.emit("SL_SIMDEV[%s]=%s\n", ansi(n), sim[n])
	}
	disks := make([]string, 0, len(x.disks))
	// order-free: sorted below
	for n := range x.disks {
		disks = append(disks, n)
	}
	sort.Strings(disks)
	for _, n := range disks {
		x.emit("SL_SIMDEV[%s]=%s\n", ansi("+"+n), diskDev(x.disks[n]))
	}

	switch st.Kind {
	case script.KDisk:
		x.disks[st.Dev] = len(x.disks)
		x.diskSize[st.Dev] = st.Size
		x.emit("SL_SIMDEV[%s]=%s\n", ansi("+"+st.Dev), diskDev(x.disks[st.Dev]))
		f := 0
		if x.faulty[st.Dev] {
			f = 1
		}
		x.emit("sl_disk %s %d %d %d\n", ansi(st.Dev), st.Size, st.LBS, f)
	case script.KDmsetup:
		argv, kind := x.dmsetupArgs(st.Argv, before)
		x.emit("sl_dmsetup %s", kind)
		for _, w := range argv {
			x.emit(" %s", w)
		}
		x.emit("\n")
		if len(st.Argv) >= 2 && st.Argv[0] == "create" {
			x.created[st.Argv[1]] = true
		}
	case script.KWrite, script.KRead, script.KFlush, script.KDiscard:
		src := `''`
		mode := "direct"
		switch {
		case st.FUA:
			mode = "fua"
		case st.Buffered:
			mode = "buffered"
			x.note("buffered writes go through a file the script holds open until it ends; fsync DEV fsyncs a new file on DEV (errseq reports an unreported write-back error to it once)")
		}
		if st.Kind == script.KWrite {
			src = fmt.Sprintf(`"$SL_TMP/b%d"`, x.blob(st.Pattern, st.Off, st.Len))
		}
		if st.Async != "" {
			x.note("an async I/O runs in the background and gets 0.3 s to be under way before the next step")
		}
		x.emit("sl_iostep %s %s %d %d %s %s %s\n", st.Kind, x.devPath(st.Dev), st.Off, st.Len, src, mode, ansi(st.Async))
	case script.KWait:
		x.emit("sl_wait %s\n", ansi(st.Async))
	case script.KFsync:
		x.emit("sl_fsync %s\n", x.devPath(st.Dev))
	case script.KSync:
		x.emit("sl_sync\n")
	case script.KOpen:
		x.emit("sl_open %s %s\n", x.devPath(st.Dev), ansi(st.Handle))
	case script.KClose:
		x.emit("sl_close %s\n", ansi(st.Handle))
	case script.KLog:
		x.emit("sl_log\n")
	case script.KRun:
		x.note("run polls dmsetup status until no merge is running and status and event numbers read the same twice, 50 ms apart")
		x.emit("sl_run\n")
	case script.KFault:
		table, err := x.fault(st)
		if err != nil {
			return bad("%v", err)
		}
		x.emit("sl_fault %s %s\n", ansi(st.Dev), table)
	default:
		return bad("no shell equivalent for a %s step", st.Kind)
	}
	return nil
}

// diskDev is the simulator's number of the i-th disk: virtio disks are
// 254:0, 254:16, ...
func diskDev(i int) string { return fmt.Sprintf("254:%d", 16*i) }

// freeMinor is the lowest dm minor the devices do not use: the one a
// create takes.
func freeMinor(devs map[string]string) int {
	used := map[int]bool{}
	// order-free: fills a set
	for _, d := range devs {
		if _, mi, ok := strings.Cut(d, ":"); ok {
			if n, err := strconv.Atoi(mi); err == nil {
				used[n] = true
			}
		}
	}
	m := 0
	for used[m] {
		m++
	}
	return m
}

// blob is the index of the embedded data of pattern p for [off, off+n).
func (x *exporter) blob(p string, off, n int64) int {
	key := fmt.Sprintf("%s@%d+%d", p, off, n)
	if i, ok := x.blobs[key]; ok {
		return i
	}
	b := make([]byte, n)
	pattern.Fill(b, p, off)
	x.blobData = append(x.blobData, b)
	x.blobs[key] = len(x.blobData) - 1
	return len(x.blobData) - 1
}

// dmsetup options that take a value.
var valueOpts = map[string]bool{"--table": true, "-u": true, "--uuid": true, "-o": true, "--options": true,
	"--target": true, "--separator": true, "--readahead": true, "--sort": true, "-n": true, "--name": true}

// dmsetupArgs rewrites a dmsetup command line for the script: device
// names prefixed, tables naming disks and devices by /dev/mapper path; and
// the kind of listing its output is ("none", "ls" lines, "lines" of
// NAME: ..., info "blocks").
func (x *exporter) dmsetupArgs(argv []string, devs map[string]string) ([]word, string) {
	var out []word
	var pos []int // indices of positional words after the command
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		switch {
		case i == 0:
			out = append(out, lit(a))
		case a == "--table" && i+1 < len(argv):
			out = append(out, lit(a), x.table(argv[i+1], devs))
			i++
		case strings.HasPrefix(a, "--table="):
			w := append(word{{lit: "--table="}}, x.table(strings.TrimPrefix(a, "--table="), devs)...)
			out = append(out, w)
		case (a == "-u" || a == "--uuid") && i+1 < len(argv):
			out = append(out, lit(a), word{{kind: '-'}, {lit: argv[i+1]}})
			i++
		case valueOpts[a] && i+1 < len(argv):
			out = append(out, lit(a), lit(argv[i+1]))
			i++
		case strings.HasPrefix(a, "-"):
			out = append(out, lit(a))
		default:
			pos = append(pos, len(out))
			out = append(out, lit(a))
		}
	}
	cmd := argv[0]
	named := 0 // how many positionals are device names
	switch cmd {
	case "create", "load", "message", "rename":
		named = 1
	case "remove", "suspend", "resume", "clear", "status", "table", "info", "deps", "wait", "mknodes":
		named = len(pos)
	}
	for j := 0; j < named && j < len(pos); j++ {
		w := out[pos[j]][0].lit
		if n, ok := strings.CutPrefix(w, "/dev/mapper/"); ok {
			out[pos[j]] = word{{lit: "/dev/mapper/"}, {kind: '-'}, {lit: n}}
		} else {
			out[pos[j]] = word{{kind: '-'}, {lit: w}}
		}
	}
	kind := "none"
	switch {
	case cmd == "ls":
		kind = "lines"
	case (cmd == "status" || cmd == "table") && len(pos) == 0:
		kind = "lines"
	case cmd == "info" && len(pos) == 0:
		kind = "blocks"
	}
	return out, kind
}

var devNumRE = regexp.MustCompile(`^[0-9]+:[0-9]+$`)

// table rewrites a table's device arguments (from each line's fourth
// word): a disk or a dm device of the scenario, by name, path or the
// simulator's number, becomes its /dev/mapper path; a device number the
// simulator does not know becomes a path that exists nowhere, so that the
// script never maps another user's device.
func (x *exporter) table(text string, devs map[string]string) word {
	byNum := map[string]string{}
	// order-free: an inverse map, numbers are unique
	for n, d := range devs {
		byNum[d] = n
	}
	var w word
	for li, line := range strings.Split(text, "\n") {
		if li > 0 {
			w = append(w, part{lit: "\n"})
		}
		f := strings.Fields(line)
		if len(f) < 4 {
			w = append(w, part{lit: line})
			continue
		}
		w = append(w, part{lit: strings.Join(f[:3], " ")})
		for _, tok := range f[3:] {
			w = append(w, part{lit: " "})
			w = append(w, x.tableToken(tok, byNum)...)
		}
	}
	return merge(w)
}

func (x *exporter) tableToken(tok string, byNum map[string]string) word {
	name := tok
	for _, p := range []string{"/dev/disk/by-id/virtio-", "/dev/mapper/", "/dev/"} {
		if n, ok := strings.CutPrefix(tok, p); ok {
			name = n
			break
		}
	}
	if _, ok := x.disks[name]; ok {
		return x.devPath(name)
	}
	if devNumRE.MatchString(tok) {
		// order-free: disk numbers are unique
		for n, i := range x.disks {
			if diskDev(i) == tok {
				return x.devPath(n)
			}
		}
		if n, ok := byNum[tok]; ok {
			return word{{lit: "/dev/mapper/"}, {kind: '-'}, {lit: n}}
		}
		return word{{lit: "/dev/mapper/"}, {kind: '-'}, {lit: "nosuch-" + strings.ReplaceAll(tok, ":", "-")}}
	}
	if x.created[name] {
		return word{{lit: "/dev/mapper/"}, {kind: '-'}, {lit: name}}
	}
	return lit(tok)
}

// merge joins adjacent literal parts.
func merge(w word) word {
	var out word
	for _, p := range w {
		if n := len(out); n > 0 && p.kind == 0 && out[n-1].kind == 0 {
			out[n-1].lit += p.lit
			continue
		}
		out = append(out, p)
	}
	return out
}

// fault updates the disk's active rules and returns its new wrapper table.
func (x *exporter) fault(st *script.Step) (word, error) {
	rs := x.rules[st.Dev]
	switch {
	case st.Fault == "clear":
		rs = nil
	case strings.HasPrefix(st.Fault, "clear "):
		site := strings.TrimSpace(strings.TrimPrefix(st.Fault, "clear "))
		rs = slices.DeleteFunc(rs, func(r rule) bool { return r.site == site })
	default:
		r, err := block.ParseRule(st.Fault)
		if err != nil {
			return nil, err
		}
		rs = slices.DeleteFunc(rs, func(o rule) bool { return o.site == r.Site })
		rs = append(rs, rule{site: r.Site, op: r.Op, off: r.Off, len: r.Len})
	}
	x.rules[st.Dev] = rs
	return x.faultTable(st.Dev, rs), nil
}

// faultTable is the wrapper table of a disk under rules: the disk cut at
// every rule's edges; each segment linear over the loop device, error when
// reads and writes fail there, delay with the failing direction on the
// disk's all-error device when one does.
func (x *exporter) faultTable(disk string, rs []rule) word {
	size := x.diskSize[disk] / block.SectorSize
	cuts := []int64{0, size}
	for _, r := range rs {
		if r.len > 0 {
			cuts = append(cuts, min(r.off/block.SectorSize, size), min((r.off+r.len)/block.SectorSize, size))
		}
	}
	slices.Sort(cuts)
	cuts = slices.Compact(cuts)
	loop := word{{kind: 'L', lit: disk}}
	errDev := word{{lit: "/dev/mapper/"}, {kind: '+'}, {lit: disk + "+err"}}
	var w word
	for i := 0; i+1 < len(cuts); i++ {
		start, end := cuts[i], cuts[i+1]
		rd, wr := false, false
		for _, r := range rs {
			if r.len > 0 && (r.off/block.SectorSize >= end || (r.off+r.len)/block.SectorSize <= start) {
				continue
			}
			rd = rd || r.op == block.OpRead || r.op == block.OpAny
			wr = wr || r.op == block.OpWrite || r.op == block.OpAny
		}
		if len(w) > 0 {
			w = append(w, part{lit: "\n"})
		}
		w = append(w, part{lit: fmt.Sprintf("%d %d ", start, end-start)})
		off := fmt.Sprintf(" %d", start)
		switch {
		case rd && wr:
			w = append(w, part{lit: "error"})
		case rd:
			w = append(w, part{lit: "delay "})
			w = append(w, errDev...)
			w = append(w, part{lit: off + " 0 "})
			w = append(w, loop...)
			w = append(w, part{lit: off + " 0"})
		case wr:
			w = append(w, part{lit: "delay "})
			w = append(w, loop...)
			w = append(w, part{lit: off + " 0 "})
			w = append(w, errDev...)
			w = append(w, part{lit: off + " 0"})
		default:
			w = append(w, part{lit: "linear "})
			w = append(w, loop...)
			w = append(w, part{lit: off})
		}
	}
	return merge(w)
}

// script assembles the whole file.
func (x *exporter) script(prefix, source string) []byte {
	var b bytes.Buffer
	b.WriteString("#!/bin/bash\n")
	fmt.Fprintf(&b, "# Reproducer of the snaplab scenario %q", x.sc.Name)
	if source != "" {
		fmt.Fprintf(&b, " (%s)", source)
	}
	b.WriteString(", written by `snaplab export --format sh`.\n")
	b.WriteString(`# Run it as root on a Linux machine with dmsetup, losetup and coreutils:
#   bash SCRIPT          (the device names' prefix: $` + PrefixEnv + `, default below;
#                         SNAPLAB_DEBUG=1 prints every kernel log line each step read)
# Each disk is a sparse file on a loop device under a dm linear device; fault lines swap
# its table for error or delay segments. Each step prints PASS or FAIL, and notes where
# the simulator's verdict (embedded) differs; the exit status is 1 if a step failed.
# Devices, loop devices and files are removed on every exit.
`)
	if x.sc.Semantics == "seed" {
		b.WriteString("# The scenario runs the seed patch's handover semantics: no released kernel has them.\n")
	}
	if len(x.notes) > 0 {
		b.WriteString("# Approximations of the simulator's steps:\n")
		notes := make([]string, 0, len(x.notes))
		// order-free: sorted below
		for n := range x.notes {
			notes = append(notes, n)
		}
		sort.Strings(notes)
		for _, n := range notes {
			fmt.Fprintf(&b, "#  - %s\n", n)
		}
	}
	b.WriteString("#\n# The scenario:\n")
	for _, l := range strings.Split(strings.TrimRight(x.sc.Text, "\n"), "\n") {
		fmt.Fprintf(&b, "#   %s\n", l)
	}
	fmt.Fprintf(&b, "\nSL_NAME=%s\nSL_PREFIX_ENV=%s\nP=${%s:-%s}\n\n", ansi(x.sc.Name), PrefixEnv, PrefixEnv, prefix)
	b.WriteString(prelude)
	b.WriteString("\nsl_setup\n")
	for i, d := range x.blobData {
		fmt.Fprintf(&b, "base64 -d >\"$SL_TMP/b%d\" <<'SL_BLOB'\n", i)
		enc := base64.StdEncoding.EncodeToString(d)
		for len(enc) > 76 {
			b.WriteString(enc[:76])
			b.WriteByte('\n')
			enc = enc[76:]
		}
		b.WriteString(enc)
		b.WriteString("\nSL_BLOB\n")
	}
	b.Write(x.out.Bytes())
	b.WriteString("\nsl_summary\n")
	return b.Bytes()
}
