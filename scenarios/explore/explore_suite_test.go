// The explore suite: `snaplab explore`, built and run as a user runs it
// (label sim: Go only). A clean campaign of at least 1,000 seeds, both
// semantics, faults on, finds nothing and reaches every coverage
// property; shards merge into the unsharded campaign's summary; a sample
// of cases runs twice with identical recordings.
package explore_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/scenarios/report"

	"snaplab/scenarios/cmdtest"
	"snaplab/sim/explore"
)

func TestExplore(t *testing.T) {
	RegisterFailHandler(Fail)
	report.Run(t, "explore", "snaplab explore")
}

var bin string

var _ = BeforeSuite(func() {
	var err error
	bin, err = cmdtest.Build(GinkgoT().TempDir())
	Expect(err).NotTo(HaveOccurred())
})

// snaplab runs the command in dir.
func snaplab(ctx context.Context, dir string, args ...string) cmdtest.Result {
	r, err := cmdtest.Run(ctx, bin, dir, nil, args...)
	Expect(err).NotTo(HaveOccurred())
	return r
}

func readSummary(path string) *explore.Summary {
	f, err := os.Open(path)
	Expect(err).NotTo(HaveOccurred())
	defer f.Close()
	s, err := explore.ReadSummary(f)
	Expect(err).NotTo(HaveOccurred())
	return s
}

var _ = Describe("a campaign with no bug planted", Label("sim"), func() {
	It("explores 1,000 seeds (both semantics, faults on) with zero failures and reaches every coverage property", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		r := snaplab(ctx, dir, "explore", "--seeds", "1000", "--semantics", "both", "--faults", "on", "--jobs", "2", "--out", "out")
		Expect(r.Code).To(Equal(0), "stdout:\n%s\nstderr:\n%s", r.Stdout, r.Stderr)
		s := readSummary(filepath.Join(dir, "out", "summary.json"))
		Expect(s.Ran).To(BeNumerically("==", 1000))
		Expect(s.Failed).To(BeZero())
		Expect(s.Config.Semantics).To(Equal([]string{"mainline", "seed"}))
		Expect(s.Config.Faults).To(BeTrue())
		Expect(s.Unreached()).To(BeEmpty())
		Expect(r.Stdout).To(ContainSubstring("passed 1000, failed 0"))
	})
})

var _ = Describe("shards", Label("sim"), func() {
	It("merge into the summary of the unsharded campaign, byte for byte", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		common := []string{"explore", "--seeds", "90", "--seed", "500", "--jobs", "2", "--progress", "off"}
		r := snaplab(ctx, dir, append(common, "--out", "whole")...)
		Expect(r.Code).To(Equal(0), "stdout:\n%s\nstderr:\n%s", r.Stdout, r.Stderr)
		var parts []string
		for _, sh := range []string{"0/3", "1/3", "2/3"} {
			r := snaplab(ctx, dir, append(common, "--out", "shards", "--shard", sh, "--jobs", "1")...)
			Expect(r.Code).To(Equal(0), "shard %s: stdout:\n%s\nstderr:\n%s", sh, r.Stdout, r.Stderr)
		}
		for _, n := range []string{"2", "0", "1"} {
			parts = append(parts, filepath.Join("shards", "summary-"+n+"-of-3.json"))
		}
		Expect(readSummary(filepath.Join(dir, parts[0])).Ran).To(BeNumerically("==", 30))
		r = snaplab(ctx, dir, append([]string{"explore", "merge", "-o", "merged.json"}, parts...)...)
		Expect(r.Code).To(Equal(0), "stdout:\n%s\nstderr:\n%s", r.Stdout, r.Stderr)
		whole, err := os.ReadFile(filepath.Join(dir, "whole", "summary.json"))
		Expect(err).NotTo(HaveOccurred())
		merged, err := os.ReadFile(filepath.Join(dir, "merged.json"))
		Expect(err).NotTo(HaveOccurred())
		Expect(string(merged)).To(Equal(string(whole)))

		r = snaplab(ctx, dir, "explore", "merge", parts[0], parts[1])
		Expect(r.Code).To(Equal(1))
		Expect(r.Stderr).To(ContainSubstring("shards missing: 1/3"))
	})
})

var _ = Describe("the determinism gate", Label("sim"), func() {
	It("runs every case twice and finds the recordings identical", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		r := snaplab(ctx, dir, "explore", "--seeds", "60", "--seed", "9000", "--determinism-every", "1", "--jobs", "2", "--out", "out")
		Expect(r.Code).To(Equal(0), "stdout:\n%s\nstderr:\n%s", r.Stdout, r.Stderr)
		Expect(readSummary(filepath.Join(dir, "out", "summary.json")).Config.DeterminismEvery).To(BeNumerically("==", 1))
	})
})
