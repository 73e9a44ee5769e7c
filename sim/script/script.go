// Package script parses snaplab's scenario language (.scn), documented in
// scenarios/README.md.
//
// A scenario is a list of lines. Each line is one step: a setting
// (semantics, seed), a disk, a real dmsetup command line, an I/O (read,
// write, flush, discard), a wait for an asynchronous I/O, a fault switch,
// a kernel-log check, or an open or close of a device the scenario holds
// open (open DEV as ID, close ID). Assertions are trailing key=value
// words. The same file runs on every executor, so control-plane lines are
// real dmsetup command lines and carry no simulator-only syntax.
//
// Parse never panics; errors name the file and line (and the word).
package script

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"unicode/utf8"

	"snaplab/sim/block"
	"snaplab/sim/pattern"
	"snaplab/sim/profile"
)

// Kinds of steps.
const (
	KDisk    = "disk"
	KDmsetup = "dmsetup"
	// KLvm is a real LVM command line (lvm lvcreate -s ...), run by the
	// kernel executor; the simulator repeats the device-mapper operations
	// LVM performed (sim/lvmlog). Assertions as for dmsetup.
	KLvm     = "lvm"
	KRead    = "read"
	KWrite   = "write"
	KFlush   = "flush"
	KDiscard = "discard"
	KWait    = "wait"
	KFault   = "fault"
	KLog     = "log"
	KRun     = "run"
	KOpen    = "open"  // open DEV as ID [expect=ERRNO]: hold DEV open
	KClose   = "close" // close ID
	KFsync   = "fsync" // fsync DEV: write back DEV's dirty pages (buffered writes), flush
	KSync    = "sync"  // sync: write back every device's dirty pages
)

// Scenario is a parsed .scn file.
type Scenario struct {
	Name      string
	Text      string
	Semantics string // "mainline" (default) or "seed"
	Seed      uint64
	Steps     []Step
	// parser holds what the lines declared, for ParseMore.
	parser *parser
	// Dir is the directory relative image= paths are resolved against,
	// normally the scenario file's directory; the caller sets it ("" is
	// the working directory). See ImagePath.
	Dir string
}

// Step is one line.
type Step struct {
	Line int
	Text string
	Kind string

	// disk
	Size  int64
	LBS   uint32
	Image string // image=PATH as written: the disk starts with this raw image's content

	// dmsetup: the argv after "dmsetup"
	Argv []string

	// I/O
	Dev     string
	Off     int64
	Len     int64
	Pattern string // write: the data pattern
	// DataFile, DataOff: a write's data is LEN bytes of this file from
	// byte DataOff (write ... data=PATH@OFF), instead of a pattern; PATH
	// as written, relative to Dir like an image's (DataPath).
	DataFile string
	DataOff  int64
	FUA      bool
	// Buffered: a write through the page cache (write ... buffered), to
	// be written back by fsync, sync or the scenario's end.
	Buffered bool
	Async    string // name of an asynchronous I/O (async=ID), or for wait: the ID

	// open, close: the ID of the open (open DEV as ID, close ID)
	Handle string

	// fault: rule text ("write eio off=0 len=4096") or "clear [SITE]"
	Fault string

	Expect Expect
	// Kernels are the line's expectations on other kernels: a line's
	// KEY@KERNEL=VALUE words (stderr@6.12="...") replace its KEY
	// expectations when the run models that kernel (ForKernel).
	Kernels []KernelExpect
}

// KernelExpect is a step's expectations on one kernel profile.
type KernelExpect struct {
	Kernel string // a sim/profile name: 6.1, 6.12
	Expect Expect
}

// Expect holds a step's assertions; nil fields are not checked.
type Expect struct {
	Errno  *syscall.Errno // I/O: expect=OK|EIO|ENOSPC|...
	Data   string         // read: expect=PATTERN (or "zero")
	Stdout *string        // dmsetup: expect="..." (exact, without the final newline)
	// StdoutMatch: dmsetup expect~="REGEX" (each must match somewhere in
	// stdout without its final newline; multi-line mode: ^ and $ match at
	// line boundaries).
	StdoutMatch []*regexp.Regexp
	StdoutLines []string // dmsetup: line="..." (each must be a whole line of stdout)
	Stderr      []string // dmsetup: stderr="..." (each must be a line of stderr)
	Exit        *int     // dmsetup: exit=N
	Log         []string // dmsetup, I/O, fsync, sync, log: log="..." (each must be a kernel log line logged by the step / since the last check)
	NoLog       bool     // log none: nothing logged since the last check
}

// Error is a parse error.
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg) }

// Parse parses scenario text. name is used in errors and as the scenario's
// name.
//
// Parsing costs little memory beyond the steps themselves: lines are not
// split into a slice first, words without quotes are slices of the text,
// options need no map, and the steps are allocated once.
func Parse(name, text string) (*Scenario, error) {
	sc := &Scenario{Name: name, Text: text, Semantics: "mainline"}
	p := newParser(sc)
	sc.Steps = make([]Step, 0, countSteps(text))
	ln := 0
	for rest, more := text, true; more; {
		var raw string
		raw, rest, more = strings.Cut(rest, "\n")
		ln++
		var st Step
		ok, err := p.line(&st, ln, raw)
		if err != nil {
			return nil, err
		}
		if ok {
			sc.Steps = append(sc.Steps, st)
		}
	}
	p.lines = ln
	sc.parser = p
	return sc, nil
}

// countSteps is at least the number of steps text holds: its lines that
// are neither blank nor comments.
func countSteps(text string) int {
	n := 0
	for rest, more := text, true; more; {
		var raw string
		raw, rest, more = strings.Cut(rest, "\n")
		if l := strings.TrimLeft(raw, " \t\r\v\f"); l != "" && l[0] != '#' {
			n++
		}
	}
	return n
}

// parser holds what the lines parsed so far declared, for the next line.
type parser struct {
	sc     *Scenario
	disks  map[string]bool
	asyncs map[string]bool
	opens  map[string]*openDecl
	lines  int  // lines parsed
	more   bool // parsing lines added after the scenario (ParseMore)
}

func newParser(sc *Scenario) *parser {
	return &parser{sc: sc, disks: map[string]bool{}, asyncs: map[string]bool{}, opens: map[string]*openDecl{}}
}

// ParseMore parses one more line of the scenario, numbered ln, in the
// context of every line before it (the disks, async IDs and opens they
// declare), as if it had been appended to the text: a live session's
// added step. Blank lines, comments and settings (semantics, seed: fixed
// when a session starts) are errors. The scenario's Text and Steps are not
// changed.
func (sc *Scenario) ParseMore(ln int, line string) (*Step, error) {
	if sc.parser == nil {
		// Not made by Parse: parse the text to learn its context.
		again, err := Parse(sc.Name, sc.Text)
		if err != nil {
			return nil, err
		}
		sc.parser = again.parser
		sc.parser.sc = sc
	}
	p := sc.parser
	if strings.Contains(line, "\n") {
		return nil, &Error{File: sc.Name, Line: ln, Msg: "a step is one line"}
	}
	p.more = true
	defer func() { p.more = false }()
	st := &Step{}
	ok, err := p.line(st, ln, line)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, &Error{File: sc.Name, Line: ln, Msg: fmt.Sprintf("%q is not a step", strings.TrimSpace(line))}
	}
	return st, nil
}

// line parses raw, line ln, into st; false for a line that is not a step
// (blank, comment, setting).
func (p *parser) line(st *Step, ln int, raw string) (bool, error) {
	sc := p.sc
	errf := func(format string, a ...any) error {
		return &Error{File: sc.Name, Line: ln, Msg: fmt.Sprintf(format, a...)}
	}
	line := strings.TrimSpace(raw)
	// A scenario is text; dmsetup's arguments are C strings. (A recording
	// holds the text as JSON, which has no other bytes.)
	if strings.IndexByte(line, 0) >= 0 {
		return false, errf("a NUL byte (a scenario is text)")
	}
	if !utf8.ValidString(line) {
		return false, errf("not UTF-8 text")
	}
	if line == "" || strings.HasPrefix(line, "#") {
		return false, nil
	}
	words, err := Split(line)
	if err != nil {
		return false, errf("%v", err)
	}
	if len(words) == 0 {
		return false, nil
	}
	base, quals, err := splitQualified(words)
	if err != nil {
		return false, errf("%v", err)
	}
	if len(quals) == 0 {
		return p.parseWords(st, ln, line, base)
	}
	// Each kernel's expectations: the line parsed again with its qualified
	// words in place of the plain ones they replace, by a copy of the
	// parser as it was before this line.
	alts := make([]*parser, len(quals))
	for i := range quals {
		alts[i] = p.clone()
	}
	ok, err := p.parseWords(st, ln, line, append([]string(nil), base...))
	if err != nil || !ok {
		if err == nil {
			err = errf("%s: a setting has no expectations to qualify with @KERNEL", words[0])
		}
		return false, err
	}
	for i, q := range quals {
		var ast Step
		if _, err := alts[i].parseWords(&ast, ln, line, q.words(base)); err != nil {
			return false, err
		}
		st.Kernels = append(st.Kernels, KernelExpect{Kernel: q.kernel, Expect: ast.Expect})
	}
	return true, nil
}

// parseWords parses a line split into words (without kernel-qualified
// words) into st.
func (p *parser) parseWords(st *Step, ln int, line string, words []string) (bool, error) {
	sc := p.sc
	disks, asyncs, opens := p.disks, p.asyncs, p.opens
	errf := func(format string, a ...any) error {
		return &Error{File: sc.Name, Line: ln, Msg: fmt.Sprintf(format, a...)}
	}
	*st = Step{Line: ln, Text: line, Kind: words[0]}
	args := words[1:]
	switch words[0] {
	case "semantics":
		if len(args) != 1 || (args[0] != "mainline" && args[0] != "seed") {
			return false, errf("semantics: want \"mainline\" or \"seed\"")
		}
		if p.more {
			return false, errf("semantics is fixed when a session starts")
		}
		sc.Semantics = args[0]
		return false, nil
	case "seed":
		if len(args) != 1 {
			return false, errf("seed: want one number")
		}
		v, err := strconv.ParseUint(args[0], 0, 64)
		if err != nil {
			return false, errf("seed: invalid number %q", args[0])
		}
		if p.more {
			return false, errf("seed is fixed when a session starts")
		}
		sc.Seed = v
		return false, nil
	case KDisk:
		pos, kv, err := splitKV(args, "lbs", "image")
		if err != nil {
			return false, errf("%v", err)
		}
		if len(pos) != 2 {
			return false, errf("disk: want \"disk NAME SIZE [lbs=BYTES] [image=PATH]\"")
		}
		if err := validName(pos[0]); err != nil {
			return false, errf("disk: %v", err)
		}
		if disks[pos[0]] {
			return false, errf("disk %s declared twice", pos[0])
		}
		disks[pos[0]] = true
		st.Dev = pos[0]
		if st.Size, err = ParseSize(pos[1]); err != nil {
			return false, errf("disk %s: invalid size %q: %v", pos[0], pos[1], err)
		}
		if st.Size <= 0 || st.Size%block.SectorSize != 0 {
			return false, errf("disk %s: invalid size %q (a positive multiple of 512 bytes, e.g. 64MiB)", pos[0], pos[1])
		}
		st.LBS = 512
		if v, ok := kv.get("lbs"); ok {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || n < 512 || n&(n-1) != 0 || n > 4096 {
				return false, errf("disk %s: invalid lbs %q (512, 1024, 2048 or 4096)", pos[0], v)
			}
			st.LBS = uint32(n)
		}
		if v, ok := kv.get("image"); ok {
			if v == "" || strings.ContainsRune(v, 0) {
				return false, errf("disk %s: invalid image=%q (want the path of a raw image file)", pos[0], v)
			}
			st.Image = v
		}
	case KDmsetup, KLvm:
		var rest []string
		for _, a := range args {
			k, v, ok := strings.Cut(a, "=")
			switch {
			case ok && k == "expect":
				v := v
				st.Expect.Stdout = &v
			case ok && k == "exit":
				n, err := strconv.Atoi(v)
				if err != nil {
					return false, errf("exit=%q: not a number", v)
				}
				st.Expect.Exit = &n
			case ok && k == "stderr":
				st.Expect.Stderr = append(st.Expect.Stderr, v)
			case ok && k == "log":
				st.Expect.Log = append(st.Expect.Log, v)
			case ok && (k == "expect~" || k == "line"):
				if err := parseStdoutPart(st, k, v); err != nil {
					return false, errf("%v", err)
				}
			default:
				rest = append(rest, a)
			}
		}
		if len(rest) == 0 {
			return false, errf("%s: missing command", words[0])
		}
		if words[0] == KLvm && (strings.HasPrefix(rest[0], "-") || strings.ContainsRune(rest[0], '/')) {
			return false, errf("lvm: want an LVM command first (lvcreate, lvextend, lvs, ...), got %q", rest[0])
		}
		st.Argv = rest
	case KRead, KWrite, KDiscard:
		args = takeLogs(st, args)
		pos, kv, err := splitKV(args, "expect", "pattern", "async", "data")
		if err != nil {
			return false, errf("%v", err)
		}
		fua := false
		var p2 []string
		for _, w := range pos {
			if w == "fua" && words[0] == KWrite {
				fua = true
				continue
			}
			if w == "buffered" && words[0] == KWrite {
				st.Buffered = true
				continue
			}
			p2 = append(p2, w)
		}
		if len(p2) != 3 {
			return false, errf("%s: want \"%s DEV OFFSET LENGTH ...\"", words[0], words[0])
		}
		st.Dev, st.FUA = p2[0], fua
		if st.Off, err = ParseSize(p2[1]); err != nil {
			return false, errf("%s: invalid offset %q: %v", words[0], p2[1], err)
		}
		if st.Off%block.SectorSize != 0 {
			return false, errf("%s: invalid offset %q (a multiple of 512 bytes)", words[0], p2[1])
		}
		if st.Len, err = ParseSize(p2[2]); err != nil {
			return false, errf("%s: invalid length %q: %v", words[0], p2[2], err)
		}
		if st.Len <= 0 || st.Len%block.SectorSize != 0 {
			return false, errf("%s: invalid length %q (a positive multiple of 512 bytes)", words[0], p2[2])
		}
		if st.Len > 64<<20 {
			return false, errf("%s: length %d too large (at most 64MiB per I/O)", words[0], st.Len)
		}
		_, hasData := kv.get("data")
		if words[0] == KWrite && hasData {
			if err := parseData(st, kv.val("data")); err != nil {
				return false, errf("write: %v", err)
			}
			if _, ok := kv.get("pattern"); ok {
				return false, errf("write: pattern= or data=, not both")
			}
			if st.Buffered {
				return false, errf("write: data= is for direct writes, not buffered ones")
			}
		} else if words[0] == KWrite {
			p, ok := kv.get("pattern")
			if !ok {
				return false, errf("write: missing pattern=NAME (or data=PATH@OFFSET)")
			}
			if err := pattern.Valid(p); err != nil {
				return false, errf("write: %v", err)
			}
			st.Pattern = p
		} else if _, ok := kv.get("pattern"); ok {
			return false, errf("%s: pattern= is for writes (use expect=PATTERN to check data)", words[0])
		} else if hasData {
			return false, errf("%s: data= is for writes", words[0])
		}
		if err := parseIOExpect(st, kv.val("expect"), words[0] == KRead); err != nil {
			return false, errf("%v", err)
		}
		if err := takeAsync(st, kv, asyncs); err != nil {
			return false, errf("%v", err)
		}
		if err := checkIOExtras(st); err != nil {
			return false, errf("%v", err)
		}
	case KFlush:
		args = takeLogs(st, args)
		pos, kv, err := splitKV(args, "expect", "async")
		if err != nil {
			return false, errf("%v", err)
		}
		if len(pos) != 1 {
			return false, errf("flush: want \"flush DEV\"")
		}
		st.Dev = pos[0]
		if err := parseIOExpect(st, kv.val("expect"), false); err != nil {
			return false, errf("%v", err)
		}
		if err := takeAsync(st, kv, asyncs); err != nil {
			return false, errf("%v", err)
		}
		if err := checkIOExtras(st); err != nil {
			return false, errf("%v", err)
		}
	case KWait:
		args = takeLogs(st, args)
		pos, kv, err := splitKV(args, "expect")
		if err != nil {
			return false, errf("%v", err)
		}
		if len(pos) != 1 {
			return false, errf("wait: want \"wait ID [expect=...]\"")
		}
		if !asyncs[pos[0]] {
			return false, errf("wait: no earlier I/O with async=%s", pos[0])
		}
		st.Async = pos[0]
		if err := parseIOExpect(st, kv.val("expect"), true); err != nil {
			return false, errf("%v", err)
		}
	case KFault:
		if len(args) < 2 {
			return false, errf("fault: want \"fault DISK RULE...\" or \"fault DISK clear [SITE]\"")
		}
		st.Dev = args[0]
		if !disks[st.Dev] {
			return false, errf("fault: %s is not a disk declared earlier", st.Dev)
		}
		rule := strings.Join(args[1:], " ")
		if args[1] != "clear" {
			if _, err := block.ParseRule(rule); err != nil {
				return false, errf("fault: %v", err)
			}
		}
		st.Fault = rule
	case KLog:
		if len(args) == 1 && args[0] == "none" {
			st.Expect.NoLog = true
			break
		}
		pos, kv, err := splitKV(args, "expect")
		if err != nil || len(pos) != 0 {
			return false, errf("log: want \"log expect=LINE\" or \"log none\"")
		}
		v, ok := kv.get("expect")
		if !ok {
			return false, errf("log: want \"log expect=LINE\" or \"log none\"")
		}
		st.Expect.Log = []string{v}
	case KRun:
		if len(args) != 0 {
			return false, errf("run: takes no arguments")
		}
	case KFsync, KSync:
		if err := parseSync(st, args); err != nil {
			return false, errf("%v", err)
		}
	case KOpen:
		if err := parseOpen(st, args, opens); err != nil {
			return false, errf("%v", err)
		}
	case KClose:
		if err := parseClose(st, args, opens); err != nil {
			return false, errf("%v", err)
		}
	default:
		return false, errf("unknown step %q (want semantics, seed, disk, dmsetup, read, write, flush, discard, wait, fault, log, run, open, close, fsync, sync)", words[0])
	}
	return true, nil
}

// openDecl is what the parser knows of an open ID: where it was opened,
// whether the open is expected to fail, where it was closed.
type openDecl struct {
	line, closed int
	fails        bool
}

// parseOpen parses "open DEV as ID [expect=ERRNO]". An ID names one open in
// the whole scenario.
func parseOpen(st *Step, args []string, opens map[string]*openDecl) error {
	pos, kv, err := splitKV(args, "expect")
	if err != nil {
		return err
	}
	if len(pos) != 3 || pos[1] != "as" {
		return fmt.Errorf("open: want \"open DEV as ID [expect=ERRNO]\"")
	}
	if err := validName(pos[0]); err != nil {
		return fmt.Errorf("open: device: %v", err)
	}
	if err := validName(pos[2]); err != nil {
		return fmt.Errorf("open: id: %v", err)
	}
	if d, dup := opens[pos[2]]; dup {
		return fmt.Errorf("open id %s used twice (first on line %d)", pos[2], d.line)
	}
	st.Dev, st.Handle = pos[0], pos[2]
	if err := parseIOExpect(st, kv.val("expect"), false); err != nil {
		return fmt.Errorf("open: %v", err)
	}
	opens[pos[2]] = &openDecl{line: st.Line, fails: st.Expect.Errno != nil && *st.Expect.Errno != 0}
	return nil
}

// parseClose parses "close ID": ID was opened earlier, its open is expected
// to succeed, and it is not closed yet.
func parseClose(st *Step, args []string, opens map[string]*openDecl) error {
	if len(args) != 1 || strings.Contains(args[0], "=") {
		return fmt.Errorf("close: want \"close ID\"")
	}
	d, ok := opens[args[0]]
	switch {
	case !ok:
		return fmt.Errorf("close: no earlier open ... as %s", args[0])
	case d.fails:
		return fmt.Errorf("close: the open of %s on line %d expects an error: there is nothing to close", args[0], d.line)
	case d.closed != 0:
		return fmt.Errorf("close: %s already closed on line %d", args[0], d.closed)
	}
	d.closed = st.Line
	st.Handle = args[0]
	return nil
}

// parseData parses a write's data=PATH[@OFFSET]: the data is the write's
// LENGTH bytes of file PATH from byte OFFSET (default 0; a PATH holding
// "@" is written with its offset, PATH@0).
func parseData(st *Step, v string) error {
	path, off := v, int64(0)
	if i := strings.LastIndexByte(v, '@'); i >= 0 {
		n, err := ParseSize(v[i+1:])
		if err != nil {
			return fmt.Errorf("data=%q: invalid offset %q after @: %v", v, v[i+1:], err)
		}
		path, off = v[:i], n
	}
	if path == "" || strings.ContainsRune(path, 0) {
		return fmt.Errorf("data=%q: want data=PATH@OFFSET, the file holding the bytes to write", v)
	}
	st.DataFile, st.DataOff = path, off
	return nil
}

// DataPath is where st's data= file is: as ImagePath for image=.
func (sc *Scenario) DataPath(st *Step) string {
	if st.DataFile == "" || filepath.IsAbs(st.DataFile) {
		return st.DataFile
	}
	return filepath.Join(sc.Dir, st.DataFile)
}

// ImagePath is where st's image= file is: an absolute path as written, a
// relative one joined to sc.Dir. It is "" for a step without an image.
func (sc *Scenario) ImagePath(st *Step) string {
	if st.Image == "" || filepath.IsAbs(st.Image) {
		return st.Image
	}
	return filepath.Join(sc.Dir, st.Image)
}

// takeAsync sets st.Async from async=ID: a valid name, used once per
// scenario.
func takeAsync(st *Step, kv options, asyncs map[string]bool) error {
	a, ok := kv.get("async")
	if !ok {
		return nil
	}
	if err := validName(a); err != nil {
		return fmt.Errorf("async: %v", err)
	}
	if asyncs[a] {
		return fmt.Errorf("async id %s used twice", a)
	}
	asyncs[a] = true
	st.Async = a
	return nil
}

func parseIOExpect(st *Step, v string, data bool) error {
	if v == "" {
		return nil
	}
	if e, err := block.ParseErrno(v); err == nil {
		st.Expect.Errno = &e
		return nil
	}
	if !data {
		return fmt.Errorf("expect=%q: want an errno (OK, EIO, ENOSPC, ...)", v)
	}
	if err := pattern.Valid(v); err != nil {
		return fmt.Errorf("expect=%q: neither an errno nor a pattern name", v)
	}
	ok := syscall.Errno(0)
	st.Expect.Errno = &ok
	st.Expect.Data = v
	return nil
}

func splitKV(args []string, keys ...string) ([]string, options, error) {
	var kv options
	pos := args[:0] // positional words, in place: they never move right
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			pos = append(pos, a)
			continue
		}
		known := false
		for _, key := range keys {
			if k == key {
				known = true
			}
		}
		if !known {
			return nil, kv, fmt.Errorf("unknown option %q (known: %s)", k, strings.Join(keys, ", "))
		}
		if _, dup := kv.get(k); dup {
			return nil, kv, fmt.Errorf("option %s given twice", k)
		}
		if kv.n == len(kv.keys) {
			return nil, kv, fmt.Errorf("too many options")
		}
		kv.keys[kv.n], kv.vals[kv.n] = k, v
		kv.n++
	}
	return pos, kv, nil
}

// options are a line's key=value words (each key once), without a map.
type options struct {
	keys, vals [6]string
	n          int
}

// get returns the value of key and whether the line gave it.
func (o *options) get(key string) (string, bool) {
	for i := 0; i < o.n; i++ {
		if o.keys[i] == key {
			return o.vals[i], true
		}
	}
	return "", false
}

// val is the value of key, "" when not given.
func (o *options) val(key string) string {
	v, _ := o.get(key)
	return v
}

func validName(s string) error {
	if s == "" || len(s) > 64 {
		return fmt.Errorf("invalid name %q", s)
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return fmt.Errorf("invalid name %q: character %q", s, c)
		}
	}
	return nil
}

// MaxSize is the largest size or offset a scenario takes: 2^62 bytes
// (4194304TiB), so that an offset plus a length never overflows.
const MaxSize = 1 << 62

// ParseSize parses a byte count: plain bytes, or with a suffix s (512-byte
// sectors), KiB, MiB, GiB, TiB; at most MaxSize. Its errors say what is
// wrong, not which word (the caller names it).
func ParseSize(s string) (int64, error) {
	mult := int64(1)
	num := s
	for _, suf := range []struct {
		s string
		m int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"s", 512}} {
		if strings.HasSuffix(s, suf.s) {
			mult, num = suf.m, strings.TrimSuffix(s, suf.s)
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if errors.Is(err, strconv.ErrRange) && n > 0 {
		return 0, errTooLarge
	}
	if err != nil || n < 0 {
		return 0, fmt.Errorf("not a byte count (a number, with s, KiB, MiB, GiB or TiB)")
	}
	if n > MaxSize/mult {
		return 0, errTooLarge
	}
	return n * mult, nil
}

// errTooLarge is ParseSize's error for a size past MaxSize (made once: a
// scenario parses thousands of sizes).
var errTooLarge = errors.New("more than 2^62 bytes (4194304TiB), the largest size a scenario takes")

// Split splits a line into words like a POSIX shell does for simple
// quoting: white space separates words; "double quotes" allow \" \\ and \n
// escapes; 'single quotes' are literal; a key="value with spaces" word keeps
// its key. A word starting with # ends the line.
func Split(line string) ([]string, error) {
	out := make([]string, 0, strings.Count(line, " ")+1)
	var cur strings.Builder
	have := false  // a word is open
	plain := false // ... and is line[start:i] so far: no quote or escape
	start := 0
	// quoted turns the open word (or a new one) into one built in cur.
	quoted := func(i int) {
		if !have {
			have, plain = true, false
			return
		}
		if plain {
			cur.WriteString(line[start:i])
			plain = false
		}
	}
	end := func(i int) {
		if plain {
			out = append(out, line[start:i])
		} else {
			out = append(out, cur.String())
			cur.Reset()
		}
		have = false
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == ' ' || c == '\t':
			if have {
				end(i)
			}
		case c == '#' && !have:
			return out, nil
		case c == '"':
			quoted(i)
			i++
			for ; i < len(line) && line[i] != '"'; i++ {
				if line[i] == '\\' && i+1 < len(line) {
					i++
					switch line[i] {
					case 'n':
						cur.WriteByte('\n')
					case 't':
						cur.WriteByte('\t')
					default:
						cur.WriteByte(line[i])
					}
					continue
				}
				cur.WriteByte(line[i])
			}
			if i >= len(line) {
				return nil, fmt.Errorf("unterminated double quote")
			}
		case c == '\'':
			quoted(i)
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated single quote")
			}
			cur.WriteString(line[i+1 : i+1+j])
			i += j + 1
		case c == '\\' && i+1 < len(line):
			quoted(i)
			i++
			cur.WriteByte(line[i])
		default:
			if !have {
				have, plain, start = true, true, i
			} else if !plain {
				cur.WriteByte(c)
			}
		}
	}
	if have {
		end(len(line))
	}
	return out, nil
}

// ParseFile reads and parses the scenario file at path. The scenario is
// named after the file (its base name without .scn) and its image= paths
// resolve against the file's directory, for every caller alike. Errors
// name the file.
func ParseFile(path string) (*Scenario, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	sc, err := Parse(path, string(text))
	if err != nil {
		return nil, err
	}
	sc.Name = strings.TrimSuffix(filepath.Base(path), ".scn")
	sc.Dir = filepath.Dir(path)
	return sc, nil
}

// qualifiable are the expectation keys a line may give per kernel
// (KEY@KERNEL=VALUE).
var qualifiable = map[string]bool{"expect": true, "expect~": true, "line": true, "stderr": true, "exit": true, "log": true}

// IsExpectation reports whether a word of a step line is one of its
// expectations (expect=, expect~=, line=, stderr=, exit=, log=, plain or
// qualified by a kernel, KEY@KERNEL=VALUE) rather than an argument; for
// tools that show a step without what it asserts.
func IsExpectation(word string) bool {
	k, _, ok := strings.Cut(word, "=")
	if !ok {
		return false
	}
	k, _, _ = strings.Cut(k, "@")
	return qualifiable[k]
}

// qualified is one kernel's qualified words of a line.
type qualified struct {
	kernel string
	keys   map[string]bool
	plain  []string // the words without @KERNEL
}

// words is the line for q's kernel: base without the words of the keys q
// gives, then q's words.
func (q *qualified) words(base []string) []string {
	out := []string{base[0]}
	for _, w := range base[1:] {
		if k, _, ok := strings.Cut(w, "="); ok && q.keys[k] {
			continue
		}
		out = append(out, w)
	}
	return append(out, q.plain...)
}

// splitQualified takes a line's KEY@KERNEL=VALUE words out of words,
// grouped by kernel in order of first appearance.
func splitQualified(words []string) ([]string, []*qualified, error) {
	any := false
	for _, w := range words[1:] {
		if k, _, ok := strings.Cut(w, "="); ok && strings.Contains(k, "@") {
			any = true
			break
		}
	}
	if !any {
		return words, nil, nil // the common line: nothing to copy
	}
	var quals []*qualified
	base := words[:1:1]
	for _, w := range words[1:] {
		k, v, ok := strings.Cut(w, "=")
		key, kernel, at := strings.Cut(k, "@")
		if !ok || !at {
			base = append(base, w)
			continue
		}
		if !qualifiable[key] {
			return nil, nil, fmt.Errorf("%s@%s: only expectations are given per kernel (%s)", key, kernel, strings.Join(sortedKeys(qualifiable), ", "))
		}
		if _, err := profile.Lookup(kernel); err != nil || strings.HasSuffix(kernel, "-rt") {
			return nil, nil, fmt.Errorf("%s@%s: unknown kernel profile %q (want one of %s)", key, kernel, kernel, strings.Join(profile.Names(), ", "))
		}
		var q *qualified
		for _, x := range quals {
			if x.kernel == kernel {
				q = x
			}
		}
		if q == nil {
			q = &qualified{kernel: kernel, keys: map[string]bool{}}
			quals = append(quals, q)
		}
		q.keys[key] = true
		q.plain = append(q.plain, key+"="+v)
	}
	return base, quals, nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// clone copies the parser's declarations, so that parsing a line again
// does not see the line's own.
func (p *parser) clone() *parser {
	q := *p
	q.disks = maps.Clone(p.disks)
	q.asyncs = maps.Clone(p.asyncs)
	q.opens = maps.Clone(p.opens)
	return &q
}

// ForKernel returns the scenario as it runs on kernel profile k: every
// step with expectations for k (KEY@k=...) has them in Expect. sc itself is
// returned when no step has any.
func (sc *Scenario) ForKernel(k string) *Scenario {
	var out *Scenario
	for i := range sc.Steps {
		for _, ke := range sc.Steps[i].Kernels {
			if ke.Kernel != k {
				continue
			}
			if out == nil {
				c := *sc
				c.Steps = append([]Step(nil), sc.Steps...)
				out = &c
			}
			out.Steps[i].Expect = ke.Expect
		}
	}
	if out == nil {
		return sc
	}
	return out
}
