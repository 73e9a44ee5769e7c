// The kernel suite (label "kernel"): every mainline library scenario, and
// a sample of the kernel-differential exploration's generated cases
// (explore_test.go), on the real Linux dm-snapshot in a guest,
// each compared step by step with the simulator. Where they disagree, the
// simulator is wrong.
//
// The kernel is $SNAPLAB_KERNEL (6.1, 6.12, 6.1-rt, 6.12-rt, a .deb, or
// IMAGE,MODDIR; default 6.1; make test-kernels runs the suite once per
// kernel of the matrix).
//
// For a kernel of the matrix it also checks the golden files
// fixtures/kernel/RELEASE/NAME.json (the kernel's normalised results, which
// the sim suite checks on every run without a VM) and fails if they
// drifted; -kernel.update rewrites them (make goldens). A user's own
// kernel has no goldens: it is compared with the simulator, and its results
// are written to $SNAPLAB_ARTIFACTS/kernel-results/NAME.json (else
// out/artifacts/), in the goldens' format, to set beside a stock kernel's
// (snaplab run -against does that per scenario).
// Flags: -kernel.seeds N (generated cases, default 30), -kernel.ops N
// (steps each, default 40).
package kernel_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
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

	"snaplab/sim/lvmlog"
	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/guest"
	"snaplab/vmtest/guestexec"
	"snaplab/vmtest/qemu"
)

var (
	seeds  = flag.Int("kernel.seeds", 30, "generated cases (explore's) to run on kernel and sim")
	ops    = flag.Int("kernel.ops", 40, "steps per random scenario")
	update = flag.Bool("kernel.update", false, "rewrite fixtures/kernel from the kernel's results")
)

func TestKernel(t *testing.T) {
	RegisterFailHandler(Fail)
	report.Run(t, "kernel", "snaplab kernel executor")
}

var ex run.Executor

// kernelSpec is the kernel under test; goldenDir its goldens ("" for a
// user's kernel).
var (
	kernelSpec guest.KernelSpec
	goldenDir  string
)

func init() {
	k, err := guest.KernelFromEnv()
	if err != nil {
		panic(err)
	}
	kernelSpec = k
	if !k.Own() {
		goldenDir = filepath.Join("../../fixtures/kernel", k.Release)
	}
}

// guestVM is the suite's guest, for specs that ask its agent directly.
var guestVM *qemu.VM

var _ = BeforeSuite(func(ctx SpecContext) {
	// Restored from a saved, booted guest (saved on first use): about
	// 0.3 s instead of 2 s under TCG.
	vm, err := guestexec.Boot(ctx, guestexec.GuestKernel, nil, qemu.WithRestore(true), qemu.WithLogf(GinkgoWriter.Printf))
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func(ctx SpecContext) { _ = vm.Close(ctx) }, NodeTimeout(time.Minute))
	DeferOnFailure(func() { AddReportEntry("serial console", vm.Console()) })
	report.KeepSuite("guest console", func() string { return report.Tail(vm.Console(), report.ConsoleLines) })
	GinkgoWriter.Printf("kernel %s\n", kernelSpec)
	ex = guestexec.New(vm, guestexec.GuestKernel)
	guestVM = vm
}, NodeTimeout(5*time.Minute))

func results(b []byte) []record.StepResult {
	rec, err := record.Read(bytes.NewReader(b))
	Expect(err).NotTo(HaveOccurred())
	r, err := record.Results(rec)
	Expect(err).NotTo(HaveOccurred())
	return r
}

// both runs sc on the kernel and on the simulator (run.Compare) and
// returns the kernel's normalised results, failing with every difference
// and every failure of the kernel's run in one report.
func both(ctx context.Context, sc *script.Scenario) []record.StepResult {
	r, _ := bothRec(ctx, sc)
	return r
}

// bothRec is both, with the kernel run's recording.
func bothRec(ctx context.Context, sc *script.Scenario) ([]record.StepResult, []byte) {
	var k bytes.Buffer
	c, err := run.Compare(ctx, ex, run.Sim{}, sc, run.Options{Record: &k})
	Expect(err).NotTo(HaveOccurred())
	report.KeepRecording(sc.Name+" on the kernel, then on the simulator", c.RecA, c.RecB)
	var b strings.Builder
	for _, d := range c.Diffs {
		fmt.Fprintf(&b, "%s\n", d)
	}
	var f strings.Builder
	for _, x := range c.RepA.Failures {
		fmt.Fprintln(&f, x)
	}
	Expect(c.Same() && c.RepA.Pass()).To(BeTrue(), "%s: kernel (first) and simulator (second) disagree on %d fields:\n%s\nfailures on the real kernel:\n%s\nscenario:\n%s",
		sc.Name, len(c.Diffs), b.String(), f.String(), sc.Text)
	return results(k.Bytes()), k.Bytes()
}

// Real LVM in the loop: each scenario of scenarios/lvm runs Debian's lvm2
// in the guest, on disks the simulator serves; the simulator repeats the
// device-mapper operations LVM performed, and every result is compared.
// Each session, its lvm lines expanded into those operations, is also the
// library scenario lvm-NAME.scn (pure dmsetup, for every executor): it must
// come out the same on every kernel (-kernel.update rewrites it).
var _ = Describe("real LVM on the kernel executor, compared with sim", Label("kernel"), func() {
	files, _ := filepath.Glob("../lvm/*.scn")
	sort.Strings(files)
	for _, path := range files {
		path := path
		sc, err := script.ParseFile(path)
		if err != nil {
			panic(err)
		}
		It(sc.Name, func(ctx SpecContext) {
			_, rec := bothRec(ctx, sc)
			ops, err := run.LVMOps(rec)
			Expect(err).NotTo(HaveOccurred())
			lvmLines := map[int]bool{}
			var disks []string
			for _, st := range sc.Steps {
				switch st.Kind {
				case script.KLvm:
					lvmLines[st.Line] = true
				case script.KDisk:
					disks = append(disks, st.Dev)
				}
			}
			body, err := lvmlog.Expand(sc.Text, lvmLines, disks, ops)
			Expect(err).NotTo(HaveOccurred())
			body = strings.TrimRight(body, "\n") + "\n"
			got := "# Generated by the kernel suite from scenarios/lvm/" + filepath.Base(path) + " (do not edit: edit that file and run\n" +
				"# make goldens): a session of real LVM, each lvm line followed by the device-mapper operations it\n" +
				"# performed on the real kernel. The same on every kernel of the matrix.\n" + body
			matchGolden(filepath.Join("../library", "lvm-"+sc.Name+".scn"), []byte(got), sc.Name+": LVM's operations")
		}, SpecTimeout(5*time.Minute))
	}
})

var _ = Describe("library on the kernel executor, compared with sim", Label("kernel"), func() {
	lib, _ := filepath.Glob("../library/*.scn")
	sort.Strings(lib)
	for _, path := range lib {
		path := path
		sc, err := script.ParseFile(path)
		if err != nil {
			panic(err)
		}
		if guestexec.New(nil, guestexec.GuestKernel).Supported(sc) != nil {
			continue
		}
		It(sc.Name, func(ctx SpecContext) {
			report.Keep("reproduce outside the suite", "snaplab run -executor kernel -compare sim scenarios/library/"+filepath.Base(path))
			kr := both(ctx, sc)
			got, err := json.MarshalIndent(kr, "", " ")
			Expect(err).NotTo(HaveOccurred())
			got = append(got, '\n')
			if goldenDir == "" {
				// A user's kernel: no goldens; its results are kept.
				dir := filepath.Join(artifacts(), "kernel-results")
				Expect(os.MkdirAll(dir, 0o755)).To(Succeed())
				Expect(os.WriteFile(filepath.Join(dir, sc.Name+".json"), got, 0o644)).To(Succeed())
				return
			}
			matchGolden(filepath.Join(goldenDir, sc.Name+".json"), got, sc.Name+": the kernel's results")
		}, SpecTimeout(3*time.Minute))
	}
})

// Scenario A writes a COW; B loads A's final disks from their images and
// reads everything back. Images move both ways: written by the simulator
// and loaded by the kernel, written by the kernel and loaded by the
// simulator; and the two executors must write byte-identical COWs.
var cowCases = []struct {
	name, a, b string
}{
	{"several exceptions", `disk origin 8MiB
disk cow 1MiB
write origin 0 1MiB pattern=O
dmsetup create snap --table "0 16384 snapshot origin cow P 8"
dmsetup create base --table "0 16384 snapshot-origin origin"
write base 0 16KiB pattern=A
write snap 64KiB 8KiB pattern=S
write base 200KiB 4KiB pattern=B
dmsetup status snap
dmsetup remove base
dmsetup remove snap
`, `disk origin 8MiB image=%s/origin.img
disk cow 1MiB image=%s/cow.img
dmsetup create snap --table "0 16384 snapshot origin cow P 8"
dmsetup status snap expect="0 16384 snapshot 72/2048 16"        # 7 exceptions: next_free 2+7=9, 9*8
read snap 0 16KiB expect=O
read snap 64KiB 8KiB expect=S
read snap 200KiB 4KiB expect=O
read snap 300KiB 4KiB expect=O
read origin 0 16KiB expect=A
`},
	// The COW is filled by one write and overflowed by the next. One write
	// that both fills and overflows it is not deterministic on the kernel:
	// its chunks are mapped one by one while kcopyd already copies and
	// commits the first ones, so how many exceptions reach the metadata
	// area before the overflow drops the store (header valid=0, no more
	// area writes) depends on timing (0 to 7 of 14 seen in 12 runs under
	// load; docs/dm-snapshot.md §5.1).
	{"invalidated", `disk origin 8MiB
disk cow 64KiB
dmsetup create snap --table "0 16384 snapshot origin cow P 8"
dmsetup create base --table "0 16384 snapshot-origin origin"
write base 0 56KiB pattern=A
dmsetup status snap expect="0 16384 snapshot 128/128 16"
write base 56KiB 8KiB pattern=A
dmsetup status snap expect="0 16384 snapshot Invalid"
dmsetup remove base
dmsetup remove snap
`, `disk origin 8MiB image=%s/origin.img
disk cow 64KiB image=%s/cow.img
dmsetup create snap --table "0 16384 snapshot origin cow P 8" log="device-mapper: snapshots: Snapshot is marked invalid."
dmsetup status snap expect="0 16384 snapshot Invalid"
read snap 0 4KiB expect=EIO
`},
	{"several metadata areas", `disk origin 8MiB
disk cow 4MiB
dmsetup create snap --table "0 16384 snapshot origin cow P 1"
dmsetup create base --table "0 16384 snapshot-origin origin"
write base 0 1300KiB pattern=A
dmsetup status snap
dmsetup remove base
dmsetup remove snap
`, `disk origin 8MiB image=%s/origin.img
disk cow 4MiB image=%s/cow.img
dmsetup create snap --table "0 16384 snapshot origin cow P 1"
dmsetup status snap
read snap 0 1300KiB expect=zero
read origin 0 1300KiB expect=A
`},
}

var _ = Describe("COW images both ways", Label("kernel"), func() {
	for _, c := range cowCases {
		c := c
		It(c.name, func(ctx SpecContext) {
			dir := GinkgoT().TempDir()
			simDir, kernDir := filepath.Join(dir, "sim"), filepath.Join(dir, "kernel")
			a, err := script.Parse("a", c.a)
			Expect(err).NotTo(HaveOccurred())
			Expect(os.MkdirAll(simDir, 0o755)).To(Succeed())
			Expect(os.MkdirAll(kernDir, 0o755)).To(Succeed())
			srep := run.Run(a, run.Options{DumpDir: simDir})
			Expect(srep.Pass()).To(BeTrue(), "%v", srep.Failures)
			krep, err := ex.Run(ctx, a, run.Options{DumpDir: kernDir})
			Expect(err).NotTo(HaveOccurred())
			Expect(krep.Pass()).To(BeTrue(), "%v", krep.Failures)
			// The same writes give the same bytes on the COW.
			sc, err := os.ReadFile(filepath.Join(simDir, "cow.img"))
			Expect(err).NotTo(HaveOccurred())
			kc, err := os.ReadFile(filepath.Join(kernDir, "cow.img"))
			Expect(err).NotTo(HaveOccurred())
			Expect(bytes.Equal(sc, kc)).To(BeTrue(), "the simulator's and the kernel's COW images differ at byte %d", firstDiff(sc, kc))
			// Each loads the other's images, with the same results.
			for _, from := range []string{simDir, kernDir} {
				b, err := script.Parse("b", fmt.Sprintf(c.b, from, from))
				Expect(err).NotTo(HaveOccurred())
				b.Dir = from // images are read only inside the scenario's directory
				both(ctx, b)
			}
		}, SpecTimeout(5*time.Minute))
	}
})

// matchGolden fails unless the file at path holds got; with -kernel.update
// it writes it instead. what names the content in the failure, whose report
// holds got.
func matchGolden(path string, got []byte, what string) {
	want, _ := os.ReadFile(path)
	if bytes.Equal(want, got) {
		return
	}
	if *update {
		Expect(os.MkdirAll(filepath.Dir(path), 0o755)).To(Succeed())
		Expect(os.WriteFile(path, got, 0o644)).To(Succeed())
		return
	}
	AddReportEntry("now", string(got))
	Fail(fmt.Sprintf("%s drifted from %s (the new content is in this spec's report; make goldens rewrites it)", what, path))
}

// artifacts is where a run keeps what it leaves for people:
// $SNAPLAB_ARTIFACTS, else out/artifacts in the repository.
func artifacts() string {
	if a := os.Getenv("SNAPLAB_ARTIFACTS"); a != "" {
		return a
	}
	return "../../out/artifacts"
}

func firstDiff(a, b []byte) int {
	for i := 0; i < min(len(a), len(b)); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
