package cli_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/sim/pattern"
	"snaplab/vmtest/nbdclient"
)

var _ = Describe("snaplab serve's recording", Label("nbd"), func() {
	It("keeps written data in a deduplicated sidecar, names patterns, and replays from them", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		sock := filepath.Join(dir, "nbd.sock")
		rec := filepath.Join(dir, "s.jsonl")
		s := startServe("-socket", sock, "-record", rec, write(dir, "s.scn", good))
		c, err := nbdclient.Dial(ctx, "unix:"+sock, "base", nbdclient.Options{})
		Expect(err).NotTo(HaveOccurred())
		r := rand.New(rand.NewPCG(5, 6))
		random := make([]byte, 64<<10)
		for i := range random {
			random[i] = byte(r.Uint32())
		}
		a := make([]byte, 16<<10)
		pattern.Fill(a, "A", 1<<20)
		for i := int64(0); i < 4; i++ {
			Expect(c.WriteAt(random, (2+i)<<20, false)).To(Succeed()) // the same content 4 times
		}
		Expect(c.WriteAt(a, 1<<20, false)).To(Succeed())                   // the scenario's pattern A, at its offset
		Expect(c.WriteAt(make([]byte, 8<<10), 7<<20, false)).To(Succeed()) // zeros
		Expect(c.Close()).To(Succeed())
		Expect(s.quit()).To(Equal(0))

		lines := string(read(rec))
		Expect(lines).To(ContainSubstring(`"blobs":"s.blobs"`))
		Expect(strings.Count(lines, `"blob":"xxh3:`)).To(Equal(4))
		Expect(lines).To(ContainSubstring(`"off":1048576,"len":16384,"pattern":"A"`))
		Expect(lines).To(ContainSubstring(`"len":8192,"pattern":"zero"`))
		for _, l := range strings.Split(lines, "\n") {
			if strings.HasPrefix(l, `{"kind":"arrival"`) {
				Expect(l).NotTo(ContainSubstring(`"data":`), "no data inline")
			}
		}
		fi, err := os.Stat(filepath.Join(dir, "s.blobs"))
		Expect(err).NotTo(HaveOccurred())
		Expect(fi.Size()).To(BeNumerically("<", 2*len(random)), "the 4 copies are stored once")

		out := snaplab(ctx, dir, nil, "replay", rec)
		Expect(out.Stdout).To(ContainSubstring("IDENTICAL"), "%s%s", out.Stdout, out.Stderr)

		// Changed or missing data is an error that names the sidecar.
		b := read(filepath.Join(dir, "s.blobs"))
		Expect(os.WriteFile(filepath.Join(dir, "s.blobs"), bytes.Replace(b, b[len(b)-100:], make([]byte, 100), 1), 0o644)).To(Succeed())
		out = snaplab(ctx, dir, nil, "replay", rec)
		Expect(out.Code).To(Equal(1))
		Expect(out.Stderr).To(ContainSubstring("s.blobs"))
		Expect(os.Remove(filepath.Join(dir, "s.blobs"))).To(Succeed())
		out = snaplab(ctx, dir, nil, "replay", rec)
		Expect(out.Code).To(Equal(1))
		Expect(out.Stderr).To(SatisfyAll(ContainSubstring("blob sidecar"), ContainSubstring("s.blobs"), ContainSubstring("no such file")))
	}, SpecTimeout(2*time.Minute))

	It("records nothing with -record off, and says the session cannot be replayed", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		s := startServe("-socket", filepath.Join(dir, "nbd.sock"), "-record", "off", write(dir, "s.scn", good))
		Expect(s.quit()).To(Equal(0))
		Expect(s.out.String()).To(ContainSubstring("recording: off (this session cannot be replayed)"))
		ents, err := os.ReadDir(dir)
		Expect(err).NotTo(HaveOccurred())
		Expect(ents).To(HaveLen(1), "the scenario only: no recording, no sidecar")
	}, SpecTimeout(time.Minute))
})

func read(path string) []byte {
	b, err := os.ReadFile(path)
	Expect(err).NotTo(HaveOccurred())
	return b
}

// vmRSS is a process's resident set in bytes.
func vmRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	Expect(err).NotTo(HaveOccurred())
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			Expect(err).NotTo(HaveOccurred())
			return kb << 10
		}
	}
	Fail("no VmRSS in /proc/PID/status")
	return 0
}

var _ = Describe("a long served session", Label("nbd"), func() {
	It("holds its memory bounded while 2 GiB is written, and replays byte for byte", func(ctx SpecContext) {
		const (
			disk    = 256 << 20
			total   = 2 << 30
			chunk   = 1 << 20
			clients = 4
		)
		dir := GinkgoT().TempDir()
		sock := filepath.Join(dir, "nbd.sock")
		rec := filepath.Join(dir, "long.jsonl")
		s := startServe("-socket", sock, "-record", rec, write(dir, "long.scn", fmt.Sprintf("disk d %dMiB\n", disk>>20)))
		pid := s.cmd.Process.Pid
		start := vmRSS(pid)
		var peak atomic.Int64
		done := make(chan struct{})
		go func() {
			defer GinkgoRecover()
			for {
				select {
				case <-done:
					return
				case <-time.After(50 * time.Millisecond):
					if r := vmRSS(pid); r > peak.Load() {
						peak.Store(r)
					}
				}
			}
		}()
		// Unique random data, so neither the sidecar's deduplication nor
		// its patterns keep it small: every byte is recorded.
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		for c := 0; c < clients; c++ {
			wg.Add(1)
			go func(c int) {
				defer wg.Done()
				cl, err := nbdclient.Dial(ctx, "unix:"+sock, "d", nbdclient.Options{})
				if err != nil {
					errs <- err
					return
				}
				defer cl.Close()
				r := rand.New(rand.NewPCG(uint64(c), 7))
				buf := make([]byte, chunk)
				for i := 0; i < total/chunk/clients; i++ {
					for j := 0; j < len(buf); j += 8 {
						binary.LittleEndian.PutUint64(buf[j:], r.Uint64())
					}
					if err := cl.WriteAt(buf, int64(r.IntN(disk/chunk))*chunk, false); err != nil {
						errs <- err
						return
					}
				}
			}(c)
		}
		wg.Wait()
		close(done)
		close(errs)
		for err := range errs {
			Expect(err).NotTo(HaveOccurred())
		}
		Expect(s.quit()).To(Equal(0))
		fi, err := os.Stat(filepath.Join(dir, "long.blobs"))
		Expect(err).NotTo(HaveOccurred())
		GinkgoWriter.Printf("2 GiB written: serve RSS %d MiB at the start, peak %d MiB; sidecar %d MiB\n", start>>20, peak.Load()>>20, fi.Size()>>20)
		Expect(fi.Size()).To(BeNumerically(">=", int64(total)), "every byte is recorded")
		// The disk's 256 MiB, and a bounded rest: not the 2 GiB recorded.
		Expect(peak.Load()).To(BeNumerically("<=", start+disk+256<<20), "RSS must follow what the disk holds, not what was written")

		out := snaplab(ctx, dir, nil, "replay", rec)
		Expect(out.Stdout).To(ContainSubstring("IDENTICAL"), "%s%s", out.Stdout, out.Stderr)
	}, SpecTimeout(5*time.Minute))
})
