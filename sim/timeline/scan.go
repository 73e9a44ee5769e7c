package timeline

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"snaplab/sim/dm"
	"snaplab/sim/record"
	"snaplab/sim/script"
	"snaplab/sim/snapshot"
)

// cowRow is the lane of COW activity that cannot be tied to one disk.
const cowRow = "(cow)"

// key orders positions within a recording: op i is 2i+1, the outside
// I/O after it 2i+2, before the first op 0.
func key(op int, after bool) int {
	if after {
		return 2*op + 2
	}
	return 2*op + 1
}

// rawGroup is one recording scanned, its positions still keys.
type rawGroup struct {
	name      string
	header    record.Header
	pass      bool
	steps     int
	time      int64
	lanes     []*Lane // Slot fields hold keys until place
	laneOf    map[string]int
	changes   [][]change // per lane
	handovers []Handover
	ops       []StepInfo // Slot holds the key
	keys      []int      // every key used, sorted, unique
	keySeen   map[int]bool
	keyLine   map[int]StepInfo
}

// change is a lane's state from a key on.
type change struct {
	key       int
	state     string // "" once removed
	pending   bool
	suspended bool // suspended under another state (handed-over, invalid)
	title     string
}

// table is a dm table as far as the timeline needs it.
type table struct {
	text   string
	target string
	origin string // snapshot, snapshot-origin, snapshot-merge: the origin
	cow    string // snapshot, snapshot-merge: the COW device
}

func (t *table) snapshot() bool {
	return t != nil && (t.target == "snapshot" || t.target == "snapshot-merge") && t.origin != "" && t.cow != ""
}

// dev is a dm device's state.
type dev struct {
	name           string
	minor          int
	live, inactive *table
	suspended      bool
	invalid        bool
	invalidWhy     string
	handedOver     bool
	active         bool   // resumed at least once (mainline: the role of a source)
	pairedWith     string // destination: its source's name
	cancelled      bool   // mainline: the source was removed before the handover
}

// tracker follows the devices of one recording.
type tracker struct {
	g        *rawGroup
	seed     bool // seed semantics
	disks    []string
	devs     []*dev // existing dm devices, in creation order
	opens    map[string]string
	async    map[string]*pendingIO
	nbd      map[uint64]*pendingIO
	nbdOpens map[uint64]string
}

type pendingIO struct {
	lane, tick int
	issued     int // key
	suspended  bool
}

func (g *rawGroup) useKey(k int) {
	if !g.keySeen[k] {
		g.keySeen[k] = true
		g.keys = append(g.keys, k)
	}
}

// lane returns the index of the lane of name, making it.
func (g *rawGroup) lane(name, kind string) int {
	if i, ok := g.laneOf[name]; ok {
		return i
	}
	g.lanes = append(g.lanes, &Lane{Device: name, Kind: kind})
	g.changes = append(g.changes, nil)
	g.laneOf[name] = len(g.lanes) - 1
	return len(g.lanes) - 1
}

func (g *rawGroup) opOfLine(line int) int {
	for i, op := range g.ops {
		if op.Line == line {
			return i
		}
	}
	return -1
}

// scan reads one recording's lines in order.
func scan(name string, rec *record.Recording) (*rawGroup, error) {
	g := &rawGroup{name: name, header: rec.Header, laneOf: map[string]int{}, keySeen: map[int]bool{}, keyLine: map[int]StepInfo{}}
	t := &tracker{g: g, seed: rec.Header.Semantics == "seed", opens: map[string]string{}, async: map[string]*pendingIO{}, nbd: map[uint64]*pendingIO{}, nbdOpens: map[uint64]string{}}
	if rec.Footer != nil {
		g.pass, g.steps, g.time = rec.Footer.Pass, 0, rec.Footer.VirtualNS
	}
	var (
		cur    *record.Op // the op running (between its op and result lines)
		lastOp = -1
		// lastAsync is the device of the guest's asynchronous I/O step
		// just done: its NBD request arrives after the step's result.
		lastAsync string
		events    []record.Event // COW events of the current position
		curStep   *script.Step   // the step cur runs
	)
	steps, err := stepsOf(name, rec)
	if err != nil {
		return nil, err
	}
	pos := func() int {
		if cur != nil {
			return key(cur.I, false)
		}
		return key(lastOp, true)
	}
	flushEvents := func(k int, dev string) {
		if len(events) == 0 {
			return
		}
		g.useKey(k)
		t.cowEvents(k, dev, events)
		events = events[:0]
	}
	for n, line := range rec.Lines {
		var k struct {
			Kind string `json:"kind"`
		}
		if err := json.Unmarshal([]byte(line), &k); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", name, n+1, err)
		}
		bad := func(err error) error { return fmt.Errorf("%s:%d: %s line: %v", name, n+1, k.Kind, err) }
		switch k.Kind {
		case "op":
			var op record.Op
			if err := json.Unmarshal([]byte(line), &op); err != nil {
				return nil, bad(err)
			}
			if cur == nil {
				flushEvents(key(lastOp, true), "")
			}
			cur, lastOp, lastAsync = &op, op.I, ""
			if curStep, err = steps.at(op.Line, op.Text); err != nil {
				return nil, bad(err)
			}
			g.steps++
			kk := key(op.I, false)
			g.useKey(kk)
			info := StepInfo{Slot: kk, Line: op.Line, Text: stripComment(op.Text), T: op.T}
			g.ops = append(g.ops, info)
			g.keyLine[kk] = info
		case "result":
			var r record.Result
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				return nil, bad(err)
			}
			if cur == nil || r.I != cur.I || r.I >= len(g.ops) {
				return nil, bad(fmt.Errorf("result of step %d without its op line", r.I))
			}
			kk := key(r.I, false)
			info := &g.ops[r.I]
			info.Title = fmt.Sprintf("line %d (step %d, t=%s): %s\n%s", info.Line, r.I, fmtTime(info.T), info.Text, resultText(&r))
			info.Check = r.Check
			g.keyLine[kk] = *info
			flushEvents(kk, ioDev(curStep))
			t.step(kk, curStep, info, &r)
			if cur.Guest && isIO(curStep) && curStep.Async != "" {
				lastAsync = t.resolve(ioDev(curStep))
			}
			cur = nil
		case "event":
			var e record.Event
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				return nil, bad(err)
			}
			if cowSite(e.Site) {
				events = append(events, e)
			}
		case "open":
			var o record.Open
			if err := json.Unmarshal([]byte(line), &o); err != nil {
				return nil, bad(err)
			}
			if o.Errno == "OK" {
				t.nbdOpens[o.ID] = o.Dev
			}
		case "arrival":
			var a record.Arrival
			if err := json.Unmarshal([]byte(line), &a); err != nil {
				return nil, bad(err)
			}
			if cur != nil && isIO(curStep) || cur == nil && lastAsync != "" && lastAsync == a.Dev {
				continue // the step's own tick stands for the requests it made
			}
			kk := pos()
			if cur == nil {
				flushEvents(kk, "")
			}
			g.useKey(kk)
			t.arrival(kk, &a)
		case "completion":
			var c record.Completion
			if err := json.Unmarshal([]byte(line), &c); err != nil {
				return nil, bad(err)
			}
			kk := pos()
			if t.nbd[c.Handle] != nil {
				g.useKey(kk)
			}
			t.completion(kk, &c)
		case "footer":
			if cur == nil {
				flushEvents(key(lastOp, true), "")
			}
		}
	}
	sort.Ints(g.keys)
	return g, nil
}

func cowSite(site string) bool {
	return strings.HasPrefix(site, "kcopyd.") || strings.HasPrefix(site, "exception.") || strings.HasPrefix(site, "merge.")
}

// scenarioSteps are a recording's steps as the scenario parser reads them:
// the header's scenario, and the steps a live session (snaplab serve)
// added after it, parsed in its context as the session did.
type scenarioSteps struct {
	sc     *script.Scenario
	byLine map[int]*script.Step
}

func stepsOf(name string, rec *record.Recording) (*scenarioSteps, error) {
	sc, err := script.Parse(rec.Header.Scenario, rec.Header.Text)
	if err != nil {
		return nil, fmt.Errorf("%s: the recording's scenario: %v", name, err)
	}
	ss := &scenarioSteps{sc: sc, byLine: map[int]*script.Step{}}
	for i := range sc.Steps {
		ss.byLine[sc.Steps[i].Line] = &sc.Steps[i]
	}
	return ss, nil
}

// at is the step of an op line: the scenario's step on that line, or a
// session's added step.
func (ss *scenarioSteps) at(line int, text string) (*script.Step, error) {
	if st := ss.byLine[line]; st != nil && st.Text == strings.TrimSpace(text) {
		return st, nil
	}
	st, err := ss.sc.ParseMore(line, text)
	if err != nil {
		return nil, err
	}
	ss.byLine[line] = st
	return st, nil
}

func isIO(st *script.Step) bool {
	switch st.Kind {
	case script.KRead, script.KWrite, script.KDiscard, script.KFlush, script.KFsync, script.KSync, script.KWait:
		return true
	}
	return false
}

// ioDev is the device an I/O step names ("" for others).
func ioDev(st *script.Step) string {
	switch st.Kind {
	case script.KRead, script.KWrite, script.KDiscard, script.KFlush, script.KFsync:
		return st.Dev
	}
	return ""
}

// fmtTime prints virtual ns compactly.
func fmtTime(ns int64) string {
	switch {
	case ns == 0:
		return "0"
	case ns%1000000 == 0:
		return strconv.FormatInt(ns/1000000, 10) + "ms"
	case ns%1000 == 0:
		return strconv.FormatInt(ns/1000, 10) + "µs"
	}
	return strconv.FormatInt(ns, 10) + "ns"
}

// resultText is a result for hover text.
func resultText(r *record.Result) string {
	var parts []string
	if r.Exit != nil {
		parts = append(parts, fmt.Sprintf("exit %d", *r.Exit))
	}
	if r.Errno != "" {
		parts = append(parts, "errno "+r.Errno)
	}
	if r.Data != "" {
		parts = append(parts, "data "+r.Data)
	}
	s := "→ " + strings.Join(parts, ", ")
	if len(parts) == 0 {
		s = "→ done"
	}
	if out := strings.TrimRight(r.Stdout, "\n"); out != "" {
		s += "\nstdout: " + shorten(out, 400)
	}
	if e := strings.TrimRight(r.Stderr, "\n"); e != "" {
		s += "\nstderr: " + shorten(e, 400)
	}
	for _, l := range r.Log {
		s += "\nlog: " + shorten(l, 200)
	}
	for _, d := range r.DM {
		s += "\ndm: " + d
	}
	if r.Check != "" && r.Check != "ok" {
		s += "\ncheck FAILED: " + shorten(r.Check, 400)
	}
	return s
}

// ---- device state ----

func (t *tracker) find(name string) *dev {
	for _, d := range t.devs {
		if d.name == name {
			return d
		}
	}
	return nil
}

// resolve turns a table's or a command's device reference into a name.
func (t *tracker) resolve(ref string) string {
	for _, p := range []string{"/dev/mapper/", "/dev/disk/by-id/virtio-", "/dev/"} {
		if strings.HasPrefix(ref, p) {
			return strings.TrimPrefix(ref, p)
		}
	}
	maj, min, ok := strings.Cut(ref, ":")
	if !ok {
		return ref
	}
	a, err1 := strconv.Atoi(maj)
	b, err2 := strconv.Atoi(min)
	if err1 != nil || err2 != nil {
		return ref
	}
	switch a {
	case 254:
		if b%16 == 0 && b/16 < len(t.disks) {
			return t.disks[b/16]
		}
	case 253:
		for _, d := range t.devs {
			if d.minor == b {
				return d.name
			}
		}
	}
	return ref
}

func (t *tracker) parseTable(text string) *table {
	first, _, _ := strings.Cut(strings.TrimSpace(text), "\n")
	f := strings.Fields(first)
	tb := &table{text: text}
	if len(f) < 3 {
		return tb
	}
	tb.target = f[2]
	args := f[3:]
	switch tb.target {
	case "snapshot", "snapshot-merge":
		if len(args) >= 2 {
			tb.origin, tb.cow = t.resolve(args[0]), t.resolve(args[1])
		}
	case "snapshot-origin":
		if len(args) >= 1 {
			tb.origin = t.resolve(args[0])
		}
	}
	return tb
}

func (t *tracker) nextMinor() int {
	for m := 0; ; m++ {
		used := false
		for _, d := range t.devs {
			if d.minor == m {
				used = true
				break
			}
		}
		if !used {
			return m
		}
	}
}

// stateOf is what a device's lane shows.
func stateOf(d *dev) (string, bool) {
	pending := d.inactive != nil && d.live != nil
	switch {
	case d.handedOver:
		return StateHandedOver, pending
	case d.invalid:
		return StateInvalid, pending
	case d.suspended && d.live != nil:
		return StateSuspended, pending
	case d.live != nil:
		return StateLive, pending
	case d.inactive != nil:
		return StateLoaded, false
	}
	return StateEmpty, false
}

func describe(d *dev) string {
	st, _ := stateOf(d)
	s := d.name + ": " + st
	if d.live != nil {
		s += "\nlive table: " + strings.TrimSpace(d.live.text)
	}
	if d.inactive != nil {
		s += "\ninactive table: " + strings.TrimSpace(d.inactive.text)
	}
	if d.invalidWhy != "" && (d.invalid || d.handedOver) {
		s += "\n" + d.invalidWhy
	}
	if d.suspended && (d.invalid || d.handedOver) {
		s += "\nsuspended: I/O to it waits until it is resumed"
	}
	return s
}

// note records a device's state from key k on, when it changed.
func (t *tracker) note(k int, d *dev) {
	li := t.g.lane(d.name, "dm")
	st, pending := stateOf(d)
	susp := d.suspended && st != StateSuspended
	ch := t.g.changes[li]
	if n := len(ch); n > 0 && ch[n-1].state == st && ch[n-1].pending == pending && ch[n-1].suspended == susp {
		ch[n-1].title = describe(d) // same look; keep the latest tables for hover text
		return
	}
	t.g.changes[li] = append(ch, change{key: k, state: st, pending: pending, suspended: susp, title: describe(d)})
}

func (t *tracker) noteRemoved(k int, name string) {
	li := t.g.lane(name, "dm")
	t.g.changes[li] = append(t.g.changes[li], change{key: k, state: ""})
}

// source finds the live snapshot that d's new table pairs with: another
// device's live snapshot table of the same origin and COW.
func (t *tracker) source(d *dev, tb *table) *dev {
	if !tb.snapshot() {
		return nil
	}
	for _, s := range t.devs {
		if s == d || !s.live.snapshot() || s.handedOver {
			continue
		}
		if s.live.origin == tb.origin && s.live.cow == tb.cow {
			if !t.seed && !s.active {
				continue
			}
			return s
		}
	}
	return nil
}

func (t *tracker) handover(k, line int, src, dst *dev, why string) {
	dst.invalid = src.invalid
	if src.invalid {
		dst.invalidWhy = "invalid: inherited from " + src.name + " at the handover"
	}
	src.handedOver, src.invalid = true, true
	src.invalidWhy = "handed over to " + dst.name + " at line " + strconv.Itoa(line) + ": every I/O to " + src.name + " fails with EIO"
	dst.pairedWith = ""
	title := fmt.Sprintf("handover at line %d (%s): %s → %s\nthe exceptions of %s's COW (%s) move to %s; %s ends invalid", line, why, src.name, dst.name, src.name, src.live.cow, dst.name, src.name)
	t.g.handovers = append(t.g.handovers, Handover{Slot: k, Line: line, From: src.name, To: dst.name, Title: title})
	t.note(k, src)
}

// resume makes d's inactive table live (or resumes it), with the
// handover rules.
func (t *tracker) resume(k, line int, d *dev) {
	if d.inactive != nil {
		old := d.live
		d.live, d.inactive = d.inactive, nil
		d.invalid, d.invalidWhy = false, ""
		if old.snapshot() && d.live.snapshot() && old.cow == d.live.cow && old.origin == d.live.origin {
			// A new table on the same COW in the same device (H8): the
			// handover happens inside the resume.
			t.g.handovers = append(t.g.handovers, Handover{Slot: k, Line: line, From: d.name, To: d.name,
				Title: fmt.Sprintf("handover at line %d: %s's new table takes over its old table's exceptions (same COW %s)", line, d.name, d.live.cow)})
		}
	}
	if d.cancelled {
		d.invalid, d.invalidWhy, d.cancelled = true, "invalid: its handover was cancelled (the source was removed first)", false
	}
	if d.pairedWith != "" {
		if src := t.find(d.pairedWith); src != nil && !src.handedOver {
			t.handover(k, line, src, d, "the destination's resume")
		}
		d.pairedWith = ""
	} else if t.seed {
		// Seed: the source's resume is a trigger too.
		for _, dst := range t.devs {
			if dst.pairedWith == d.name && !d.handedOver {
				t.handover(k, line, d, dst, "the source's resume")
			}
		}
	}
	d.suspended = false
	if d.live != nil {
		d.active = true
	}
}

// load gives d an inactive table, pairing it with a source.
func (t *tracker) load(d *dev, text string) {
	tb := t.parseTable(text)
	d.inactive, d.pairedWith, d.cancelled = tb, "", false
	if d.live.snapshot() && tb.snapshot() && d.live.cow == tb.cow {
		return // the same device's new table (H8)
	}
	if s := t.source(d, tb); s != nil {
		d.pairedWith = s.name
	}
}

func (t *tracker) remove(k, line int, d *dev) {
	for _, dst := range t.devs {
		if dst.pairedWith != d.name {
			continue
		}
		if t.seed && !d.handedOver {
			t.handover(k, line, d, dst, "the source's removal")
		} else if !d.handedOver {
			dst.cancelled = true
			dst.pairedWith = ""
		}
	}
	for i, x := range t.devs {
		if x == d {
			t.devs = append(t.devs[:i:i], t.devs[i+1:]...)
			break
		}
	}
	t.noteRemoved(k, d.name)
}

var queries = map[string]bool{"status": true, "table": true, "info": true, "ls": true, "targets": true, "version": true, "deps": true}

// dmsetup applies one dmsetup command (argv after "dmsetup") that
// exited with status ok, at key k; it returns the device it concerns.
func (t *tracker) dmsetup(k, line int, argv []string, ok bool, stdout string) string {
	if len(argv) == 0 {
		return ""
	}
	a, err := dm.ParseArgs(argv)
	if err != nil {
		return "" // dmsetup refused the line: it concerns no device
	}
	verb, name, tableText, hasTable := a.Cmd, "", a.Table, a.HaveTable
	if len(a.Operands) > 0 {
		name = a.Operands[0]
	}
	name = t.resolve(name)
	if verb == "status" && ok {
		t.readStatus(k, name, stdout)
	}
	d := t.find(name)
	if !ok && verb == "resume" && d != nil && d.inactive != nil {
		// A refused resume (a preresume error) leaves the new table live
		// and the device suspended (docs/dmsetup.md §4.2).
		d.live, d.inactive, d.suspended = d.inactive, nil, true
		t.note(k, d)
		return name
	}
	if !ok || queries[verb] {
		return name
	}
	switch verb {
	case "create":
		if d != nil {
			return name
		}
		d = &dev{name: name, minor: t.nextMinor()}
		t.devs = append(t.devs, d)
		if hasTable {
			t.load(d, tableText)
			d.suspended = true
			t.resume(k, line, d)
		}
	case "load", "reload":
		if d == nil || !hasTable {
			return name
		}
		t.load(d, tableText)
	case "clear":
		if d == nil {
			return name
		}
		d.inactive, d.pairedWith = nil, ""
	case "suspend":
		if d == nil {
			return name
		}
		d.suspended = true
	case "resume":
		if d == nil {
			return name
		}
		t.resume(k, line, d)
	case "remove":
		if d == nil {
			return name
		}
		t.remove(k, line, d)
		return name
	default:
		return name
	}
	t.note(k, d)
	return name
}

// readStatus learns invalid snapshots from dmsetup status output.
func (t *tracker) readStatus(k int, name, stdout string) {
	for _, l := range strings.Split(strings.TrimRight(stdout, "\n"), "\n") {
		dname := name
		if name == "" {
			n, rest, ok := strings.Cut(l, ": ")
			if !ok {
				continue
			}
			dname, l = n, rest
		}
		f := strings.Fields(l)
		if len(f) < 4 || (f[2] != "snapshot" && f[2] != "snapshot-merge") {
			continue
		}
		d := t.find(dname)
		if d == nil || d.handedOver {
			continue
		}
		switch f[3] {
		case snapshot.StatusInvalid, snapshot.StatusOverflow:
			if !d.invalid {
				d.invalid = true
				d.invalidWhy = "dmsetup status says " + f[3]
				t.note(k, d)
			}
		}
	}
}

func (t *tracker) marker(k int, dev string, m Marker) {
	if dev == "" {
		return
	}
	kind := "dm"
	if t.isDisk(dev) {
		kind = "disk"
	}
	li := t.g.lane(dev, kind)
	m.Slot = k
	t.g.lanes[li].Markers = append(t.g.lanes[li].Markers, m)
}

func (t *tracker) isDisk(name string) bool {
	for _, d := range t.disks {
		if d == name {
			return true
		}
	}
	return false
}

func errnoClass(errno string) string {
	switch errno {
	case "OK":
		return TickOK
	case "EIO":
		return TickEIO
	case "":
		return TickPending
	}
	return TickError
}

// step applies one op and its result at key k.
func (t *tracker) step(k int, st *script.Step, info *StepInfo, r *record.Result) {
	ok := r.Exit != nil && *r.Exit == 0
	m := Marker{Line: info.Line, Verb: st.Kind, Failed: r.Exit != nil && *r.Exit != 0, Title: info.Title}
	switch st.Kind {
	case script.KDisk:
		t.disks = append(t.disks, st.Dev)
		li := t.g.lane(st.Dev, "disk")
		t.g.lanes[li].Kind = "disk"
		t.g.changes[li] = append(t.g.changes[li], change{key: k, state: StateDisk, title: info.Text})
	case script.KDmsetup:
		argv := st.Argv
		m.Verb = argv[0]
		m.Query = queries[argv[0]]
		name := t.dmsetup(k, info.Line, argv, ok, r.Stdout)
		if name == "" && m.Query && (m.Verb == "status" || m.Verb == "table" || m.Verb == "info" || m.Verb == "ls") {
			// status, ls... of every device: a marker on each.
			for _, d := range t.devs {
				t.marker(k, d.name, m)
			}
			return
		}
		t.marker(k, name, m)
	case script.KLvm:
		m.Verb = "lvm"
		for i, l := range r.DMLines {
			dw, err := script.Split(l)
			if err != nil || len(dw) < 2 || dw[0] != script.KDmsetup {
				continue
			}
			dok := true
			if i < len(r.DM) {
				dok = strings.HasSuffix(r.DM[i], ": ok")
			}
			argv := dw[1:] // LVM's operations carry no expectations
			name := t.dmsetup(k, info.Line, argv, dok, "")
			mm := m
			mm.Verb = "lvm " + argv[0]
			mm.Failed = !dok
			mm.Title = info.Title + "\n(" + strings.Join(argv, " ") + ")"
			t.marker(k, name, mm)
		}
	case script.KFault:
		t.marker(k, st.Dev, m)
	case script.KOpen:
		if r.Errno == "" || r.Errno == "OK" {
			t.opens[st.Handle] = t.resolve(st.Dev)
		}
		m.Failed = r.Errno != "" && r.Errno != "OK"
		t.marker(k, t.resolve(st.Dev), m)
	case script.KClose:
		t.marker(k, t.opens[st.Handle], m)
		delete(t.opens, st.Handle)
	case script.KRead, script.KWrite, script.KDiscard, script.KFlush, script.KFsync:
		name := t.resolve(st.Dev)
		kind := "dm"
		if t.isDisk(name) {
			kind = "disk"
		}
		li := t.g.lane(name, kind)
		d := t.find(name)
		susp := d != nil && d.suspended
		tk := Tick{Slot: k, Until: k, Line: info.Line, Class: errnoClass(r.Errno), Waited: susp, Title: info.Title}
		async := st.Async
		if async != "" && r.Errno == "" {
			tk.Title += "\n(asynchronous: completes at its wait)"
			t.async[async] = &pendingIO{lane: li, tick: len(t.g.lanes[li].Ticks), issued: k, suspended: susp}
		}
		if susp {
			tk.Title += "\nissued while " + name + " was suspended: it waited"
		}
		t.g.lanes[li].Ticks = append(t.g.lanes[li].Ticks, tk)
	case script.KWait:
		p := t.async[st.Async]
		if p == nil {
			return
		}
		delete(t.async, st.Async)
		tk := &t.g.lanes[p.lane].Ticks[p.tick]
		tk.Class = errnoClass(r.Errno)
		tk.Until = k
		tk.Waited = p.suspended
		tk.Title += fmt.Sprintf("\ncompleted at line %d: %s", info.Line, strings.TrimPrefix(resultText(r), "→ "))
	}
}

// arrival is an outside (NBD) request.
func (t *tracker) arrival(k int, a *record.Arrival) {
	name := a.Dev
	if a.Open != 0 && t.nbdOpens[a.Open] != "" {
		name = t.nbdOpens[a.Open]
	}
	kind := "dm"
	if t.isDisk(name) {
		kind = "disk"
	}
	li := t.g.lane(name, kind)
	d := t.find(name)
	susp := d != nil && d.suspended
	title := fmt.Sprintf("NBD %s %s off %d len %d (handle %d, t=%s)", a.Op, name, a.Off, a.Len, a.Handle, fmtTime(a.T))
	if susp {
		title += "\narrived while " + name + " was suspended"
	}
	t.nbd[a.Handle] = &pendingIO{lane: li, tick: len(t.g.lanes[li].Ticks), issued: k, suspended: susp}
	t.g.lanes[li].Ticks = append(t.g.lanes[li].Ticks, Tick{Slot: k, Until: k, Class: TickPending, Title: title})
}

func (t *tracker) completion(k int, c *record.Completion) {
	p := t.nbd[c.Handle]
	if p == nil {
		return
	}
	delete(t.nbd, c.Handle)
	tk := &t.g.lanes[p.lane].Ticks[p.tick]
	tk.Class = errnoClass(c.Errno)
	tk.Until = k
	tk.Waited = p.suspended && k != p.issued
	tk.Title += fmt.Sprintf("\n→ %s (t=%s)", c.Errno, fmtTime(c.T))
	if c.Check != "" && c.Check != "ok" {
		tk.Title += "\ncheck FAILED: " + c.Check
	}
}

// cowEvents puts copy-on-write events on the COW disk they concern: the
// one COW of the step's device, or the shared COW row.
func (t *tracker) cowEvents(k int, devName string, evs []record.Event) {
	var cows []string
	add := func(c string) {
		for _, x := range cows {
			if x == c {
				return
			}
		}
		cows = append(cows, c)
	}
	name := t.resolve(devName)
	d := t.find(name)
	switch {
	case d != nil && d.live.snapshot():
		add(d.live.cow)
	default:
		origin := ""
		if d != nil && d.live != nil && d.live.target == "snapshot-origin" {
			origin = d.live.origin
		} else if t.isDisk(name) {
			origin = name
		}
		for _, s := range t.devs {
			if s.live.snapshot() && !s.handedOver && (origin == "" || s.live.origin == origin) {
				add(s.live.cow)
			}
		}
	}
	lane := cowRow
	kind := "cow"
	if len(cows) == 1 && t.isDisk(cows[0]) {
		lane, kind = cows[0], "disk"
	} else if len(cows) == 1 && t.find(cows[0]) != nil {
		lane, kind = cows[0], "dm" // a COW on a dm device (an LVM volume)
	}
	li := t.g.lane(lane, kind)
	// One tick per site and position, with the count.
	var sites []string
	counts := map[string]int{}
	for _, e := range evs {
		if counts[e.Site] == 0 {
			sites = append(sites, e.Site)
		}
		counts[e.Site]++
	}
	step, line := "", 0
	if info, ok := t.g.keyLine[k]; ok && k%2 == 1 {
		step, line = fmt.Sprintf("\nduring line %d: %s", info.Line, info.Text), info.Line
	}
	for _, s := range sites {
		class := TickCowCopy
		switch {
		case strings.HasPrefix(s, "exception."):
			class = TickCowCommit
		case strings.HasPrefix(s, "merge."):
			class = TickCowMerge
		}
		title := fmt.Sprintf("%s ×%d on %s%s", s, counts[s], lane, step)
		t.g.lanes[li].Ticks = append(t.g.lanes[li].Ticks, Tick{Slot: k, Until: k, Line: line, Class: class, Title: title})
	}
}

// ---- slots ----

func mergeSlots(raws []*rawGroup) []Slot {
	var keys []int
	seen := map[int]bool{}
	for _, r := range raws {
		for _, k := range r.keys {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	sort.Ints(keys)
	slots := make([]Slot, len(keys))
	for i, k := range keys {
		s := Slot{Op: (k - 1) / 2, After: k%2 == 0}
		if k == 0 {
			s.Op = -1
		}
		for _, r := range raws {
			if info, ok := r.keyLine[k]; ok {
				s.Line, s.Text, s.T = info.Line, info.Text, info.T
				break
			}
		}
		slots[i] = s
	}
	return slots
}

// place turns a raw group's keys into slot indices.
func (r *rawGroup) place(slots []Slot) *Group {
	slotOf := map[int]int{}
	for i, s := range slots {
		slotOf[key(s.Op, s.After)] = i
	}
	// A group's lanes end after its last position (a run stops at its
	// first failure; the other recording may go on).
	end := 0
	if n := len(r.keys); n > 0 {
		end = slotOf[r.keys[n-1]] + 1
	}
	g := &Group{Name: r.name, Header: r.header, Pass: r.pass, Steps: r.steps, Time: r.time}
	for li, l := range r.lanes {
		nl := &Lane{Device: l.Device, Kind: l.Kind}
		ch := r.changes[li]
		for i, c := range ch {
			state, title := c.state, c.title
			if state == "" {
				state, title = StateRemoved, l.Device+": removed"
			}
			to := end
			if i+1 < len(ch) {
				to = slotOf[ch[i+1].key]
			}
			from := slotOf[c.key]
			if to <= from {
				continue
			}
			nl.Segments = append(nl.Segments, Segment{From: from, To: to, State: state, Pending: c.pending, Suspended: c.suspended, Title: title})
		}
		if l.Kind == "cow" {
			nl.Segments = append(nl.Segments, Segment{From: 0, To: end, State: "cow", Title: "COW activity not tied to one COW disk"})
		}
		for _, m := range l.Markers {
			m.Slot = slotOf[m.Slot]
			nl.Markers = append(nl.Markers, m)
		}
		for _, tk := range l.Ticks {
			tk.Slot, tk.Until = slotOf[tk.Slot], slotOf[tk.Until]
			nl.Ticks = append(nl.Ticks, tk)
		}
		g.Lanes = append(g.Lanes, nl)
	}
	// Disks first, in declaration order, then dm devices in the order
	// they appeared, then the shared COW row.
	rank := func(k string) int {
		switch k {
		case "disk":
			return 0
		case "dm":
			return 1
		}
		return 2
	}
	sort.SliceStable(g.Lanes, func(i, j int) bool { return rank(g.Lanes[i].Kind) < rank(g.Lanes[j].Kind) })
	for _, h := range r.handovers {
		h.Slot = slotOf[h.Slot]
		g.Handovers = append(g.Handovers, h)
	}
	for _, op := range r.ops {
		op.Slot = slotOf[op.Slot]
		g.StepInfo = append(g.StepInfo, op)
	}
	return g
}
