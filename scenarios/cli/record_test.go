package cli_test

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
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
