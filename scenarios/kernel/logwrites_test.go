package kernel_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/scenarios/cmdtest"
	"snaplab/sim/logwrites"
	"snaplab/sim/pattern"
	"snaplab/sim/run"
	"snaplab/sim/script"
)

// The real dm-log-writes target, on disks the simulator serves into the
// guest: a log-writes device over disk data logs to disk logd what the
// guest does (direct and buffered writes, fsync, an O_DSYNC write, a
// discard, a flush, marks); the teardown removes the target (its dtr logs
// what is unflushed and the end mark). Then, on the host:
//
//	(a) sim/logwrites decodes the kernel's log into the entries the guest's
//	    requests make, with their bytes;
//	(b) `snaplab import log-writes` of the log, run on the sim executor,
//	    leaves disk data as the kernel left it;
//	(c) the same scenario on the simulator, with a linear table where the
//	    guest had log-writes, recorded, and `snaplab export --format
//	    log-writes --device data` of the recording: the same entries, in
//	    the same order, with the same bytes and flags.
const lwKernelScenario = `disk data 4MiB
disk logd 8MiB
dmsetup create lw --table "0 8192 log-writes data logd"
write lw 0 8KiB pattern=A
write lw 64KiB 4KiB pattern=B buffered
fsync lw
write lw 192KiB 4KiB pattern=D
write lw 128KiB 4KiB pattern=C fua
discard lw 256KiB 64KiB
dmsetup message lw 0 mark one
flush lw
dmsetup message lw 0 mark two
write lw 8KiB 4KiB pattern=E
`

// What the kernel logs (sector+count in 512-byte sectors, flags), in order:
// writes and discards wait for the next flush (fsync's, flush's) and go
// before it; a FUA write and a mark go at once, ahead of what waits; the
// removal logs the last write, then its end mark. An O_DSYNC write on a
// block device is a REQ_FUA write and then fsync's flush
// (generic_write_sync), an empty flush here, which takes write D.
var lwKernelEntries = []string{
	"write 0+16 NONE", "write 128+8 NONE", "flush 0+0 FLUSH",
	"write 256+8 FUA", "write 384+8 NONE", "flush 0+0 FLUSH",
	`mark "one"`,
	"discard 512+128 DISCARD", "flush 0+0 FLUSH",
	`mark "two"`,
	"write 16+8 NONE", `mark "dm-log-writes-end"`,
}

// lwPatterns: which pattern each write entry's bytes are, by sector.
var lwPatterns = map[uint64]string{0: "A", 128: "B", 256: "C", 384: "D", 16: "E"}

var _ = Describe("log-writes", Label("kernel"), func() {
	var bin string
	BeforeEach(func() {
		var err error
		bin, err = cmdtest.Build(GinkgoT().TempDir())
		Expect(err).NotTo(HaveOccurred())
	})

	snaplab := func(ctx context.Context, dir string, args ...string) cmdtest.Result {
		r, err := cmdtest.Run(ctx, bin, dir, nil, args...)
		Expect(err).NotTo(HaveOccurred())
		Expect(r.Code).To(Equal(0), "snaplab %s:\n%s%s", strings.Join(args, " "), r.Stdout, r.Stderr)
		return r
	}

	It("the kernel's log decodes, imports and equals the simulator's export", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		kdir := filepath.Join(dir, "kernel")
		Expect(os.MkdirAll(kdir, 0o755)).To(Succeed())

		By("the guest: log-writes over disk data, logging to disk logd")
		sc, err := script.Parse("lw", lwKernelScenario)
		Expect(err).NotTo(HaveOccurred())
		start := time.Now()
		krep, err := ex.Run(ctx, sc, run.Options{DumpDir: kdir})
		Expect(err).NotTo(HaveOccurred())
		Expect(krep.Pass()).To(BeTrue(), "%v", krep.Failures)
		GinkgoWriter.Printf("log-writes: the guest's part took %v\n", time.Since(start).Round(time.Millisecond))
		kdata, err := os.ReadFile(filepath.Join(kdir, "data.img"))
		Expect(err).NotTo(HaveOccurred())
		klogPath := filepath.Join(kdir, "logd.img")
		klogBytes, err := os.ReadFile(klogPath)
		Expect(err).NotTo(HaveOccurred())

		By("(a) sim/logwrites decodes the kernel's log")
		klog, err := logwrites.Read(bytes.NewReader(klogBytes), int64(len(klogBytes)))
		Expect(err).NotTo(HaveOccurred())
		Expect(klog.SectorSize).To(Equal(uint32(512)))
		AddReportEntry("the kernel's log", strings.Join(entryStrings(klog), "\n"))
		Expect(entryStrings(klog)).To(Equal(lwKernelEntries), "the kernel's log")
		for i, e := range klog.Entries {
			if e.Data == nil {
				continue
			}
			p := lwPatterns[e.Sector]
			Expect(p).NotTo(BeEmpty(), "entry %d: %s", i, e)
			Expect(pattern.Verify(e.Data, p, int64(e.Sector)*512)).To(Succeed(), "entry %d: %s: not pattern %s", i, e, p)
		}
		// The writer's log of those entries is the kernel's, byte for byte,
		// up to the end of the last entry: the super block's padding (the
		// kernel copies 4 bytes of its stack after sectorsize) aside.
		enc, err := logwrites.Encode(klog)
		Expect(err).NotTo(HaveOccurred())
		Expect(enc[32:]).To(Equal(klogBytes[32:len(enc)]), "Encode differs from the kernel's log at byte %d", 32+firstDiff(enc[32:], klogBytes[32:len(enc)]))
		Expect(enc[:28]).To(Equal(klogBytes[:28]), "super block")

		By("(b) import log-writes, run on the sim executor: disk data as the kernel left it")
		imp := filepath.Join(kdir, "imported.scn")
		snaplab(ctx, dir, "import", "log-writes", "-device", "data", "-size", "4MiB", "-o", imp, klogPath)
		snaplab(ctx, dir, "run", "-record", "off", "-dump", filepath.Join(dir, "imported-img"), imp)
		idata, err := os.ReadFile(filepath.Join(dir, "imported-img", "imported", "data.img"))
		Expect(err).NotTo(HaveOccurred())
		Expect(idata).To(HaveLen(len(kdata)))
		Expect(bytes.Equal(idata, kdata)).To(BeTrue(), "the imported scenario's disk differs from the kernel's at byte %d", firstDiff(idata, kdata))

		By("(c) the same I/O on the simulator, exported as log-writes: the kernel's entries")
		simText := lwSimScenario(lwKernelScenario)
		simScn := filepath.Join(dir, "lwsim.scn")
		Expect(os.WriteFile(simScn, []byte(simText), 0o644)).To(Succeed())
		snaplab(ctx, dir, "run", "-record", filepath.Join(dir, "recs"), simScn)
		slogPath := filepath.Join(dir, "sim.log")
		snaplab(ctx, dir, "export", "--format", "log-writes", "--device", "data", "-o", slogPath, filepath.Join(dir, "recs", "lwsim.jsonl"))
		slogBytes, err := os.ReadFile(slogPath)
		Expect(err).NotTo(HaveOccurred())
		slog, err := logwrites.Read(bytes.NewReader(slogBytes), int64(len(slogBytes)))
		Expect(err).NotTo(HaveOccurred())
		// Normalisation: export marks every control step; the kernel's
		// target exists only from its create on and marks only messages.
		// The export's marks of other steps (here the create of the
		// device over data) go; a message's mark is named as the kernel
		// names it.
		var kept []logwrites.Entry
		for _, e := range slog.Entries {
			if e.Flags&logwrites.FlagMark != 0 && stepMark.MatchString(e.Mark) {
				continue
			}
			kept = append(kept, e)
		}
		slog.Entries = kept
		Expect(entryStrings(slog)).To(Equal(entryStrings(klog)), "the simulator's export (first) and the kernel's log")
		for i := range klog.Entries {
			k, s := klog.Entries[i], slog.Entries[i]
			Expect(s.Data).To(Equal(k.Data), "entry %d: %s: the data differs", i, k)
			Expect(s.Flags).To(Equal(k.Flags), "entry %d: %s", i, k)
		}
	}, SpecTimeout(5*time.Minute))
})

// stepMark is the name export gives a control step that is not a mark
// message.
var stepMark = regexp.MustCompile(`^line[0-9]+:`)

// lwSimScenario is the kernel scenario for the simulator, which has no
// log-writes target: a linear table in its place, and the mark messages
// (which linear refuses) expected to fail; an O_DSYNC write gets the
// flush fsync sends after it in the guest.
func lwSimScenario(text string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		l = strings.Replace(l, "log-writes data logd", "linear data 0", 1)
		switch {
		case strings.HasPrefix(l, "dmsetup message "):
			l += " exit=1"
		case strings.HasPrefix(l, "write ") && strings.HasSuffix(l, " fua"):
			l += "\nflush " + strings.Fields(l)[1]
		}
		fmt.Fprintln(&b, l)
	}
	return b.String()
}

func entryStrings(l *logwrites.Log) []string {
	var out []string
	for _, e := range l.Entries {
		out = append(out, e.String())
	}
	return out
}
