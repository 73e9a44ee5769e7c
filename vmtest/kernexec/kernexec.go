// Package kernexec is the `kernel` executor: the same scenarios against the
// real Linux dm-snapshot, in a QEMU guest.
//
// Disks stay simulated (sparse memory disks served over NBD by a
// vmtest/live session, so their content can be dumped and compared);
// everything else is the guest's: control-plane lines run as Debian's real
// `dmsetup` (shipped in the initramfs with its libraries, run with
// DM_DISABLE_UDEV=1: libdm then makes /dev/mapper nodes itself, and the
// ioctls, output and errors are exactly a user's), reads and writes run on
// /dev/mapper/NAME (or the disk) with O_DIRECT through the agent, and the
// kernel's "device-mapper:" log lines are read from /dev/kmsg.
//
// Why real dmsetup rather than DM ioctls from the agent: the point is
// fidelity of what a developer sees; dmsetup's own formatting and error
// paths are part of that, and the simulator already claims to match them.
//
// Device names in tables are rewritten for the guest: a disk's name becomes
// its /dev/vdX (found by virtio serial), a dm device's name /dev/mapper/NAME.
// Disks are plugged in declaration order, so they are 254:0, 254:16, ... as
// in the simulator.
//
// `open DEV as ID` makes the agent open /dev/mapper/DEV (or the disk)
// read-only and hold the file until `close ID`, so the real kernel counts
// it in the device's open count; opens a scenario leaves held are closed
// before its devices are removed.
package kernexec

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/guest"
	"snaplab/vmtest/guest/proto"
	"snaplab/vmtest/live"
	"snaplab/vmtest/nbd"
	"snaplab/vmtest/qemu"
	"snaplab/vmtest/vmexec"
)

// ImageOptions are what a kernel-executor guest needs on top of the
// defaults: dmsetup and the dm-zero target.
func ImageOptions() []guest.Option {
	return []guest.Option{guest.WithExecutable("/usr/sbin/dmsetup"), guest.WithModules("dm_zero")}
}

// Supported reports whether sc can run on the kernel. Faults are
// supported: disks are the simulator's, so a fault rule on a disk makes the
// NBD server answer EIO and the guest kernel's dm-snapshot meets a real I/O
// error. Discards are not (the agent has no BLKDISCARD).
func Supported(sc *script.Scenario) error {
	for _, st := range sc.Steps {
		switch st.Kind {
		case script.KDiscard:
			return fmt.Errorf("line %d: discard is not supported by the kernel executor", st.Line)
		}
	}
	if sc.Semantics == "seed" {
		return fmt.Errorf("seed semantics: no kernel has the seed patch")
	}
	return nil
}

// Executor runs scenarios on a booted guest built with ImageOptions.
type Executor struct {
	vm        *qemu.VM
	IOTimeout time.Duration
	cursor    uint64 // kmsg
	runs      uint64 // scenarios run: names the agent's handles apart
}

// New returns an executor on vm.
func New(vm *qemu.VM) *Executor { return &Executor{vm: vm, IOTimeout: 3 * time.Second} }

type kernelRun struct {
	e       *Executor
	d       *live.Driver
	srv     *nbd.Server
	sock    string
	disks   map[string]string // name -> /dev/vdX
	order   []string          // disks in declaration order
	dmNames map[string]bool
	logCur  []string // device-mapper lines since the last log step
	async   map[string]*pending
	run     uint64
	held    []string // the scenario's open IDs the agent holds, in open order
}

type pending struct {
	idx  int
	io   *script.Step
	done chan struct{}
	resp proto.Response
	err  error
}

// Run executes sc on the real kernel and returns the report of its
// recording (header executor "kernel"; every step is a guest step).
func (e *Executor) Run(ctx context.Context, sc *script.Scenario, opts run.Options) (*run.Report, error) {
	if err := Supported(sc); err != nil {
		return nil, err
	}
	opts.Executor = "kernel"
	lx, err := live.StartExported(ctx, sc, opts)
	if err != nil {
		return nil, err
	}
	d, srv, sock := lx.Driver, lx.Server, lx.Socket
	e.runs++
	k := &kernelRun{e: e, d: d, srv: srv, sock: sock, disks: map[string]string{}, dmNames: map[string]bool{}, async: map[string]*pending{}, run: e.runs}
	// Start from a clean kernel log.
	if _, next, err := e.vm.Agent().Kmsg(ctx, e.cursor); err == nil {
		e.cursor = next
	}
	infraErr := k.steps(ctx, sc)
	for _, p := range k.async {
		select {
		case <-p.done:
		case <-time.After(e.vm.Scale(e.IOTimeout)):
		}
	}
	// Leave the guest clean for the next scenario: close what the scenario
	// still holds open, remove every dm device (error tables first so that
	// open ones can go), then unplug the disks.
	if err := k.closeHeld(ctx); err != nil && infraErr == nil {
		infraErr = err
	}
	if err := k.cleanup(ctx); err != nil && infraErr == nil {
		infraErr = err
	}
	rep := d.Close()
	for i := len(k.order) - 1; i >= 0; i-- {
		if err := e.vm.Detach(ctx, k.order[i]); err != nil && infraErr == nil {
			infraErr = err
		}
	}
	sctx, cancel := context.WithTimeout(ctx, e.vm.Scale(5*time.Second))
	defer cancel()
	lx.Shutdown(sctx)
	return rep, infraErr
}

func (k *kernelRun) dmsetup(ctx context.Context, argv []string) (proto.Response, error) {
	return k.e.vm.Agent().Exec(ctx, proto.ExecReq{Argv: append([]string{"/usr/sbin/dmsetup"}, argv...),
		Env: []string{"DM_DISABLE_UDEV=1"}, TimeoutMS: k.e.vm.Scale(20 * time.Second).Milliseconds()})
}

func (k *kernelRun) cleanup(ctx context.Context) error {
	for round := 0; round < 4; round++ {
		resp, err := k.dmsetup(ctx, []string{"ls"})
		if err != nil {
			return err
		}
		var names []string
		for _, l := range strings.Split(strings.TrimSpace(resp.Stdout), "\n") {
			if f := strings.Fields(l); len(f) == 2 && strings.HasPrefix(f[1], "(") {
				names = append(names, f[0])
			}
		}
		if len(names) == 0 {
			return nil
		}
		for _, n := range names {
			k.dmsetup(ctx, []string{"resume", n})
			k.dmsetup(ctx, []string{"remove", "--force", n})
		}
	}
	return fmt.Errorf("dm devices left in the guest after cleanup")
}

// kmsg returns the device-mapper lines logged since the last call.
func (k *kernelRun) kmsg(ctx context.Context) []string {
	recs, next, err := k.e.vm.Agent().Kmsg(ctx, k.e.cursor)
	if err != nil {
		return nil
	}
	k.e.cursor = next
	var out []string
	for _, r := range recs {
		if strings.HasPrefix(r.Msg, "device-mapper:") {
			out = append(out, r.Msg)
		}
	}
	return out
}

func (k *kernelRun) steps(ctx context.Context, sc *script.Scenario) error {
	for i := range sc.Steps {
		st := &sc.Steps[i]
		var msg string
		switch st.Kind {
		case script.KDisk:
			_ = k.d.Session(func(s *run.Session) { msg = s.Exec(st); s.Settle() })
			if msg == "" {
				if err := k.attachDisk(ctx, st.Dev, st.LBS); err != nil {
					return err
				}
			}
		case script.KDmsetup:
			idx := k.guestOp(st)
			argv := k.rewrite(st.Argv)
			resp, err := k.dmsetup(ctx, argv)
			if err != nil {
				return fmt.Errorf("line %d: running dmsetup in the guest: %w", st.Line, err)
			}
			logged := k.kmsg(ctx)
			k.logCur = append(k.logCur, logged...)
			if len(st.Argv) >= 2 && st.Argv[0] == "create" {
				k.dmNames[st.Argv[1]] = true
			}
			exit := resp.Exit
			res := record.Result{Exit: &exit, Stdout: resp.Stdout, Stderr: resp.Stderr, Log: logged}
			msg = run.CheckDmsetup(st, resp.Stdout, resp.Stderr, resp.Exit, logged)
			k.guestResult(idx, st, res, msg)
		case script.KLog:
			idx := k.guestOp(st)
			lines := append(k.logCur, k.kmsg(ctx)...)
			k.logCur = nil
			msg = run.CheckLog(st, lines)
			k.guestResult(idx, st, record.Result{Log: lines}, msg)
		case script.KRun:
			idx := k.guestOp(st)
			msg = k.awaitMerges(ctx)
			k.guestResult(idx, st, record.Result{}, msg)
		case script.KFault:
			// On the simulated disk, under the guest's NBD connection.
			_ = k.d.Session(func(s *run.Session) { msg = s.Exec(st); s.Settle() })
		case script.KRead, script.KWrite, script.KFlush:
			before := k.diskArrivals()
			p := k.start(ctx, st, sc, i)
			if st.Async != "" {
				k.async[st.Async] = p
				// Recorded as submitted, as the simulator records it; its
				// outcome belongs to the wait step.
				k.guestResult(p.idx, st, record.Result{}, "")
				k.awaitSubmitted(p, before)
				continue
			}
			msg = k.finish(p, st, p.idx)
		case script.KWait:
			msg = k.finish(k.async[st.Async], st, k.guestOp(st))
		case script.KOpen:
			var err error
			if msg, err = k.open(ctx, st); err != nil {
				return err
			}
		case script.KClose:
			var err error
			if msg, err = k.close(ctx, st); err != nil {
				return err
			}
		}
		if msg != "" {
			return nil
		}
	}
	return nil
}

// handle is the agent's name for the scenario's open ID.
func (k *kernelRun) handle(id string) string { return fmt.Sprintf("kernexec-%d/%s", k.run, id) }

// target is how the agent finds a scenario device: a disk by its virtio
// serial, anything else as /dev/mapper/NAME.
func (k *kernelRun) target(dev string) (serial, path string) {
	if _, ok := k.disks[dev]; ok {
		return dev, ""
	}
	return "", "/dev/mapper/" + dev
}

// open is an open step: the agent opens the device read-only and holds
// the file until the close step (or the end of the scenario). The error is
// an infrastructure failure; msg is the step's failure.
func (k *kernelRun) open(ctx context.Context, st *script.Step) (msg string, err error) {
	idx := k.guestOp(st)
	serial, path := k.target(st.Dev)
	resp, err := k.e.vm.Agent().OpenHandle(ctx, proto.OpenReq{Serial: serial, Path: path, Handle: k.handle(st.Handle)})
	var oe *proto.OpError
	if err != nil && !errors.As(err, &oe) {
		return "", fmt.Errorf("line %d: open in the guest: %w", st.Line, err)
	}
	if err == nil {
		k.held = append(k.held, st.Handle)
	}
	// Whatever the kernel logged belongs to the next log step, as on the
	// simulator (an open step's result carries no log lines).
	k.logCur = append(k.logCur, k.kmsg(ctx)...)
	res := record.Result{Errno: resp.Errno}
	msg = run.CheckOpen(st, err)
	k.guestResult(idx, st, res, msg)
	return msg, nil
}

// close is a close step.
func (k *kernelRun) close(ctx context.Context, st *script.Step) (msg string, err error) {
	idx := k.guestOp(st)
	i := slices.Index(k.held, st.Handle)
	if i < 0 {
		msg = fmt.Sprintf("close: %s is not open (its open failed)", st.Handle)
		k.guestResult(idx, st, record.Result{}, msg)
		return msg, nil
	}
	resp, err := k.e.vm.Agent().CloseHandle(ctx, k.handle(st.Handle))
	if err != nil {
		return "", fmt.Errorf("line %d: close in the guest: %w", st.Line, err)
	}
	k.held = slices.Delete(k.held, i, i+1)
	k.logCur = append(k.logCur, k.kmsg(ctx)...)
	k.guestResult(idx, st, record.Result{Errno: resp.Errno}, "")
	return "", nil
}

// closeHeld closes every open the scenario did not close, in open order.
func (k *kernelRun) closeHeld(ctx context.Context) error {
	var first error
	for _, id := range k.held {
		if _, err := k.e.vm.Agent().CloseHandle(ctx, k.handle(id)); err != nil && first == nil {
			first = fmt.Errorf("closing the scenario's open %s in the guest: %w", id, err)
		}
	}
	k.held = nil
	return first
}

// awaitMerges is the kernel side of a `run` step (let everything in
// flight finish): the kernel merges in the background, so it polls
// `dmsetup status` until no snapshot-merge target is still merging, as
// lvm2 does (a merge is done when its allocated sectors are down to the
// metadata's, or it stopped: Invalid, Merge failed). "" or why not.
func (k *kernelRun) awaitMerges(ctx context.Context) string {
	deadline := time.Now().Add(k.e.vm.Scale(20 * time.Second))
	for {
		resp, err := k.dmsetup(ctx, []string{"status"})
		if err != nil {
			return fmt.Sprintf("run: dmsetup status in the guest: %v", err)
		}
		merging := mergesRunning(resp.Stdout)
		if len(merging) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return fmt.Sprintf("run: merging did not finish: %s", strings.Join(merging, "; "))
		}
		select {
		case <-ctx.Done():
			return fmt.Sprintf("run: %v", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// mergesRunning lists the lines of `dmsetup status` (all devices) whose
// snapshot-merge target is still merging.
func mergesRunning(status string) []string {
	var out []string
	for _, line := range strings.Split(status, "\n") {
		_, rest, ok := strings.Cut(line, ": ")
		f := strings.Fields(rest)
		if !ok || len(f) != 5 || f[2] != "snapshot-merge" {
			continue
		}
		used, _, ok := strings.Cut(f[3], "/")
		if ok && used != f[4] {
			out = append(out, line)
		}
	}
	return out
}

// diskArrivals counts the NBD requests that reached the scenario's disks.
func (k *kernelRun) diskArrivals() int {
	n := 0
	for _, d := range k.order {
		n += k.d.Arrivals(d)
	}
	return n
}

// awaitSubmitted waits until the guest's asynchronous I/O is under way
// before the next step runs: it reached a disk, or it completed. I/O to a
// suspended dm device reaches no disk; it gets a fixed grace period.
func (k *kernelRun) awaitSubmitted(p *pending, before int) {
	deadline := time.Now().Add(k.e.vm.Scale(300 * time.Millisecond))
	for time.Now().Before(deadline) {
		if k.diskArrivals() > before {
			return
		}
		select {
		case <-p.done:
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (k *kernelRun) guestOp(st *script.Step) int {
	var idx int
	_ = k.d.Session(func(s *run.Session) { idx = s.GuestOp(st) })
	return idx
}

func (k *kernelRun) guestResult(idx int, st *script.Step, res record.Result, msg string) {
	_ = k.d.Session(func(s *run.Session) {
		s.Settle()
		s.GuestResult(idx, st, res, msg)
	})
}

func (k *kernelRun) attachDisk(ctx context.Context, name string, lbs uint32) error {
	for _, dev := range k.d.Devices() {
		if dev.Name == name {
			if err := k.srv.AddExport(nbd.Export{Name: name, Dev: k.d.Device(name)}); err != nil {
				return err
			}
		}
	}
	if lbs == 512 {
		lbs = 0
	}
	if err := k.e.vm.AttachNBDBlockSize(ctx, name, k.sock, name, lbs); err != nil {
		return err
	}
	k.order = append(k.order, name)
	dk, err := k.e.vm.WaitDisk(ctx, name)
	if err != nil {
		return err
	}
	k.disks[name] = "/dev/" + dk.Name
	return nil
}

// rewrite maps device names in table text to guest paths.
func (k *kernelRun) rewrite(argv []string) []string {
	out := append([]string(nil), argv...)
	for i := 0; i < len(out); i++ {
		a := out[i]
		switch {
		case a == "--table" && i+1 < len(out):
			out[i+1] = k.rewriteTable(out[i+1])
			i++
		case strings.HasPrefix(a, "--table="):
			out[i] = "--table=" + k.rewriteTable(strings.TrimPrefix(a, "--table="))
		}
	}
	return out
}

func (k *kernelRun) rewriteTable(text string) string {
	lines := strings.Split(text, "\n")
	for li, line := range lines {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		for j := 3; j < len(f); j++ {
			f[j] = k.path(f[j])
		}
		lines[li] = strings.Join(f, " ")
	}
	return strings.Join(lines, "\n")
}

func (k *kernelRun) path(tok string) string {
	name := tok
	for _, p := range []string{"/dev/disk/by-id/virtio-", "/dev/mapper/", "/dev/"} {
		if strings.HasPrefix(tok, p) {
			name = strings.TrimPrefix(tok, p)
			break
		}
	}
	if p, ok := k.disks[name]; ok {
		return p
	}
	if k.dmNames[name] {
		return "/dev/mapper/" + name
	}
	return tok
}

func (k *kernelRun) start(ctx context.Context, st *script.Step, sc *script.Scenario, i int) *pending {
	p := &pending{io: st, done: make(chan struct{}), idx: k.guestOp(st)}
	verify := st.Expect.Data
	if st.Async != "" {
		for j := i + 1; j < len(sc.Steps); j++ {
			if w := sc.Steps[j]; w.Kind == script.KWait && w.Async == st.Async {
				verify = w.Expect.Data
			}
		}
	}
	serial, path := "", ""
	if _, ok := k.disks[st.Dev]; ok {
		serial = st.Dev
	} else {
		path = "/dev/mapper/" + st.Dev
	}
	agent := k.e.vm.Agent()
	go func() {
		defer close(p.done)
		switch st.Kind {
		case script.KRead:
			p.resp, p.err = agent.Read(ctx, proto.ReadReq{Serial: serial, Path: path, Off: st.Off, Len: st.Len, Direct: true, Pattern: verify})
		case script.KWrite:
			p.resp, p.err = agent.Write(ctx, proto.WriteReq{Serial: serial, Path: path, Off: st.Off, Len: st.Len, Pattern: st.Pattern, Direct: true, FUA: st.FUA})
		case script.KFlush:
			p.resp, p.err = agent.Fsync(ctx, serial, path)
		}
	}()
	return p
}

func (k *kernelRun) finish(p *pending, st *script.Step, idx int) string {
	var msg string
	res := record.Result{}
	select {
	case <-p.done:
		res.Errno = p.resp.Errno
		if res.Errno == "" {
			res.Errno = "OK"
		}
		if p.resp.SHA256 != "" {
			res.Data = "sha256:" + p.resp.SHA256[:16]
		}
		msg = vmexec.CheckIO(p.io, st, p.resp, p.err)
	case <-time.After(k.e.vm.Scale(k.e.IOTimeout)):
		msg = fmt.Sprintf("%s on %s: the guest's I/O did not complete (a suspended device queues I/O until resume: use async=ID and wait ID)", p.io.Kind, p.io.Dev)
	}
	// What the kernel logged while the I/O ran.
	res.Log = k.kmsg(context.Background())
	k.logCur = append(k.logCur, res.Log...)
	k.guestResult(idx, st, res, msg)
	return msg
}
