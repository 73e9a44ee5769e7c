package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"snaplab/vmtest/guest/proto"
	"snaplab/vmtest/machine"
)

// TCGSlowdown is the factor applied to every timeout when QEMU emulates
// the CPU.
const TCGSlowdown = 10

// VM is a running guest.
type VM struct {
	opts    *Options
	cmdline []string
	cmd     *exec.Cmd
	dir     string
	started time.Time

	console *machine.Ring
	stderr  *machine.Ring

	kernelRelease atomic.Pointer[string] // from the agent's ready message

	mon      *qmp.SocketMonitor
	monMu    sync.Mutex
	monDead  error
	agent    atomic.Pointer[proto.Client] // set once the channel is up (the boot watchdog reads it)
	slowdown float64
	kvm      bool
	choice   accelChoice

	consoleFile *machine.FileSink
	consoleName string
	keepConsole atomic.Bool            // keep consoleName when the VM ends
	ending      atomic.Bool            // Close or Kill was asked for: an exit is expected
	stall       atomic.Pointer[string] // the boot watchdog's diagnosis

	events machine.EventLog

	exited  chan struct{}
	exitErr error

	restored string // the saved state this guest was restored from ("" if booted)

	hp machine.Hotplug // disks, plugged through QMP

	killOnce sync.Once
	watchdog *time.Timer
}

// Event is a QMP event.
type Event = machine.Event

// BlockIOError is a BLOCK_IO_ERROR event's payload, with the serial of
// the disk whose node it names.
type BlockIOError = machine.BlockIOError

// ExitError reports a QEMU process that ended while the harness still
// needed it, with the console and QEMU's stderr for the diagnosis.
type ExitError struct {
	State   string // e.g. "signal: killed", "exit status 0"
	Console string // console tail
	Stderr  string
}

func (e *ExitError) Error() string {
	s := "qemu exited (" + e.State + ")"
	if e.Stderr != "" {
		s += "; stderr: " + strings.TrimSpace(e.Stderr)
	}
	return s + "; console tail:\n" + e.Console
}

// Start boots a VM. It chooses the accelerator first (see Accelerators in
// the package doc; auto may probe KVM once), then returns once QEMU runs
// and QMP and the agent channel are connected; use Ready to wait for the
// agent. With WithRestore it restores the guest from a saved state, or
// boots and saves it (see Restoring a saved guest in the package doc),
// and returns once the agent is ready. ctx bounds the start, including a
// KVM probe.
func Start(ctx context.Context, opts ...Option) (*VM, error) {
	o := defaultOptions()
	for _, f := range opts {
		if err := f(o); err != nil {
			return nil, err
		}
	}
	if o.envErr != nil {
		return nil, fmt.Errorf("qemu: %w", o.envErr)
	}
	if o.Kernel == "" || o.Initramfs == "" {
		return nil, errors.New("qemu: no kernel or initramfs (use WithImage)")
	}
	if o.Restore && len(o.BootDisks) > 0 {
		return nil, fmt.Errorf("qemu: WithRestore with boot disk %s: disks are not part of a saved guest; attach them after the start (AttachNBD on q35)", o.BootDisks[0].Serial)
	}
	if _, err := exec.LookPath(o.QEMU); err != nil {
		return nil, fmt.Errorf("qemu: %w (install qemu-system-x86: make deps)", err)
	}
	if o.AccelCache == "" {
		o.AccelCache = defaultAccelCache()
	}
	choice, err := chooseAccel(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	if choice.notice != "" {
		notify(o, choice.notice)
	}
	o.Logf("qemu: accelerator %s", choice.why)
	if o.Restore {
		if o.restoreOff != "" {
			o.Logf("qemu: not restoring a saved guest: %s", o.restoreOff)
		} else {
			return startRestore(ctx, o, choice)
		}
	}
	return start1(ctx, o, choice, launch{})
}

// defaultAccelCache is $SNAPLAB_CACHE, else the user's cache directory.
func defaultAccelCache() string {
	if c := os.Getenv("SNAPLAB_CACHE"); c != "" {
		return c
	}
	if c, err := os.UserCacheDir(); err == nil {
		return filepath.Join(c, "snaplab")
	}
	return filepath.Join(os.TempDir(), "snaplab-cache")
}

// launch is how start1 starts QEMU when it does not boot.
type launch struct {
	incoming *os.File // -incoming fd:3: the guest is restored from it
}

// slowdownFor is the timeout factor of a VM under choice.
func slowdownFor(o *Options, choice accelChoice) float64 {
	switch {
	case o.Slowdown != 0:
		return o.Slowdown
	case choice.accel == AccelTCG:
		return TCGSlowdown
	}
	return 1
}

// start1 boots with the accelerator already chosen.
func start1(ctx context.Context, o *Options, choice accelChoice, l launch) (_ *VM, err error) {
	dir, err := os.MkdirTemp("", "snaplab-vm-")
	if err != nil {
		return nil, err
	}
	vm := &VM{opts: o, dir: dir, console: machine.NewRing(4 << 20), stderr: machine.NewRing(256 << 10), choice: choice,
		exited: make(chan struct{})}
	vm.slowdown = slowdownFor(o, choice)
	vm.initHotplug()
	defer func() {
		if err != nil {
			err = vm.bootError("start", err)
			vm.Kill()
		}
	}()
	if err := vm.openConsoleFile(); err != nil {
		return nil, err
	}

	agentSock := filepath.Join(dir, "agent.sock")
	qmpSock := filepath.Join(dir, "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: agentSock, Net: "unix"})
	if err != nil {
		return nil, err
	}
	defer ln.Close()

	vm.cmdline = vm.buildArgs(agentSock, qmpSock)
	if l.incoming != nil {
		vm.cmdline = append(vm.cmdline, "-incoming", "fd:3")
	}
	vm.cmd = exec.Command(vm.cmdline[0], vm.cmdline[1:]...)
	if l.incoming != nil {
		vm.cmd.ExtraFiles = []*os.File{l.incoming} // fd 3
	}
	vm.cmd.Stdout = io.MultiWriter(append([]io.Writer{vm.console, vm.consoleFile}, o.SerialOutputs...)...)
	vm.cmd.Stderr = vm.stderr
	vm.cmd.Stdin = nil
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	o.Logf("qemu: %s", strings.Join(vm.cmdline, " "))
	vm.started = time.Now()
	if err := vm.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		err := vm.cmd.Wait()
		state := "exit status 0"
		if err != nil {
			state = err.Error()
		}
		vm.exitErr = &ExitError{State: state}
		close(vm.exited)
	}()
	vm.watchdog = time.AfterFunc(vm.Scale(o.VMTimeout), func() {
		o.Logf("qemu: VM timeout %v reached; killing", vm.Scale(o.VMTimeout))
		vm.keepConsole.Store(true)
		vm.Kill()
	})
	if o.BootStall > 0 && l.incoming == nil {
		// A restored guest prints nothing: it has booted already.
		go vm.watchBoot(vm.Scale(o.BootStall))
	}

	// QMP: QEMU creates the socket early; dial until it does.
	if err := vm.connectQMP(ctx, qmpSock); err != nil {
		return nil, err
	}
	// Agent channel: QEMU connects to us at startup.
	conn, err := vm.accept(ctx, ln)
	if err != nil {
		return nil, fmt.Errorf("agent channel: %w", err)
	}
	agent := proto.NewClient(conn)
	agent.MapErr = vm.mapAgentErr
	vm.agent.Store(agent)
	ln.Close()
	os.RemoveAll(dir) // both sockets are connected; nothing to leave behind

	out, err := vm.QMP(ctx, "query-kvm", nil)
	if err != nil {
		return nil, err
	}
	var kvm struct{ Enabled bool }
	if err := json.Unmarshal(out, &kvm); err != nil {
		return nil, fmt.Errorf("query-kvm reply %s: %w", out, err)
	}
	vm.kvm = kvm.Enabled
	return vm, nil
}

// StartT starts a VM for a test: it fails the test on error, and on
// cleanup kills the VM, logging the command line and console when the test
// failed. The start (with a KVM probe, if one is due) is bounded by the
// test's deadline.
func StartT(t testing.TB, opts ...Option) *VM {
	t.Helper()
	ctx := context.Background()
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, dl)
			defer cancel()
		}
	}
	vm, err := Start(ctx, append([]Option{WithLogf(t.Logf)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("qemu command line: %s", strings.Join(vm.cmdline, " "))
			t.Logf("console:\n%s", vm.Console())
		}
		vm.Kill()
	})
	return vm
}

func (vm *VM) buildArgs(agentSock, qmpSock string) []string {
	o := vm.opts
	a := []string{o.QEMU, "-accel", string(vm.choice.accel), "-nodefaults", "-no-user-config", "-display", "none",
		"-no-reboot", "-cpu", "max", "-smp", "1", "-m", strconv.Itoa(o.MemoryMB), "-serial", "stdio",
		"-qmp", "unix:" + qmpSock + ",server=on,wait=off",
		"-kernel", o.Kernel, "-initrd", o.Initramfs}
	appendArgs := KernelArgs()
	blk, vser := "virtio-blk-pci", "virtio-serial-pci"
	if o.Machine == "microvm" {
		a = append(a, "-machine", "microvm,pit=on,pic=on,rtc=on")
		blk, vser = "virtio-blk-device", "virtio-serial-device"
		if khz := hostTSCkHz(); khz > 0 {
			appendArgs = append(appendArgs, "tsc_early_khz="+strconv.Itoa(khz))
		}
	} else {
		a = append(a, "-machine", "q35")
		var buses []string
		for i := 0; i < o.HotplugSlots; i++ {
			a = append(a, "-device", fmt.Sprintf("pcie-root-port,id=hp%d,bus=pcie.0,chassis=%d", i, i+1))
			buses = append(buses, fmt.Sprintf("hp%d", i))
		}
		vm.hp.SetBuses(buses)
	}
	a = append(a, "-device", vser+",id=vser0",
		"-chardev", "socket,id=agent,path="+agentSock,
		"-device", "virtserialport,bus=vser0.0,chardev=agent,name="+proto.PortName)
	for _, d := range o.BootDisks {
		node := nodeName(d.Serial)
		vm.hp.Booted(d.Serial)
		bd := "driver=nbd,discard=unmap,server.type=unix,server.path=" + d.Socket + ",node-name=" + node
		if d.Export != "" {
			bd += ",export=" + d.Export
		}
		a = append(a, "-blockdev", bd, "-device",
			fmt.Sprintf("%s,drive=%s,id=%s,serial=%s,rerror=report,werror=report", blk, node, d.Serial, d.Serial))
	}
	a = append(a, "-append", strings.Join(append(appendArgs, o.Append...), " "))
	return append(a, o.QEMUArgs...)
}

// KernelArgs is the guest kernel's command line before the caller's
// additions: the console on ttyS0, no "quiet" and earlyprintk (a boot that
// stops early still leaves the kernel's messages up to that point on the
// console), panic=-1 (a panic reboots, which ends the guest), and no
// probing of the i8042 the machine does not have.
func KernelArgs() []string {
	return []string{"console=ttyS0", "earlyprintk=serial,ttyS0", "panic=-1", "i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd"}
}

func nodeName(serial string) string { return machine.NodeName(serial) }

// initHotplug connects the hot-plug logic to this VM's monitor and events.
func (vm *VM) initHotplug() {
	vm.hp.QMP = vm.QMP
	vm.hp.Mark = vm.events.Len
	vm.hp.WaitEvent = func(ctx context.Context, from int, name string, match func(map[string]any) bool) error {
		_, _, err := vm.WaitEvent(ctx, from, name, func(e Event) bool { return match(e.Data) })
		return err
	}
	vm.hp.Scale = vm.Scale
}

// hostTSCkHz reads the host's TSC rate from /proc/cpuinfo ("cpu MHz"),
// which TCG guests inherit; microvm needs it to boot reliably.
func hostTSCkHz() int {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil && mhz > 0 {
				return int(mhz) * 1000
			}
		}
	}
	return 0
}

func (vm *VM) connectQMP(ctx context.Context, sock string) error {
	deadline := time.Now().Add(vm.Scale(5 * time.Second))
	for {
		if _, err := os.Stat(sock); err == nil {
			mon, err := qmp.NewSocketMonitor("unix", sock, vm.Scale(time.Second))
			if err == nil {
				done := make(chan error, 1)
				go func() { done <- mon.Connect() }()
				select {
				case err = <-done:
				case <-ctx.Done():
					mon.Disconnect()
					return fmt.Errorf("QMP handshake: %w", ctx.Err())
				case <-vm.exited:
					mon.Disconnect()
					return errors.New("QMP handshake: qemu exited")
				case <-time.After(vm.Scale(3 * time.Second)):
					mon.Disconnect()
					return errors.New("QMP handshake timed out")
				}
				if err != nil {
					return fmt.Errorf("QMP handshake: %w", err)
				}
				evs, err := mon.Events(context.Background())
				if err != nil {
					return err
				}
				vm.mon = mon
				go vm.drainEvents(evs)
				return nil
			}
		}
		select {
		case <-vm.exited:
			return errors.New("qemu exited before its QMP socket appeared")
		case <-ctx.Done():
			return fmt.Errorf("waiting for the QMP socket: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no QMP socket %s after %v", sock, vm.Scale(5*time.Second))
		}
	}
}

func (vm *VM) accept(ctx context.Context, ln *net.UnixListener) (net.Conn, error) {
	deadline := time.Now().Add(vm.Scale(5 * time.Second))
	for {
		ln.SetDeadline(time.Now().Add(50 * time.Millisecond))
		c, err := ln.Accept()
		if err == nil {
			return c, nil
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return nil, err
		}
		select {
		case <-vm.exited:
			return nil, errors.New("qemu exited before connecting the agent channel")
		case <-ctx.Done():
			return nil, ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			return nil, errors.New("qemu did not connect the agent channel")
		}
	}
}

func (vm *VM) drainEvents(evs <-chan qmp.Event) {
	for e := range evs {
		ev := Event{Name: e.Event, Data: e.Data, Time: time.Now()}
		vm.events.Add(ev)
		vm.opts.Logf("qmp event: %s %v", ev.Name, ev.Data)
	}
}

// Events returns the QMP events received so far, in order.
func (vm *VM) Events() []Event { return vm.events.Events() }

// BlockIOErrors returns the BLOCK_IO_ERROR events received so far.
func (vm *VM) BlockIOErrors() []BlockIOError { return vm.events.BlockIOErrors() }

// WaitEvent waits for an event at index >= from (see len(Events())) named
// name for which match (may be nil) holds, and returns it with its index.
func (vm *VM) WaitEvent(ctx context.Context, from int, name string, match func(Event) bool) (Event, int, error) {
	return vm.events.Wait(ctx, from, name, match, vm.exited, vm.exitError)
}

// QMP runs a command with raw JSON arguments (nil for none) and returns
// the "return" value. A deadline applies even if ctx has none; a call that
// times out leaves the monitor unusable (go-qemu cannot resynchronise), so
// later calls fail at once.
func (vm *VM) QMP(ctx context.Context, execute string, args any) (json.RawMessage, error) {
	cmd, err := json.Marshal(qmp.Command{Execute: execute, Args: args})
	if err != nil {
		return nil, fmt.Errorf("QMP %s: encoding arguments: %w", execute, err)
	}
	vm.monMu.Lock()
	dead := vm.monDead
	vm.monMu.Unlock()
	if dead != nil {
		return nil, fmt.Errorf("QMP %s: %w", execute, dead)
	}
	if vm.mon == nil {
		return nil, fmt.Errorf("QMP %s: not connected", execute)
	}
	ctx, cancel := context.WithTimeout(ctx, vm.Scale(5*time.Second))
	defer cancel()
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := vm.mon.Run(cmd)
		done <- result{out, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			select {
			case <-vm.exited:
				return nil, fmt.Errorf("QMP %s: %v: %w", execute, r.err, vm.exitError())
			default:
			}
			return nil, fmt.Errorf("QMP %s: %w", execute, r.err)
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
		}
		if err := json.Unmarshal(r.out, &resp); err != nil {
			return nil, fmt.Errorf("QMP %s: reply %.200s: %w", execute, r.out, err)
		}
		return resp.Return, nil
	case <-vm.exited:
		return nil, fmt.Errorf("QMP %s: %w", execute, vm.exitError())
	case <-ctx.Done():
		vm.monMu.Lock()
		vm.monDead = fmt.Errorf("monitor abandoned after %s got no reply", execute)
		vm.monMu.Unlock()
		vm.mon.Disconnect()
		return nil, fmt.Errorf("QMP %s: no reply: %w", execute, ctx.Err())
	}
}

// Agent is the client of the guest agent.
func (vm *VM) Agent() *proto.Client { return vm.agent.Load() }

// readyTimeout bounds Ready (scaled) when the caller's context allows
// longer; the boot watchdog ends a stalled boot well before.
const readyTimeout = 60 * time.Second

// Ready waits for the agent's ready message (the guest booted, loaded its
// modules and opened the port) and returns it. It waits until the
// caller's deadline, at most readyTimeout (scaled); a failure is a
// *BootError.
func (vm *VM) Ready(ctx context.Context) (proto.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, vm.Scale(readyTimeout))
	defer cancel()
	r, err := vm.Agent().Ready(ctx)
	if err != nil {
		if vm.choice.fresh != nil {
			// TCG failed as well: the probe's verdict says nothing about KVM.
			dropVerdict(vm.choice.fresh)
		}
		return r, vm.bootError("ready", err)
	}
	vm.kernelRelease.Store(&r.Kernel)
	return r, nil
}

// KernelRelease is the guest kernel's release (uname -r) as its agent
// reported it when Ready returned; "" before.
func (vm *VM) KernelRelease() string {
	if p := vm.kernelRelease.Load(); p != nil {
		return *p
	}
	return ""
}

// BootError is a guest that did not get to agent-ready: the accelerator
// that ran and why it was chosen, what went wrong (one line), QEMU's
// stderr, the console's tail and the file holding the whole console.
type BootError struct {
	Accel       Accel
	AccelWhy    string
	Reason      string
	Stderr      string
	Console     string
	ConsoleFile string
	Err         error
}

func (e *BootError) Error() string {
	none := func(s string) string {
		if strings.TrimSpace(s) == "" {
			return "(empty)"
		}
		return s
	}
	var b strings.Builder
	fmt.Fprintf(&b, "guest boot under %s failed: %s\naccelerator: %s\nqemu stderr: %s\n", e.Accel, e.Reason, e.AccelWhy, none(strings.TrimSpace(e.Stderr)))
	if e.ConsoleFile != "" {
		fmt.Fprintf(&b, "whole console: %s\n", e.ConsoleFile)
	}
	fmt.Fprintf(&b, "console tail:\n%s", none(e.Console))
	return b.String()
}

func (e *BootError) Unwrap() error { return e.Err }

// bootError describes a failed boot; the console file is kept.
func (vm *VM) bootError(phase string, err error) error {
	var be *BootError
	if errors.As(err, &be) {
		return err
	}
	vm.keepConsole.Store(true)
	if vm.cmd != nil && vm.cmd.Process != nil {
		// Let an exit that is under way land, so its status is reported.
		select {
		case <-vm.exited:
		case <-time.After(200 * time.Millisecond):
		}
	}
	reason := ""
	if p := vm.stall.Load(); p != nil {
		reason = *p
	} else {
		select {
		case <-vm.exited:
			reason = "qemu exited (" + vm.exitErr.(*ExitError).State + ")"
			if l := firstLine(vm.stderr.String()); l != "" {
				reason += ": " + l
			}
		default:
			switch {
			case errors.Is(err, context.DeadlineExceeded) && phase == "ready":
				reason = fmt.Sprintf("no agent-ready message %v after qemu started", time.Since(vm.started).Round(100*time.Millisecond))
			default:
				reason = phase + ": " + firstLine(err.Error())
			}
		}
	}
	return &BootError{Accel: vm.choice.accel, AccelWhy: vm.choice.why, Reason: reason, Stderr: vm.stderr.String(),
		Console: machine.Tail(vm.console.String(), 40), ConsoleFile: vm.consoleName, Err: err}
}

func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return ""
}

// watchBoot kills a guest whose console stays silent for stall before the
// agent is ready.
func (vm *VM) watchBoot(stall time.Duration) {
	tick := time.NewTicker(min(stall/10, 250*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-vm.exited:
			return
		case <-tick.C:
		}
		if a := vm.Agent(); a != nil && a.IsReady() {
			return
		}
		if quiet := time.Since(vm.console.LastWrite(vm.started)); quiet > stall {
			last := firstLine(machine.Tail(vm.console.String(), 1))
			if last == "" {
				last = "(nothing at all)"
			}
			msg := fmt.Sprintf("boot stalled: no console output for %v under %s (last console line: %s)", stall, vm.choice.accel, last)
			vm.stall.Store(&msg)
			vm.keepConsole.Store(true)
			vm.opts.Logf("qemu: %s; killing", msg)
			vm.Kill()
			return
		}
	}
}

// openConsoleFile starts the file that receives the whole console.
func (vm *VM) openConsoleFile() error {
	path := vm.opts.ConsoleLog
	if path != "" {
		vm.keepConsole.Store(true)
	} else {
		dir := os.Getenv("SNAPLAB_ARTIFACTS")
		if dir != "" {
			vm.keepConsole.Store(true)
		} else {
			dir = filepath.Join(os.TempDir(), "snaplab-artifacts")
		}
		// Named after the program (vm.test, snaplab, ...), the time, the pid.
		prog := strings.TrimSuffix(filepath.Base(os.Args[0]), ".test")
		path = filepath.Join(dir, fmt.Sprintf("%s-%s-%d-%d.console.log", prog, time.Now().Format("20060102-150405"), os.Getpid(), consoleSeq.Add(1)))
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("console file: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("console file: %w", err)
	}
	vm.consoleFile = machine.NewFileSink(f)
	vm.consoleName = path
	return nil
}

var consoleSeq atomic.Int64

// mapAgentErr turns the agent connection's end into an ExitError when the
// reason is that QEMU went away.
func (vm *VM) mapAgentErr(err error) error {
	select {
	case <-vm.exited:
		return fmt.Errorf("%w: %w", err, vm.exitError())
	case <-time.After(vm.Scale(200 * time.Millisecond)):
		return err
	}
}

// Scale multiplies a KVM-sized timeout by the slowdown factor.
func (vm *VM) Scale(d time.Duration) time.Duration { return time.Duration(float64(d) * vm.slowdown) }

// Slowdown is the factor applied to timeouts (1 under KVM).
func (vm *VM) Slowdown() float64 { return vm.slowdown }

// KVM reports whether QEMU runs with KVM, as query-kvm says.
func (vm *VM) KVM() bool { return vm.kvm }

// Accel is the accelerator the VM runs under (AccelKVM or AccelTCG).
func (vm *VM) Accel() Accel { return vm.choice.accel }

// AccelReason says why that accelerator was chosen.
func (vm *VM) AccelReason() string { return vm.choice.why }

// ConsoleFile is the file receiving the whole console (see Console
// files in the package doc).
func (vm *VM) ConsoleFile() string { return vm.consoleName }

// Cmdline is the QEMU command line, for reproducing a run.
func (vm *VM) Cmdline() []string { return append([]string(nil), vm.cmdline...) }

// Pid is QEMU's process id.
func (vm *VM) Pid() int { return vm.cmd.Process.Pid }

// Console returns the captured serial console.
func (vm *VM) Console() string { return vm.console.String() }

// Restored is the saved state file the guest was restored from (see
// WithRestore), or "" when it booted.
func (vm *VM) Restored() string { return vm.restored }

// Started is when the QEMU process was started.
func (vm *VM) Started() time.Time { return vm.started }

// Exited is closed when the QEMU process has ended.
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

func (vm *VM) exitError() error {
	<-vm.exited
	if !vm.ending.Load() {
		vm.keepConsole.Store(true) // QEMU died on its own or was killed from outside
	}
	e := *vm.exitErr.(*ExitError)
	e.Console = machine.Tail(vm.console.String(), 40)
	e.Stderr = vm.stderr.String()
	return &e
}

// Wait waits for QEMU to exit and returns how it ended (nil for exit
// status 0).
func (vm *VM) Wait(ctx context.Context) error {
	select {
	case <-vm.exited:
		if e := vm.exitErr.(*ExitError); e.State != "exit status 0" {
			return vm.exitError()
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for qemu to exit: %w", ctx.Err())
	}
}

// Kill ends QEMU at once (SIGKILL to its process group), waits for it,
// and releases every resource. Safe to call more than once.
func (vm *VM) Kill() {
	vm.ending.Store(true)
	vm.killOnce.Do(func() {
		if vm.watchdog != nil {
			vm.watchdog.Stop()
		}
		if vm.cmd != nil && vm.cmd.Process != nil {
			syscall.Kill(-vm.cmd.Process.Pid, syscall.SIGKILL)
			<-vm.exited
		}
		if a := vm.Agent(); a != nil {
			a.Close()
		}
		if vm.mon != nil {
			vm.monMu.Lock()
			if vm.monDead == nil {
				vm.monDead = errors.New("VM killed")
			}
			vm.monMu.Unlock()
			vm.mon.Disconnect()
		}
		os.RemoveAll(vm.dir)
		if vm.consoleFile != nil {
			vm.consoleFile.Close()
			if !vm.keepConsole.Load() {
				os.Remove(vm.consoleName)
			}
		}
	})
}

// Close shuts the guest down cleanly when it can: poweroff through the
// agent, else QMP quit; it kills QEMU if neither ends it in time.
func (vm *VM) Close(ctx context.Context) error {
	vm.ending.Store(true)
	defer vm.Kill()
	select {
	case <-vm.exited:
		return nil
	default:
	}
	err := errors.New("agent not ready")
	if vm.Agent().IsReady() {
		pctx, cancel := context.WithTimeout(ctx, vm.Scale(2*time.Second))
		err = vm.Agent().Poweroff(pctx)
		cancel()
	}
	if err != nil {
		qctx, cancel := context.WithTimeout(ctx, vm.Scale(time.Second))
		vm.QMP(qctx, "quit", nil)
		cancel()
	}
	select {
	case <-vm.exited:
		return nil
	case <-time.After(vm.Scale(3 * time.Second)):
		return errors.New("qemu did not exit after poweroff/quit; killed")
	case <-ctx.Done():
		return ctx.Err()
	}
}
