// Package qemu starts and controls snaplab's test guests under QEMU, in the
// style of hugelgupf/vmtest: Start / StartT with functional options.
//
// # What a VM is
//
// qemu-system-x86_64 with one accelerator (see Accelerators), -nodefaults,
// -no-reboot, `panic=-1`, `-cpu max`, booting an Image (vmlinux via PVH +
// initramfs from vmtest/guest) whose /init is the snaplab agent. Three
// channels:
//
//   - the serial console (ttyS0) on QEMU's stdio, with the kernel's early
//     messages (earlyprintk, no `quiet`), kept in memory (Console), streamed
//     to a file (ConsoleFile) and optionally copied to writers
//     (WithSerialOutput);
//   - QMP on a unix socket, driven through go-qemu's qmp package with raw
//     JSON commands, a deadline on every call, and events drained
//     continuously into the VM's event log (Events, WaitEvent);
//   - the agent's virtio-serial port (proto.PortName); QEMU connects to a
//     socket the host listens on, so the port is connected before the
//     guest opens it. Agent returns the typed client.
//
// Sockets live in a private temp dir that is removed as soon as both
// connections are up; nothing is left on disk even if the test process is
// killed later.
//
// # Accelerators
//
// A /dev/kvm that opens is not proof that KVM runs the guest: nested hosts
// (kvm_pvm, flaky nested virtualisation, containers) can open it and then
// abort or hang the guest with an empty console, and QEMU's `-accel kvm
// -accel tcg` falls back only when /dev/kvm cannot be opened. So:
//
//   - tcg: always TCG.
//   - auto (the default): TCG when the KVM device does not open. Otherwise
//     KVM only once a probe proved it: the caller's guest image booted under
//     KVM alone (q35, no disks) reached agent-ready within the probe
//     timeout. The verdict is cached in CACHE/accel/KEY.json, keyed by the
//     QEMU binary and version, the guest kernel, the host kernel and the
//     KVM device (its number and the kvm* modules), so a failed probe costs
//     seconds once. Concurrent processes wait for one probe (flock). A
//     fallback prints one line on stderr (once per process): what failed,
//     that TCG is used, and how to insist.
//   - kvm: KVM or a fast, clear error (no KVM device, or the probe failed;
//     a cached failure is probed again).
//
// VM.Accel says which one runs, VM.AccelReason why, VM.KVM what QEMU's
// query-kvm reports.
//
// # Options (defaults)
//
//	WithImage(img)              kernel + initramfs (required, or WithKernel/WithInitramfs)
//	WithAccel(a)                AccelAuto, AccelKVM or AccelTCG (auto, or $SNAPLAB_ACCEL)
//	WithKVMDevice(path)         the KVM device checked and keyed on (/dev/kvm)
//	WithAccelCache(dir)         where verdicts and saved guests are cached (the image's
//	                            cache dir, else $SNAPLAB_CACHE, else the user cache dir)
//	WithProbeTimeout(d)         the KVM probe's limit to agent-ready (20s)
//	WithBootStall(d)            the boot watchdog: a boot that prints nothing on
//	                            the console for d (scaled) is killed (5s)
//	WithMachine("q35")          "q35" (hot-plug through pcie-root-ports) or "microvm"
//	                            (fastest boot; adds tsc_early_khz; disks only at boot)
//	WithMemory(256)             MiB
//	WithHotplugSlots(4)         pcie-root-ports for AttachNBD (q35)
//	WithBootDisk(serial, sock, export)  an NBD disk present at boot
//	WithAppend(args...)         kernel command line additions
//	WithQEMUArgs(args...)       extra QEMU arguments
//	WithSerialOutput(w...)      copies of the console
//	WithConsoleLog(path)        the whole console is written to path and kept
//	WithNoticeOutput(w)         where the TCG fallback line goes (os.Stderr)
//	WithVMTimeout(d)            overall life limit, scaled by the slowdown
//	                            (default 10 min); the VM is killed after it
//	WithSlowdown(f)             override the slowdown factor (timeouts only)
//	WithRestore(false)          true: restore a saved, booted guest instead of booting
//	                            (see Restoring a saved guest); not with WithBootDisk
//	WithLogf(f)                 harness messages
//
// Environment: SNAPLAB_QEMU overrides the binary, SNAPLAB_ACCEL the
// accelerator, SNAPLAB_VM_SLOWDOWN the slowdown factor, SNAPLAB_ARTIFACTS
// the directory for console files, SNAPLAB_RESTORE=off makes WithRestore
// boot.
//
// # Restoring a saved guest
//
// With WithRestore(true), Start restores the guest from a saved state
// instead of booting it: QEMU starts with the same command line plus
// `-incoming fd:3`, loads the state (a guest booted to agent-ready, about
// 70 MiB) and runs it on at once; the agent, which announced readiness to
// the host that saved it, answers a resume request instead (it sets the
// guest's wall clock to the host's: the guest's monotonic clocks and
// timers carry on from the save, as QEMU migrates them). Start returns
// once the agent is ready, in about 0.3 s under TCG against about 2 s for
// a boot. The guest is the one that booted: the same kernel, modules,
// kernel log and uptime; its console shows nothing of the boot. Disks are
// not part of the state: attach them after the start (AttachNBD), so
// WithBootDisk is refused.
//
// The state is CACHE/restore/KEY.state, with what it was saved from in
// KEY.json. KEY hashes everything that shapes the guest: the QEMU binary
// (resolved path, size, mtime) and its version, the accelerator, the guest
// kernel and initramfs (path, size, mtime), QEMU's whole command line
// (machine, memory, hot-plug slots, kernel arguments, WithQEMUArgs), and
// under KVM the host kernel, the KVM device and the host CPU; options that
// only shape the harness (timeouts, console files, logs) are not in it.
// When there is no state for the key, Start boots, waits for the agent,
// migrates the running guest to a unix socket whose stream goes into a
// temporary file, lets the guest run on and renames the file into place,
// so processes that save at once each write a whole file and the last
// rename wins. The cache keeps the 6 most recently used states.
//
// A state that does not restore (a truncated file, caught before QEMU
// starts, or one QEMU refuses) is removed, and Start boots and saves it
// again: a bad state costs one failed restore, never a failed start. After
// two failed restores or saves of one key in a row, restores of that key
// are given up, with one line on stderr, until its KEY.json is deleted.
// VM.Restored names the state a guest was restored from.
//
// # Console files
//
// Every VM streams its whole console to a file: the WithConsoleLog path,
// else a new file under $SNAPLAB_ARTIFACTS (kept), else under
// TMPDIR/snaplab-artifacts, where it is kept only when the boot failed, the
// VM timeout struck, or QEMU ended without Close or Kill asking it to; it
// is removed otherwise. Boot errors name the file.
//
// # Timeouts
//
// Every timeout the package uses is written for KVM and multiplied by one
// slowdown factor: 1 under KVM, 10 under TCG (syzkaller's figure). VM.Scale
// applies it to the caller's own timeouts. Waits also end at the caller's
// context deadline (StartT uses t.Deadline()); a boot is bounded by both,
// and by the boot watchdog.
//
// # Cleanup
//
// QEMU runs in its own process group with Pdeathsig=SIGKILL, so it dies
// with the test process; StartT registers Kill with t.Cleanup and logs the
// console and command line when the test failed. Close powers the guest
// off through the agent, then QMP quit, then SIGKILL.
package qemu

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"snaplab/vmtest/guest"
	"snaplab/vmtest/machine"
)

// Options is the VM configuration assembled by the Option functions.
type Options struct {
	QEMU          string
	Accel         Accel
	AccelSource   string // who asked for Accel, for messages ("SNAPLAB_ACCEL", "-accel")
	KVMDevice     string
	AccelCache    string
	ProbeTimeout  time.Duration
	BootStall     time.Duration
	ConsoleLog    string
	Notice        io.Writer
	Kernel        string
	Initramfs     string
	Machine       string
	MemoryMB      int
	HotplugSlots  int
	Append        []string
	QEMUArgs      []string
	BootDisks     []NBDDisk
	SerialOutputs []io.Writer
	VMTimeout     time.Duration
	Slowdown      float64 // 0: from query-kvm
	Restore       bool    // start from a saved, booted state (see Restoring a saved guest)
	Logf          func(string, ...any)

	envErr     error  // a bad SNAPLAB_* value, reported by Start
	restoreOff string // why Restore is ignored (SNAPLAB_RESTORE=off), "" if it is not
	restoreDir string // where saved states live; "" is AccelCache/restore (tests set it)
}

// NBDDisk is a disk served over NBD on a unix socket.
type NBDDisk struct {
	Serial string // virtio serial, also the QEMU device id
	Socket string
	Export string
}

// Option changes Options.
type Option func(*Options) error

// WithImage boots a guest image from vmtest/guest.
func WithImage(img *guest.Image) Option {
	return func(o *Options) error {
		if img == nil {
			return fmt.Errorf("WithImage: nil image")
		}
		o.Kernel, o.Initramfs = img.Kernel, img.Initramfs
		if o.AccelCache == "" {
			o.AccelCache = img.CacheDir
		}
		return nil
	}
}

// WithAccel chooses the accelerator: AccelAuto, AccelKVM or AccelTCG.
func WithAccel(a Accel) Option {
	return func(o *Options) error {
		a, err := ParseAccel(string(a))
		if err != nil {
			return err
		}
		o.Accel, o.AccelSource = a, "WithAccel"
		return nil
	}
}

// WithAccelFrom is WithAccel naming who asked (e.g. "-accel"), for messages.
func WithAccelFrom(a Accel, source string) Option {
	return func(o *Options) error {
		if err := WithAccel(a)(o); err != nil {
			return fmt.Errorf("%s: %w", source, err)
		}
		o.AccelSource = source
		return nil
	}
}

// WithKVMDevice sets the KVM device that auto and kvm check (default
// /dev/kvm).
func WithKVMDevice(path string) Option {
	return func(o *Options) error { o.KVMDevice = path; return nil }
}

// WithAccelCache sets the directory whose accel/ subdirectory holds the
// cached KVM verdicts.
func WithAccelCache(dir string) Option {
	return func(o *Options) error { o.AccelCache = dir; return nil }
}

// WithProbeTimeout limits the KVM probe (boot to agent-ready).
func WithProbeTimeout(d time.Duration) Option {
	return func(o *Options) error {
		if d <= 0 {
			return fmt.Errorf("probe timeout %v: must be positive", d)
		}
		o.ProbeTimeout = d
		return nil
	}
}

// WithBootStall sets the boot watchdog: a guest that prints nothing on its
// console for d (KVM-sized, scaled by the slowdown) before the agent is
// ready is killed, with that diagnosis. 0 turns the watchdog off.
func WithBootStall(d time.Duration) Option {
	return func(o *Options) error {
		if d < 0 {
			return fmt.Errorf("boot stall %v: must not be negative", d)
		}
		o.BootStall = d
		return nil
	}
}

// WithConsoleLog writes the whole console to path (kept).
func WithConsoleLog(path string) Option {
	return func(o *Options) error { o.ConsoleLog = path; return nil }
}

// WithNoticeOutput sends the line printed on a fallback to TCG to w
// (default: os.Stderr, once per process).
func WithNoticeOutput(w io.Writer) Option {
	return func(o *Options) error { o.Notice = w; return nil }
}

// WithKernel sets the kernel (vmlinux or bzImage).
func WithKernel(p string) Option { return func(o *Options) error { o.Kernel = p; return nil } }

// WithInitramfs sets the initramfs.
func WithInitramfs(p string) Option { return func(o *Options) error { o.Initramfs = p; return nil } }

// WithMachine selects "q35" or "microvm".
func WithMachine(m string) Option {
	return func(o *Options) error {
		if m != "q35" && m != "microvm" {
			return fmt.Errorf("machine %q: want q35 or microvm", m)
		}
		o.Machine = m
		return nil
	}
}

// WithMemory sets guest memory in MiB.
func WithMemory(mb int) Option {
	return func(o *Options) error {
		if mb < 64 {
			return fmt.Errorf("memory %d MiB: need at least 64", mb)
		}
		o.MemoryMB = mb
		return nil
	}
}

// WithHotplugSlots sets how many pcie-root-ports q35 gets for AttachNBD.
func WithHotplugSlots(n int) Option {
	return func(o *Options) error {
		if n < 0 || n > 30 {
			return fmt.Errorf("hot-plug slots %d: want 0..30", n)
		}
		o.HotplugSlots = n
		return nil
	}
}

// WithBootDisk attaches an NBD disk at boot.
func WithBootDisk(serial, socket, export string) Option {
	return func(o *Options) error {
		if err := checkSerial(serial); err != nil {
			return err
		}
		o.BootDisks = append(o.BootDisks, NBDDisk{serial, socket, export})
		return nil
	}
}

// WithAppend adds kernel command line arguments.
func WithAppend(args ...string) Option {
	return func(o *Options) error { o.Append = append(o.Append, args...); return nil }
}

// WithQEMUArgs adds QEMU arguments.
func WithQEMUArgs(args ...string) Option {
	return func(o *Options) error { o.QEMUArgs = append(o.QEMUArgs, args...); return nil }
}

// WithSerialOutput copies the console to w.
func WithSerialOutput(w ...io.Writer) Option {
	return func(o *Options) error { o.SerialOutputs = append(o.SerialOutputs, w...); return nil }
}

// WithVMTimeout limits the VM's life (before scaling).
func WithVMTimeout(d time.Duration) Option {
	return func(o *Options) error { o.VMTimeout = d; return nil }
}

// WithSlowdown fixes the slowdown factor instead of deriving it.
func WithSlowdown(f float64) Option {
	return func(o *Options) error {
		if f < 1 {
			return fmt.Errorf("slowdown %v: must be >= 1", f)
		}
		o.Slowdown = f
		return nil
	}
}

// WithRestore(true) starts the guest by restoring a saved state of the
// same guest, booted to agent-ready, instead of booting it; the state is
// saved in the cache on first use and saved again whenever anything that
// shapes the guest changes (see Restoring a saved guest in the package
// doc). Start then returns once the agent is ready. Not with WithBootDisk:
// attach disks after the start. false (the default) boots.
func WithRestore(on bool) Option {
	return func(o *Options) error { o.Restore = on; return nil }
}

// WithLogf receives harness messages.
func WithLogf(f func(string, ...any)) Option {
	return func(o *Options) error { o.Logf = f; return nil }
}

// checkSerial enforces what both QEMU (device ids) and virtio-blk (20-byte
// serials) accept.
func checkSerial(s string) error { return machine.CheckSerial(s) }

func defaultOptions() *Options {
	o := &Options{QEMU: "qemu-system-x86_64", Accel: AccelAuto, KVMDevice: "/dev/kvm",
		ProbeTimeout: 20 * time.Second, BootStall: 5 * time.Second, Machine: "q35", MemoryMB: 256, HotplugSlots: 4,
		VMTimeout: 10 * time.Minute, Logf: func(string, ...any) {}}
	if q := os.Getenv("SNAPLAB_QEMU"); q != "" {
		o.QEMU = q
	}
	if s := os.Getenv("SNAPLAB_ACCEL"); s != "" {
		a, err := ParseAccel(s)
		if err != nil {
			o.envErr = fmt.Errorf("SNAPLAB_ACCEL: %w", err)
		}
		o.Accel, o.AccelSource = a, "SNAPLAB_ACCEL="+s
	}
	switch s := os.Getenv("SNAPLAB_RESTORE"); s {
	case "":
	case "off":
		o.restoreOff = "SNAPLAB_RESTORE=off"
	default:
		o.envErr = fmt.Errorf("SNAPLAB_RESTORE=%q: want off, or unset", s)
	}
	if s := os.Getenv("SNAPLAB_VM_SLOWDOWN"); s != "" {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || f < 1 {
			o.envErr = fmt.Errorf("SNAPLAB_VM_SLOWDOWN=%q: want a number >= 1", s)
		}
		o.Slowdown = f
	}
	return o
}
