package qemu

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/vmtest/guest/proto"
)

// withRestoreDir keeps a spec's saved states in dir (the accelerator
// verdicts stay in the image's cache, so no spec probes KVM again).
func withRestoreDir(dir string) Option {
	return func(o *Options) error { o.restoreDir = dir; return nil }
}

// states lists the saved states and leftovers in dir.
func states(dir string) (state, tmp []string) {
	state, _ = filepath.Glob(filepath.Join(dir, "*.state"))
	tmp, _ = filepath.Glob(filepath.Join(dir, "*.tmp"))
	return state, tmp
}

func readMeta(state string) savedState {
	b, err := os.ReadFile(strings.TrimSuffix(state, ".state") + ".json")
	Expect(err).NotTo(HaveOccurred())
	var m savedState
	Expect(json.Unmarshal(b, &m)).To(Succeed())
	return m
}

// booted says whether the guest's console shows a kernel boot: a restored
// guest's console starts after its boot.
func booted(vm *VM) bool { return strings.Contains(vm.Console(), "Linux version ") }

var _ = Describe("a guest restored from a saved state", Ordered, func() {
	var (
		dir, saved, sock string
		opts             []Option
		vm               *VM
	)
	BeforeAll(func() {
		dir = GinkgoT().TempDir()
		saved = filepath.Join(dir, "restore")
		sock = nbdkit(dir, "r0", filepath.Join(dir, "no-trigger"))
		// The guest's RTC says 2001: a booted guest's wall clock is in 2001,
		// a restored one's must be the host's.
		opts = []Option{WithImage(img), WithLogf(logf), withRestoreDir(saved), WithRestore(true),
			WithQEMUArgs("-rtc", "base=2001-01-01T00:00:00")}
	})
	AfterAll(func() {
		if vm != nil {
			vm.Kill()
		}
	})
	AfterEach(func() {
		if CurrentSpecReport().Failed() && vm != nil {
			AddReportEntry("console", vm.Console())
		}
	})

	It("boots, saves the booted guest and runs on, the first time", func(ctx SpecContext) {
		first, err := Start(ctx, opts...)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(first.Kill)
		Expect(first.Restored()).To(BeEmpty())
		Expect(booted(first)).To(BeTrue())
		Expect(first.Agent().IsReady()).To(BeTrue(), "Start returns a ready guest")
		st, tmp := states(saved)
		Expect(st).To(HaveLen(1))
		Expect(tmp).To(BeEmpty())
		m := readMeta(st[0])
		Expect(m.Key).To(Equal(strings.TrimSuffix(filepath.Base(st[0]), ".state")))
		Expect(m.Args).To(ContainElements("-rtc", "base=2001-01-01T00:00:00", "socket,id=agent,path=AGENT.sock"))
		Expect(m.Accel).To(Equal(first.Accel()))
		Expect(m.Bytes).To(BeNumerically(">", 1<<20))
		Expect(m.Failures).To(BeEmpty())
		// The saved guest runs on: its agent answers.
		h, err := first.Agent().Hello(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(h.Kernel).To(Equal(img.KernelVersion))
		r, err := first.Agent().Exec(ctx, proto.ExecReq{Argv: []string{"/bin/busybox", "date", "+%Y"}})
		Expect(err).NotTo(HaveOccurred())
		Expect(r.Stdout).To(Equal("2001\n"), "the booted guest's clock comes from its RTC")
		Expect(first.Close(ctx)).To(Succeed())
	}, SpecTimeout(3*time.Minute))

	It("restores it the next time, ready when Start returns", func(ctx SpecContext) {
		var err error
		vm, err = Start(ctx, opts...)
		Expect(err).NotTo(HaveOccurred())
		st, _ := states(saved)
		Expect(vm.Restored()).To(Equal(st[0]))
		Expect(booted(vm)).To(BeFalse(), "a restored guest does not boot:\n%s", vm.Console())
		Expect(vm.Cmdline()).To(ContainElements("-incoming", "fd:3"))
		r, err := vm.Ready(ctx)
		Expect(err).NotTo(HaveOccurred())
		GinkgoWriter.Printf("restored: agent ready %.2fs after qemu started (%s)\n", time.Since(vm.Started()).Seconds(), vm.Accel())
		Expect(r.Op).To(Equal(proto.OpReady))
		Expect(r.Kernel).To(Equal(img.KernelVersion))
		Expect(r.Modules).To(ContainElements("virtio_blk", "virtio_console", "dm_snapshot"))
	}, SpecTimeout(2*time.Minute))

	It("runs commands, with the host's wall clock", func(ctx SpecContext) {
		r, err := vm.Agent().Exec(ctx, proto.ExecReq{Argv: []string{"/bin/busybox", "sh", "-c", "date +%s; cat"}, Stdin: "from host\n"})
		Expect(err).NotTo(HaveOccurred())
		Expect(r.Exit).To(BeZero())
		lines := strings.Split(r.Stdout, "\n")
		Expect(lines).To(HaveLen(3))
		Expect(lines[1]).To(Equal("from host"))
		secs, err := strconv.ParseInt(lines[0], 10, 64)
		Expect(err).NotTo(HaveOccurred())
		Expect(time.Unix(secs, 0)).To(BeTemporally("~", time.Now(), 30*time.Second))
	}, SpecTimeout(time.Minute))

	It("hot-plugs an NBD disk and does I/O on it", func(ctx SpecContext) {
		Expect(vm.AttachNBD(ctx, "r0", sock, "")).To(Succeed())
		d, err := vm.WaitDisk(ctx, "r0")
		Expect(err).NotTo(HaveOccurred())
		Expect(d.Size).To(Equal(int64(64 << 20)))
		w, err := vm.Agent().Write(ctx, proto.WriteReq{Serial: "r0", Off: 1 << 20, Len: 256 << 10, Pattern: "R", Direct: true, FUA: true})
		Expect(err).NotTo(HaveOccurred())
		Expect(w.N).To(Equal(int64(256 << 10)))
		rd, err := vm.Agent().Read(ctx, proto.ReadReq{Serial: "r0", Off: 1 << 20, Len: 256 << 10, Pattern: "R", Direct: true})
		Expect(err).NotTo(HaveOccurred())
		Expect(rd.Verify.OK).To(BeTrue(), "%+v", rd.Verify)
		rd, err = vm.Agent().Read(ctx, proto.ReadReq{Serial: "r0", Off: 0, Len: 4096, Pattern: "R", Direct: true})
		Expect(err).NotTo(HaveOccurred())
		Expect(rd.Verify.Looks).To(Equal("zero"))
		Expect(vm.Detach(ctx, "r0")).To(Succeed())
		disks, err := vm.Agent().Disks(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(disks).To(BeEmpty())
	}, SpecTimeout(time.Minute))

	It("powers off on request", func(ctx SpecContext) {
		Expect(vm.Agent().Poweroff(ctx)).To(Succeed())
		Expect(vm.Wait(ctx)).To(Succeed())
	}, SpecTimeout(time.Minute))
})

var _ = Describe("saved guest states", Ordered, func() {
	var dir, a, b string // a: the base guest's state; b: the state of one with more memory
	base := func(extra ...Option) []Option {
		return append([]Option{WithImage(img), WithLogf(logf), withRestoreDir(dir), WithRestore(true)}, extra...)
	}
	start := func(ctx SpecContext, opts ...Option) *VM {
		vm, err := Start(ctx, opts...)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(vm.Kill)
		Expect(vm.Agent().IsReady()).To(BeTrue())
		h, err := vm.Agent().Hello(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(h.Kernel).To(Equal(img.KernelVersion))
		return vm
	}
	memTotal := func(ctx SpecContext, vm *VM) string {
		r, err := vm.Agent().Exec(ctx, proto.ExecReq{Argv: []string{"/bin/busybox", "head", "-n1", "/proc/meminfo"}})
		Expect(err).NotTo(HaveOccurred())
		return strings.Join(strings.Fields(r.Stdout), " ")
	}
	BeforeAll(func() { dir = GinkgoT().TempDir() })

	It("are keyed by what shapes the guest: a changed option saves another state", func(ctx SpecContext) {
		vm := start(ctx, base()...)
		Expect(vm.Restored()).To(BeEmpty())
		small := memTotal(ctx, vm)
		Expect(vm.Close(ctx)).To(Succeed())
		vm = start(ctx, base(WithMemory(320))...)
		Expect(vm.Restored()).To(BeEmpty(), "a guest with more memory was restored from %s", vm.Restored())
		big := memTotal(ctx, vm)
		Expect(big).NotTo(Equal(small))
		Expect(vm.Close(ctx)).To(Succeed())
		st, _ := states(dir)
		Expect(st).To(HaveLen(2))
		// Each key restores its own guest.
		vm = start(ctx, base()...)
		a = vm.Restored()
		Expect(a).NotTo(BeEmpty())
		Expect(memTotal(ctx, vm)).To(Equal(small))
		Expect(vm.Close(ctx)).To(Succeed())
		vm = start(ctx, base(WithMemory(320))...)
		b = vm.Restored()
		Expect(b).NotTo(BeEmpty())
		Expect(b).NotTo(Equal(a))
		Expect(memTotal(ctx, vm)).To(Equal(big))
		Expect(vm.Close(ctx)).To(Succeed())
	}, SpecTimeout(4*time.Minute))

	It("are saved again when truncated", func(ctx SpecContext) {
		fi, err := os.Stat(a)
		Expect(err).NotTo(HaveOccurred())
		Expect(os.Truncate(a, fi.Size()/2)).To(Succeed())
		// Caught before QEMU starts; the start boots and saves again.
		vm := start(ctx, base()...)
		Expect(vm.Restored()).To(BeEmpty())
		Expect(booted(vm)).To(BeTrue())
		Expect(vm.Close(ctx)).To(Succeed())
		m := readMeta(a)
		Expect(m.Failures).To(ConsistOf(ContainSubstring("incomplete QEMU migration stream")))
		Expect(m.Disabled).To(BeEmpty())
		fi2, err := os.Stat(a)
		Expect(err).NotTo(HaveOccurred())
		Expect(fi2.Size()).To(BeNumerically(">", fi.Size()/2), "saved again")
		Expect(fi2.Mode().Perm()).To(Equal(os.FileMode(0o644)))

		// A good restore clears the failures.
		vm = start(ctx, base()...)
		Expect(vm.Restored()).To(Equal(a))
		Expect(vm.Close(ctx)).To(Succeed())
		Expect(readMeta(a).Failures).To(BeEmpty())
	}, SpecTimeout(3*time.Minute))

	It("are saved again when incompatible, and given up after two failures in a row", func(ctx SpecContext) {
		notice := &bytes.Buffer{}
		opts := base(WithNoticeOutput(notice))
		// A whole stream of the guest with more memory: QEMU refuses it, the
		// start boots and saves again.
		incompatible := func() {
			data, err := os.ReadFile(b)
			Expect(err).NotTo(HaveOccurred())
			Expect(os.WriteFile(a, data, 0o644)).To(Succeed())
		}
		incompatible()
		vm := start(ctx, opts...)
		Expect(vm.Restored()).To(BeEmpty())
		Expect(vm.Close(ctx)).To(Succeed())
		m := readMeta(a)
		Expect(m.Failures).To(ConsistOf(ContainSubstring("restore: qemu exited")))
		Expect(notice.String()).NotTo(ContainSubstring("guests boot instead"))

		// The second failure in a row gives restores of this key up: one
		// line says so, and guests boot without saving.
		incompatible()
		vm = start(ctx, opts...)
		Expect(vm.Restored()).To(BeEmpty())
		Expect(vm.Close(ctx)).To(Succeed())
		m = readMeta(a)
		Expect(m.Failures).To(HaveLen(2))
		Expect(m.Disabled).To(ContainSubstring("2 restores or saves failed in a row"))
		Expect(notice.String()).To(SatisfyAll(ContainSubstring("guests boot instead of being restored"),
			ContainSubstring("Delete "+strings.TrimSuffix(a, ".state")+".json to try again")))
		_, err := os.Stat(a)
		Expect(os.IsNotExist(err)).To(BeTrue(), "the failed state is removed and not saved again")
		vm = start(ctx, opts...)
		Expect(vm.Restored()).To(BeEmpty())
		Expect(vm.Close(ctx)).To(Succeed())
		_, err = os.Stat(a)
		Expect(os.IsNotExist(err)).To(BeTrue(), "given up: not saved again")
	}, SpecTimeout(4*time.Minute))

	It("WithRestore refuses boot disks, and SNAPLAB_RESTORE=off boots", func(ctx SpecContext) {
		_, err := Start(ctx, base(WithBootDisk("b0", "/nonexistent.sock", ""))...)
		Expect(err).To(MatchError(ContainSubstring("WithRestore with boot disk b0")))
		GinkgoT().Setenv("SNAPLAB_RESTORE", "off")
		vm, err := Start(ctx, base(WithMemory(320))...) // b is there to restore
		Expect(err).NotTo(HaveOccurred())
		defer vm.Kill()
		Expect(vm.Restored()).To(BeEmpty())
		Expect(vm.Cmdline()).NotTo(ContainElement("-incoming"))
		GinkgoT().Setenv("SNAPLAB_RESTORE", "yes")
		_, err = Start(ctx, base()...)
		Expect(err).To(MatchError(ContainSubstring(`SNAPLAB_RESTORE="yes": want off, or unset`)))
	}, SpecTimeout(time.Minute))
})

var _ = Describe("starts that race to save a guest", func() {
	It("leave one whole state and no leftovers", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		opts := []Option{WithImage(img), WithLogf(logf), withRestoreDir(dir), WithRestore(true)}
		var wg sync.WaitGroup
		vms := make([]*VM, 2)
		errs := make([]error, 2)
		for i := range vms {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer GinkgoRecover()
				vms[i], errs[i] = Start(ctx, opts...)
			}()
		}
		wg.Wait()
		for i, vm := range vms {
			Expect(errs[i]).NotTo(HaveOccurred())
			DeferCleanup(vm.Kill)
		}
		for _, vm := range vms {
			Expect(vm.Restored()).To(BeEmpty())
			Expect(vm.Close(ctx)).To(Succeed())
		}
		st, tmp := states(dir)
		Expect(st).To(HaveLen(1))
		Expect(tmp).To(BeEmpty())
		vm, err := Start(ctx, opts...)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(vm.Kill)
		Expect(vm.Restored()).To(Equal(st[0]))
	}, SpecTimeout(4*time.Minute))
})
