// Package vmexec is the `vm` executor: it runs the same scenarios as the
// sim executor, with a real Linux guest doing the I/O.
//
// The simulator runs on the host (vmtest/live). Control-plane lines
// (dmsetup, fault, log, run) execute in the simulator. Every disk and dm
// device a scenario's I/O touches is exported over NBD (vmtest/nbd) and
// hot-plugged into the guest as a virtio disk whose serial is the device's
// name; reads, writes and flushes run in the guest through the agent with
// O_DIRECT. Expectations are checked on the guest's results (errno, data);
// the simulator's oracle checks every read at the NBD level as well.
//
// One booted guest serves many scenarios in turn: a scenario's disks are
// unplugged when it ends. A run's recording has the guest's steps (copied
// by replay) and every NBD request in arrival order with its data, so
// `snaplab replay` reproduces it in process, without QEMU.
package vmexec

import (
	"context"
	"fmt"
	"sort"
	"syscall"
	"time"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/pattern"
	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/guest/proto"
	"snaplab/vmtest/live"
	"snaplab/vmtest/nbd"
	"snaplab/vmtest/qemu"
)

// Executor runs scenarios on a booted guest.
type Executor struct {
	vm *qemu.VM
	// IOTimeout bounds one guest I/O step (scaled by the VM's slowdown).
	IOTimeout time.Duration
	// BeforeTeardown, when set, runs after the last step while the
	// scenario's disks are still plugged in (for checks beyond the
	// scenario language: buffered I/O, QMP events).
	BeforeTeardown func(ctx context.Context) error
}

// New returns an executor using vm, which must be booted with hot-plug
// slots (q35) and a ready agent.
func New(vm *qemu.VM) *Executor { return &Executor{vm: vm, IOTimeout: 3 * time.Second} }

// Supported reports whether the vm executor can run sc: every step kind but
// discard (the agent has no BLKDISCARD) is supported.
func Supported(sc *script.Scenario) error {
	for _, st := range sc.Steps {
		if st.Kind == script.KDiscard {
			return fmt.Errorf("line %d: discard is not supported by the vm executor", st.Line)
		}
	}
	return nil
}

type guestIO struct {
	idx  int
	st   *script.Step
	done chan struct{}
	resp proto.Response
	err  error
}

// Run executes sc. The report is the session's; err is an infrastructure
// failure (QEMU, NBD), not a failed assertion.
func (e *Executor) Run(ctx context.Context, sc *script.Scenario, opts run.Options) (*run.Report, error) {
	if err := Supported(sc); err != nil {
		return nil, err
	}
	opts.Executor = "vm"
	lx, err := live.StartExported(ctx, sc, opts)
	if err != nil {
		return nil, err
	}
	d, srv, sock := lx.Driver, lx.Server, lx.Socket
	x := &scenarioRun{e: e, d: d, srv: srv, sock: sock, attached: map[string]bool{}, async: map[string]*guestIO{}, ioDevs: map[string]bool{}}
	for _, st := range sc.Steps {
		switch st.Kind {
		case script.KRead, script.KWrite, script.KFlush:
			x.ioDevs[st.Dev] = true
		}
	}
	failed, infraErr := x.steps(ctx, sc)
	if infraErr == nil && !failed && e.BeforeTeardown != nil {
		infraErr = e.BeforeTeardown(ctx)
	}
	// Let outstanding guest I/O finish or fail, then tear down: closing the
	// session fails requests still queued on suspended devices.
	for _, g := range x.async {
		select {
		case <-g.done:
		case <-time.After(e.vm.Scale(e.IOTimeout)):
		}
	}
	rep := d.Close()
	names := make([]string, 0, len(x.attached))
	for n := range x.attached {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := e.vm.Detach(ctx, n); err != nil && infraErr == nil {
			infraErr = err
		}
	}
	sctx, cancel := context.WithTimeout(ctx, e.vm.Scale(5*time.Second))
	defer cancel()
	lx.Shutdown(sctx)
	return rep, infraErr
}

type scenarioRun struct {
	e        *Executor
	d        *live.Driver
	srv      *nbd.Server
	sock     string
	attached map[string]bool
	async    map[string]*guestIO
	ioDevs   map[string]bool // devices the scenario does I/O on
}

// steps runs the scenario's steps until one fails (failed) or the
// infrastructure does (err).
func (x *scenarioRun) steps(ctx context.Context, sc *script.Scenario) (failed bool, err error) {
	for i := range sc.Steps {
		st := &sc.Steps[i]
		var msg string
		switch st.Kind {
		case script.KRead, script.KWrite, script.KFlush:
			if err := x.attach(ctx, st.Dev); err != nil {
				return false, err
			}
			before := x.d.Arrivals(st.Dev)
			verify := st.Expect.Data
			if st.Async != "" {
				// An asynchronous read is checked by its wait step.
				for j := i + 1; j < len(sc.Steps); j++ {
					if w := sc.Steps[j]; w.Kind == script.KWait && w.Async == st.Async {
						verify = w.Expect.Data
					}
				}
			}
			g := x.start(ctx, st, verify)
			if st.Async != "" {
				x.async[st.Async] = g
				// Recorded as submitted, as the simulator records it; its
				// outcome belongs to the wait step.
				_ = x.d.Session(func(s *run.Session) { s.GuestResult(g.idx, st, record.Result{}, "") })
				// The next step must not run before the request reached the
				// simulator (it may queue there on a suspended device).
				if !x.awaitArrival(st, before, g) {
					msg = fmt.Sprintf("%s on %s: the guest's request did not reach the simulator within %v", st.Kind, st.Dev, x.e.vm.Scale(x.e.IOTimeout))
					_ = x.d.Session(func(s *run.Session) { s.GuestResult(g.idx, st, record.Result{}, msg) })
					return true, nil
				}
				continue
			}
			msg = x.finish(g, st, g.idx)
		case script.KWait:
			var idx int
			_ = x.d.Session(func(s *run.Session) { idx = s.GuestOp(st) })
			msg = x.finish(x.async[st.Async], st, idx)
		default:
			_ = x.d.Session(func(s *run.Session) {
				msg = s.Exec(st)
				s.Settle()
			})
			if st.Kind == script.KDmsetup || st.Kind == script.KDisk {
				if err := x.syncExports(ctx); err != nil {
					return false, err
				}
				if err := x.preattach(ctx); err != nil {
					return false, err
				}
			}
		}
		if msg != "" {
			return true, nil
		}
	}
	return false, nil
}

// syncExports exports every device of the session and unplugs devices
// that are gone.
func (x *scenarioRun) syncExports(ctx context.Context) error {
	have := map[string]bool{}
	for _, dev := range x.d.Devices() {
		have[dev.Name] = true
		_ = x.srv.AddExport(nbd.Export{Name: dev.Name, Dev: x.d.Device(dev.Name, live.Uncounted()), PreferredBlock: dev.PreferredBlock})
	}
	for _, name := range x.srv.Exports() {
		if !have[name] {
			if x.attached[name] {
				delete(x.attached, name)
				if err := x.e.vm.Detach(ctx, name); err != nil {
					return err
				}
			}
			_ = x.srv.RemoveExport(name)
		}
	}
	return nil
}

// preattach plugs in, as soon as they are live, the devices the scenario
// will do I/O on, and waits for the guest to see them: the guest reads a
// new disk's partition table, which must not meet a device suspended by a
// later step.
func (x *scenarioRun) preattach(ctx context.Context) error {
	for _, dev := range x.d.Devices() {
		if x.ioDevs[dev.Name] && !x.attached[dev.Name] && dev.Live && !dev.Suspended {
			if err := x.attach(ctx, dev.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

// awaitArrival waits until the whole of the step's request arrived for its
// device after the first before arrivals (or the guest's I/O finished):
// other requests, such as the guest kernel's partition scan of a disk just
// plugged in, do not count. False if it did not arrive in time.
func (x *scenarioRun) awaitArrival(st *script.Step, before int, g *guestIO) bool {
	deadline := time.Now().Add(x.e.vm.Scale(x.e.IOTimeout))
	for time.Now().Before(deadline) {
		if Arrived(st, x.d.ArrivalsSince(st.Dev, before)) {
			return true
		}
		select {
		case <-g.done:
			return true
		case <-time.After(5 * time.Millisecond):
		}
	}
	return false
}

// Arrived reports whether the requests in arrived carry all of I/O step
// st: a flush, or reads (writes) covering its whole range.
func Arrived(st *script.Step, arrived []live.Arrival) bool {
	op := map[string]dm.Op{script.KRead: dm.OpRead, script.KWrite: dm.OpWrite, script.KFlush: dm.OpFlush}[st.Kind]
	if op == dm.OpFlush {
		for _, a := range arrived {
			if a.Op == dm.OpFlush {
				return true
			}
		}
		return false
	}
	// The smallest offset not yet covered, from st.Off on; requests may
	// arrive in any order, so repeat until nothing moves it.
	next, end := st.Off, st.Off+st.Len
	for moved := true; moved && next < end; {
		moved = false
		for _, a := range arrived {
			if a.Op == op && a.Off <= next && a.Off+a.Len > next {
				next, moved = a.Off+a.Len, true
			}
		}
	}
	return next >= end
}

func (x *scenarioRun) attach(ctx context.Context, dev string) error {
	if x.attached[dev] {
		return nil
	}
	if err := x.syncExports(ctx); err != nil {
		return err
	}
	if err := x.e.vm.AttachNBD(ctx, dev, x.sock, dev); err != nil {
		return err
	}
	x.attached[dev] = true
	// Wait for the guest to have probed it.
	_, err := x.e.vm.WaitDisk(ctx, dev)
	return err
}

// start sends the step's request to the agent.
func (x *scenarioRun) start(ctx context.Context, st *script.Step, verify string) *guestIO {
	g := &guestIO{st: st, done: make(chan struct{})}
	_ = x.d.Session(func(s *run.Session) { g.idx = s.GuestOp(st) })
	agent := x.e.vm.Agent()
	wait := x.e.vm.Scale(2 * time.Second).Milliseconds()
	go func() {
		defer close(g.done)
		switch st.Kind {
		case script.KRead:
			req := proto.ReadReq{Serial: st.Dev, Off: st.Off, Len: st.Len, Direct: true, WaitMS: wait, Pattern: verify}
			g.resp, g.err = agent.Read(ctx, req)
		case script.KWrite:
			g.resp, g.err = agent.Write(ctx, proto.WriteReq{Serial: st.Dev, Off: st.Off, Len: st.Len, Pattern: st.Pattern,
				Direct: true, FUA: st.FUA, WaitMS: wait})
		case script.KFlush:
			g.resp, g.err = agent.Fsync(ctx, st.Dev, "")
		}
	}()
	return g
}

// finish waits for a guest I/O, checks the step's expectations on the
// guest's answer and records the result.
func (x *scenarioRun) finish(g *guestIO, st *script.Step, idx int) string {
	var msg string
	res := record.Result{}
	select {
	case <-g.done:
		res.Errno = g.resp.Errno
		if g.resp.SHA256 != "" {
			res.Data = "sha256:" + g.resp.SHA256[:16]
		}
		msg = CheckIO(g.st, st, g.resp, g.err)
	case <-time.After(x.e.vm.Scale(x.e.IOTimeout)):
		msg = fmt.Sprintf("%s on %s: the guest's I/O did not complete (a suspended device queues I/O until resume: use async=ID and wait ID)", g.st.Kind, g.st.Dev)
	}
	// Let the NBD traffic of this step settle in the recording.
	_ = x.d.Session(func(s *run.Session) {
		s.Settle()
		s.GuestResult(idx, st, res, msg)
	})
	return msg
}

// CheckIO checks the expectations of step st (the I/O step itself, or the
// wait step of an asynchronous one, io) against the agent's answer.
func CheckIO(io, st *script.Step, resp proto.Response, rerr error) string {
	errno := syscall.Errno(0)
	if rerr != nil {
		errno = block.Errno(rerr)
		if resp.Errno != "" && resp.Errno != "OK" {
			if e, err := block.ParseErrno(resp.Errno); err == nil {
				errno = e
			}
		}
	}
	e := st.Expect
	if e.Errno != nil && errno != *e.Errno {
		return fmt.Sprintf("%s in the guest: got %s, want %s (%v)", io.Kind, block.ErrnoName(errno), block.ErrnoName(*e.Errno), rerr)
	}
	if e.Errno == nil && errno != 0 {
		return fmt.Sprintf("%s in the guest failed: %v", io.Kind, rerr)
	}
	if e.Data != "" && errno == 0 {
		if v := resp.Verify; v == nil || !v.OK {
			if v == nil {
				return "data: the agent returned no verdict"
			}
			m := pattern.Mismatch{Off: v.Off, Want: v.Want, Got: v.Got, Looks: v.Looks}
			return fmt.Sprintf("data read in the guest: want pattern %s: %v", e.Data, &m)
		}
	}
	return ""
}
