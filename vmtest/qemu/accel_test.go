package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

// standIn writes a stand-in for qemu-system-x86_64 whose KVM boots hang
// the way they do on hosts where /dev/kvm opens but cannot run the guest
// (kvm_pvm, broken nested KVM): QEMU starts, QMP and the agent channel
// connect, and the console stays empty, because the vCPU never runs
// (`-accel kvm` becomes `-accel tcg -S`). Every other invocation is the
// real QEMU. Each KVM boot appends a line to the returned log.
func standIn(dir string) (bin, log string) {
	real, err := exec.LookPath("qemu-system-x86_64")
	Expect(err).NotTo(HaveOccurred(), "qemu-system-x86_64 (make deps installs qemu-system-x86)")
	bin, log = filepath.Join(dir, "qemu-kvm-hangs"), filepath.Join(dir, "kvm-boots.log")
	script := fmt.Sprintf(`#!/bin/bash
args=() prev= kvm=0
for a in "$@"; do
  if [ "$prev" = -accel ] && [ "$a" = kvm ]; then args+=(tcg -S); kvm=1; else args+=("$a"); fi
  prev=$a
done
[ $kvm = 1 ] && echo "kvm boot" >> %q
exec %q "${args[@]}"
`, log, real)
	Expect(os.WriteFile(bin, []byte(script), 0o755)).To(Succeed())
	return bin, log
}

func lines(path string) int {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	Expect(err).NotTo(HaveOccurred())
	return strings.Count(string(b), "\n")
}

var _ = Describe("accelerator choice", func() {
	var (
		dir, bin, kvmLog, cache string
		notice                  *bytes.Buffer
	)
	BeforeEach(func() {
		dir = GinkgoT().TempDir()
		bin, kvmLog = standIn(dir)
		cache = filepath.Join(dir, "cache")
		notice = &bytes.Buffer{}
		GinkgoT().Setenv("SNAPLAB_QEMU", bin)
		GinkgoT().Setenv("SNAPLAB_ACCEL", "")
		GinkgoT().Setenv("SNAPLAB_VM_SLOWDOWN", "")
		GinkgoT().Setenv("SNAPLAB_ARTIFACTS", filepath.Join(dir, "artifacts")) // failed probes keep their consoles
	})
	// /dev/null stands for a KVM device that opens, on every host.
	opts := func(extra ...Option) []Option {
		return append([]Option{WithImage(img), WithLogf(logf), WithKVMDevice("/dev/null"), WithAccelCache(cache),
			WithNoticeOutput(notice)}, extra...)
	}

	It("auto: a KVM that hangs the guest makes it choose TCG, say so once, and cache the verdict", func(ctx SpecContext) {
		start := time.Now()
		vm, err := Start(ctx, opts()...)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(vm.Kill)
		probe := time.Since(start)
		Expect(lines(kvmLog)).To(Equal(1), "one KVM probe boot")
		Expect(probe).To(BeNumerically("<", 20*time.Second), "the probe ends at the boot watchdog, not at a long timeout")
		Expect(vm.Accel()).To(Equal(AccelTCG))
		Expect(vm.KVM()).To(BeFalse())
		Expect(vm.Slowdown()).To(BeEquivalentTo(TCGSlowdown))
		Expect(vm.AccelReason()).To(ContainSubstring("boot stalled: no console output for 5s under kvm"))
		Expect(strings.Split(strings.TrimSpace(notice.String()), "\n")).To(HaveLen(1), "one line: %q", notice.String())
		Expect(notice.String()).To(SatisfyAll(ContainSubstring("KVM cannot run the guest on this host"),
			ContainSubstring("guests run under TCG"), ContainSubstring("SNAPLAB_ACCEL=kvm")))
		_, err = vm.Ready(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(vm.Cmdline()).To(ContainElements("-accel", "tcg"))
		Expect(vm.Cmdline()).NotTo(ContainElement("kvm"))
		Expect(vm.Close(ctx)).To(Succeed())

		verdicts, _ := filepath.Glob(filepath.Join(cache, "accel", "*.json"))
		Expect(verdicts).To(HaveLen(1))
		b, err := os.ReadFile(verdicts[0])
		Expect(err).NotTo(HaveOccurred())
		Expect(string(b)).To(SatisfyAll(ContainSubstring(`"kvm": false`), ContainSubstring("boot stalled"), ContainSubstring(`"kvm_device": "/dev/null 1:3`),
			ContainSubstring(`"console": "`+filepath.Join(dir, "artifacts"))))

		// The next start reads the verdict: no probe.
		vm2, err := Start(ctx, opts()...)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(vm2.Kill)
		Expect(lines(kvmLog)).To(Equal(1), "a second probe ran")
		Expect(vm2.Accel()).To(Equal(AccelTCG))
		Expect(vm2.AccelReason()).To(ContainSubstring("cached in " + verdicts[0]))
		_, err = vm2.Ready(ctx)
		Expect(err).NotTo(HaveOccurred())
	}, SpecTimeout(5*time.Minute))

	It("kvm: fails fast and clearly where KVM cannot run the guest", func(ctx SpecContext) {
		GinkgoT().Setenv("SNAPLAB_ACCEL", "kvm")
		start := time.Now()
		_, err := Start(ctx, opts()...)
		Expect(err).To(HaveOccurred())
		Expect(time.Since(start)).To(BeNumerically("<", 20*time.Second))
		Expect(err.Error()).To(SatisfyAll(ContainSubstring("accelerator kvm required (SNAPLAB_ACCEL=kvm)"),
			ContainSubstring("KVM cannot run the guest on this host"), ContainSubstring("boot stalled")))
		Expect(lines(kvmLog)).To(Equal(1))

		// Without a KVM device it fails at once, naming the device.
		start = time.Now()
		_, err = Start(ctx, opts(WithKVMDevice(filepath.Join(dir, "no-kvm")))...)
		Expect(err).To(MatchError(ContainSubstring("accelerator kvm required (SNAPLAB_ACCEL=kvm), but KVM cannot run guests here: open " + filepath.Join(dir, "no-kvm") + ": no such file or directory")))
		Expect(time.Since(start)).To(BeNumerically("<", 2*time.Second))
		Expect(lines(kvmLog)).To(Equal(1))
	}, SpecTimeout(2*time.Minute))

	It("auto without a KVM device uses TCG without probing, and says why", func(ctx SpecContext) {
		vm, err := Start(ctx, opts(WithKVMDevice(filepath.Join(dir, "no-kvm")))...)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(vm.Kill)
		Expect(vm.Accel()).To(Equal(AccelTCG))
		Expect(lines(kvmLog)).To(BeZero())
		Expect(notice.String()).To(ContainSubstring("no-kvm: no such file or directory; guests run under TCG"))
		_, err = vm.Ready(ctx)
		Expect(err).NotTo(HaveOccurred())
	}, SpecTimeout(3*time.Minute))

	It("tcg: never probes, never prints", func(ctx SpecContext) {
		vm, err := Start(ctx, opts(WithAccel(AccelTCG))...)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(vm.Kill)
		Expect(vm.Accel()).To(Equal(AccelTCG))
		Expect(lines(kvmLog)).To(BeZero())
		Expect(notice.String()).To(BeEmpty())
	}, SpecTimeout(time.Minute))

	It("SNAPLAB_VM_SLOWDOWN changes timeouts, not what KVM() reports", func(ctx SpecContext) {
		GinkgoT().Setenv("SNAPLAB_VM_SLOWDOWN", "3")
		vm, err := Start(ctx, opts(WithAccel(AccelTCG))...)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(vm.Kill)
		Expect(vm.Slowdown()).To(BeEquivalentTo(3))
		Expect(vm.KVM()).To(BeFalse())
		Expect(vm.Accel()).To(Equal(AccelTCG))
	}, SpecTimeout(time.Minute))

	It("rejects bad accelerator settings by name", func(ctx SpecContext) {
		GinkgoT().Setenv("SNAPLAB_ACCEL", "hvf")
		_, err := Start(ctx, opts()...)
		Expect(err).To(MatchError(ContainSubstring(`SNAPLAB_ACCEL: accelerator "hvf": want auto, kvm or tcg`)))
		GinkgoT().Setenv("SNAPLAB_ACCEL", "")
		GinkgoT().Setenv("SNAPLAB_VM_SLOWDOWN", "fast")
		_, err = Start(ctx, opts()...)
		Expect(err).To(MatchError(ContainSubstring(`SNAPLAB_VM_SLOWDOWN="fast": want a number >= 1`)))
		Expect(WithAccel("xen")(defaultOptions())).To(MatchError(ContainSubstring(`accelerator "xen"`)))
	})
})

var _ = Describe("a boot that fails", func() {
	It("says which accelerator ran, shows QEMU's stderr and the kernel's console, and keeps the whole console", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		consoleLog := filepath.Join(dir, "console.log")
		// No /init to run: the kernel boots, then panics (panic=-1 ends QEMU).
		vm, err := Start(ctx, WithImage(img), WithLogf(logf), WithAccel(AccelTCG), WithConsoleLog(consoleLog),
			WithAppend("rdinit=/no-such-init", "init=/no-such-init"))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(vm.Kill)
		_, err = vm.Ready(ctx)
		var be *BootError
		Expect(errors.As(err, &be)).To(BeTrue(), "%v", err)
		Expect(be.Accel).To(Equal(AccelTCG))
		Expect(be.Reason).To(HavePrefix("qemu exited"))
		Expect(be.Console).To(ContainSubstring("Kernel panic"))
		Expect(be.ConsoleFile).To(Equal(consoleLog))
		Expect(err.Error()).To(SatisfyAll(ContainSubstring("guest boot under tcg failed: qemu exited"),
			ContainSubstring("accelerator: tcg, as asked (WithAccel)"), ContainSubstring("qemu stderr:"),
			ContainSubstring("whole console: "+consoleLog)))
		vm.Kill()
		whole, err := os.ReadFile(consoleLog)
		Expect(err).NotTo(HaveOccurred())
		// earlyprintk and no "quiet": the file starts at the kernel's first line.
		Expect(string(whole)).To(SatisfyAll(ContainSubstring("Linux version "), ContainSubstring("DMI:"), ContainSubstring("Kernel panic")))
	}, SpecTimeout(3*time.Minute))

	It("a console that stops is ended by the boot watchdog with that diagnosis", func(ctx SpecContext) {
		// -S: QEMU up, the vCPU never runs, the console stays empty.
		GinkgoT().Setenv("SNAPLAB_ARTIFACTS", GinkgoT().TempDir())
		vm, err := Start(ctx, WithImage(img), WithLogf(logf), WithAccel(AccelTCG), WithBootStall(time.Second), WithQEMUArgs("-S"))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(vm.Kill)
		start := time.Now()
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		_, err = vm.Ready(rctx)
		Expect(err).To(MatchError(ContainSubstring("boot stalled: no console output for 10s under tcg (last console line: (nothing at all))")))
		Expect(time.Since(start)).To(BeNumerically("<", 30*time.Second))
		_, statErr := os.Stat(vm.ConsoleFile())
		Expect(statErr).NotTo(HaveOccurred(), "a failed boot keeps its console file")
	}, SpecTimeout(2*time.Minute))
})

var _ = Describe("console files", func() {
	It("are removed after a clean close and kept when QEMU dies, unless SNAPLAB_ARTIFACTS keeps them all", func(ctx SpecContext) {
		tmp := GinkgoT().TempDir()
		GinkgoT().Setenv("TMPDIR", tmp)
		GinkgoT().Setenv("SNAPLAB_ARTIFACTS", "")
		boot := func() *VM {
			vm, err := Start(ctx, WithImage(img), WithLogf(logf), WithAccel(AccelTCG))
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(vm.Kill)
			_, err = vm.Ready(ctx)
			Expect(err).NotTo(HaveOccurred())
			return vm
		}
		clean := boot()
		Expect(clean.ConsoleFile()).To(HavePrefix(filepath.Join(tmp, "snaplab-artifacts") + "/qemu-"))
		Expect(clean.Close(ctx)).To(Succeed())
		Expect(clean.ConsoleFile()).NotTo(BeAnExistingFile())

		died := boot()
		Expect(syscall.Kill(died.Pid(), syscall.SIGKILL)).To(Succeed())
		Expect(died.Wait(ctx)).To(MatchError(ContainSubstring("killed")))
		died.Kill()
		Expect(died.ConsoleFile()).To(BeAnExistingFile())
		b, err := os.ReadFile(died.ConsoleFile())
		Expect(err).NotTo(HaveOccurred())
		Expect(string(b)).To(ContainSubstring("snaplab-guest: agent on"))

		keep := filepath.Join(tmp, "keep")
		GinkgoT().Setenv("SNAPLAB_ARTIFACTS", keep)
		kept := boot()
		Expect(kept.ConsoleFile()).To(HavePrefix(keep + "/qemu-"))
		Expect(kept.Close(ctx)).To(Succeed())
		Expect(kept.ConsoleFile()).To(BeAnExistingFile())
	}, SpecTimeout(3*time.Minute))
})
