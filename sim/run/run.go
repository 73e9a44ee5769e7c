// Package run executes scenarios on the in-process simulator (the `sim`
// executor): it builds a world, attaches disks, runs every step, checks the
// step's assertions and every read against the oracle, and writes a
// recording. Replay re-runs a recording and reports the first divergence.
package run

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/invariant"
	"snaplab/sim/lvmlog"
	"snaplab/sim/oracle"
	"snaplab/sim/pattern"
	"snaplab/sim/profile"
	"snaplab/sim/record"
	"snaplab/sim/script"
	"snaplab/sim/snapshot"
	"snaplab/sim/world"
)

// Options change how a scenario runs.
type Options struct {
	// Semantics overrides the scenario's ("" keeps it).
	Semantics string
	// LVM holds, by line number, the device-mapper operations each lvm
	// step performed on a real kernel, as scenario lines (sim/lvmlog):
	// the simulator repeats them for the step. run.Compare fills it from
	// the kernel's run.
	LVM map[int][]string
	// Kernel is the kernel profile to model where releases differ
	// (sim/profile: "6.1", "6.12", or a matrix release such as 6.12-rt;
	// "" is 6.1). A scenario's kernel-qualified expectations
	// (stderr@6.12=...) are those of this profile.
	Kernel string
	// Seed overrides the scenario's when non-nil.
	Seed *uint64
	// Record receives the recording (nil: hashed only).
	Record io.Writer
	// Blobs, when set, receives the data outside clients write that is
	// not a scenario pattern, and the recording names it (its header names
	// the sidecar's file); without it such data is inline in the
	// recording. The caller closes it after Finish.
	Blobs record.BlobSink
	// Tape forces recorded choices (strict replay).
	Tape world.Tape
	// DumpDir, when set, receives every disk's final content as a sparse
	// raw image file DumpDir/NAME.img (e.g. for `snaplab cow`).
	DumpDir string
	// Executor names the executor in the recording's header ("" = "sim").
	Executor string
	// AllowImagesOutside lets a disk's image= file lie outside the
	// scenario's directory tree (after symbolic links), e.g. ../x or an
	// absolute path elsewhere, and lets a replay read the images of a
	// recording whose scenario file is gone. snaplab's -images-anywhere.
	AllowImagesOutside bool
	// KeepGoing runs every step even after one failed, so the report (and
	// a comparison of executors) lists every failure, not the first.
	KeepGoing bool
	// BeforeStep, when set, runs before each scenario step with the
	// session (a guest executor calls it holding the session; Replay
	// before each step it re-runs): tests use it to tamper with the
	// simulated disks behind the oracle's back, snaplab export to mark
	// where a step begins in a disk's request stream.
	BeforeStep func(st *script.Step, s *Session)
	// Tap, when set, hears every write, flush and discard each disk
	// receives (block.Tap), in the order it receives them: the scenario's,
	// outside clients', the page cache's write-back and the device-mapper
	// stack's own (copy-on-write copies, exception store metadata). An
	// image= disk's initial content is not a request. snaplab export
	// --format log-writes.
	Tap func(disk string, r block.Request)

	replay *replayOptions // set by Replay
}

// Failure is a failed assertion.
type Failure struct {
	Line int
	Text string
	Msg  string
}

func (f Failure) String() string { return fmt.Sprintf("line %d: %s\n    %s", f.Line, f.Text, f.Msg) }

// Report is the outcome of a run.
type Report struct {
	Scenario  string
	Semantics string
	Seed      uint64
	Failures  []Failure
	Steps     int
	Events    uint64
	VirtualNS int64
	Checks    int // sectors checked by the oracle
	TraceHash string
	// Coverage counts how often the run reached each coverage property
	// (invariant.Properties; every one is present, 0 if never reached).
	Coverage map[string]int
}

// Pass reports whether every assertion held.
func (r *Report) Pass() bool { return len(r.Failures) == 0 }

type asyncIO struct {
	step   *script.Step
	sector uint64 // first sector on node, for liveness messages
	done   bool
	err    error
	data   []byte
	expect oracle.Expectation
	write  oracle.Write
	node   dm.Node
	isW    bool
}

// Session is a scenario being executed step by step on the simulator; the
// live driver (vmtest/live) also feeds it I/O arriving from outside.
// A Session is not safe for concurrent use: one goroutine owns it.
type Session struct {
	lvm     map[int][]string // lvm steps' operations (Options.LVM)
	sc      *script.Scenario
	w       *world.World
	ctl     *dm.Control
	orc     *oracle.Oracle
	inv     *invariant.Checker
	rec     *record.Writer
	faults  map[string]*block.Faulty
	asyncs  map[string]*asyncIO
	logCur  int
	report  *Report
	opIndex int
	handles uint64
	dumpDir string
	last    record.Result
	tap     func(disk string, r block.Request) // Options.Tap

	nopens uint64                // opens from outside so far (OpenID of the last)
	opens  map[OpenID]*dm.Handle // outside opens (closed ones too: I/O through them gets EBADF)
	held   map[string]*dm.Handle // the scenario's opens (open DEV as ID), by ID
	pc     pageCache             // buffered writes (pagecache.go)

	ioBuf        []byte                        // a scenario I/O step's buffer, reused (ioBuffer)
	images       imageConfig                   // where image files are and may be
	replayImages map[*script.Step]*replayImage // replay: the recorded image files
	imageErr     error                         // replay: an image file is missing or changed

	// The user I/O liveness looks at: asynchronous or stuck scenario I/O
	// (done ones are dropped after each step), outside requests not
	// finished, by handle.
	ios []*asyncIO
	ext map[uint64]*extReq
}

// Run executes sc on the simulator.
func Run(sc *script.Scenario, opts Options) *Report {
	sc = sc.ForKernel(profile.NameOf(opts.Kernel))
	r := NewSession(sc, opts)
	for i := range sc.Steps {
		if opts.BeforeStep != nil {
			opts.BeforeStep(&sc.Steps[i], r)
		}
		if msg := r.Exec(&sc.Steps[i]); msg != "" && !opts.KeepGoing {
			break
		}
	}
	return r.Finish()
}

// NewSession prepares a world for sc and writes the recording's header.
func NewSession(sc *script.Scenario, opts Options) *Session {
	sem := sc.Semantics
	if opts.Semantics != "" {
		sem = opts.Semantics
	}
	seed := sc.Seed
	if opts.Seed != nil {
		seed = *opts.Seed
	}
	w := world.New(seed)
	ctl := dm.NewControl(w)
	prof, perr := profile.Lookup(opts.Kernel)
	if perr != nil {
		prof = profile.Default // and the report fails, below
	}
	ctl.Profile = prof
	kernelName := ""
	if prof.Name != profile.Default.Name {
		kernelName = prof.Name
	}
	snapshot.Register(ctl)
	policy, ok := snapshot.ParseSemantics(sem)
	if !ok {
		policy = snapshot.Mainline
	}
	snapshot.SetSemantics(ctl, policy)
	r := &Session{lvm: opts.LVM, sc: sc, w: w, ctl: ctl, orc: oracle.New(ctl), inv: invariant.New(ctl), rec: record.NewWriter(opts.Record),
		ext:    map[uint64]*extReq{},
		faults: map[string]*block.Faulty{}, asyncs: map[string]*asyncIO{},
		opens: map[OpenID]*dm.Handle{}, held: map[string]*dm.Handle{},
		report: &Report{Scenario: sc.Name, Semantics: sem, Seed: seed}, dumpDir: opts.DumpDir, tap: opts.Tap,
		images: newImageConfig(sc, opts)}
	executor := opts.Executor
	if executor == "" {
		executor = "sim"
	}
	hdr := record.Header{Kind: "header", Format: record.Format, FormatVersion: record.FormatVersion,
		Scenario: sc.Name, Executor: executor, Semantics: sem, Seed: seed, Text: sc.Text, Dir: r.images.headerDir, Kernel: kernelName}
	r.rec.SetPatterns(scenarioPatterns(sc))
	switch {
	case opts.replay != nil && opts.replay.version < 2:
		hdr.FormatVersion = opts.replay.version
		r.rec.SetLegacy()
	case opts.replay != nil && opts.replay.blobs != "":
		hdr.Blobs = opts.replay.blobs
		r.rec.SetBlobNames()
	case opts.Blobs != nil:
		hdr.Blobs = filepath.Base(opts.Blobs.Path())
		r.rec.SetBlobs(opts.Blobs)
	}
	r.rec.Write(hdr)
	if perr != nil {
		r.report.Failures = append(r.report.Failures, Failure{Msg: perr.Error()})
	}
	w.SetObserver(record.Observer{W: r.rec})
	if opts.Tape != nil {
		w.SetTape(opts.Tape)
	}
	return r
}

// Control is the session's device-mapper control plane.
func (r *Session) Control() *dm.Control { return r.ctl }

// World is the session's simulated world.
func (r *Session) World() *world.World { return r.w }

// Invariants is the session's invariant checker: the crash checker counts
// invariant.ReloadAfterPowerCut on it (Cover).
func (r *Session) Invariants() *invariant.Checker { return r.inv }

// checkInvariants runs liveness when the world is quiescent and no fault
// rule is active, and returns the failure text of the violations found
// since the last call ("" for none).
func (r *Session) checkInvariants() string {
	r.pruneIOs()
	if r.w.Pending() == 0 && !r.faultsActive() {
		r.inv.CheckLiveness(r.waiting())
	}
	return invariant.Message(r.inv.Take())
}

// pruneIOs forgets the scenario I/O that completed (and the buffers it
// holds).
func (r *Session) pruneIOs() {
	n := 0
	for _, a := range r.ios {
		if !a.done {
			r.ios[n] = a
			n++
		}
	}
	clear(r.ios[n:])
	r.ios = r.ios[:n]
}

// waiting lists the user I/O not completed: the scenario's (asynchronous
// ones, and any that got stuck), in the order it was submitted, then
// outside requests by handle.
func (r *Session) waiting() []invariant.Waiting {
	var out []invariant.Waiting
	for _, a := range r.ios {
		if a.done {
			continue
		}
		what := fmt.Sprintf("%s %s (line %d)", a.step.Kind, a.step.Dev, a.step.Line)
		if a.step.Async != "" {
			what = fmt.Sprintf("%s %s (line %d, async %s)", a.step.Kind, a.step.Dev, a.step.Line, a.step.Async)
		}
		out = append(out, invariant.Waiting{What: what, Node: a.node, Sector: a.sector})
	}
	if len(r.ext) > 0 {
		hs := make([]uint64, 0, len(r.ext))
		for h := range r.ext { // order-free: sorted below
			hs = append(hs, h)
		}
		slices.Sort(hs)
		for _, h := range hs {
			q := r.ext[h]
			out = append(out, invariant.Waiting{What: fmt.Sprintf("%s %s %d %d (outside request %d)", q.op, q.dev, q.off, q.n, q.hn),
				Node: q.node, Sector: uint64(q.off / block.SectorSize)})
		}
	}
	return out
}

// Exec runs one step, records it and returns "" or the failure.
func (r *Session) Exec(st *script.Step) string {
	i := r.opIndex
	r.opIndex++
	r.rec.Write(record.Op{Kind: "op", I: i, T: int64(r.w.Now()), Line: st.Line, Text: st.Text})
	res := record.Result{Kind: "result", I: i, Line: st.Line}
	cur := r.ctl.Log.Len()
	msg := r.step(st, &res)
	switch st.Kind {
	case script.KRead, script.KWrite, script.KFlush, script.KDiscard, script.KWait, script.KFsync, script.KSync:
		// What the kernel logged while the I/O ran (invalidation, overflow).
		res.Log = r.ctl.Log.Since(cur)
		if msg == "" {
			msg = wantLines("kernel log", st.Expect.Log, res.Log)
		}
	}
	if err := r.w.TapeErr(); err != nil && msg == "" {
		msg = err.Error()
	}
	if v := r.checkInvariants(); v != "" {
		// A broken invariant is the cause of whatever else failed.
		msg = v
	}
	res.T = int64(r.w.Now())
	res.Check = "ok"
	if msg != "" {
		res.Check = msg
		r.report.Failures = append(r.report.Failures, Failure{Line: st.Line, Text: st.Text, Msg: msg})
	}
	r.rec.Write(res)
	r.report.Steps++
	r.last = res
	return msg
}

// GuestOp records that a guest starts performing step st (vm executor);
// it returns the step's index for GuestResult.
func (r *Session) GuestOp(st *script.Step) int {
	i := r.opIndex
	r.opIndex++
	r.rec.Write(record.Op{Kind: "op", I: i, T: int64(r.w.Now()), Line: st.Line, Text: st.Text, Guest: true})
	return i
}

// GuestResult records the guest's result of step i; msg is "" or the
// failure.
func (r *Session) GuestResult(i int, st *script.Step, res record.Result, msg string) {
	res.Kind, res.I, res.Line, res.Guest, res.T = "result", i, st.Line, true, int64(r.w.Now())
	if v := r.checkInvariants(); v != "" {
		msg = v
	}
	res.Check = "ok"
	if msg != "" {
		res.Check = msg
		r.report.Failures = append(r.report.Failures, Failure{Line: st.Line, Text: st.Text, Msg: msg})
	}
	r.rec.Write(res)
	r.report.Steps++
}

// copyLine re-emits a recorded line verbatim (replay of guest steps).
func (r *Session) copyLine(v any) { r.rec.Write(v) }

// LastResult is the recorded result of the last step Exec ran.
func (r *Session) LastResult() record.Result { return r.last }

// Settle runs the world until nothing is left to run, and records that it
// did (a live session settles after each outside request, and replay must
// do the same at the same points).
func (r *Session) Settle() {
	r.rec.WriteSettle(&record.Settle{Kind: "settle", T: int64(r.w.Now())})
	r.w.Run()
	if v := r.checkInvariants(); v != "" {
		r.report.Failures = append(r.report.Failures, Failure{Text: "settle", Msg: v})
	}
}

// OpenID names an open made with Session.Open or Session.OpenUncounted.
// IDs count from 1 in the order of the opens, failed ones included, so a
// replay hands out the same IDs.
type OpenID uint64

// Open opens the named disk or dm device for a user outside the simulator
// (an NBD connection entering transmission), as the kernel's open of its
// block device does: the open counts in the device's open count (dmsetup
// info's "Open count", remove's EBUSY) until CloseOpen, and I/O through it
// (ExternalVia) goes to the device as it is now: once that device is
// removed it fails with ENXIO and never reaches a device created later
// under the same name. A missing device, or a dm device no table was ever
// loaded into (no gendisk), fails with ENXIO. Disks count nothing. The
// open is recorded ({"kind":"open"}) whether or not it succeeds.
func (r *Session) Open(dev string) (OpenID, error) { return r.open(dev, true) }

// OpenUncounted is Open without the open count: a harness stand-in for
// opens the real user makes per I/O (the vm executor's NBD exports, whose
// guest opens the device for each I/O and may remove it between them).
func (r *Session) OpenUncounted(dev string) (OpenID, error) { return r.open(dev, false) }

func (r *Session) open(dev string, counted bool) (OpenID, error) {
	r.nopens++
	id := OpenID(r.nopens)
	h, err := r.ctl.Open(dev, counted)
	r.rec.Write(record.Open{Kind: "open", T: int64(r.w.Now()), ID: uint64(id), Dev: dev, Uncounted: !counted,
		Errno: block.ErrnoName(block.Errno(err))})
	if err != nil {
		return 0, err
	}
	r.opens[id] = h
	return id, nil
}

// Opened returns the handle of an open made with Open or OpenUncounted, or
// nil if it is not open.
func (r *Session) Opened(id OpenID) *dm.Handle {
	if h := r.opens[id]; h != nil && !h.Closed() {
		return h
	}
	return nil
}

// CloseOpen releases an open made with Open or OpenUncounted, and records
// it. An ID that is not open (never opened, failed, closed) is an error.
func (r *Session) CloseOpen(id OpenID) error {
	h := r.opens[id]
	if h == nil || h.Closed() {
		return fmt.Errorf("close of open %d: not open", id)
	}
	h.Close()
	r.rec.Write(record.Close{Kind: "close", T: int64(r.w.Now()), ID: uint64(id)})
	return nil
}

// External submits an I/O arriving from outside the simulator (an NBD
// client) to the named disk or device, whichever has the name now; done
// runs when it completes, inside a later Settle. The arrival, its data and
// its completion are recorded, and reads are checked by the oracle.
func (r *Session) External(dev string, op dm.Op, off int64, data []byte, fua bool, done func(error)) {
	r.external(dev, 0, nil, op, off, data, int64(len(data)), fua, done)
}

// ExternalDiscard is External for a discard of n bytes at off, through
// the open id when it is not 0. It needs no buffer, so a client's discard
// of a whole large device costs no memory.
func (r *Session) ExternalDiscard(dev string, id OpenID, off, n int64, done func(error)) {
	var h *dm.Handle
	if id != 0 {
		dev, h = r.via(id)
	}
	r.external(dev, id, h, dm.OpDiscard, off, nil, n, false, done)
}

// via is the handle of open id and the name its device had ("" for no
// such open).
func (r *Session) via(id OpenID) (string, *dm.Handle) {
	if h := r.opens[id]; h != nil {
		return h.Name(), h
	}
	return "", nil
}

// ExternalVia is External through an open (Open, OpenUncounted): the I/O
// goes to the device the open is bound to, and fails with ENXIO once that
// device is removed (EBADF when the open is closed or was never made). The
// arrival records the open's ID and the name its device had.
func (r *Session) ExternalVia(id OpenID, op dm.Op, off int64, data []byte, fua bool, done func(error)) {
	dev, h := r.via(id)
	r.external(dev, id, h, op, off, data, int64(len(data)), fua, done)
}

func (r *Session) external(dev string, id OpenID, h *dm.Handle, op dm.Op, off int64, data []byte, n int64, fua bool, done func(error)) {
	r.handles++
	q := &extReq{r: r, hn: r.handles, dev: dev, op: op, off: off, n: n, data: data, done: done}
	arr := record.Arrival{Kind: "arrival", T: int64(r.w.Now()), Dev: dev, Op: op.String(), Off: off, Len: n, FUA: fua, Handle: q.hn, Open: uint64(id)}
	if op == dm.OpWrite {
		r.rec.Payload(&arr, data)
	}
	r.rec.WriteArrival(&arr)
	switch {
	case id != 0 && (h == nil || h.Closed()):
		q.finish(&block.Error{Dev: dev, Op: op.String(), Off: off, Len: n, Errno: syscall.EBADF, Err: fmt.Errorf("open %d is not open", id)}, "ok")
		return
	case h != nil && h.Gone():
		// The device this open was bound to is gone; the model has
		// nothing to say about it.
		h.Submit(dm.NewBio(op, uint64(off/block.SectorSize), data, fua, q.unchecked))
		return
	case h != nil:
		q.node = h.Node()
	default:
		q.node = r.ctl.Node(dev)
	}
	if q.node == nil {
		q.finish(&block.Error{Dev: dev, Op: op.String(), Off: off, Errno: syscall.ENXIO, Err: fmt.Errorf("no such device")}, "ok")
		return
	}
	r.ext[q.hn] = q
	var b *dm.Bio
	switch op {
	case dm.OpRead:
		q.exp = r.orc.BeginRead(q.node, off, n)
		b = dm.NewBio(op, uint64(off/block.SectorSize), data, false, q.readDone)
	case dm.OpWrite:
		if !r.orc.HasPatterns() {
			r.orc.SetPatterns(scenarioPatterns(r.sc))
		}
		q.w = r.orc.BeginWriteData(q.node, off, data)
		b = dm.NewBio(op, uint64(off/block.SectorSize), data, fua, q.writeDone)
	case dm.OpDiscard:
		q.w = r.orc.BeginWrite(q.node, off, n, "") // content unknown
		b = dm.NewBio(op, uint64(off/block.SectorSize), nil, false, q.writeDone)
		b.Len = uint64(n)
	default:
		b = dm.NewBio(dm.OpFlush, 0, nil, false, q.unchecked)
	}
	switch {
	case h != nil:
		h.Submit(b)
	default:
		if md, ok := q.node.(*dm.MappedDevice); ok {
			md.SubmitUser(b)
		} else {
			q.node.Submit(b)
		}
	}
}

// extReq is an outside request in flight (one allocation holds what its
// completion needs).
type extReq struct {
	r      *Session
	hn     uint64
	dev    string
	op     dm.Op
	off, n int64
	data   []byte
	done   func(error)
	node   dm.Node
	exp    oracle.Expectation
	w      oracle.Write
}

// finish records the completion, counts a failed check and tells the
// caller.
func (q *extReq) finish(err error, check string) {
	r := q.r
	delete(r.ext, q.hn)
	c := record.Completion{Kind: "completion", T: int64(r.w.Now()), Handle: q.hn, Errno: block.ErrnoName(block.Errno(err)), Check: check}
	if q.op == dm.OpRead && err == nil {
		c.Data = r.rec.ReadHash(q.data)
	}
	if check != "ok" {
		r.report.Failures = append(r.report.Failures, Failure{Text: fmt.Sprintf("%s %s %d %d (outside request %d)", q.op, q.dev, q.off, q.n, q.hn), Msg: check})
	}
	r.rec.WriteCompletion(&c)
	q.done(err)
}

// unchecked completes a request the model says nothing about.
func (q *extReq) unchecked(err error) { q.finish(err, "ok") }

// readDone checks what a read returned against the model.
func (q *extReq) readDone(err error) {
	check := "ok"
	if removed(q.node, err) {
		// Removed while the read was queued: nothing to check.
	} else if e := q.r.orc.CheckRead(q.exp, q.data, err, q.r.faultsActive()); e != nil {
		check = e.Error()
	}
	q.finish(err, check)
}

// writeDone ends a write or discard in the model: a write's data is known
// (a pattern, or each sector's hash); a discard's sectors, and a failed
// write's (old data or new), become unknown.
func (q *extReq) writeDone(err error) {
	q.r.orc.EndWrite(q.w, err)
	q.finish(err, "ok")
}

// scenarioPatterns lists the patterns the scenario's steps write, in
// order of first use: the contents an outside write is recorded as by name.
func scenarioPatterns(sc *script.Scenario) []string {
	var names []string
	seen := map[string]bool{}
	for i := range sc.Steps {
		if p := sc.Steps[i].Pattern; p != "" && !seen[p] {
			seen[p] = true
			names = append(names, p)
		}
	}
	return names
}

// removed reports whether err is the ENXIO of a dm device removed under
// the I/O (it was queued on the suspended device when it went).
func removed(node dm.Node, err error) bool {
	md, ok := node.(*dm.MappedDevice)
	return ok && block.Errno(err) == syscall.ENXIO && md.Removed()
}

// Finish lets everything in flight complete, writes the footer and returns
// the report.
func (r *Session) Finish() *Report {
	w := r.w
	r.closePageCache()
	w.Run()
	if v := r.checkInvariants(); v != "" {
		r.report.Failures = append(r.report.Failures, Failure{Text: "end of scenario", Msg: v})
	}
	r.report.Coverage = r.inv.Coverage()
	if r.dumpDir != "" {
		for _, d := range r.ctl.Disks() {
			if err := dumpDisk(d, filepath.Join(r.dumpDir, d.Name()+".img")); err != nil {
				r.report.Failures = append(r.report.Failures, Failure{Msg: err.Error()})
			}
		}
	}
	r.report.Events = w.Steps()
	r.report.VirtualNS = int64(w.Now())
	r.report.Checks = r.orc.Checks
	// The footer carries the hash of everything before it.
	r.report.TraceHash = r.rec.Hash()
	r.rec.Write(record.Footer{Kind: "footer", Steps: w.Steps(), VirtualNS: int64(w.Now()), Draws: w.Draws(), Pass: r.report.Pass(), TraceHash: r.report.TraceHash})
	return r.report
}

func (r *Session) faultsActive() bool {
	// order-free: an any-match; Faulty.Rules has no side effect.
	for _, f := range r.faults {
		if len(f.Rules()) > 0 {
			return true
		}
	}
	return false
}

func (r *Session) step(st *script.Step, res *record.Result) string {
	switch st.Kind {
	case script.KDisk:
		m, err := block.NewMem(st.Dev, st.Size)
		if err != nil {
			return err.Error()
		}
		h := fnv.New64a()
		h.Write([]byte(st.Dev))
		f := block.WithFaults(m, rand.New(rand.NewPCG(r.w.Seed(), h.Sum64())))
		r.faults[st.Dev] = f
		r.logBlockErrors(f, st.Dev)
		var dev block.Device = f
		if r.tap != nil {
			name, tap := st.Dev, r.tap
			dev = block.WithTap(f, func(q block.Request) { tap(name, q) })
		}
		if _, err := r.ctl.AddDisk(dev, st.LBS); err != nil {
			return err.Error()
		}
		if st.Image != "" {
			return r.loadImage(st, m, res)
		}
	case script.KLvm:
		return r.lvmStep(st, res)
	case script.KDmsetup:
		cur := r.ctl.Log.Len()
		out := r.ctl.Dmsetup(st.Argv)
		logged := r.ctl.Log.Since(cur)
		exit := out.Exit
		res.Exit, res.Stdout, res.Stderr, res.Log = &exit, out.Stdout, out.Stderr, logged
		if out.Stuck != nil {
			// The simulator hung where the kernel would not return: no
			// expectation of a failed command may hide it.
			return fmt.Sprintf("the simulator is stuck: %v", out.Stuck)
		}
		return checkDmsetup(st, out, logged)
	case script.KRead, script.KWrite, script.KDiscard, script.KFlush:
		if st.Buffered {
			return r.bufferedWrite(st, res)
		}
		if msg, done := r.beforeDirect(st, res); done {
			return msg
		}
		return r.io(st, res)
	case script.KFsync:
		return r.fsyncStep(st, res)
	case script.KSync:
		return r.syncStep(res)
	case script.KWait:
		a := r.asyncs[st.Async]
		if a == nil {
			// The parser checks that an earlier step started it; that step
			// failed before its I/O was submitted (no such device).
			return fmt.Sprintf("wait %s: no I/O was started as %s (its step failed)", st.Async, st.Async)
		}
		if err := r.w.RunUntil("async I/O "+st.Async, func() bool { return a.done }); err != nil {
			return fmt.Sprintf("%v (is its device still suspended?)", err)
		}
		return r.finishIO(a, st, res)
	case script.KFault:
		f := r.faults[st.Dev]
		words := strings.Fields(st.Fault)
		if words[0] == "clear" {
			if len(words) == 1 {
				for _, rule := range f.Rules() {
					f.Clear(rule.Site)
				}
			} else {
				f.Clear(words[1])
			}
			return ""
		}
		rule, err := block.ParseRule(st.Fault)
		if err != nil {
			return err.Error()
		}
		if err := f.Set(rule); err != nil {
			return err.Error()
		}
	case script.KLog:
		lines := r.ctl.Log.Since(r.logCur)
		r.logCur = r.ctl.Log.Len()
		res.Log = lines
		return CheckLog(st, lines)
	case script.KRun:
		// What the kernel logged while the background work ran (a merge
		// invalidating another snapshot): the kernel executor reports it
		// for its run step too.
		cur := r.ctl.Log.Len()
		r.w.Run()
		res.Log = r.ctl.Log.Since(cur)
	case script.KOpen:
		return r.openStep(st, res)
	case script.KClose:
		h := r.held[st.Handle]
		if h == nil {
			return fmt.Sprintf("close: %s is not open (its open failed)", st.Handle)
		}
		h.Close()
		delete(r.held, st.Handle)
		res.Errno = "OK"
	}
	return ""
}

// openStep runs `open DEV as ID`: the scenario holds DEV open, counted in
// its open count, until `close ID`. A scenario names the device by path as
// a user does (/dev/mapper/DEV, or the disk's node), so a dm device libdm
// made no node for (never resumed, or removed) and an unknown name fail
// with ENOENT; a node whose device has no gendisk (resumed but no table
// ever loaded) fails with ENXIO.
func (r *Session) openStep(st *script.Step, res *record.Result) string {
	var h *dm.Handle
	var err error
	node := r.ctl.Node(st.Dev)
	md, isDM := node.(*dm.MappedDevice)
	switch {
	case node == nil:
		err = &block.Error{Dev: st.Dev, Op: "open", Errno: syscall.ENOENT, Err: fmt.Errorf("no disk or dm device named %s", st.Dev)}
	case isDM && !md.HasNode():
		err = &block.Error{Dev: st.Dev, Op: "open", Errno: syscall.ENOENT, Err: fmt.Errorf("no /dev/mapper/%s: libdm makes it when the device is first resumed", st.Dev)}
	default:
		h, err = r.ctl.Open(st.Dev, true)
	}
	if h != nil {
		r.held[st.Handle] = h
	}
	res.Errno = block.ErrnoName(block.Errno(err))
	return CheckOpen(st, err)
}

// CheckOpen checks an open step's expect= against the open's error (any
// executor); "" or the failure.
func CheckOpen(st *script.Step, err error) string {
	e := st.Expect
	if e.Errno != nil && block.Errno(err) != *e.Errno {
		return fmt.Sprintf("open %s: got %s, want %s (%v)", st.Dev, block.ErrnoName(block.Errno(err)), block.ErrnoName(*e.Errno), err)
	}
	if e.Errno == nil && err != nil {
		return fmt.Sprintf("open failed: %v", err)
	}
	return ""
}

func wantLines(what string, want, got []string) string {
	for _, w := range want {
		found := false
		for _, g := range got {
			if g == w {
				found = true
				break
			}
		}
		if !found {
			if len(got) == 0 {
				return fmt.Sprintf("%s: want line %q, got nothing", what, w)
			}
			return fmt.Sprintf("%s: want line %q, got:\n      %s", what, w, strings.Join(got, "\n      "))
		}
	}
	return ""
}

// CheckDmsetup checks a dmsetup step's assertions against what a dmsetup
// printed and the kernel logged (any executor); "" or the failure.
func CheckDmsetup(st *script.Step, stdout, stderr string, exit int, logged []string) string {
	return checkDmsetup(st, &dm.Result{Stdout: stdout, Stderr: stderr, Exit: exit}, logged)
}

// CheckLog checks a log step against the lines logged since the previous
// log step.
func CheckLog(st *script.Step, lines []string) string {
	if st.Expect.NoLog && len(lines) > 0 {
		return fmt.Sprintf("kernel log: want nothing new, got:\n      %s", strings.Join(lines, "\n      "))
	}
	return wantLines("kernel log", st.Expect.Log, lines)
}

func checkDmsetup(st *script.Step, out *dm.Result, logged []string) string {
	e := st.Expect
	if e.Exit != nil && out.Exit != *e.Exit {
		return fmt.Sprintf("exit status %d, want %d (stderr: %q)", out.Exit, *e.Exit, out.Stderr)
	}
	if e.Exit == nil && out.Exit != 0 && len(e.Stderr) == 0 {
		return fmt.Sprintf("dmsetup failed (exit %d): %s", out.Exit, strings.TrimSpace(out.Stderr))
	}
	if e.Stdout != nil && strings.TrimSuffix(out.Stdout, "\n") != *e.Stdout {
		return fmt.Sprintf("stdout %q, want %q", strings.TrimSuffix(out.Stdout, "\n"), *e.Stdout)
	}
	if m := checkStdoutParts(st, out.Stdout); m != "" {
		return m
	}
	if m := wantLines("stderr", e.Stderr, strings.Split(strings.TrimSuffix(out.Stderr, "\n"), "\n")); m != "" {
		return m
	}
	return wantLines("kernel log", e.Log, logged)
}

func (r *Session) io(st *script.Step, res *record.Result) string {
	node := r.ctl.Node(st.Dev)
	if node == nil {
		return fmt.Sprintf("no disk or device named %s", st.Dev)
	}
	a := &asyncIO{step: st, node: node, sector: uint64(st.Off / block.SectorSize)}
	var op dm.Op
	var b *dm.Bio
	end := func(err error) { a.done, a.err = true, err }
	switch st.Kind {
	case script.KRead:
		op = dm.OpRead
		a.data = r.ioBuffer(st.Len, st.Async != "")
		clear(a.data)
		a.expect = r.orc.BeginRead(node, st.Off, st.Len)
		b = dm.NewBio(op, uint64(st.Off/block.SectorSize), a.data, false, end)
	case script.KWrite:
		op = dm.OpWrite
		a.isW = true
		a.data = r.ioBuffer(st.Len, st.Async != "")
		if st.DataFile != "" {
			if err := r.readData(st, a.data); err != nil {
				r.ioBuf = a.data[:0]
				return err.Error()
			}
			if !r.orc.HasPatterns() {
				r.orc.SetPatterns(scenarioPatterns(r.sc))
			}
			a.write = r.orc.BeginWriteData(node, st.Off, a.data)
			res.Data = record.DataHash(a.data)
		} else {
			pattern.Fill(a.data, st.Pattern, st.Off)
			a.write = r.orc.BeginWrite(node, st.Off, st.Len, st.Pattern)
		}
		b = dm.NewBio(op, uint64(st.Off/block.SectorSize), a.data, st.FUA, end)
	case script.KDiscard:
		b = dm.NewBio(dm.OpDiscard, uint64(st.Off/block.SectorSize), nil, false, end)
		b.Len = uint64(st.Len)
		a.isW = true
		a.write = r.orc.BeginWrite(node, st.Off, st.Len, pattern.Zero)
	case script.KFlush:
		b = dm.NewBio(dm.OpFlush, 0, nil, false, end)
	}
	if md, ok := node.(*dm.MappedDevice); ok {
		md.SubmitUser(b)
	} else {
		node.Submit(b)
	}
	if st.Async != "" {
		r.asyncs[st.Async] = a
		r.ios = append(r.ios, a)
		return ""
	}
	if err := r.w.RunUntil(fmt.Sprintf("%s on %s", st.Kind, st.Dev), func() bool { return a.done }); err != nil {
		r.ios = append(r.ios, a)
		// The I/O is still queued and holds its buffer: not reused.
		return fmt.Sprintf("%v: the I/O never completed (a suspended device queues I/O until resume: use async=ID and wait ID)", err)
	}
	msg := r.finishIO(a, st, res)
	if a.data != nil {
		r.ioBuf = a.data[:0] // completed: nothing holds it any more
	}
	return msg
}

// ioBuffer returns a buffer of n bytes for a scenario I/O step: the
// session's reusable one for a step that completes before the next (a
// gen --ops 1000 scenario allocated 19 MB of buffers otherwise), a new one
// for an async step, whose buffer lives until its wait. Its content is
// whatever it held.
func (r *Session) ioBuffer(n int64, async bool) []byte {
	if async || n > maxReusedIOBuffer {
		return make([]byte, n)
	}
	if int64(cap(r.ioBuf)) < n {
		r.ioBuf = make([]byte, n)
	}
	b := r.ioBuf[:n]
	r.ioBuf = nil // taken until the step completes
	return b
}

// maxReusedIOBuffer bounds the buffer a session keeps between steps.
const maxReusedIOBuffer = 4 << 20

func (r *Session) finishIO(a *asyncIO, st *script.Step, res *record.Result) string {
	io := a.step
	res.Errno = block.ErrnoName(block.Errno(a.err))
	if a.isW {
		if io.Kind == script.KDiscard && a.err == nil {
			// Discarded sectors read back as zeros only where the device
			// zeroes them; the model cannot know, so they become unknown.
			r.orc.EndWrite(a.write, syscall.EIO)
		} else {
			r.orc.EndWrite(a.write, a.err)
		}
	}
	out := IOOutcome{Err: a.err}
	if io.Kind == script.KRead {
		if a.err == nil && r.rec.On() { // only the recording shows it
			res.Data = record.DataHash(a.data)
		}
		if err := r.orc.CheckRead(a.expect, a.data, a.err, r.faultsActive()); err != nil {
			out.Oracle = err.Error()
		}
		out.Verify = func(p string) error { return pattern.Verify(a.data, p, io.Off) }
	}
	return CheckIO(io, st, out)
}

// Replay re-runs a recording in process, with its recorded choices forced,
// and compares the new recording with it line by line. Steps, outside
// requests (arrivals, with their data) and settle points are replayed in
// their recorded order, so a live or vm session replays without its
// clients. It returns the new report and a description of the first
// divergence ("" if none). A disk step with image= reads the file its
// recorded result names; a missing file or one whose sha256 differs from
// the recorded one is an error.
func Replay(rec *record.Recording, opts Options) (*Report, string, error) {
	h := &rec.Header
	if h.Semantics != "mainline" && h.Semantics != "seed" {
		return nil, "", fmt.Errorf("recording line 1: semantics %q: want mainline or seed", h.Semantics)
	}
	if !slices.Contains(record.Executors, h.Executor) {
		return nil, "", fmt.Errorf("recording line 1: executor %q: want %s", h.Executor, strings.Join(record.Executors, ", "))
	}
	sc, err := script.Parse(h.Scenario, h.Text)
	if err != nil {
		return nil, "", fmt.Errorf("recording's scenario: %w", err)
	}
	seed := h.Seed
	cmp := &lineComparer{recorded: rec.Lines}
	opts.Seed = &seed
	opts.Semantics = h.Semantics
	if _, err := profile.Lookup(h.Kernel); err != nil {
		return nil, "", fmt.Errorf("recording line 1: %w", err)
	}
	opts.Kernel = h.Kernel
	opts.Record = cmp
	opts.Tape = record.NewTape(rec)
	opts.Executor = h.Executor
	opts.replay = &replayOptions{headerDir: h.Dir, version: h.FormatVersion, blobs: h.Blobs}
	s := NewSession(sc, opts)
	guard := &replayGuard{s: s}
	var images map[int]*record.Result // op index -> its result, for disks with images
	imageDirOK := opts.AllowImagesOutside
	opened := map[uint64]OpenID{} // recorded open ID -> this replay's
	for n, line := range rec.Lines {
		if cmp.diverged {
			break // the first divergence is the answer
		}
		var k struct {
			Kind string `json:"kind"`
		}
		if err := json.Unmarshal([]byte(line), &k); err != nil {
			return nil, "", fmt.Errorf("recording line %d: %v", n+1, err)
		}
		switch k.Kind {
		case "op":
			var op record.Op
			if err := json.Unmarshal([]byte(line), &op); err != nil {
				return nil, "", fmt.Errorf("recording line %d: %v", n+1, err)
			}
			if op.I != s.opIndex {
				return nil, "", fmt.Errorf("recording line %d: op i %d: want %d (ops are numbered in order from 0)", n+1, op.I, s.opIndex)
			}
			if op.Guest {
				// Performed by a guest: its NBD requests follow as
				// arrivals; the op itself is copied.
				op.T = int64(s.w.Now())
				s.opIndex++
				s.copyLine(op)
				continue
			}
			var st *script.Step
			if op.I < len(sc.Steps) && sc.Steps[op.I].Line == op.Line {
				st = &sc.Steps[op.I]
			} else {
				// A step added during a live session: parse it in the
				// context of everything before it.
				st, err = sc.ParseMore(op.Line, op.Text)
				if err != nil {
					return nil, "", fmt.Errorf("recording line %d: %v", n+1, err)
				}
			}
			if st.Kind == script.KDisk && st.Image != "" {
				if !imageDirOK {
					if err := replayImageDir(h); err != nil {
						return nil, "", fmt.Errorf("recording line 1: %w", err)
					}
					imageDirOK = true
				}
				if images == nil {
					images = imageResults(rec.Lines)
				}
				if err := s.expectImage(st, op.I, images); err != nil {
					return nil, "", fmt.Errorf("recording line %d: %w", n+1, err)
				}
			}
			if err := guard.step(st); err != nil {
				return nil, "", fmt.Errorf("recording line %d: %w", n+1, err)
			}
			if opts.BeforeStep != nil {
				opts.BeforeStep(st, s)
			}
			s.Exec(st)
			guard.stepDone(st, s.last)
			if s.imageErr != nil {
				return nil, "", fmt.Errorf("recording line %d: %w", n+1, s.imageErr)
			}
		case "arrival":
			var a record.Arrival
			if err := json.Unmarshal([]byte(line), &a); err != nil {
				return nil, "", fmt.Errorf("recording line %d: %v", n+1, err)
			}
			op, ok := parseOp(a.Op)
			if !ok {
				return nil, "", fmt.Errorf("recording line %d: unknown op %q", n+1, a.Op)
			}
			var node dm.Node // where it goes, for its length
			if a.Open == 0 {
				node = s.ctl.Node(a.Dev)
			} else if hd := s.opens[opened[a.Open]]; hd != nil && !hd.Gone() {
				node = hd.Node()
			}
			done, err := guard.arrival(&a, op, node)
			if err != nil {
				return nil, "", fmt.Errorf("recording line %d: %w", n+1, err)
			}
			data := a.Data
			switch {
			case op == dm.OpRead:
				data = make([]byte, a.Len)
			case a.Pattern != "":
				data = make([]byte, a.Len)
				pattern.Fill(data, a.Pattern, a.Off)
			case a.Blob != "":
				if data, err = rec.Blob(a.Blob); err != nil {
					return nil, "", fmt.Errorf("recording line %d: %w", n+1, err)
				}
				if int64(len(data)) != a.Len {
					return nil, "", fmt.Errorf("recording line %d: blob %s holds %d bytes for a write of %d", n+1, a.Blob, len(data), a.Len)
				}
			}
			var id OpenID
			if a.Open != 0 {
				var ok bool
				if id, ok = opened[a.Open]; !ok {
					return nil, "", fmt.Errorf("recording line %d: arrival through open %d, which the recording never opened", n+1, a.Open)
				}
			}
			switch {
			case op == dm.OpDiscard:
				s.ExternalDiscard(a.Dev, id, a.Off, a.Len, done)
			case id != 0:
				s.ExternalVia(id, op, a.Off, data, a.FUA, done)
			default:
				s.External(a.Dev, op, a.Off, data, a.FUA, done)
			}
		case "open":
			var o record.Open
			if err := json.Unmarshal([]byte(line), &o); err != nil {
				return nil, "", fmt.Errorf("recording line %d: %v", n+1, err)
			}
			var id OpenID
			if o.Uncounted {
				id, _ = s.OpenUncounted(o.Dev)
			} else {
				id, _ = s.Open(o.Dev) // a failure is recorded, and compared
			}
			opened[o.ID] = id // 0 if it failed here: the diff shows where
		case "close":
			var c record.Close
			if err := json.Unmarshal([]byte(line), &c); err != nil {
				return nil, "", fmt.Errorf("recording line %d: %v", n+1, err)
			}
			id, ok := opened[c.ID]
			if !ok {
				return nil, "", fmt.Errorf("recording line %d: close of open %d, which the recording never opened", n+1, c.ID)
			}
			if id != 0 {
				if err := s.CloseOpen(id); err != nil {
					return nil, "", fmt.Errorf("recording line %d: %v", n+1, err)
				}
			}
		case "settle":
			s.Settle()
		case "result":
			var res record.Result
			if err := json.Unmarshal([]byte(line), &res); err != nil {
				return nil, "", fmt.Errorf("recording line %d: %v", n+1, err)
			}
			if res.Guest {
				res.T = int64(s.w.Now())
				if res.Check != "ok" {
					s.report.Failures = append(s.report.Failures, Failure{Line: res.Line, Msg: res.Check})
				}
				s.report.Steps++
				s.copyLine(res)
			}
		}
	}
	rep := s.Finish()
	return rep, cmp.diff(3), nil
}

func parseOp(s string) (dm.Op, bool) {
	for _, o := range []dm.Op{dm.OpRead, dm.OpWrite, dm.OpFlush, dm.OpDiscard} {
		if o.String() == s {
			return o, true
		}
	}
	return 0, false
}

// dumpDisk writes dev's content to path as a sparse file.
func dumpDisk(dev block.Device, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(dev.Size()); err != nil {
		return err
	}
	extents := []block.Extent{{Off: 0, Len: dev.Size()}}
	if m, ok := dev.(block.Mapper); ok {
		if extents, err = m.Map(0, dev.Size()); err != nil {
			return err
		}
	}
	buf := make([]byte, 1<<20)
	for _, e := range extents {
		if e.Hole {
			continue
		}
		for off := e.Off; off < e.Off+e.Len; {
			n := min(int64(len(buf)), e.Off+e.Len-off)
			if _, err := dev.ReadAt(buf[:n], off); err != nil {
				return fmt.Errorf("dump %s: %w", dev.Name(), err)
			}
			if allZero(buf[:n]) { // leave a hole
				off += n
				continue
			}
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				return err
			}
			off += n
		}
	}
	return f.Close()
}

// lvmStep repeats the device-mapper operations an lvm step performed on a
// real kernel (Options.LVM): dmsetup commands and LVM's zeroing write. Its
// result is each operation's outcome and the kernel log; LVM's own output
// and exit status are the kernel run's, checked there.
func (r *Session) lvmStep(st *script.Step, res *record.Result) string {
	lines, ok := r.lvm[st.Line]
	if !ok {
		return "lvm lines run on the kernel executor: the simulator repeats the device-mapper operations LVM performed there (snaplab run -executor kernel -compare sim), or run snaplab import lvm on LVM's debug log for a scenario of them"
	}
	cur := r.ctl.Log.Len()
	res.DMLines = lines
	for _, l := range lines {
		sub, err := r.sc.ParseMore(st.Line, l)
		if err != nil {
			return fmt.Sprintf("lvm operation %q: %v", l, err)
		}
		outcome := "ok"
		if len(sub.Argv) > 0 && sub.Argv[0] == "status" {
			// LVM polls a merge's progress a polling interval (a second)
			// apart: the background work the simulator has queued is done
			// by then.
			r.w.Run()
		}
		switch sub.Kind {
		case script.KDmsetup:
			out := r.ctl.Dmsetup(sub.Argv)
			if out.Stuck != nil {
				return fmt.Sprintf("the simulator is stuck in %q: %v", l, out.Stuck)
			}
			outcome = lvmlog.Outcome(out.Exit, out.Stderr)
		case script.KWrite:
			var wr record.Result
			if msg := r.io(sub, &wr); msg != "" {
				outcome = msg
			} else if wr.Errno != "" && wr.Errno != "OK" {
				outcome = wr.Errno
			}
		default:
			return fmt.Sprintf("lvm operation %q: not a dmsetup or write line", l)
		}
		res.DM = append(res.DM, lvmlog.LineOp(l)+": "+outcome)
	}
	res.Log = r.ctl.Log.Since(cur)
	return wantLines("kernel log", st.Expect.Log, res.Log)
}
