// Package lvmlog reads the device-mapper operations LVM performed out of
// its debug log (lvm.conf log/level=7, or -vvvv on stderr): libdm's ioctl
// lines ("dm create NAME UUID", "dm reload (253:3)", ...), the tables it
// loaded ("Adding target to (253:3): 0 32768 snapshot 253:1 253:2 P 8"),
// the ioctls that failed, and LVM's zeroing of a new volume's start
// ("Initializing 4.00 KiB of logical volume vg/snap with value 0."), in
// order, grouped by command ("Processing command: lvcreate ...").
//
// Read-only queries LVM makes to find its way (info, deps, table,
// versions, names) are left out; status queries (lvs's snap_percent) are
// kept. Nothing else LVM writes (its metadata on the physical volumes) is
// a device-mapper operation, so none of it is here.
//
// Scenario turns the operations into scenario lines: dmsetup commands a
// simulator and a kernel both run, and a zeroing write. Device names
// replace the dm device numbers in tables; every other device number (a
// physical volume) becomes a disk, declared first. UUIDs (random per
// session) are dropped.
package lvmlog

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Op is one device-mapper operation.
type Op struct {
	Command string // the LVM command line that performed it ("lvcreate -s -L 8M -n snap vg/origin")
	// Kind is create, load, suspend, resume, remove, status or zero.
	Kind  string
	Name  string   // the dm device's name
	Dev   string   // its number, MAJ:MIN, once known
	Table []string // load: the table's lines, as logged (device numbers)
	// Flags of a suspend: noflush, nolockfs.
	Flags []string
	Bytes int64  // zero: how many bytes from the start
	Fail  string // the ioctl's error as libdm logged it ("Invalid argument"); "" = it succeeded
}

// String is the operation in one line, as results compare it: "load
// vg-snap: ok" or "load vg-snap: Invalid argument".
func (o Op) String() string {
	r := "ok"
	if o.Fail != "" {
		r = o.Fail
	}
	return o.Kind + " " + o.Name + ": " + r
}

var (
	// A debug line's message follows its source position ("libdm-iface.c:2081").
	srcRE      = regexp.MustCompile(`\S+\.c:\d+\s*(.*)$`)
	ioctlRE    = regexp.MustCompile(`^dm (\w+)\s+(.*?)\s*(?:\[ ([^\]]*) \])?\s*(?:\[\d+\])?\s*(?:\(\*\d+\))?\s*$`)
	devRE      = regexp.MustCompile(`^\((\d+:\d+)\)`)
	loadingRE  = regexp.MustCompile(`^(?:Loading table for|Resuming|Suspending|Removing) (\S+) \((\d+:\d+)\)`)
	targetRE   = regexp.MustCompile(`^Adding target to \((\d+:\d+)\): (.*?)\s*$`)
	failRE     = regexp.MustCompile(`^device-mapper: (\w+) ioctl on (.*?)\s*failed: (.*?)\s*$`)
	initRE     = regexp.MustCompile(`^Initializing ([0-9.]+) ([KMG]i?B) of logical volume (\S+)/(\S+) with value 0\.?$`)
	commandRE  = regexp.MustCompile(`^Processing command: (.*?)\s*$`)
	infoRE     = regexp.MustCompile(`^Getting device info for (\S+) \[(\S+)\]`)
	skipIoctls = map[string]bool{"info": true, "deps": true, "table": true, "version": true, "versions": true, "names": true, "targets": true, "mknodes": true}
)

// Parser reads the logs of a session's commands one after another: the
// names it learned (device numbers, UUIDs) carry over, since a command
// addresses devices an earlier one created (lvs asks the status of a
// snapshot by its UUID).
type Parser struct {
	names map[string]string // MAJ:MIN -> name
	uuids map[string]string // dm UUID -> name
}

// VGs lists the volume groups of the devices the parsed logs created, in
// name order (from dm names: VG-LV, each '-' inside doubled).
func (p *Parser) VGs() []string {
	seen := map[string]bool{}
	var out []string
	// order-free: the names are sorted below.
	for _, name := range p.uuids {
		if vg, ok := SplitDMName(name); ok && !seen[vg] {
			seen[vg] = true
			out = append(out, vg)
		}
	}
	sort.Strings(out)
	return out
}

// SplitDMName returns the volume group of an LVM dm name (the inverse of
// DMName's first half); false for a name LVM does not make.
func SplitDMName(name string) (string, bool) {
	for i := 0; i < len(name); i++ {
		if name[i] != '-' {
			continue
		}
		if i+1 < len(name) && name[i+1] == '-' {
			i++
			continue
		}
		if i == 0 {
			return "", false
		}
		return strings.ReplaceAll(name[:i], "--", "-"), true
	}
	return "", false
}

// NewParser returns a parser that knows no device yet.
func NewParser() *Parser {
	return &Parser{names: map[string]string{}, uuids: map[string]string{}}
}

// Parse reads one debug log with a new Parser.
func Parse(r io.Reader) ([]Op, error) { return NewParser().Parse(r) }

// Parse reads a debug log. It fails on a line it cannot make sense of
// that concerns a kept operation (a reload of an unknown device, a table
// line without a device), naming the log's line.
func (p *Parser) Parse(r io.Reader) ([]Op, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var ops []Op
	names := p.names
	pending := map[string][]string{} // MAJ:MIN -> table lines since its last load
	command := ""
	ln := 0
	for sc.Scan() {
		ln++
		m := srcRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		msg := m[1]
		if c := commandRE.FindStringSubmatch(msg); c != nil {
			command = c[1]
			continue
		}
		if g := infoRE.FindStringSubmatch(msg); g != nil {
			p.uuids[g[2]] = g[1]
			continue
		}
		if l := loadingRE.FindStringSubmatch(msg); l != nil {
			names[l[2]] = l[1]
			if strings.HasPrefix(msg, "Loading table") {
				pending[l[2]] = nil
			}
			for i := len(ops) - 1; i >= 0 && ops[i].Kind == "create" && ops[i].Dev == ""; i-- {
				if ops[i].Name == l[1] {
					ops[i].Dev = l[2]
				}
			}
			continue
		}
		if t := targetRE.FindStringSubmatch(msg); t != nil {
			pending[t[1]] = append(pending[t[1]], t[2])
			continue
		}
		if f := failRE.FindStringSubmatch(msg); f != nil {
			// The last operation of that ioctl failed.
			kind := map[string]string{"reload": "load"}[f[1]]
			if kind == "" {
				kind = f[1]
			}
			for i := len(ops) - 1; i >= 0; i-- {
				if ops[i].Kind == kind {
					ops[i].Fail = f[3]
					break
				}
			}
			continue
		}
		if z := initRE.FindStringSubmatch(msg); z != nil {
			n, err := sizeBytes(z[1], z[2])
			if err != nil {
				return nil, fmt.Errorf("log line %d: %v", ln, err)
			}
			ops = append(ops, Op{Command: command, Kind: "zero", Name: DMName(z[3], z[4]), Bytes: n})
			continue
		}
		i := ioctlRE.FindStringSubmatch(msg)
		if i == nil || skipIoctls[i[1]] {
			continue
		}
		kind, arg, flags := i[1], strings.TrimSpace(i[2]), strings.Fields(i[3])
		op := Op{Command: command, Kind: kind}
		if kind == "create" {
			f := strings.Fields(arg)
			if len(f) == 0 {
				return nil, fmt.Errorf("log line %d: dm create without a name", ln)
			}
			op.Name = f[0]
			if len(f) > 1 {
				p.uuids[f[1]] = f[0]
			}
			ops = append(ops, op)
			continue
		}
		d := devRE.FindStringSubmatch(arg)
		if d == nil {
			// An ioctl by UUID: LVM asks a status so (lvs, a merge's
			// progress); other ioctls by UUID are its lookups.
			f := strings.Fields(arg)
			if kind != "status" || len(f) != 1 || p.uuids[f[0]] == "" {
				continue
			}
			op.Name = p.uuids[f[0]]
			ops = append(ops, op)
			continue
		}
		op.Dev = d[1]
		op.Name = names[op.Dev]
		if op.Name == "" {
			return nil, fmt.Errorf("log line %d: dm %s of device %s, which the log never named", ln, kind, op.Dev)
		}
		switch kind {
		case "reload":
			op.Kind = "load"
			op.Table = pending[op.Dev]
			if len(op.Table) == 0 {
				return nil, fmt.Errorf("log line %d: dm reload of %s (%s) with no \"Adding target\" line before it", ln, op.Name, op.Dev)
			}
			pending[op.Dev] = nil
		case "suspend":
			for _, f := range flags {
				if f == "noflush" {
					op.Flags = append(op.Flags, "noflush")
				}
				if f == "skiplockfs" {
					op.Flags = append(op.Flags, "nolockfs")
				}
			}
		case "resume", "status", "remove":
		default:
			continue // clear, message, ...: not LVM's snapshot operations
		}
		ops = append(ops, op)
		if kind == "remove" {
			delete(names, op.Dev)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("log line %d: %w", ln+1, err)
	}
	return ops, nil
}

// DMName is the device-mapper name LVM gives volume lv of group vg: the
// two joined by '-', each '-' inside them doubled.
func DMName(vg, lv string) string {
	return strings.ReplaceAll(vg, "-", "--") + "-" + strings.ReplaceAll(lv, "-", "--")
}

func sizeBytes(num, unit string) (int64, error) {
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("size %s %s: not a number", num, unit)
	}
	mult := map[string]float64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[unit]
	return int64(f * mult), nil
}

// Lines turns operations into scenario steps, one line per operation
// (without disk lines): a table's dm device numbers become the names the
// devices had at that point (minors are reused after a remove), other
// device numbers go through disk (MAJ:MIN -> the scenario's disk).
func Lines(ops []Op, disk func(devnum string) string) ([]string, error) {
	var out []string
	dm := map[string]string{}
	for _, o := range ops {
		if o.Dev != "" {
			dm[o.Dev] = o.Name
		}
		switch o.Kind {
		case "create":
			out = append(out, "dmsetup create "+o.Name+" --notable")
		case "load":
			if len(o.Table) != 1 {
				return nil, fmt.Errorf("load of %s: a table of %d lines (a scenario line holds one)", o.Name, len(o.Table))
			}
			f := strings.Fields(o.Table[0])
			for i := 3; i < len(f); i++ {
				if !devNum(f[i]) {
					continue
				}
				if n, ok := dm[f[i]]; ok {
					f[i] = n
				} else {
					f[i] = disk(f[i])
				}
			}
			out = append(out, fmt.Sprintf("dmsetup load %s --table %q", o.Name, strings.Join(f, " ")))
		case "suspend":
			flags := ""
			for _, fl := range o.Flags {
				flags += " --" + fl
			}
			out = append(out, "dmsetup suspend"+flags+" "+o.Name)
		case "resume", "remove", "status":
			out = append(out, "dmsetup "+o.Kind+" "+o.Name)
		case "zero":
			out = append(out, fmt.Sprintf("write %s 0 %d pattern=zero", o.Name, o.Bytes))
		default:
			return nil, fmt.Errorf("operation %s of %s: no scenario line for it", o.Kind, o.Name)
		}
		if o.Fail != "" {
			out[len(out)-1] += " exit=1"
		}
		if o.Kind == "remove" {
			delete(dm, o.Dev)
		}
	}
	return out, nil
}

func devNum(s string) bool {
	a, b, ok := strings.Cut(s, ":")
	_, e1 := strconv.ParseUint(a, 10, 32)
	_, e2 := strconv.ParseUint(b, 10, 32)
	return ok && e1 == nil && e2 == nil
}

// Disks lists the device numbers the tables name that no operation
// created (physical volumes), in order of first use, with the sectors
// the tables reach on each (the end of the furthest linear segment).
func Disks(ops []Op) (nums []string, sectors map[string]uint64) {
	dm := map[string]bool{}
	for _, o := range ops {
		if o.Dev != "" {
			dm[o.Dev] = true
		}
	}
	sectors = map[string]uint64{}
	for _, o := range ops {
		for _, t := range o.Table {
			f := strings.Fields(t)
			for i := 3; i < len(f); i++ {
				if !devNum(f[i]) || dm[f[i]] {
					continue
				}
				if _, seen := sectors[f[i]]; !seen {
					nums = append(nums, f[i])
					sectors[f[i]] = 0
				}
				if f[2] == "linear" && i == 3 && len(f) > 4 {
					ln, _ := strconv.ParseUint(f[1], 10, 64)
					off, _ := strconv.ParseUint(f[4], 10, 64)
					sectors[f[i]] = max(sectors[f[i]], off+ln)
				}
			}
		}
	}
	return nums, sectors
}

// Scenario is a whole session as a scenario: a comment, a disk per
// physical volume (pv0, pv1, ...; at least 1 MiB past the furthest extent
// a table uses, on a MiB boundary), then each command's operations after
// a comment naming the command.
func Scenario(ops []Op, title string) (string, error) {
	nums, sectors := Disks(ops)
	names := map[string]string{}
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n# Imported from an LVM debug log by snaplab import lvm: the device-mapper\n# operations LVM performed, in order (its metadata writes are not dm operations).\n", title)
	for i, n := range nums {
		names[n] = fmt.Sprintf("pv%d", i)
		mib := (sectors[n]*512+(1<<20)-1)>>20 + 1
		fmt.Fprintf(&b, "disk pv%d %dMiB    # %s in the log\n", i, mib, n)
	}
	lines, err := Lines(ops, func(d string) string { return names[d] })
	if err != nil {
		return "", err
	}
	cmd := "\x00"
	for i, o := range ops {
		if o.Command != cmd {
			cmd = o.Command
			if cmd != "" {
				fmt.Fprintf(&b, "# lvm %s\n", cmd)
			}
		}
		b.WriteString(pollRun(lines[i]) + lines[i] + "\n")
	}
	return b.String(), nil
}

// LineOp names the operation of a line Lines made ("load vg-snap",
// "zero vg-snap"), as Op.String names it before the outcome.
func LineOp(line string) string {
	f := strings.Fields(line)
	switch {
	case len(f) >= 3 && f[0] == "dmsetup":
		name := ""
		for _, w := range f[2:] {
			if strings.HasPrefix(w, "-") {
				continue
			}
			name = w
			break
		}
		kind := f[1]
		if kind == "load" {
			return "load " + name
		}
		return kind + " " + name
	case len(f) >= 2 && f[0] == "write":
		return "zero " + f[1]
	}
	return line
}

// Outcome is an operation's outcome as Op.String gives it, from dmsetup's
// exit status and stderr ("...ioctl on NAME (253:3) failed: Invalid
// argument" gives "Invalid argument").
func Outcome(exit int, stderr string) string {
	if exit == 0 {
		return "ok"
	}
	for _, l := range strings.Split(stderr, "\n") {
		if _, after, ok := strings.Cut(l, " failed: "); ok && strings.Contains(l, "ioctl on") {
			return strings.TrimSpace(after)
		}
	}
	return fmt.Sprintf("exit status %d", exit)
}

// Expand turns a scenario with lvm lines into one without: each lvm line
// becomes a comment naming the command and the device-mapper operations it
// performed (ops, by line, as a kernel executor's recording holds them:
// disks by device number), and every other line stays. Disk numbers become
// the scenario's disk names (the i-th disk is 254:16i, as on the kernel
// executor), and a run of identical status queries (LVM polling a merge,
// as often as the kernel's speed asks) becomes one, after a run line
// (pollRun). The result is a
// scenario of real dmsetup lines that replays what LVM did.
func Expand(text string, lvmLines map[int]bool, disks []string, ops map[int][]string) (string, error) {
	var b strings.Builder
	for i, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		ln := i + 1
		if !lvmLines[ln] {
			b.WriteString(line + "\n")
			continue
		}
		lines, ok := ops[ln]
		if !ok {
			return "", fmt.Errorf("line %d: no operations recorded for %q", ln, strings.TrimSpace(line))
		}
		fmt.Fprintf(&b, "# %s\n", strings.TrimSpace(line))
		last := ""
		for _, l := range lines {
			if strings.HasPrefix(l, "dmsetup status ") && l == last {
				continue
			}
			last = l
			if strings.HasPrefix(l, "dmsetup load ") {
				for i, d := range disks {
					l = replaceWord(l, fmt.Sprintf("254:%d", 16*i), d)
				}
			}
			b.WriteString(pollRun(l) + l + "\n")
		}
	}
	return b.String(), nil
}

// pollRun is the run line that goes before a status query: LVM asks a
// status a polling interval (a second) after the last (a merge's
// progress), and by then the background work is done; a scenario says so
// with run.
func pollRun(line string) string {
	if strings.HasPrefix(line, "dmsetup status ") {
		return "run\n"
	}
	return ""
}

// replaceWord replaces whole space-separated words old in s (inside the
// quoted table too) by new.
func replaceWord(s, old, new string) string {
	var out strings.Builder
	for i, w := range strings.Split(s, " ") {
		if i > 0 {
			out.WriteByte(' ')
		}
		switch {
		case w == old:
			w = new
		case w == old+`"`:
			w = new + `"`
		}
		out.WriteString(w)
	}
	return out.String()
}
