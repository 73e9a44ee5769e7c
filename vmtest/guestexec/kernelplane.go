package guestexec

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"snaplab/sim/lvmlog"
	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/guest/proto"
	"snaplab/vmtest/live"
	"snaplab/vmtest/machine"
	"snaplab/vmtest/nbd"
)

// kernelPlane is GuestKernel's: control lines run in the guest as dmsetup,
// disks are the simulator's, plugged in at their disk steps.
type kernelPlane struct {
	x       *scenarioRun
	disks   map[string]string // name -> /dev/vdX
	order   []string          // disks in declaration order
	dmNames map[string]bool
	lvm     *lvmlog.Parser    // what the scenario's LVM commands named so far
	logCur  []string          // kernel lines since the last log step
	dmMinor map[string]string // dm-N -> the device's name, learnt since the last create or remove
	held    []string          // the scenario's open IDs the agent holds, in open order
}

func newKernelPlane(ctx context.Context, x *scenarioRun) (*kernelPlane, error) {
	k := &kernelPlane{x: x, disks: map[string]string{}, dmNames: map[string]bool{}}
	// Start from a clean kernel log.
	if _, err := k.kmsg(ctx); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *kernelPlane) control(ctx context.Context, st *script.Step) (msg string, err error) {
	x := k.x
	switch st.Kind {
	case script.KDisk:
		if msg, err = x.exec(st); err != nil || msg != "" {
			return msg, err
		}
		return "", k.attachDisk(ctx, st.Dev, st.LBS)
	case script.KFault:
		// On the simulated disk, under the guest's NBD connection.
		return x.exec(st)
	case script.KDmsetup:
		idx, err := x.guestOp(st)
		if err != nil {
			return "", err
		}
		argv, err := k.rewrite(ctx, st.Argv)
		if err != nil {
			return "", err
		}
		resp, err := k.dmsetup(ctx, argv)
		if err != nil {
			return "", fmt.Errorf("running dmsetup in the guest: %w", err)
		}
		if len(st.Argv) > 0 && (st.Argv[0] == "create" || st.Argv[0] == "remove") {
			k.dmMinor = nil // minors are reused
		}
		logged, err := k.kmsg(ctx)
		if err != nil {
			return "", err
		}
		k.logCur = append(k.logCur, logged...)
		if len(st.Argv) >= 2 && st.Argv[0] == "create" {
			k.dmNames[st.Argv[1]] = true
		}
		exit := resp.Exit
		res := record.Result{Exit: &exit, Stdout: resp.Stdout, Stderr: resp.Stderr, Log: logged}
		msg = run.CheckDmsetup(st, resp.Stdout, resp.Stderr, resp.Exit, logged)
		return msg, x.guestResult(idx, st, res, msg)
	case script.KLvm:
		return k.lvmStep(ctx, st)
	case script.KLog:
		idx, err := x.guestOp(st)
		if err != nil {
			return "", err
		}
		more, err := k.kmsg(ctx)
		if err != nil {
			return "", err
		}
		lines := append(k.logCur, more...)
		k.logCur = nil
		msg = run.CheckLog(st, lines)
		return msg, x.guestResult(idx, st, record.Result{Log: lines}, msg)
	case script.KRun:
		idx, err := x.guestOp(st)
		if err != nil {
			return "", err
		}
		msg = k.awaitSettled(ctx)
		// What the background work logged (a merge invalidating another
		// snapshot), as on the simulator; it also belongs to the next log
		// step.
		lines, err := k.ioLog(ctx)
		if err != nil {
			return "", err
		}
		return msg, x.guestResult(idx, st, record.Result{Log: lines}, msg)
	case script.KOpen:
		return k.open(ctx, st)
	case script.KClose:
		return k.close(ctx, st)
	}
	return "", fmt.Errorf("the kernel executor has no means for %s lines", st.Kind)
}

func (k *kernelPlane) dmsetup(ctx context.Context, argv []string) (proto.Response, error) {
	vm := k.x.e.vm
	return vm.Agent().Exec(ctx, proto.ExecReq{Argv: append([]string{"/usr/sbin/dmsetup"}, argv...),
		Env: []string{"DM_DISABLE_UDEV=1"}, TimeoutMS: vm.Scale(20 * time.Second).Milliseconds()})
}

// kmsg returns the lines a scenario can check (normalizeKmsg) logged
// since the last read.
func (k *kernelPlane) kmsg(ctx context.Context) ([]string, error) {
	recs, err := k.x.e.readKmsg(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range recs {
		if line, ok := normalizeKmsg(r.Msg, func(kd string) string { return k.kname(ctx, kd) }); ok {
			out = append(out, line)
		}
	}
	return out, nil
}

// kname is the scenario's name of a kernel device name: a disk's for its
// vdX, a dm device's for its dm-N (asked of dmsetup, by minor); the
// kernel's name when neither is known.
func (k *kernelPlane) kname(ctx context.Context, kd string) string {
	for name, p := range k.disks {
		if p == "/dev/"+kd {
			return name
		}
	}
	minor, ok := strings.CutPrefix(kd, "dm-")
	if !ok {
		return kd
	}
	if n, ok := k.dmMinor[minor]; ok {
		return n
	}
	resp, err := k.dmsetup(ctx, []string{"info", "-c", "--noheadings", "-o", "name", "-j", "253", "-m", minor})
	name := strings.TrimSpace(resp.Stdout)
	if err != nil || resp.Exit != 0 || name == "" || strings.ContainsAny(name, " \n") {
		return kd
	}
	if k.dmMinor == nil {
		k.dmMinor = map[string]string{}
	}
	k.dmMinor[minor] = name
	return name
}

// ioLog is what the kernel logged while an I/O ran; it also belongs to the
// next log step.
func (k *kernelPlane) ioLog(ctx context.Context) ([]string, error) {
	lines, err := k.kmsg(ctx)
	k.logCur = append(k.logCur, lines...)
	return lines, err
}

// handle is the agent's name for the scenario's open ID.
func (k *kernelPlane) handle(id string) string { return fmt.Sprintf("guestexec-%d/%s", k.x.e.runs, id) }

// target is how the agent finds a scenario device: a disk by its virtio
// serial, anything else as /dev/mapper/NAME.
func (k *kernelPlane) target(_ context.Context, dev string) (serial, path string, err error) {
	if _, ok := k.disks[dev]; ok {
		return dev, "", nil
	}
	return "", "/dev/mapper/" + dev, nil
}

// open is an open step: the agent opens the device read-only and holds
// the file until the close step (or the end of the scenario).
func (k *kernelPlane) open(ctx context.Context, st *script.Step) (msg string, err error) {
	x := k.x
	idx, err := x.guestOp(st)
	if err != nil {
		return "", err
	}
	serial, path, _ := k.target(ctx, st.Dev)
	resp, err := x.e.vm.Agent().OpenHandle(ctx, proto.OpenReq{Serial: serial, Path: path, Handle: k.handle(st.Handle)})
	var oe *proto.OpError
	if err != nil && !errors.As(err, &oe) {
		return "", fmt.Errorf("open in the guest: %w", err)
	}
	if err == nil {
		k.held = append(k.held, st.Handle)
	}
	// Whatever the kernel logged belongs to the next log step, as on the
	// simulator (an open step's result carries no log lines).
	if _, lerr := k.ioLog(ctx); lerr != nil {
		return "", lerr
	}
	msg = run.CheckOpen(st, err)
	return msg, x.guestResult(idx, st, record.Result{Errno: resp.Errno}, msg)
}

// close is a close step.
func (k *kernelPlane) close(ctx context.Context, st *script.Step) (msg string, err error) {
	x := k.x
	idx, err := x.guestOp(st)
	if err != nil {
		return "", err
	}
	i := slices.Index(k.held, st.Handle)
	if i < 0 {
		msg = fmt.Sprintf("close: %s is not open (its open failed)", st.Handle)
		return msg, x.guestResult(idx, st, record.Result{}, msg)
	}
	resp, err := x.e.vm.Agent().CloseHandle(ctx, k.handle(st.Handle))
	if err != nil {
		return "", fmt.Errorf("close in the guest: %w", err)
	}
	k.held = slices.Delete(k.held, i, i+1)
	if _, err := k.ioLog(ctx); err != nil {
		return "", err
	}
	return "", x.guestResult(idx, st, record.Result{Errno: resp.Errno}, "")
}

// teardown leaves the guest clean for the next scenario: it closes what
// the scenario still holds open, removes every dm device (error tables
// first so that open ones can go) before the session closes, then unplugs
// the disks.
func (k *kernelPlane) teardown(ctx context.Context, closed bool) error {
	if closed {
		var first error
		for i := len(k.order) - 1; i >= 0; i-- {
			if err := k.x.e.vm.Unplug(ctx, k.order[i]); err != nil && first == nil {
				first = err
			}
		}
		k.order = nil
		return first
	}
	var first error
	for _, id := range k.held {
		if _, err := k.x.e.vm.Agent().CloseHandle(ctx, k.handle(id)); err != nil && first == nil {
			first = fmt.Errorf("closing the scenario's open %s in the guest: %w", id, err)
		}
	}
	k.held = nil
	if err := k.removeAll(ctx); err != nil && first == nil {
		first = err
	}
	if err := k.cleanLVM(ctx); err != nil && first == nil {
		first = err
	}
	return first
}

// cleanLVM removes what LVM left in the guest besides dm devices: its
// /dev/VG directories of links (a later vgcreate of the same name refuses
// an existing one) and its metadata backups.
func (k *kernelPlane) cleanLVM(ctx context.Context) error {
	if k.lvm == nil {
		return nil
	}
	argv := []string{"/usr/bin/rm", "-rf", "/run/lvm/backup", "/run/lvm/archive", LVMLog}
	for _, vg := range k.lvm.VGs() {
		argv = append(argv, "/dev/"+vg)
	}
	vm := k.x.e.vm
	resp, err := vm.Agent().Exec(ctx, proto.ExecReq{Argv: argv, TimeoutMS: vm.Scale(10 * time.Second).Milliseconds()})
	if err == nil && resp.Exit != 0 {
		err = fmt.Errorf("exit %d: %s", resp.Exit, resp.Stderr)
	}
	if err != nil {
		return fmt.Errorf("removing LVM's files in the guest: %w", err)
	}
	k.lvm = nil
	return nil
}

// removeAll removes every dm device in the guest.
func (k *kernelPlane) removeAll(ctx context.Context) error {
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
			// Either may fail (not suspended; still open): the next
			// round's listing says whether the device went.
			if _, err := k.dmsetup(ctx, []string{"resume", n}); err != nil {
				return err
			}
			if _, err := k.dmsetup(ctx, []string{"remove", "--force", n}); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("dm devices left in the guest after cleanup")
}

// awaitMerges is the kernel side of a `run` step (let everything in
// flight finish): the kernel merges in the background, so it polls
// `dmsetup status` until no snapshot-merge target is still merging, as
// lvm2 does (a merge is done when its allocated sectors are down to the
// metadata's, or it stopped: Invalid, Merge failed). "" or why not.
func (k *kernelPlane) awaitMerges(ctx context.Context) string {
	deadline := time.Now().Add(k.x.e.vm.Scale(20 * time.Second))
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

// awaitSettled is the kernel side of a `run` step (let everything in
// flight finish): no snapshot-merge target is still merging
// (awaitMerges), and then `dmsetup status` and every device's event
// number (`dmsetup info -c`) read the same twice in a row, 50 ms apart:
// copy-outs that end by invalidating or overflowing a snapshot change
// both. "" or why not.
func (k *kernelPlane) awaitSettled(ctx context.Context) string {
	if msg := k.awaitMerges(ctx); msg != "" {
		return msg
	}
	deadline := time.Now().Add(k.x.e.vm.Scale(20 * time.Second))
	last := ""
	for {
		st, err := k.dmsetup(ctx, []string{"status"})
		if err != nil {
			return fmt.Sprintf("run: dmsetup status in the guest: %v", err)
		}
		info, err := k.dmsetup(ctx, []string{"info", "-c", "--noheadings", "-o", "name,events"})
		if err != nil {
			return fmt.Sprintf("run: dmsetup info in the guest: %v", err)
		}
		now := st.Stdout + "\x00" + info.Stdout
		if now == last && len(mergesRunning(st.Stdout)) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return fmt.Sprintf("run: the devices' status did not settle: %s", strings.TrimSpace(st.Stdout))
		}
		last = now
		select {
		case <-ctx.Done():
			return fmt.Sprintf("run: %v", ctx.Err())
		case <-time.After(50 * time.Millisecond):
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

// arrivals counts the NBD requests that reached the scenario's disks (a
// dm device's I/O reaches them, not an export of its own).
func (k *kernelPlane) arrivals(*script.Step) int {
	n := 0
	for _, d := range k.order {
		n += k.x.lx.Arrivals(d)
	}
	return n
}

// submitted waits until the guest's asynchronous I/O is under way before
// the next step runs: it reached a disk, or it completed. I/O to a
// suspended dm device reaches no disk; it gets a fixed grace period.
func (k *kernelPlane) submitted(g *guestIO, before int) string {
	deadline := time.Now().Add(k.x.e.vm.Scale(300 * time.Millisecond))
	for time.Now().Before(deadline) {
		if k.arrivals(g.st) > before {
			return ""
		}
		select {
		case <-g.done:
			return ""
		case <-time.After(5 * time.Millisecond):
		}
	}
	return ""
}

// exportDisk exports the disks of the session (dm devices are the
// guest's own).
func (k *kernelPlane) exportDisk(dev live.DeviceInfo) (nbd.Export, bool) {
	return nbd.Export{Name: dev.Name, Dev: k.x.lx.Device(dev.Name)}, dev.Disk
}

func (k *kernelPlane) attachDisk(ctx context.Context, name string, lbs uint32) error {
	vm := k.x.e.vm
	if _, err := k.x.lx.Sync(k.exportDisk); err != nil {
		return err
	}
	if lbs == 512 {
		lbs = 0
	}
	if err := vm.Plug(ctx, name, k.x.lx.Source(name), machine.DiskOptions{BlockSize: lbs}); err != nil {
		return err
	}
	k.order = append(k.order, name)
	dk, err := machine.WaitDisk(ctx, vm, name)
	if err != nil {
		return err
	}
	k.disks[name] = "/dev/" + dk.Name
	return nil
}

// rewrite maps device names in table text to guest paths.
func (k *kernelPlane) rewrite(ctx context.Context, argv []string) ([]string, error) {
	out := append([]string(nil), argv...)
	for i := 0; i < len(out); i++ {
		a := out[i]
		var err error
		switch {
		case a == "--table" && i+1 < len(out):
			out[i+1], err = k.rewriteTable(ctx, out[i+1])
			i++
		case strings.HasPrefix(a, "--table="):
			var t string
			t, err = k.rewriteTable(ctx, strings.TrimPrefix(a, "--table="))
			out[i] = "--table=" + t
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (k *kernelPlane) rewriteTable(ctx context.Context, text string) (string, error) {
	lines := strings.Split(text, "\n")
	for li, line := range lines {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		for j := 3; j < len(f); j++ {
			p, err := k.path(ctx, f[j])
			if err != nil {
				return "", err
			}
			f[j] = p
		}
		lines[li] = strings.Join(f, " ")
	}
	return strings.Join(lines, "\n"), nil
}

// path is a table's device argument as the guest names it: a disk's
// /dev/vdX; a dm device named by path, /dev/mapper/NAME; a dm device named
// by its bare name, its MAJ:MIN. (The simulator resolves a bare name
// whether or not the device has a node; without udev a device has none
// until it is first resumed, and a session such as LVM's names a device
// that has no table yet.)
func (k *kernelPlane) path(ctx context.Context, tok string) (string, error) {
	name := tok
	for _, p := range []string{"/dev/disk/by-id/virtio-", "/dev/mapper/", "/dev/"} {
		if strings.HasPrefix(tok, p) {
			name = strings.TrimPrefix(tok, p)
			break
		}
	}
	if p, ok := k.disks[name]; ok {
		return p, nil
	}
	if !k.dmNames[name] {
		return tok, nil
	}
	if tok != name {
		return "/dev/mapper/" + name, nil
	}
	resp, err := k.dmsetup(ctx, []string{"info", "-c", "--noheadings", "-o", "major,minor", name})
	if err != nil {
		return "", fmt.Errorf("asking the guest's dmsetup for %s's number: %w", name, err)
	}
	if num := strings.ReplaceAll(strings.TrimSpace(resp.Stdout), " ", ""); resp.Exit == 0 && strings.Count(num, ":") == 1 {
		return num, nil
	}
	return "/dev/mapper/" + name, nil // gone: the kernel says so
}

// lvmStep runs a real LVM command in the guest (Debian's lvm2 with
// LVMConf: no udev, no daemons) and reads the device-mapper operations it
// performed from its debug log (sim/lvmlog). The result carries them, as
// outcomes and as scenario lines, for the simulator to repeat
// (run.Compare); LVM's output and exit status are checked against the
// step's expectations as dmsetup's are.
func (k *kernelPlane) lvmStep(ctx context.Context, st *script.Step) (string, error) {
	x := k.x
	idx, err := x.guestOp(st)
	if err != nil {
		return "", err
	}
	vm := x.e.vm
	env := []string{"DM_DISABLE_UDEV=1", "LVM_SUPPRESS_FD_WARNINGS=1"}
	// A command that fails before logging must not leave the last one's log.
	if _, err := vm.Agent().Exec(ctx, proto.ExecReq{Argv: []string{"/usr/bin/rm", "-f", LVMLog}, TimeoutMS: vm.Scale(10 * time.Second).Milliseconds()}); err != nil {
		return "", fmt.Errorf("clearing LVM's log in the guest: %w", err)
	}
	resp, err := vm.Agent().Exec(ctx, proto.ExecReq{Argv: append([]string{"/usr/sbin/lvm"}, k.rewriteLVM(st.Argv)...),
		Env: env, TimeoutMS: vm.Scale(60 * time.Second).Milliseconds()})
	if err != nil {
		return "", fmt.Errorf("running lvm in the guest: %w", err)
	}
	k.dmMinor = nil // minors are reused
	logged, err := k.kmsg(ctx)
	if err != nil {
		return "", err
	}
	k.logCur = append(k.logCur, logged...)
	logResp, err := vm.Agent().Exec(ctx, proto.ExecReq{Argv: []string{"/usr/bin/cat", LVMLog}, TimeoutMS: vm.Scale(10 * time.Second).Milliseconds()})
	if err != nil {
		return "", fmt.Errorf("reading LVM's debug log in the guest: %w", err)
	}
	var ops []lvmlog.Op
	if logResp.Exit == 0 {
		if k.lvm == nil {
			k.lvm = lvmlog.NewParser()
		}
		if ops, err = k.lvm.Parse(strings.NewReader(logResp.Stdout)); err != nil {
			return "", fmt.Errorf("line %d: LVM's debug log: %w", st.Line, err)
		}
	}
	// Device numbers of disks stay: the simulator numbers its disks as
	// the guest does (254:0, 254:16, ...).
	lines, err := lvmlog.Lines(ops, func(d string) string { return d })
	if err != nil {
		return "", fmt.Errorf("line %d: %w", st.Line, err)
	}
	dm := make([]string, len(ops))
	for i, o := range ops {
		dm[i] = o.String()
		if o.Kind == "create" {
			k.dmNames[o.Name] = true
		}
	}
	exit := resp.Exit
	res := record.Result{Exit: &exit, Stdout: resp.Stdout, Stderr: resp.Stderr, Log: logged, DM: dm, DMLines: lines}
	msg := run.CheckDmsetup(st, resp.Stdout, resp.Stderr, resp.Exit, logged)
	return msg, x.guestResult(idx, st, res, msg)
}

// rewriteLVM turns a scenario disk's /dev/NAME in an LVM command line into
// its guest path.
func (k *kernelPlane) rewriteLVM(argv []string) []string {
	out := append([]string(nil), argv...)
	for i, a := range out {
		if name, ok := strings.CutPrefix(a, "/dev/"); ok {
			if p, ok := k.disks[name]; ok {
				out[i] = p
			}
		}
	}
	return out
}
