// The libvirt suite (label "libvirt"): guests run as domains of a libvirt
// daemon (vmtest/libvirt through go-libvirt), driven the same way as the
// QEMU backend's: EIO after a handover and the invalid source, the
// vm-capable library fanned out over two guests, a run over
// qemu+tcp://127.0.0.1 with the NBD disks and the agent channel on TCP, a
// daemon killed mid-run, and a check that nothing is left behind.
//
// Each test process starts its own private libvirtd (vmtest/libvirtd), so
// ginkgo -p works: every process has its own daemon and guests.
package libvirt_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/scenarios/report"

	"snaplab/scenarios/cmdtest"
	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/guestexec"
	"snaplab/vmtest/libvirt"
	"snaplab/vmtest/libvirtd"
	"snaplab/vmtest/qemu"
)

func TestLibvirt(t *testing.T) {
	RegisterFailHandler(Fail)
	report.Run(t, "libvirt", "snaplab libvirt backend")
}

// logf writes the harness's messages to the spec's output, a line each.
func logf(f string, a ...any) { GinkgoWriter.Printf(f+"\n", a...) }

var (
	daemon *libvirtd.Daemon
	lv     *libvirt.Guest // a vm-mode guest on daemon, shared
	bin    string
)

var _ = BeforeSuite(func(ctx SpecContext) {
	if os.Getenv("SNAPLAB_ARTIFACTS") == "" {
		os.Setenv("SNAPLAB_ARTIFACTS", GinkgoT().TempDir())
	}
	var err error
	bin, err = cmdtest.Build(GinkgoT().TempDir())
	Expect(err).NotTo(HaveOccurred())
	daemon, err = libvirtd.Start(ctx)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func() { Expect(daemon.Stop()).To(Succeed()) })
	m, err := guestexec.BootOn(ctx, guestexec.Libvirt{Opts: []libvirt.Option{libvirt.WithURI(daemon.URI()), libvirt.WithLogf(logf)}},
		guestexec.GuestIO, nil)
	Expect(err).NotTo(HaveOccurred())
	lv = m.(*libvirt.Guest)
	DeferCleanup(func(ctx SpecContext) { Expect(lv.Close(ctx)).To(Succeed()) }, NodeTimeout(time.Minute))
	DeferOnFailure(func() { AddReportEntry("serial console", lv.Console()) })
	report.KeepSuite("guest console", func() string { return report.Tail(lv.Console(), report.ConsoleLines) })
}, NodeTimeout(5*time.Minute))

// runOn runs sc on ex, checks that it passed, and returns its recording.
func runOn(ctx context.Context, ex *guestexec.Executor, sc *script.Scenario) []byte {
	var rec bytes.Buffer
	rep, err := ex.Run(ctx, sc, run.Options{Record: &rec})
	Expect(err).NotTo(HaveOccurred())
	report.KeepRecording(sc.Name+" on "+ex.Name(), rec.Bytes())
	var b strings.Builder
	for _, f := range rep.Failures {
		fmt.Fprintln(&b, f)
	}
	Expect(rep.Pass()).To(BeTrue(), "%s on %s:\n%s", sc.Name, ex.Name(), b.String())
	return rec.Bytes()
}

// results are a recording's step results.
func results(rec []byte) []record.StepResult {
	r, err := record.Read(bytes.NewReader(rec))
	Expect(err).NotTo(HaveOccurred())
	res, err := record.Results(r)
	Expect(err).NotTo(HaveOccurred())
	return res
}

func library(name string) *script.Scenario {
	sc, err := script.ParseFile(filepath.Join("..", "library", name+".scn"))
	Expect(err).NotTo(HaveOccurred())
	return sc
}

var _ = Describe("handover and invalid source through libvirt", Label("libvirt"), Ordered, func() {
	var qm *qemu.VM
	BeforeAll(func(ctx SpecContext) {
		// The same scenarios on the QEMU backend, for the comparison.
		var err error
		qm, err = guestexec.Boot(ctx, guestexec.GuestIO, nil, qemu.WithRestore(true))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func(ctx SpecContext) { qm.Close(ctx) }, NodeTimeout(time.Minute))
	}, NodeTimeout(3*time.Minute))

	It("gives the old device EIO after the handover, reported by QEMU through libvirt as BLOCK_IO_ERROR on that device only", func(ctx SpecContext) {
		from := len(lv.BlockIOErrors())
		rec := runOn(ctx, guestexec.New(lv, guestexec.GuestIO), library("h1-handover-basic"))
		errs := lv.BlockIOErrors()[from:]
		Expect(errs).NotTo(BeEmpty(), "no BLOCK_IO_ERROR came through libvirt's QMP events")
		ops := map[string]bool{}
		for _, e := range errs {
			Expect(e.Serial).To(Equal("snap1"), "BLOCK_IO_ERROR on another device: %+v", e)
			Expect(e.Node).To(Equal(lv.NodeName("snap1")))
			Expect(e.Action).To(Equal("report"))
			ops[e.Operation] = true
		}
		Expect(ops).To(HaveKey("read"))
		Expect(ops).To(HaveKey("write"))

		// The recording replays in process, and its results are the QEMU
		// backend's.
		r, err := record.Read(bytes.NewReader(rec))
		Expect(err).NotTo(HaveOccurred())
		rrep, diff, err := run.Replay(r, run.Options{})
		Expect(err).NotTo(HaveOccurred())
		Expect(diff).To(BeEmpty())
		Expect(rrep.Pass()).To(BeTrue())
		qrec := runOn(ctx, guestexec.New(qm, guestexec.GuestIO), library("h1-handover-basic"))
		Expect(record.CompareResults(results(qrec), results(rec))).To(BeEmpty(), "libvirt's results differ from QEMU's")
	}, SpecTimeout(4*time.Minute))

	for _, name := range []string{"h7-invalid-source-inherited", "seed-invalid-source"} {
		It("makes the destination of an invalid source invalid: "+name, func(ctx SpecContext) {
			rec := runOn(ctx, guestexec.New(lv, guestexec.GuestIO), library(name))
			qrec := runOn(ctx, guestexec.New(qm, guestexec.GuestIO), library(name))
			Expect(record.CompareResults(results(qrec), results(rec))).To(BeEmpty(), "libvirt's results differ from QEMU's")
		}, SpecTimeout(4*time.Minute))
	}
})

// vmLibrary is the library's scenarios the vm executor runs: those with
// guest I/O that it supports.
func vmLibrary() []string {
	lib, _ := filepath.Glob("../library/*.scn")
	sort.Strings(lib)
	var out []string
	for _, path := range lib {
		sc, err := script.ParseFile(path)
		Expect(err).NotTo(HaveOccurred())
		if guestexec.Exercises(guestexec.GuestIO, sc) {
			abs, _ := filepath.Abs(path)
			out = append(out, abs)
		}
	}
	return out
}

var _ = Describe("snaplab run -backend libvirt", Label("libvirt"), func() {
	It("runs the vm-capable library fanned out over 2 guests, and its recordings replay", func(ctx SpecContext) {
		files := vmLibrary()
		Expect(len(files)).To(BeNumerically(">", 30))
		dir := GinkgoT().TempDir()
		args := append([]string{"run", "-executor", "vm", "-backend", "libvirt", "-libvirt-uri", daemon.URI(), "-guests", "2", "-record", "rec"}, files...)
		r, err := cmdtest.Run(ctx, bin, dir, nil, args...)
		Expect(err).NotTo(HaveOccurred())
		Expect(r.Code).To(Equal(0), "stdout:\n%s\nstderr:\n%s", r.Stdout, r.Stderr)
		Expect(r.Stdout).To(ContainSubstring(fmt.Sprintf("%d passed, 0 failed", len(files))))
		Expect(filepath.Join(dir, "rec", "console-vm-guest0.log")).To(BeARegularFile())
		Expect(filepath.Join(dir, "rec", "console-vm-guest1.log")).To(BeARegularFile())
		recs, _ := filepath.Glob(filepath.Join(dir, "rec", "*.jsonl"))
		Expect(recs).To(HaveLen(len(files)))
		r, err = cmdtest.Run(ctx, bin, dir, nil, append([]string{"replay"}, recs...)...)
		Expect(err).NotTo(HaveOccurred())
		Expect(r.Code).To(Equal(0), "replay:\n%s\n%s", r.Stdout, r.Stderr)
	}, SpecTimeout(15*time.Minute))

	It("runs the kernel executor over qemu+tcp://127.0.0.1 and a unix URI, round robin, NBD disks and agent channels on TCP, agreeing with the simulator", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		var files []string
		for _, n := range []string{"h1-handover-basic", "h7-invalid-source-inherited", "cow-write-error-invalidates"} {
			abs, _ := filepath.Abs(filepath.Join("..", "library", n+".scn"))
			files = append(files, abs)
		}
		args := append([]string{"run", "-executor", "kernel", "-backend", "libvirt", "-libvirt-uri", daemon.TCPURI(), "-libvirt-uri", daemon.URI(),
			"-listen", "127.0.0.1", "-guests", "2", "-compare", "sim", "-record", "rec"}, files...)
		r, err := cmdtest.Run(ctx, bin, dir, nil, args...)
		Expect(err).NotTo(HaveOccurred())
		Expect(r.Code).To(Equal(0), "stdout:\n%s\nstderr:\n%s", r.Stdout, r.Stderr)
		Expect(r.Stdout).To(ContainSubstring("3 passed, 0 failed"))
		// Both guests booted, their agents connected over TCP.
		for _, g := range []string{"guest0", "guest1"} {
			con, err := os.ReadFile(filepath.Join(dir, "rec", "console-kernel-"+g+".log"))
			Expect(err).NotTo(HaveOccurred())
			Expect(string(con)).To(ContainSubstring("Linux version"))
		}
	}, SpecTimeout(6*time.Minute))
})

// qemuOf lists the running QEMU processes whose command line names domain.
func qemuOf(domain string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(b), "guest="+domain) {
			var pid int
			fmt.Sscan(e.Name(), &pid)
			if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil && !strings.Contains(string(st), ") Z ") {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

var _ = Describe("a libvirt daemon that dies mid-run", Label("libvirt"), func() {
	It("is reported clearly, later runs fail fast, and nothing is left once it is stopped", func(ctx SpecContext) {
		d, err := libvirtd.Start(ctx)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func() { d.Stop() })
		m, err := guestexec.BootOn(ctx, guestexec.Libvirt{Opts: []libvirt.Option{libvirt.WithURI(d.URI()), libvirt.WithLogf(logf),
			libvirt.WithCallTimeout(5 * time.Second)}}, guestexec.GuestIO, nil)
		Expect(err).NotTo(HaveOccurred())
		g := m.(*libvirt.Guest)
		ex := guestexec.New(g, guestexec.GuestIO)
		// Killed while the scenario's disks are plugged in: their unplug
		// needs the daemon.
		ex.BeforeTeardown = func(context.Context) error { d.Kill(); return nil }
		_, err = ex.Run(ctx, library("h1-handover-basic"), run.Options{})
		Expect(err).To(HaveOccurred())
		Expect(err.Error()).To(ContainSubstring("libvirt " + d.URI() + ": connection to the daemon lost (did libvirtd die?)"))
		GinkgoWriter.Printf("the error: %v\n", err)

		ex.BeforeTeardown = nil
		start := time.Now()
		_, err = ex.Run(ctx, library("h7-invalid-source-inherited"), run.Options{})
		Expect(err).To(MatchError(ContainSubstring("connection to the daemon lost")))
		Expect(time.Since(start)).To(BeNumerically("<", 10*time.Second), "a run after the daemon died should fail fast")

		// The QEMU outlives its daemon; Kill cannot reach it through
		// libvirt (and says so), Stop ends it.
		Expect(qemuOf(g.Name())).NotTo(BeEmpty())
		g.Kill()
		Expect(d.Stop()).To(Succeed())
		Expect(qemuOf(g.Name())).To(BeEmpty())
		Expect(libvirtd.Leftovers()).To(BeEmpty())
	}, SpecTimeout(5*time.Minute))
})

var _ = Describe("cleanup", Label("libvirt"), func() {
	It("removes the domain of a snaplab process that was killed, on the next run", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		scn, _ := filepath.Abs(filepath.Join("..", "library", "h1-handover-basic.scn"))
		before, err := libvirt.Domains(ctx, daemon.URI())
		Expect(err).NotTo(HaveOccurred())
		cmd := exec.Command(bin, "run", "-executor", "vm", "-backend", "libvirt", "-libvirt-uri", daemon.URI(), "-record", "off", scn, scn, scn, scn)
		cmd.Dir = dir
		Expect(cmd.Start()).To(Succeed())
		// Killed once its guest is defined and running.
		var leftover string
		Eventually(func() string {
			names, _ := libvirt.Domains(ctx, daemon.URI())
			for _, n := range names {
				if strings.Contains(n, fmt.Sprintf("-%d-", cmd.Process.Pid)) && len(qemuOf(n)) > 0 {
					leftover = n
				}
			}
			return leftover
		}).WithTimeout(2 * time.Minute).WithPolling(200 * time.Millisecond).NotTo(BeEmpty())
		Expect(cmd.Process.Kill()).To(Succeed())
		cmd.Wait()
		names, err := libvirt.Domains(ctx, daemon.URI())
		Expect(err).NotTo(HaveOccurred())
		Expect(names).To(ContainElement(leftover), "the killed process's domain should still be there")

		r, err := cmdtest.Run(ctx, bin, dir, nil, "run", "-executor", "vm", "-backend", "libvirt", "-libvirt-uri", daemon.URI(), "-record", "off", scn)
		Expect(err).NotTo(HaveOccurred())
		Expect(r.Code).To(Equal(0), "%s\n%s", r.Stdout, r.Stderr)
		Expect(r.Stderr).To(ContainSubstring("removed 1 domain(s) left by snaplab processes of this host that are gone"))
		names, err = libvirt.Domains(ctx, daemon.URI())
		Expect(err).NotTo(HaveOccurred())
		Expect(names).To(ConsistOf(before), "the leftover (and the second run's domain) should be gone")
		Expect(qemuOf(leftover)).To(BeEmpty())
	}, SpecTimeout(5*time.Minute))

	It("leaves no domain, daemon, socket or process behind", func(ctx SpecContext) {
		d, err := libvirtd.Start(ctx)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func() { d.Stop() })
		m, err := guestexec.BootOn(ctx, guestexec.Libvirt{Opts: []libvirt.Option{libvirt.WithURI(d.URI())}}, guestexec.GuestIO, nil)
		Expect(err).NotTo(HaveOccurred())
		g := m.(*libvirt.Guest)
		runOn(ctx, guestexec.New(g, guestexec.GuestIO), library("h1-handover-basic"))
		names, err := libvirt.Domains(ctx, d.URI())
		Expect(err).NotTo(HaveOccurred())
		Expect(names).To(ConsistOf(g.Name()))
		Expect(qemuOf(g.Name())).To(HaveLen(1))
		st, err := g.State(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(st).To(Equal(golibvirt.DomainRunning))

		Expect(g.Close(ctx)).To(Succeed())
		names, err = libvirt.Domains(ctx, d.URI())
		Expect(err).NotTo(HaveOccurred())
		Expect(names).To(BeEmpty(), "domains left defined")
		Expect(qemuOf(g.Name())).To(BeEmpty(), "QEMU still running")

		pid, sock, dir := d.Pid(), d.Socket(), d.Dir()
		Expect(d.Stop()).To(Succeed())
		Expect(syscall.Kill(pid, 0)).To(MatchError(syscall.ESRCH), "libvirtd still running")
		Expect(sock).NotTo(BeAnExistingFile())
		Expect(dir).NotTo(BeAnExistingFile())
		Expect(libvirtd.Leftovers()).To(BeEmpty())
		out, _ := exec.Command("pgrep", "-f", "guest="+g.Name()).Output()
		Expect(strings.TrimSpace(string(out))).To(BeEmpty())
	}, SpecTimeout(4*time.Minute))
})
