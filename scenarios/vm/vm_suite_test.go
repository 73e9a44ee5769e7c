// The vm suite (label "vm"): scenarios on the vm executor, a real Linux
// guest doing the I/O on virtio disks served over NBD by the simulator.
// One booted guest is shared by every spec but the one that kills QEMU.
package vm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/scenarios/report"

	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/guest"
	"snaplab/vmtest/guest/proto"
	"snaplab/vmtest/guestexec"
	"snaplab/vmtest/live"
	"snaplab/vmtest/nbd"
	"snaplab/vmtest/qemu"
)

func TestVM(t *testing.T) {
	RegisterFailHandler(Fail)
	report.Run(t, "vm", "snaplab vm executor")
}

var (
	img *guest.Image
	vm  *qemu.VM
)

var _ = BeforeSuite(func(ctx SpecContext) {
	var err error
	if os.Getenv("SNAPLAB_ARTIFACTS") == "" {
		// Specs kill guests on purpose; keep their consoles out of TMPDIR.
		os.Setenv("SNAPLAB_ARTIFACTS", GinkgoT().TempDir())
	}
	// The image other specs boot their own guests from (prepared once:
	// Boot below finds it cached).
	img, err = guest.Prepare(ctx)
	Expect(err).NotTo(HaveOccurred())
	// Restored from a saved, booted guest (saved on first use): about
	// 0.3 s instead of 2 s under TCG.
	vm, err = guestexec.Boot(ctx, guestexec.GuestIO, nil, qemu.WithRestore(true), qemu.WithLogf(GinkgoWriter.Printf))
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func(ctx SpecContext) { _ = vm.Close(ctx) }, NodeTimeout(time.Minute))
	DeferOnFailure(func() { AddReportEntry("serial console", vm.Console()) })
	report.KeepSuite("guest console", func() string { return report.Tail(vm.Console(), report.ConsoleLines) })
}, NodeTimeout(5*time.Minute))

func parse(name, text string) *script.Scenario {
	sc, err := script.Parse(name, text)
	Expect(err).NotTo(HaveOccurred())
	return sc
}

// runVM runs sc on the vm executor, checks it passed, and checks that its
// recording replays in process, without QEMU, identically.
func runVM(ctx context.Context, sc *script.Scenario, hook func(ctx context.Context) error) *run.Report {
	ex := guestexec.New(vm, guestexec.GuestIO)
	ex.BeforeTeardown = hook
	var rec bytes.Buffer
	rep, err := ex.Run(ctx, sc, run.Options{Record: &rec})
	Expect(err).NotTo(HaveOccurred())
	report.KeepRecording(sc.Name+" on the vm executor", rec.Bytes())
	var b strings.Builder
	for _, f := range rep.Failures {
		fmt.Fprintln(&b, f)
	}
	Expect(rep.Pass()).To(BeTrue(), "%s on the vm executor:\n%s", sc.Name, b.String())
	Expect(rec.String()).To(ContainSubstring(`"kind":"arrival"`))
	r, err := record.Read(bytes.NewReader(rec.Bytes()))
	Expect(err).NotTo(HaveOccurred())
	rrep, diff, err := run.Replay(r, run.Options{})
	Expect(err).NotTo(HaveOccurred())
	Expect(diff).To(BeEmpty(), "in-process replay of the vm recording of %s diverged", sc.Name)
	Expect(rrep.Pass()).To(BeTrue())
	return rep
}

const handover = `semantics %s
disk origin 64MiB
disk cow 8MiB
dmsetup create snap1 --table "0 131072 snapshot origin cow P 8"
dmsetup create base --table "0 131072 snapshot-origin origin"
write snap1 40KiB 8KiB pattern=S              # data written through the snapshot
write base 0 64KiB pattern=A                  # origin write: pre-images copied
read snap1 0 40KiB expect=zero
read snap1 40KiB 8KiB expect=S
dmsetup create snap2 --notable
dmsetup load snap2 --table "0 131072 snapshot origin cow P 8"
dmsetup suspend snap1
dmsetup resume snap2
dmsetup resume snap1
read snap1 0 4KiB expect=EIO
write snap1 4KiB 4KiB pattern=X expect=EIO
read snap2 0 40KiB expect=zero                # exactly what the old table held
read snap2 40KiB 8KiB expect=S
read snap2 48KiB 16KiB expect=zero
read base 0 64KiB expect=A
`

var _ = Describe("EIO after handover, end to end", Label("vm"), func() {
	for _, sem := range []string{"mainline", "seed"} {
		sem := sem
		It("reaches the guest as EIO and QMP as BLOCK_IO_ERROR on exactly the old device ("+sem+")", func(ctx SpecContext) {
			from := len(vm.BlockIOErrors())
			runVM(ctx, parse("handover-"+sem, fmt.Sprintf(handover, sem)), func(ctx context.Context) error {
				// Buffered write + fsync: EIO surfaces at fsync.
				resp, err := vm.Agent().Write(ctx, proto.WriteReq{Serial: "snap1", Off: 8192, Len: 4096, Pattern: "Y", Fsync: true})
				if err == nil || resp.Errno != "EIO" {
					return fmt.Errorf("buffered write+fsync on the old table: errno %q err %v, want EIO", resp.Errno, err)
				}
				return nil
			})
			errs := vm.BlockIOErrors()[from:]
			ops := map[string]bool{}
			for _, e := range errs {
				Expect(e.Node).To(Equal(vm.NodeName("snap1")), "BLOCK_IO_ERROR on another device: %+v", e)
				ops[e.Operation] = true
			}
			Expect(ops).To(HaveKey("read"))
			Expect(ops).To(HaveKey("write"))
		}, SpecTimeout(3*time.Minute))
	}
})

const invalidSource = `semantics %s
disk origin 8MiB
disk cow 64KiB                                # header + 1 area + 14 data chunks of 4KiB
dmsetup create snap1 --table "0 16384 snapshot origin cow P 8"
dmsetup create base --table "0 16384 snapshot-origin origin"
write snap1 0 56KiB pattern=F                 # 14 exceptions: the COW is full
write snap1 56KiB 4KiB pattern=F expect=EIO
log expect="device-mapper: snapshots: Invalidating snapshot: Unable to allocate exception."
dmsetup status snap1 expect="0 16384 snapshot Invalid"
read snap1 0 4KiB expect=EIO
dmsetup create snap2 --notable
dmsetup load snap2 --table "0 16384 snapshot origin cow P 8"
dmsetup suspend snap1
dmsetup resume snap2 %s
dmsetup status snap2 expect="0 16384 snapshot Invalid"
read snap2 0 4KiB expect=EIO
write snap2 0 4KiB pattern=G expect=EIO
read base 0 4KiB expect=zero                  # the origin is untouched
`

var _ = Describe("invalid source, end to end", Label("vm"), func() {
	It("makes the destination invalid silently (mainline)", func(ctx SpecContext) {
		runVM(ctx, parse("invalid-mainline", fmt.Sprintf(invalidSource, "mainline", "")+"log none\n"), nil)
	}, SpecTimeout(3*time.Minute))
	It("makes the destination invalid with the seed's message (seed)", func(ctx SpecContext) {
		runVM(ctx, parse("invalid-seed", fmt.Sprintf(invalidSource, "seed",
			`log="device-mapper: snapshots: Unable to handover exceptions from an invalid snapshot."`)), nil)
	}, SpecTimeout(3*time.Minute))
})

var _ = Describe("library on the vm executor", Label("vm"), func() {
	lib, _ := filepath.Glob("../library/*.scn")
	sort.Strings(lib)
	for _, path := range lib {
		path := path
		sc, err := script.ParseFile(path)
		if err != nil {
			panic(err)
		}
		if !guestexec.Exercises(guestexec.GuestIO, sc) {
			continue
		}
		It(sc.Name, func(ctx SpecContext) { runVM(ctx, sc, nil) }, SpecTimeout(3*time.Minute))
	}
})

// The oracle knows what the guest wrote (the bytes of its NBD requests),
// so a wrong byte in a sector the guest wrote fails the run even where the
// scenario checks nothing.
var _ = Describe("the oracle on guest writes", Label("vm"), func() {
	const text = `disk d 16MiB
write d 64KiB 8KiB pattern=G     # the guest writes; the oracle learns the bytes from NBD
read d 64KiB 8KiB                # no expect=: only the oracle checks what comes back
`
	It("passes when the disk holds what the guest wrote", func(ctx SpecContext) {
		runVM(ctx, parse("guest-write", text), nil)
	}, SpecTimeout(3*time.Minute))

	It("fails the run when a byte the guest wrote changes behind its back", func(ctx SpecContext) {
		sc := parse("guest-write-planted", text)
		planted := false
		plant := func(st *script.Step, s *run.Session) {
			if st.Kind != script.KRead {
				return
			}
			for _, d := range s.Control().Disks() {
				if d.Name() == "d" {
					var b [1]byte
					_, err := d.ReadAt(b[:], 64<<10+100)
					Expect(err).NotTo(HaveOccurred())
					b[0] ^= 0x5a
					_, err = d.WriteAt(b[:], 64<<10+100)
					Expect(err).NotTo(HaveOccurred())
					planted = true
				}
			}
		}
		rep, err := guestexec.New(vm, guestexec.GuestIO).Run(ctx, sc, run.Options{BeforeStep: plant})
		Expect(err).NotTo(HaveOccurred())
		Expect(planted).To(BeTrue())
		Expect(rep.Pass()).To(BeFalse(), "a planted byte in a guest-written sector passed")
		var b strings.Builder
		for _, f := range rep.Failures {
			fmt.Fprintln(&b, f)
		}
		Expect(b.String()).To(SatisfyAll(ContainSubstring("read d 65536 8192"), ContainSubstring(`data is not "G"`), ContainSubstring("offset 65636")), b.String())
	}, SpecTimeout(3*time.Minute))
})

var _ = Describe("faults", Label("vm"), func() {
	It("an NBD connection dropping mid-run gives the guest EIO, and no data is lost", func(ctx SpecContext) {
		sc := parse("drop", "disk d 16MiB\n")
		d, err := live.StartEmpty(sc, run.Options{})
		Expect(err).NotTo(HaveOccurred())
		defer d.Close()
		_ = d.Session(func(s *run.Session) { s.Exec(&sc.Steps[0]) })
		sock := filepath.Join(GinkgoT().TempDir(), "nbd.sock")
		serve := func() *nbd.Server {
			l, err := nbd.ListenUnix(sock)
			Expect(err).NotTo(HaveOccurred())
			srv := nbd.NewServer()
			Expect(srv.AddExport(nbd.Export{Name: "d", Dev: d.Device("d")})).To(Succeed())
			go srv.Serve(l)
			return srv
		}
		srv := serve()
		Expect(vm.AttachNBD(ctx, "dropd", sock, "d")).To(Succeed())
		resp, err := vm.Agent().Write(ctx, proto.WriteReq{Serial: "dropd", Off: 0, Len: 65536, Pattern: "K", Direct: true, WaitMS: 20000})
		Expect(err).NotTo(HaveOccurred(), "%+v", resp)
		Expect(srv.Shutdown(ctx)).To(Succeed()) // the connection drops
		resp, err = vm.Agent().Read(ctx, proto.ReadReq{Serial: "dropd", Off: 0, Len: 4096, Direct: true})
		Expect(err).To(HaveOccurred())
		Expect(resp.Errno).To(Equal("EIO"))
		Expect(vm.Detach(ctx, "dropd")).To(Succeed())
		// A new connection to the same simulated disk: the data is all there.
		srv = serve()
		defer srv.Shutdown(context.Background())
		Expect(vm.AttachNBD(ctx, "dropd2", sock, "d")).To(Succeed())
		resp, err = vm.Agent().Read(ctx, proto.ReadReq{Serial: "dropd2", Off: 0, Len: 65536, Direct: true, Pattern: "K", WaitMS: 20000})
		Expect(err).NotTo(HaveOccurred())
		Expect(resp.Verify).NotTo(BeNil())
		Expect(resp.Verify.OK).To(BeTrue(), "%+v", resp.Verify)
		Expect(vm.Detach(ctx, "dropd2")).To(Succeed())
	}, SpecTimeout(3*time.Minute))

	It("QEMU killed mid-run is reported with the console log and nothing is left running", func(ctx SpecContext) {
		// The suite's guest, restored from the same saved state.
		v, err := qemu.Start(ctx, qemu.WithImage(img), qemu.WithHotplugSlots(8), qemu.WithRestore(true))
		Expect(err).NotTo(HaveOccurred())
		defer v.Kill()
		_, err = v.Ready(ctx)
		Expect(err).NotTo(HaveOccurred())
		pid := v.Pid()
		sc := parse("killed", `disk origin 64MiB
dmsetup create base --table "0 131072 linear origin 0"
write base 0 4KiB pattern=A
dmsetup suspend base
read base 0 4KiB async=r
wait r expect=OK
`)
		ex := guestexec.New(v, guestexec.GuestIO)
		ex.IOTimeout = 2 * time.Second
		done := make(chan error, 1)
		go func() {
			_, err := ex.Run(ctx, sc, run.Options{})
			done <- err
		}()
		time.Sleep(v.Scale(300 * time.Millisecond))
		v.Kill()
		var runErr error
		Eventually(done).WithTimeout(2 * time.Minute).Should(Receive(&runErr))
		Expect(runErr).To(HaveOccurred(), "the run must report the dead guest")
		var ee *qemu.ExitError
		err = v.Wait(ctx)
		Expect(errors.As(err, &ee)).To(BeTrue(), "Wait: %v", err)
		Expect(err.Error()).To(ContainSubstring("console tail"))
		Expect(processAlive(pid)).To(BeFalse(), "QEMU pid %d still running", pid)
	}, SpecTimeout(5*time.Minute))
})

func processAlive(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] != "Z"
}
