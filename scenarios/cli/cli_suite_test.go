// The CLI suite: the snaplab command, built and run as a user runs it,
// where it needs more than Go: NBD clients (label "nbd"), a QEMU guest
// (label "vm") and the real kernel in a guest (label "kernel"). The
// in-process parts of the command are tested in cmd/snaplab.
package cli_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/scenarios/report"

	"snaplab/scenarios/cmdtest"
	"snaplab/vmtest/guest"
)

func TestCLI(t *testing.T) {
	RegisterFailHandler(Fail)
	report.Run(t, "cli", "snaplab command")
}

var bin string

var _ = BeforeSuite(func() {
	var err error
	bin, err = cmdtest.Build(GinkgoT().TempDir())
	Expect(err).NotTo(HaveOccurred())
})

const good = `disk origin 8MiB
disk cow 1MiB
dmsetup create snap --table "0 16384 snapshot origin cow P 8"
dmsetup create base --table "0 16384 snapshot-origin origin"
write base 0 8KiB pattern=A
read snap 0 8KiB expect=zero
dmsetup status snap expect="0 16384 snapshot 32/2048 16"
`

func write(dir, name, text string) string {
	p := filepath.Join(dir, name)
	Expect(os.WriteFile(p, []byte(text), 0o644)).To(Succeed())
	return p
}

// snaplab runs the command in dir with extra environment, within ctx.
func snaplab(ctx context.Context, dir string, env []string, args ...string) cmdtest.Result {
	r, err := cmdtest.Run(ctx, bin, dir, env, args...)
	Expect(err).NotTo(HaveOccurred())
	return r
}

var _ = Describe("snaplab serve", Label("nbd"), func() {
	It("serves every device to nbdinfo, answers control lines, and records a replayable session", func(ctx SpecContext) {
		nbdinfo, err := exec.LookPath("nbdinfo")
		Expect(err).NotTo(HaveOccurred(), "nbdinfo (make deps installs libnbd-bin)")
		dir := GinkgoT().TempDir()
		scn := write(dir, "s.scn", good)
		rec := filepath.Join(dir, "serve.jsonl")
		sock := filepath.Join(dir, "nbd.sock")
		// As people type it: the scenario first, then the flags, GNU style.
		cmd := exec.Command(bin, "serve", scn, "--socket", sock, "--record", rec)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		var out, errb cmdtest.SyncBuffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		stdin, err := cmd.StdinPipe()
		Expect(err).NotTo(HaveOccurred())
		Expect(cmd.Start()).To(Succeed())
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		DeferCleanup(func() { cmd.Process.Kill() })

		Eventually(out.String).WithTimeout(20*time.Second).Should(ContainSubstring("ready:"), "stderr: %s", errb.String())
		Expect(out.String()).To(ContainSubstring("nbd+unix:///snap?socket=" + sock))
		info, err := exec.CommandContext(ctx, nbdinfo, "--size", "nbd+unix:///snap?socket="+sock).CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "%s", info)
		Expect(strings.TrimSpace(string(info))).To(Equal("8388608"))

		fmt.Fprintln(stdin, "dmsetup status snap")
		fmt.Fprintln(stdin, `dmsetup create z --table "0 8 zero"`)
		fmt.Fprintln(stdin, "dmsetup bogus")
		Eventually(out.String).WithTimeout(20 * time.Second).Should(ContainSubstring("fail:"))
		list, err := exec.CommandContext(ctx, nbdinfo, "--list", "nbd+unix://?socket="+sock).CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "%s", list)
		Expect(string(list)).To(ContainSubstring(`export="z"`), "a device created later is exported")
		fmt.Fprintln(stdin, "quit")
		stdin.(io.Closer).Close()
		var waitErr error
		Eventually(exited).WithTimeout(30 * time.Second).Should(Receive(&waitErr))
		var ee *exec.ExitError
		Expect(errors.As(waitErr, &ee)).To(BeTrue(), "serve: %v", waitErr)
		Expect(ee.ExitCode()).To(Equal(1), "a session with a failed control line exits 1")
		Expect(out.String()).To(SatisfyAll(ContainSubstring("0 16384 snapshot 32/2048 16\nok\n"), ContainSubstring("Unknown command: bogus"),
			ContainSubstring("failure: line "), ContainSubstring("recording: "+rec)))

		// The bogus command is a recorded failure, reproduced identically.
		r := snaplab(ctx, dir, nil, "replay", rec)
		Expect(r.Code).To(Equal(1))
		Expect(r.Stdout).To(ContainSubstring("REPRODUCED FAILURE"))
	}, SpecTimeout(2*time.Minute))
})

var _ = Describe("snaplab run -executor vm", Label("vm"), func() {
	It("runs scenarios with a guest doing the I/O, keeps the guest's console, and the recordings replay in process", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		lib, err := filepath.Abs("../library/seed-call-sequence.scn")
		Expect(err).NotTo(HaveOccurred())
		r := snaplab(ctx, dir, nil, "run", "-executor", "vm", "-record", "recs", lib, write(dir, "good.scn", good))
		Expect(r.Code).To(Equal(0), "%s\n%s", r.Stdout, r.Stderr)
		Expect(r.Stdout).To(ContainSubstring("2 passed, 0 failed"))
		r = snaplab(ctx, dir, nil, "replay", "recs/seed-call-sequence.jsonl", "recs/good.jsonl")
		Expect(r.Code).To(Equal(0), r.Stdout)
		Expect(strings.Count(r.Stdout, "IDENTICAL")).To(Equal(2))
		console, err := os.ReadFile(filepath.Join(dir, "recs", "console-vm.log"))
		Expect(err).NotTo(HaveOccurred())
		Expect(string(console)).To(SatisfyAll(ContainSubstring("Linux version"), ContainSubstring("snaplab-guest: agent on")))
	}, SpecTimeout(5*time.Minute))

	It("names what is wrong before booting anything", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		scn := write(dir, "good.scn", good)
		r := snaplab(ctx, dir, nil, "run", "-executor", "kvm-only", scn)
		Expect(r.Code).To(Equal(2))
		Expect(r.Stderr).To(ContainSubstring("want sim, vm or kernel"))
		r = snaplab(ctx, dir, nil, "run", "-executor", "vm", "-accel", "hvf", scn)
		Expect(r.Code).To(Equal(2))
		Expect(r.Stderr).To(ContainSubstring(`-accel: accelerator "hvf": want auto, kvm or tcg`))
		r = snaplab(ctx, dir, []string{"SNAPLAB_QEMU=/nonexistent/qemu"}, "run", "-executor", "vm", "-record", "", scn)
		Expect(r.Code).To(Equal(1))
		Expect(r.Stderr).To(ContainSubstring("boot (qemu): qemu: exec: \"/nonexistent/qemu\""))
		r = snaplab(ctx, dir, nil, "run", "-executor", "vm", "-backend", "xen", scn)
		Expect(r.Code).To(Equal(2))
		Expect(r.Stderr).To(ContainSubstring(`-backend "xen": want qemu or libvirt`))
		r = snaplab(ctx, dir, nil, "run", "-executor", "vm", "-backend", "libvirt", "-libvirt-uri", "qemu+tcp://192.0.2.7/system", scn)
		Expect(r.Code).To(Equal(2))
		Expect(r.Stderr).To(ContainSubstring("-libvirt-uri names a remote host: give -listen ADDRESS"))
		r = snaplab(ctx, dir, nil, "run", "-executor", "vm", "-backend", "libvirt", "-libvirt-uri", "vbox:///session", scn)
		Expect(r.Code).To(Equal(2))
		Expect(r.Stderr).To(ContainSubstring("want a qemu driver URI"))
		r = snaplab(ctx, dir, nil, "run", "-guests", "2", scn)
		Expect(r.Code).To(Equal(2))
		Expect(r.Stderr).To(ContainSubstring("only with -executor vm or kernel"))
	}, SpecTimeout(5*time.Minute))

	It("-accel tcg runs the guest under TCG", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		r := snaplab(ctx, dir, nil, "run", "-executor", "vm", "-accel", "tcg", "-record", "recs", write(dir, "good.scn", good))
		Expect(r.Code).To(Equal(0), "%s\n%s", r.Stdout, r.Stderr)
		Expect(r.Stderr).NotTo(ContainSubstring("KVM"), "tcg asked for: no fallback notice")
	}, SpecTimeout(5*time.Minute))
})

var _ = Describe("snaplab run -executor kernel", Label("kernel"), func() {
	It("runs a scenario on the real dm-snapshot, compares it with the simulator, and diff agrees", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		scn := write(dir, "good.scn", good)
		r := snaplab(ctx, dir, nil, "run", "-executor", "kernel", "-compare", "sim", "-record", "recs", scn)
		Expect(r.Code).To(Equal(0), "%s\n%s", r.Stdout, r.Stderr)
		Expect(r.Stdout).To(ContainSubstring("1 passed, 0 failed"))
		r = snaplab(ctx, dir, nil, "run", "-record", "sim", scn)
		Expect(r.Code).To(Equal(0), r.Stderr)
		r = snaplab(ctx, dir, nil, "diff", "recs/good.jsonl", "sim/good.jsonl")
		Expect(r.Code).To(Equal(0), r.Stdout)
		Expect(r.Stdout).To(ContainSubstring("identical results (kernel vs sim"))

		// An expectation the kernel contradicts fails, naming the line.
		bad := write(dir, "bad.scn", strings.Replace(good, "32/2048 16", "40/2048 16", 1))
		r = snaplab(ctx, dir, nil, "run", "-executor", "kernel", "-record", "", bad)
		Expect(r.Code).To(Equal(1), "%s\n%s", r.Stdout, r.Stderr)
		Expect(r.Stderr).To(ContainSubstring("line 7:"))
		r = snaplab(ctx, dir, nil, "run", "-compare", "sim", scn)
		Expect(r.Code).To(Equal(2))
		Expect(r.Stderr).To(ContainSubstring("want -compare sim with -executor vm or kernel"))
	}, SpecTimeout(8*time.Minute))
})

// A user's own kernel, handed over as make bindeb-pkg and make
// modules_install leave it: Debian's 6.1 package plays the user's build.
var _ = Describe("snaplab run -kernel with a user's kernel", Label("kernel"), func() {
	It("boots it from a .deb and from IMAGE,MODDIR, agrees with the simulator and with the stock kernel's goldens", func(ctx SpecContext) {
		repo, err := guest.FindRepo()
		Expect(err).NotTo(HaveOccurred())
		deb, err := guest.ReleaseDeb(ctx, guest.CacheDir(repo), guest.DefaultKernel, GinkgoWriter.Printf)
		Expect(err).NotTo(HaveOccurred())
		dir := GinkgoT().TempDir()
		root := filepath.Join(dir, "install")
		out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, root).CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "%s", out)
		vmlinuz, err := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
		Expect(err).NotTo(HaveOccurred())
		Expect(vmlinuz).To(HaveLen(1))
		scn := filepath.Join(repo, "scenarios", "library", "h1-handover-basic.scn")
		for _, spec := range []string{deb, vmlinuz[0] + "," + root} {
			r := snaplab(ctx, dir, nil, "run", "-executor", "kernel", "-kernel", spec, "-compare", "sim", "-against", "6.1", "-record", "off", scn)
			Expect(r.Code).To(Equal(0), "-kernel %s:\n%s\n%s", spec, r.Stdout, r.Stderr)
			Expect(r.Stdout).To(ContainSubstring("1 passed, 0 failed"))
		}
		// The errors a user meets first.
		r := snaplab(ctx, dir, nil, "run", "-executor", "kernel", "-kernel", vmlinuz[0], scn)
		Expect(r.Code).To(Equal(2))
		Expect(r.Stderr).To(ContainSubstring("needs its modules: give IMAGE,MODDIR"))
		Expect(os.RemoveAll(filepath.Join(root, "lib", "modules"))).To(Succeed())
		r = snaplab(ctx, dir, nil, "run", "-executor", "kernel", "-kernel", vmlinuz[0]+","+root, scn)
		Expect(r.Code).To(Equal(1))
		Expect(r.Stderr).To(ContainSubstring("no lib/modules/VERSION"))
	}, SpecTimeout(10*time.Minute))
})
