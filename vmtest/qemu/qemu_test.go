package qemu

import (
	"errors"
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

	"snaplab/vmtest/guest"
	"snaplab/vmtest/guest/proto"
)

func TestQEMU(t *testing.T) {
	RegisterFailHandler(Fail)
	report.Run(t, "qemu", "vmtest/qemu", Label("vm"))
}

var img *guest.Image

func logf(format string, a ...any) { GinkgoWriter.Printf(format+"\n", a...) }

var _ = BeforeSuite(func(ctx SpecContext) {
	var err error
	if os.Getenv("SNAPLAB_ARTIFACTS") == "" {
		// Specs kill guests on purpose; keep their consoles out of TMPDIR.
		os.Setenv("SNAPLAB_ARTIFACTS", GinkgoT().TempDir())
	}
	// busybox gives exec something to run; the kernel is fetched if the
	// cache lacks it.
	img, err = guest.Prepare(ctx, guest.WithLogf(logf), guest.WithHostFile("/bin/busybox", "/bin/busybox"))
	Expect(err).NotTo(HaveOccurred())
}, NodeTimeout(5*time.Minute))

// nbdkit starts `nbdkit memory` behind the error filter, failing every
// request while trigger exists.
func nbdkit(dir, name, trigger string) string {
	sock := filepath.Join(dir, name+".sock")
	cmd := exec.Command("nbdkit", "-f", "-U", sock, "--filter=error", "memory", "64M",
		"error-rate=100%", "error-file="+trigger)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = GinkgoWriter
	Expect(cmd.Start()).To(Succeed())
	DeferCleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	Eventually(func() error { _, err := os.Stat(sock); return err }).WithTimeout(10 * time.Second).WithPolling(10 * time.Millisecond).Should(Succeed())
	return sock
}

var _ = Describe("a booted guest", Ordered, func() {
	var (
		vm      *VM
		dir     string
		trigger string
		sock    string
		a       *proto.Client
	)
	BeforeAll(func(ctx SpecContext) {
		dir = GinkgoT().TempDir()
		trigger = filepath.Join(dir, "eio")
		sock = nbdkit(dir, "d0", trigger)
		var err error
		vm, err = Start(ctx, WithImage(img), WithLogf(logf))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(vm.Kill)
		DeferOnFailure(func() { AddReportEntry("console", vm.Console()) })
		a = vm.Agent()
	}, NodeTimeout(2*time.Minute))

	It("boots to a ready agent that reports the kernel", func(ctx SpecContext) {
		r, err := vm.Ready(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(r.Kernel).To(Equal(img.KernelVersion))
		Expect(r.Modules).To(ContainElements("virtio_blk", "virtio_console", "dm_snapshot"))
		GinkgoWriter.Printf("agent ready %.2fs after qemu start (guest uptime %.2fs, slowdown %v)\n",
			time.Since(vm.Started()).Seconds(), r.Uptime, vm.Slowdown())
		h, err := a.Hello(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(h.Uptime).To(BeNumerically(">=", r.Uptime))
	}, SpecTimeout(time.Minute))

	It("hot-plugs an NBD disk that the guest finds by serial", func(ctx SpecContext) {
		Expect(vm.AttachNBD(ctx, "d0", sock, "")).To(Succeed())
		Expect(vm.AttachNBD(ctx, "d0", sock, "")).To(MatchError(ContainSubstring("already attached")))
		// The first request waits for the disk to appear.
		_, err := a.Read(ctx, proto.ReadReq{Serial: "d0", Off: 0, Len: 4096, Direct: true, WaitMS: vm.Scale(2 * time.Second).Milliseconds()})
		Expect(err).NotTo(HaveOccurred())
		disks, err := a.Disks(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(disks).To(ContainElement(proto.Disk{Serial: "d0", Name: disks[0].Name, Size: 64 << 20}))
	}, SpecTimeout(time.Minute))

	It("writes and reads with O_DIRECT, verifying the pattern", func(ctx SpecContext) {
		w, err := a.Write(ctx, proto.WriteReq{Serial: "d0", Off: 1 << 20, Len: 64 << 10, Pattern: "A", Direct: true, FUA: true})
		Expect(err).NotTo(HaveOccurred())
		Expect(w.N).To(Equal(int64(64 << 10)))
		r, err := a.Read(ctx, proto.ReadReq{Serial: "d0", Off: 1 << 20, Len: 64 << 10, Pattern: "A", Direct: true})
		Expect(err).NotTo(HaveOccurred())
		Expect(r.Verify.OK).To(BeTrue())
		// A shifted window is still the same pattern at device offsets...
		r, err = a.Read(ctx, proto.ReadReq{Serial: "d0", Off: 1<<20 + 4096, Len: 4096, Pattern: "A", Direct: true})
		Expect(err).NotTo(HaveOccurred())
		Expect(r.Verify.OK).To(BeTrue())
		// ...while another pattern, or unwritten space, is reported with the offset.
		r, err = a.Read(ctx, proto.ReadReq{Serial: "d0", Off: 1 << 20, Len: 4096, Pattern: "B", Direct: true})
		Expect(err).NotTo(HaveOccurred())
		Expect(*r.Verify).To(HaveField("OK", false))
		Expect(r.Verify.Off).To(BeNumerically("<", 1<<20+8))
		r, err = a.Read(ctx, proto.ReadReq{Serial: "d0", Off: 1<<20 - 4096, Len: 8192, Pattern: "A", Direct: true})
		Expect(err).NotTo(HaveOccurred())
		Expect(*r.Verify).To(Equal(proto.Verdict{Off: 1<<20 - 4096, Want: r.Verify.Want, Got: 0, Looks: "zero"}))
	}, SpecTimeout(time.Minute))

	It("passes the guest's discards to the NBD server, unless plugged in with NoDiscard", func(ctx SpecContext) {
		discardMax := func(serial string) string {
			disks, err := a.Disks(ctx)
			Expect(err).NotTo(HaveOccurred())
			for _, d := range disks {
				if d.Serial == serial {
					r, err := a.Exec(ctx, proto.ExecReq{Argv: []string{"/bin/busybox", "cat", "/sys/block/" + d.Name + "/queue/discard_max_bytes"}})
					Expect(err).NotTo(HaveOccurred())
					Expect(r.Exit).To(Equal(0), r.Stderr)
					return strings.TrimSpace(r.Stdout)
				}
			}
			Fail("no disk with serial " + serial)
			return ""
		}
		Expect(discardMax("d0")).NotTo(Equal("0"))
		_, err := a.Write(ctx, proto.WriteReq{Serial: "d0", Off: 3 << 20, Len: 16 << 10, Pattern: "D", Direct: true})
		Expect(err).NotTo(HaveOccurred())
		r, err := a.Discard(ctx, proto.DiscardReq{Serial: "d0", Off: 3<<20 + 4096, Len: 8192})
		Expect(err).NotTo(HaveOccurred())
		Expect(r.N).To(Equal(int64(8192)))
		// nbdkit memory trims to zeros: the discard reached it (QEMU's
		// default, discard=ignore, would have completed it doing nothing).
		for _, want := range []struct {
			off     int64
			pattern string
		}{{3 << 20, "D"}, {3<<20 + 4096, "zero"}, {3<<20 + 8192, "zero"}, {3<<20 + 12288, "D"}} {
			r, err := a.Read(ctx, proto.ReadReq{Serial: "d0", Off: want.off, Len: 4096, Pattern: want.pattern, Direct: true})
			Expect(err).NotTo(HaveOccurred())
			Expect(r.Verify.OK).To(BeTrue(), "offset %d after the discard, want %s: %+v", want.off, want.pattern, *r.Verify)
		}

		Expect(vm.AttachNBDWith(ctx, "d1", sock, "", DiskOptions{NoDiscard: true})).To(Succeed())
		DeferCleanup(func(ctx SpecContext) { Expect(vm.Detach(ctx, "d1")).To(Succeed()) }, NodeTimeout(time.Minute))
		_, err = vm.WaitDisk(ctx, "d1")
		Expect(err).NotTo(HaveOccurred())
		Expect(discardMax("d1")).To(Equal("0"))
		_, err = a.Discard(ctx, proto.DiscardReq{Serial: "d1", Off: 0, Len: 4096})
		Expect(err).To(MatchError(syscall.EOPNOTSUPP))
	}, SpecTimeout(time.Minute))

	It("reports EIO end to end while the NBD server fails, and recovers", func(ctx SpecContext) {
		from := len(vm.Events())
		Expect(os.WriteFile(trigger, nil, 0o644)).To(Succeed())

		_, err := a.Read(ctx, proto.ReadReq{Serial: "d0", Off: 2 << 20, Len: 4096, Direct: true})
		Expect(err).To(MatchError(syscall.EIO))
		var oe *proto.OpError
		Expect(errors.As(err, &oe)).To(BeTrue())
		Expect(oe.Phase).To(Equal("read"))
		ev, _, err := vm.WaitEvent(ctx, from, "BLOCK_IO_ERROR", func(e Event) bool { return e.Str("operation") == "read" })
		Expect(err).NotTo(HaveOccurred())
		b, _ := ev.BlockIOError()
		Expect(b.Node).To(Equal(vm.NodeName("d0")))
		Expect(b.Action).To(Equal("report"))

		_, err = a.Write(ctx, proto.WriteReq{Serial: "d0", Off: 2 << 20, Len: 4096, Pattern: "C", Direct: true})
		Expect(err).To(MatchError(syscall.EIO))
		_, _, err = vm.WaitEvent(ctx, from, "BLOCK_IO_ERROR", func(e Event) bool {
			return e.Str("operation") == "write" && e.Str("node-name") == vm.NodeName("d0")
		})
		Expect(err).NotTo(HaveOccurred())

		// Through the page cache the write "succeeds"; fsync reports EIO.
		_, err = a.Write(ctx, proto.WriteReq{Serial: "d0", Off: 3 << 20, Len: 4096, Pattern: "C", Fsync: true})
		Expect(err).To(MatchError(syscall.EIO))
		Expect(errors.As(err, &oe)).To(BeTrue())
		Expect(oe.Phase).To(Equal("fsync"))

		recs, _, err := a.Kmsg(ctx, 0)
		Expect(err).NotTo(HaveOccurred())
		var msgs []string
		for _, r := range recs {
			msgs = append(msgs, r.Msg)
		}
		Expect(msgs).To(ContainElement(ContainSubstring("I/O error, dev vd")))

		Expect(os.Remove(trigger)).To(Succeed())
		_, err = a.Write(ctx, proto.WriteReq{Serial: "d0", Off: 2 << 20, Len: 4096, Pattern: "C", Direct: true})
		Expect(err).NotTo(HaveOccurred())
		r, err := a.Read(ctx, proto.ReadReq{Serial: "d0", Off: 2 << 20, Len: 4096, Pattern: "C", Direct: true})
		Expect(err).NotTo(HaveOccurred())
		Expect(r.Verify.OK).To(BeTrue())
	}, SpecTimeout(time.Minute))

	It("unplugs the disk", func(ctx SpecContext) {
		Expect(vm.Detach(ctx, "d0")).To(Succeed())
		disks, err := a.Disks(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(disks).To(BeEmpty())
		_, err = a.Read(ctx, proto.ReadReq{Serial: "d0", Off: 0, Len: 512, WaitMS: 100})
		Expect(err).To(MatchError(syscall.ENODEV))
		Expect(vm.Detach(ctx, "d0")).To(MatchError(ContainSubstring("no such disk")))
	}, SpecTimeout(time.Minute))

	It("runs a command", func(ctx SpecContext) {
		r, err := a.Exec(ctx, proto.ExecReq{Argv: []string{"/bin/busybox", "sh", "-c", "uname -r; cat; echo oops >&2; exit 7"}, Stdin: "from host\n"})
		Expect(err).NotTo(HaveOccurred())
		Expect(r.Stdout).To(Equal(img.KernelVersion + "\nfrom host\n"))
		Expect(r.Stderr).To(Equal("oops\n"))
		Expect(r.Exit).To(Equal(7))
		_, err = a.Exec(ctx, proto.ExecReq{Argv: []string{"/sbin/dmsetup"}})
		Expect(err).To(MatchError(syscall.ENOENT))
	}, SpecTimeout(time.Minute))

	It("powers off on request", func(ctx SpecContext) {
		Expect(a.Poweroff(ctx)).To(Succeed())
		Expect(vm.Wait(ctx)).To(Succeed())
		ev, _, err := vm.WaitEvent(ctx, 0, "SHUTDOWN", nil)
		if err == nil { // the event can race the process exit
			Expect(ev.Data["guest"]).To(BeTrue())
		}
	}, SpecTimeout(time.Minute))
})

var _ = Describe("a guest whose QEMU dies", func() {
	It("closes a guest that is still booting through QMP quit", func(ctx SpecContext) {
		vm, err := Start(ctx, WithImage(img), WithLogf(logf))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(vm.Kill)
		Expect(vm.Close(ctx)).To(Succeed())
		ev, _, err := vm.WaitEvent(ctx, 0, "SHUTDOWN", nil)
		if err == nil { // the event can race the process exit
			Expect(ev.Str("reason")).To(Equal("host-qmp-quit"))
		}
		Expect(syscall.Kill(vm.Pid(), 0)).To(MatchError(syscall.ESRCH))
	}, SpecTimeout(time.Minute))

	It("reports the death with the console, and leaves nothing running", func(ctx SpecContext) {
		vm, err := Start(ctx, WithImage(img), WithLogf(logf))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(vm.Kill)
		_, err = vm.Ready(ctx)
		Expect(err).NotTo(HaveOccurred())
		pid := vm.Pid()

		errc := make(chan error, 1)
		go func() {
			_, err := vm.Agent().Exec(ctx, proto.ExecReq{Argv: []string{"/bin/busybox", "sleep", "60"}})
			errc <- err
		}()
		time.Sleep(200 * time.Millisecond)
		Expect(syscall.Kill(pid, syscall.SIGKILL)).To(Succeed())

		var exitErr *ExitError
		Eventually(errc).WithTimeout(30 * time.Second).Should(Receive(&err))
		Expect(errors.As(err, &exitErr)).To(BeTrue(), "error %v", err)
		Expect(exitErr.State).To(ContainSubstring("killed"))
		Expect(exitErr.Console).NotTo(BeEmpty())
		_, err = vm.QMP(ctx, "query-status", nil)
		Expect(errors.As(err, &exitErr)).To(BeTrue(), "QMP after death: %v", err)

		vm.Kill()
		Expect(syscall.Kill(pid, 0)).To(MatchError(syscall.ESRCH))
		_, err = os.Stat(vm.dir)
		Expect(os.IsNotExist(err)).To(BeTrue())
		Expect(strings.Join(vm.Cmdline(), " ")).To(ContainSubstring("-no-reboot"))
	}, SpecTimeout(2*time.Minute))
})
