package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"snaplab/vmtest/guest"
)

// Accel is the CPU accelerator a guest runs under.
type Accel string

const (
	// AccelAuto uses KVM once a probe has proved that the guest image
	// reaches agent-ready under KVM on this host, else TCG.
	AccelAuto Accel = "auto"
	// AccelKVM uses KVM, or fails fast with the reason KVM cannot run the
	// guest here.
	AccelKVM Accel = "kvm"
	// AccelTCG emulates the CPU in software (slow, works everywhere).
	AccelTCG Accel = "tcg"
)

// ParseAccel parses "auto", "kvm" or "tcg" ("" is auto).
func ParseAccel(s string) (Accel, error) {
	switch a := Accel(strings.ToLower(strings.TrimSpace(s))); a {
	case "":
		return AccelAuto, nil
	case AccelAuto, AccelKVM, AccelTCG:
		return a, nil
	}
	return "", fmt.Errorf("accelerator %q: want auto, kvm or tcg", s)
}

// Verdict is what a KVM probe found on this host, as cached in
// CACHE/accel/KEY.json. The key covers what the answer depends on: the
// QEMU binary and its version, the guest kernel, the host kernel and the
// KVM device (its device number and the kvm* modules behind it).
type Verdict struct {
	KVM         bool      `json:"kvm"`               // the guest reached agent-ready under KVM
	Reason      string    `json:"reason,omitempty"`  // why not, one line
	Console     string    `json:"console,omitempty"` // the failed probe's whole console
	Probed      time.Time `json:"probed"`
	Seconds     float64   `json:"probe_seconds"`
	QEMU        string    `json:"qemu"`
	QEMUVersion string    `json:"qemu_version"`
	Kernel      string    `json:"guest_kernel"`
	HostKernel  string    `json:"host_kernel"`
	Device      string    `json:"kvm_device"`

	file  string // where it is cached ("" when the cache is not writable)
	fresh bool   // probed by this process
}

// accelChoice is what a VM boots with and why.
type accelChoice struct {
	accel  Accel  // AccelKVM or AccelTCG
	why    string // one line for diagnoses
	notice string // printed once on a fallback to TCG, "" if none
	// fresh is a negative verdict this process just cached; it is dropped
	// again if the TCG boot fails too (then the image, not KVM, is at fault).
	fresh *Verdict
}

func (o *Options) accelSource() string {
	if o.AccelSource != "" {
		return o.AccelSource
	}
	return "WithAccel"
}

// chooseAccel resolves o.Accel to kvm or tcg, probing KVM when no verdict
// is cached for this host.
func chooseAccel(ctx context.Context, o *Options) (accelChoice, error) {
	if o.Accel == AccelTCG {
		return accelChoice{accel: AccelTCG, why: "tcg, as asked (" + o.accelSource() + ")"}, nil
	}
	dev, err := kvmDevice(o.KVMDevice)
	if err != nil {
		if o.Accel == AccelKVM {
			return accelChoice{}, fmt.Errorf("accelerator kvm required (%s), but KVM cannot run guests here: %v", o.accelSource(), err)
		}
		return accelChoice{accel: AccelTCG, why: fmt.Sprintf("tcg: %v", err),
			notice: fmt.Sprintf("snaplab: %v; guests run under TCG (software emulation, timeouts x%d)", err, TCGSlowdown)}, nil
	}
	v, err := verdict(ctx, o, dev)
	if err != nil {
		return accelChoice{}, err
	}
	where := ""
	if v.file != "" {
		where = ", cached in " + v.file
	}
	if v.KVM {
		return accelChoice{accel: AccelKVM, why: fmt.Sprintf("kvm: the guest reached agent-ready under KVM in %.1fs (probed %s%s)",
			v.Seconds, v.Probed.Format(time.RFC3339), where)}, nil
	}
	if o.Accel == AccelKVM {
		return accelChoice{}, fmt.Errorf("accelerator kvm required (%s), but KVM cannot run the guest on this host: %s", o.accelSource(), v.Reason)
	}
	c := accelChoice{accel: AccelTCG, why: fmt.Sprintf("tcg: KVM cannot run the guest here: %s (probed %s%s)", v.Reason, v.Probed.Format(time.RFC3339), where)}
	again := ""
	if v.file != "" {
		again = " or delete " + v.file + " to probe again"
	}
	c.notice = fmt.Sprintf("snaplab: KVM cannot run the guest on this host (%s); guests run under TCG, timeouts x%d. Set SNAPLAB_ACCEL=kvm to insist%s.",
		v.Reason, TCGSlowdown, again)
	if v.fresh {
		c.fresh = v
	}
	return c, nil
}

// kvmDevice checks that the KVM device opens read-write and describes it:
// its device number and the kvm* kernel modules loaded.
func kvmDevice(path string) (string, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	var mods []string
	ents, _ := os.ReadDir("/sys/module")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "kvm") {
			mods = append(mods, e.Name())
		}
	}
	sort.Strings(mods)
	return fmt.Sprintf("%s %d:%d modules [%s]", path, unix.Major(st.Rdev), unix.Minor(st.Rdev), strings.Join(mods, " ")), nil
}

var versions sync.Map // identity of a QEMU binary → its --version line

// qemuIdentity is the resolved binary and its version line.
func qemuIdentity(ctx context.Context, bin string) (string, string, error) {
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", "", err
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	fi, err := os.Stat(p)
	if err != nil {
		return "", "", err
	}
	id := fmt.Sprintf("%s %d %d", p, fi.Size(), fi.ModTime().UnixNano())
	if v, ok := versions.Load(id); ok {
		return p, v.(string), nil
	}
	vctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(vctx, p, "--version").Output()
	if err != nil {
		return "", "", fmt.Errorf("%s --version: %w", p, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	versions.Store(id, line)
	return p, line, nil
}

func fileIdentity(p string) string {
	fi, err := os.Stat(p)
	if err != nil {
		return p + " (missing)"
	}
	return fmt.Sprintf("%s %d %d", p, fi.Size(), fi.ModTime().UnixNano())
}

func hostKernel() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Version[:])
}

// verdict returns the cached verdict for this host, or probes and caches
// one. Concurrent processes wait for one another's probe (flock).
func verdict(ctx context.Context, o *Options, dev string) (*Verdict, error) {
	bin, version, err := qemuIdentity(ctx, o.QEMU)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	facts := Verdict{QEMU: bin, QEMUVersion: version, Kernel: fileIdentity(o.Kernel), HostKernel: hostKernel(), Device: dev}
	h := sha256.New()
	for _, s := range []string{facts.QEMU, facts.QEMUVersion, facts.Kernel, facts.HostKernel, facts.Device} {
		io.WriteString(h, s+"\n")
	}
	key := hex.EncodeToString(h.Sum(nil))[:16]

	dir := filepath.Join(o.AccelCache, "accel")
	unlock, err := guest.LockFile(ctx, filepath.Join(dir, key+".lock"))
	if err != nil {
		o.Logf("qemu: accelerator verdicts are not cached (%v)", err)
		v := probeKVM(ctx, o, facts)
		return &v, nil
	}
	defer unlock()
	file := filepath.Join(dir, key+".json")
	if b, err := os.ReadFile(file); err == nil {
		var v Verdict
		if json.Unmarshal(b, &v) == nil && (v.KVM || o.Accel != AccelKVM) {
			v.file = file
			return &v, nil
		}
		// kvm insisted on after a failed probe: probe again.
	}
	v := probeKVM(ctx, o, facts)
	if ctx.Err() != nil && !v.KVM {
		return nil, fmt.Errorf("probing KVM: %w", ctx.Err()) // not a verdict on KVM
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err == nil && os.Rename(tmp, file) == nil {
		v.file = file
	} else {
		o.Logf("qemu: caching the accelerator verdict in %s failed: %v", file, err)
	}
	v.fresh = true
	return &v, nil
}

// probeKVM boots the caller's guest image under KVM alone (q35, no disks)
// and waits for the agent's ready message within o.ProbeTimeout; the boot
// watchdog ends a boot that stops printing early.
func probeKVM(ctx context.Context, o *Options, facts Verdict) (v Verdict) {
	v = facts
	v.Probed = time.Now().UTC().Truncate(time.Second)
	po := *o
	po.Machine, po.HotplugSlots, po.BootDisks, po.SerialOutputs, po.ConsoleLog = "q35", 0, nil, nil, ""
	po.Slowdown, po.VMTimeout = 1, o.ProbeTimeout
	logf := o.Logf
	po.Logf = func(f string, a ...any) { logf("kvm probe: "+f, a...) }
	pctx, cancel := context.WithTimeout(ctx, o.ProbeTimeout)
	defer cancel()
	start := time.Now()
	defer func() { v.Seconds = roundSeconds(time.Since(start)) }()
	vm, err := start1(pctx, &po, accelChoice{accel: AccelKVM, why: "kvm probe"}, launch{})
	if err == nil {
		defer vm.Kill()
		_, err = vm.Ready(pctx)
	}
	if err != nil {
		v.Reason = oneLine(err)
		var be *BootError
		if errors.As(err, &be) {
			v.Console = be.ConsoleFile
		}
		logf("kvm probe: KVM cannot run the guest: %v", err)
		return v
	}
	v.KVM = true
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	vm.Close(cctx)
	ccancel()
	logf("kvm probe: the guest reached agent-ready under KVM in %.1fs", time.Since(start).Seconds())
	return v
}

func roundSeconds(d time.Duration) float64 {
	return float64(d.Round(100*time.Millisecond)) / float64(time.Second)
}

// oneLine is the reason an error gives, on one line: a BootError's
// Reason, else the error's first line.
func oneLine(err error) string {
	var be *BootError
	if errors.As(err, &be) {
		return be.Reason
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// dropVerdict removes a negative verdict this process cached when the
// TCG boot that followed failed too.
func dropVerdict(v *Verdict) {
	if v != nil && v.file != "" {
		os.Remove(v.file)
	}
}

var noticed sync.Map // notices already printed to os.Stderr

// notify prints a fallback notice: once per process on os.Stderr (the
// default), every time on a writer set with WithNoticeOutput.
func notify(o *Options, msg string) {
	o.Logf("%s", msg)
	if o.Notice != nil {
		fmt.Fprintln(o.Notice, msg)
		return
	}
	if _, dup := noticed.LoadOrStore(msg, true); !dup {
		fmt.Fprintln(os.Stderr, msg)
	}
}

// ChooseAccel decides the accelerator a guest started with opts would run
// under, as Start does (see Accelerators: auto may probe KVM once, and
// prints the fallback notice), without starting it; it returns the
// accelerator and one line saying why. Other backends that run the guest
// on this host (vmtest/libvirt) use it.
func ChooseAccel(ctx context.Context, opts ...Option) (Accel, string, error) {
	o := defaultOptions()
	for _, f := range opts {
		if err := f(o); err != nil {
			return "", "", err
		}
	}
	if o.envErr != nil {
		return "", "", fmt.Errorf("qemu: %w", o.envErr)
	}
	if o.AccelCache == "" {
		o.AccelCache = defaultAccelCache()
	}
	c, err := chooseAccel(ctx, o)
	if err != nil {
		return "", "", err
	}
	if c.notice != "" {
		notify(o, c.notice)
	}
	return c.accel, c.why, nil
}
