// Package guestexec is the guest executor: it runs scenarios in a booted
// QEMU guest, in one of two modes that share one scenario loop.
//
//   - GuestIO (the `vm` executor): the simulator runs on the host
//     (vmtest/live) and the guest does the I/O. Control-plane lines
//     (dmsetup, fault, log, run, open, close) execute in the simulator.
//     Every disk and dm device a scenario's I/O touches is exported over
//     NBD and hot-plugged into the guest as a virtio disk whose serial is
//     the device's name.
//   - GuestKernel (the `kernel` executor): the guest's real kernel runs
//     dm-snapshot. Disks stay simulated (sparse memory disks served over
//     NBD, so faults on them reach the guest's kernel as real I/O errors);
//     everything else is the guest's: control-plane lines run as Debian's
//     real `dmsetup` (shipped in the initramfs, run with DM_DISABLE_UDEV=1
//     so libdm makes /dev/mapper nodes itself), reads and writes run on
//     /dev/mapper/NAME or the disk, and the kernel's log lines are read
//     from /dev/kmsg. Device names in tables are rewritten for the guest:
//     a disk's name becomes its /dev/vdX (found by virtio serial), a dm
//     device's name /dev/mapper/NAME. Disks are plugged in declaration
//     order, so they are 254:0, 254:16, ... as in the simulator.
//
// In both modes reads, writes and flushes run in the guest through the
// agent with O_DIRECT, and discards as ioctl(BLKDISCARD) (the guest's
// virtio disks pass them on as NBD_CMD_TRIM); expectations are checked on the guest's results
// (errno, data) by run.CheckIO, as on the simulator, and the simulator's
// oracle checks every read that reaches it at the NBD level as well.
//
// One booted guest serves many scenarios in turn: a scenario's disks are
// unplugged, and in kernel mode its dm devices removed and its opens
// closed, when it ends. A run's recording has the guest's steps (copied by
// replay) and every NBD request in arrival order with its data, so
// `snaplab replay` reproduces it in process, without QEMU.
package guestexec

import (
	"context"
	"errors"
	"fmt"
	"time"

	"snaplab/sim/block"
	"snaplab/sim/pattern"
	"snaplab/sim/profile"
	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/guest"
	"snaplab/vmtest/guest/proto"
	"snaplab/vmtest/live"
	"snaplab/vmtest/machine"
)

// Mode is what the guest does for a scenario.
type Mode int

const (
	// GuestIO: the guest does the I/O on the simulator's devices.
	GuestIO Mode = iota
	// GuestKernel: the guest's real kernel runs device-mapper.
	GuestKernel
)

// String is the executor's name: "vm" or "kernel".
func (m Mode) String() string {
	if m == GuestKernel {
		return "kernel"
	}
	return "vm"
}

// ParseMode maps an executor name ("vm", "kernel") to its mode.
func ParseMode(name string) (Mode, error) {
	switch name {
	case "vm":
		return GuestIO, nil
	case "kernel":
		return GuestKernel, nil
	}
	return 0, fmt.Errorf("guest executor %q: want vm or kernel", name)
}

// ImageOptions are what a guest of mode m needs on top of the default
// image: in kernel mode, dmsetup, the dm-zero and log-writes targets
// (scenarios/kernel's log-writes spec), Debian's lvm2
// (LVMConf), and what the
// scripts of `snaplab export --format sh` run with (ScriptTools, loop
// devices, the dm-delay target).
func ImageOptions(m Mode) []guest.Option {
	if m == GuestKernel {
		opts := []guest.Option{guest.WithExecutable("/usr/sbin/dmsetup"), guest.WithModules("dm_zero", "loop", "dm_delay", "dm_log_writes"),
			guest.WithExecutable("/usr/sbin/lvm"), guest.WithFile("/etc/lvm/lvm.conf", []byte(LVMConf), 0o644)}
		for _, t := range ScriptTools {
			opts = append(opts, guest.WithExecutable(t))
		}
		return opts
	}
	return nil
}

// ScriptTools are the host programs a kernel-mode guest carries for
// exported scripts (sim/shexport): bash and the coreutils and util-linux
// programs the scripts call, from Debian's packages (scripts/deps.sh).
var ScriptTools = []string{"/usr/bin/bash", "/usr/bin/cat", "/usr/bin/dd", "/usr/bin/sha256sum", "/usr/bin/base64",
	"/usr/bin/truncate", "/usr/bin/mktemp", "/usr/bin/sync", "/usr/bin/sleep", "/usr/bin/stat", "/usr/bin/grep",
	"/usr/bin/rm", "/usr/bin/id", "/usr/sbin/losetup", "/usr/sbin/blkdiscard"}

// Executor runs scenarios on a booted guest (a run.Executor). The guest
// must have hot-plug slots (q35) and a ready agent, and in kernel mode be
// built with ImageOptions(GuestKernel).
type Executor struct {
	vm   machine.Machine
	mode Mode
	// Listen, when set, is the host the NBD server of each scenario
	// listens on over TCP (port chosen), for a guest on another host;
	// "" serves on a private unix socket.
	Listen string
	// IOTimeout bounds one guest I/O step (scaled by the VM's slowdown).
	IOTimeout time.Duration
	// BeforeTeardown, when set, runs after the last step while the
	// scenario's disks are still plugged in (for checks beyond the
	// scenario language: buffered I/O, QMP events).
	BeforeTeardown func(ctx context.Context) error

	cursor uint64                 // the kernel log read so far
	rl     [len(rlSites)]rlWindow // the guest kernel's log rate limits (ratelimit.go)
	runs   uint64                 // scenarios run: names the agent's handles apart
}

var _ run.Executor = (*Executor)(nil)

// New returns an executor of mode m on vm.
func New(vm machine.Machine, m Mode) *Executor {
	return &Executor{vm: vm, mode: m, IOTimeout: 3 * time.Second}
}

// Name is the mode's name: "vm" or "kernel".
func (e *Executor) Name() string { return e.mode.String() }

// KernelProfile is the sim/profile name of the guest's kernel in kernel
// mode (the newest profile not newer than its release), for the
// simulator a run is compared with (run.Compare); "" in vm mode, where the
// simulator is the device-mapper.
func (e *Executor) KernelProfile() string {
	if e.mode != GuestKernel || e.vm == nil {
		return ""
	}
	return profile.ForVersion(e.vm.KernelRelease()).Name
}

// Supported reports whether sc can run in the guest: every step kind is;
// in kernel mode not the seed semantics, which no kernel has.
func (e *Executor) Supported(sc *script.Scenario) error {
	if e.mode == GuestKernel && sc.Semantics == "seed" {
		return fmt.Errorf("seed semantics: no kernel has the seed patch")
	}
	for _, st := range sc.Steps {
		if st.DataFile != "" {
			return fmt.Errorf("line %d: a write with data= runs on the sim executor only (the guest's agent writes patterns)", st.Line)
		}
	}
	if e.mode == GuestIO {
		for _, st := range sc.Steps {
			if st.Kind == script.KLvm {
				return fmt.Errorf("line %d: lvm lines run on the kernel executor (the vm executor's device-mapper is the simulator)", st.Line)
			}
		}
	}
	return nil
}

// plane is where a mode runs a scenario's non-I/O lines and how the guest
// reaches its devices.
type plane interface {
	// control runs a step that is not guest I/O; msg is its failure.
	control(ctx context.Context, st *script.Step) (msg string, err error)
	// target makes dev reachable in the guest (plugging it in if need
	// be) and says how the agent names it: a serial or a path.
	target(ctx context.Context, dev string) (serial, path string, err error)
	// submitted waits, after an asynchronous I/O was started, until it is
	// under way, so the next step cannot overtake it; msg if it is not.
	submitted(io *guestIO, before int) (msg string)
	// arrivals counts the NBD requests that reached the devices io may
	// touch, for submitted.
	arrivals(io *script.Step) int
	// ioLog is what the kernel logged while an I/O ran, for its result.
	ioLog(ctx context.Context) ([]string, error)
	// teardown leaves the guest clean for the next scenario: before the
	// session closes (held opens closed, dm devices removed) and after
	// (devices unplugged, once closing the session failed the requests
	// still queued on suspended devices, which the guest would wait for).
	teardown(ctx context.Context, closed bool) error
}

// scenarioRun is one scenario on the guest.
type scenarioRun struct {
	e     *Executor
	lx    *live.Exported
	sc    *script.Scenario
	opts  run.Options
	p     plane
	async map[string]*guestIO
	bufs  []bufFile // the scenario's buffered files, in opening order (buffered.go)
}

type guestIO struct {
	idx  int
	st   *script.Step
	done chan struct{}
	resp proto.Response
	err  error
}

// Run executes sc. The report is the session's; err is an infrastructure
// failure (QEMU, NBD, the agent), not a failed assertion.
func (e *Executor) Run(ctx context.Context, sc *script.Scenario, opts run.Options) (*run.Report, error) {
	if err := e.Supported(sc); err != nil {
		return nil, err
	}
	opts.Executor = e.mode.String()
	if k := e.KernelProfile(); k != "" {
		// The guest's kernel decides; its expectations are the line's
		// KEY@k ones where it has them.
		opts.Kernel = k
		sc = sc.ForKernel(k)
	}
	lx, err := live.StartExportedOn(ctx, sc, opts, e.Listen)
	if err != nil {
		return nil, err
	}
	e.runs++
	x := &scenarioRun{e: e, lx: lx, sc: sc, opts: opts, async: map[string]*guestIO{}}
	if e.mode == GuestKernel {
		x.p, err = newKernelPlane(ctx, x)
	} else {
		x.p, err = newSimPlane(ctx, x)
	}
	if err == nil {
		err = x.steps(ctx)
	}
	if err == nil && e.BeforeTeardown != nil {
		err = e.BeforeTeardown(ctx)
	}
	// Let outstanding guest I/O finish or fail, then tear down: closing
	// the session fails requests still queued on suspended devices.
	for _, g := range x.async {
		select {
		case <-g.done:
		case <-time.After(e.vm.Scale(e.IOTimeout)):
		}
	}
	if terr := x.closeBuffered(ctx); terr != nil && err == nil {
		err = terr
	}
	if x.p != nil {
		if terr := x.p.teardown(ctx, false); terr != nil && err == nil {
			err = terr
		}
	}
	rep := lx.Close()
	if x.p != nil {
		if terr := x.p.teardown(ctx, true); terr != nil && err == nil {
			err = terr
		}
	}
	sctx, cancel := context.WithTimeout(ctx, e.vm.Scale(5*time.Second))
	defer cancel()
	if serr := lx.Shutdown(sctx); serr != nil && err == nil {
		err = serr
	}
	return rep, err
}

// steps runs the scenario's steps until one fails (unless KeepGoing) or
// the infrastructure does (err).
func (x *scenarioRun) steps(ctx context.Context) error {
	for i := range x.sc.Steps {
		st := &x.sc.Steps[i]
		if x.opts.BeforeStep != nil {
			if err := x.session(func(s *run.Session) { x.opts.BeforeStep(st, s) }); err != nil {
				return err
			}
		}
		var msg string
		var err error
		switch st.Kind {
		case script.KRead, script.KWrite, script.KFlush, script.KDiscard, script.KFsync, script.KSync, script.KDmsetup, script.KLvm:
			// Steps that may log rate-limited lines (ratelimit.go).
			err = x.e.gate(ctx)
		}
		if err != nil {
			return fmt.Errorf("line %d: %w", st.Line, err)
		}
		switch st.Kind {
		case script.KRead, script.KWrite, script.KFlush, script.KDiscard:
			msg, err = x.io(ctx, i, st)
		case script.KFsync, script.KSync:
			msg, err = x.syncStep(ctx, st)
		case script.KWait:
			var idx int
			if idx, err = x.guestOp(st); err == nil {
				msg, err = x.finish(ctx, x.async[st.Async], st, idx)
			}
		default:
			msg, err = x.p.control(ctx, st)
		}
		if err != nil {
			return fmt.Errorf("line %d: %w", st.Line, err)
		}
		if msg != "" && !x.opts.KeepGoing {
			return nil
		}
	}
	return nil
}

// session runs fn on the live session; an error means the session is
// closed under the executor (an infrastructure failure).
func (x *scenarioRun) session(fn func(s *run.Session)) error {
	if err := x.lx.Session(fn); err != nil {
		return fmt.Errorf("the simulator's session: %w", err)
	}
	return nil
}

// exec runs st in the simulator and records it.
func (x *scenarioRun) exec(st *script.Step) (msg string, err error) {
	err = x.session(func(s *run.Session) {
		msg = s.Exec(st)
		s.Settle()
	})
	return msg, err
}

// guestOp records that the guest starts step st; its index is for
// guestResult.
func (x *scenarioRun) guestOp(st *script.Step) (idx int, err error) {
	err = x.session(func(s *run.Session) { idx = s.GuestOp(st) })
	return idx, err
}

// guestResult records the guest's result of step idx after the NBD
// traffic it caused settled in the simulator.
func (x *scenarioRun) guestResult(idx int, st *script.Step, res record.Result, msg string) error {
	return x.session(func(s *run.Session) {
		s.Settle()
		s.GuestResult(idx, st, res, msg)
	})
}

// io starts an I/O step in the guest and, unless it is asynchronous,
// finishes it.
func (x *scenarioRun) io(ctx context.Context, i int, st *script.Step) (msg string, err error) {
	serial, path, err := x.p.target(ctx, st.Dev)
	if err != nil {
		return "", err
	}
	before := x.p.arrivals(st)
	verify := st.Expect.Data
	if st.Async != "" {
		// An asynchronous read is checked by its wait step.
		for _, w := range x.sc.Steps[i+1:] {
			if w.Kind == script.KWait && w.Async == st.Async {
				verify = w.Expect.Data
			}
		}
	}
	g, err := x.start(ctx, st, serial, path, verify)
	if err != nil {
		return "", err
	}
	if st.Async == "" {
		return x.finish(ctx, g, st, g.idx)
	}
	x.async[st.Async] = g
	// Recorded as submitted, as the simulator records it; its outcome
	// belongs to the wait step.
	if err := x.guestResult(g.idx, st, record.Result{}, ""); err != nil {
		return "", err
	}
	if msg = x.p.submitted(g, before); msg != "" {
		err = x.guestResult(g.idx, st, record.Result{}, msg)
	}
	return msg, err
}

// start sends the step's request to the agent.
func (x *scenarioRun) start(ctx context.Context, st *script.Step, serial, path, verify string) (*guestIO, error) {
	g := &guestIO{st: st, done: make(chan struct{})}
	var err error
	if g.idx, err = x.guestOp(st); err != nil {
		return nil, err
	}
	var bufHandle string
	if st.Buffered {
		if bufHandle, err = x.bufOpen(st.Dev); err != nil {
			return nil, err
		}
	}
	agent := x.e.vm.Agent()
	var wait int64 // for a disk just plugged in to appear
	if x.e.mode == GuestIO {
		wait = x.e.vm.Scale(2 * time.Second).Milliseconds()
	}
	go func() {
		defer close(g.done)
		switch st.Kind {
		case script.KRead:
			g.resp, g.err = agent.Read(ctx, proto.ReadReq{Serial: serial, Path: path, Off: st.Off, Len: st.Len, Direct: true, WaitMS: wait, Pattern: verify})
		case script.KWrite:
			req := proto.WriteReq{Serial: serial, Path: path, Off: st.Off, Len: st.Len, Pattern: st.Pattern,
				Direct: true, FUA: st.FUA, WaitMS: wait}
			if st.Buffered {
				req.Direct, req.Handle = false, bufHandle
			}
			g.resp, g.err = agent.Write(ctx, req)
		case script.KFlush:
			g.resp, g.err = agent.Fsync(ctx, serial, path)
		case script.KDiscard:
			g.resp, g.err = agent.Discard(ctx, proto.DiscardReq{Serial: serial, Path: path, Off: st.Off, Len: st.Len, WaitMS: wait})
		}
	}()
	return g, nil
}

// finish waits for a guest I/O, checks the step's expectations (st is the
// I/O step or its wait step) on the guest's answer and records the result.
func (x *scenarioRun) finish(ctx context.Context, g *guestIO, st *script.Step, idx int) (msg string, err error) {
	res := record.Result{}
	if g == nil {
		// The parser checks that an earlier step started it; that step
		// failed before its I/O reached the guest.
		msg = fmt.Sprintf("wait %s: no I/O was started as %s (its step failed)", st.Async, st.Async)
		return msg, x.guestResult(idx, st, res, msg)
	}
	select {
	case <-g.done:
		out, infra := outcome(g)
		if infra != nil {
			return "", infra
		}
		res.Errno = block.ErrnoName(block.Errno(out.Err))
		if g.resp.SHA256 != "" {
			res.Data = record.DataHashOf(g.resp.SHA256)
		}
		msg = run.CheckIO(g.st, st, out)
	case <-time.After(x.e.vm.Scale(x.e.IOTimeout)):
		msg = fmt.Sprintf("%s on %s: the guest's I/O did not complete (a suspended device queues I/O until resume: use async=ID and wait ID)", g.st.Kind, g.st.Dev)
	}
	if res.Log, err = x.p.ioLog(ctx); err != nil {
		return "", err
	}
	if msg == "" {
		msg = run.CheckLog(st, res.Log) // log= on the I/O step
	}
	return msg, x.guestResult(idx, st, res, msg)
}

// outcome is how the agent says a guest I/O came back. An error that is
// not the I/O failing (the agent unreachable, the context done) is infra.
func outcome(g *guestIO) (out run.IOOutcome, infra error) {
	if g.err != nil {
		var oe *proto.OpError
		if !errors.As(g.err, &oe) {
			return out, fmt.Errorf("%s on %s in the guest: %w", g.st.Kind, g.st.Dev, g.err)
		}
		errno := oe.Errno
		if g.resp.Errno != "" && g.resp.Errno != "OK" {
			if e, err := block.ParseErrno(g.resp.Errno); err == nil {
				errno = e
			}
		}
		if errno == 0 {
			errno = block.Errno(g.err)
		}
		out.Err = &block.Error{Dev: g.st.Dev, Op: string(g.st.Kind), Off: g.st.Off, Len: g.st.Len, Errno: errno, Err: g.err}
	}
	resp := g.resp
	out.Verify = func(string) error {
		v := resp.Verify
		if v == nil {
			return errors.New("the agent returned no verdict")
		}
		if !v.OK {
			return &pattern.Mismatch{Off: v.Off, Want: v.Want, Got: v.Got, Looks: v.Looks}
		}
		return nil
	}
	return out, nil
}

// Exercises reports whether the executor of mode m runs sc and sc does
// I/O in the guest (a read, write or flush): the library scenarios that
// test the guest path rather than only the simulator behind it.
func Exercises(m Mode, sc *script.Scenario) bool {
	if (&Executor{mode: m}).Supported(sc) != nil {
		return false
	}
	for _, st := range sc.Steps {
		switch st.Kind {
		case script.KRead, script.KWrite, script.KFlush:
			return true
		}
	}
	return false
}
