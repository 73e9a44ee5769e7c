package explore_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/scenarios/cmdtest"
	"snaplab/sim/explore"
	"snaplab/sim/plant"
)

// Planted bugs prove the checks can fail (issue 12 item 6). A binary built
// with -tags snaplab_plant plants one defect of sim/plant in the simulator
// (`snaplab explore --plant NAME`); a campaign of at most 300 seeds must
// find it and shrink the case to at most 12 step lines, and the same case
// must pass with nothing planted, so that the failure is the bug's. The
// normal binary has no --plant at all.

const (
	plantSeeds     = 300
	plantMaxShrunk = 12
)

// plantedCases are the planted bugs in sim/plant's order; signature, when
// set, is what the first failure's signature must contain, and extra are
// more explore flags.
var plantedCases = []struct {
	bug       plant.Bug
	signature string
	extra     []string
}{
	{bug: plant.OriginWriteSkipsCOW},
	{bug: plant.HandoverSourceNotEIO},
	{bug: plant.InvalidSourceValidDest},
	{bug: plant.CommitBeforeCopy},
	{bug: plant.InvalidationHeaderNotWritten},
	{bug: plant.SuspendDropsPending},
	{bug: plant.ReloadWrongChunk},
	{bug: plant.OverflowNotFlagged},
	{bug: plant.MergeSkipsChunk},
	{bug: plant.AreaNotZeroed},
	// The determinism gate on every case: the bug changes nothing else.
	{bug: plant.Nondeterministic, signature: "determinism: recordings differ", extra: []string{"--determinism-every", "1"}},
}

var _ = Describe("planted bugs", Label("sim"), Ordered, ContinueOnFailure, func() {
	var tagged string
	BeforeAll(func() {
		var err error
		tagged, err = cmdtest.BuildTags(GinkgoT().TempDir(), "snaplab_plant")
		Expect(err).NotTo(HaveOccurred())
	})

	// found runs the campaign with bug planted and checks the first
	// failure it reports; extra are more explore flags.
	found := func(ctx SpecContext, bug plant.Bug, signature string, extra ...string) {
		dir := GinkgoT().TempDir()
		args := append([]string{"explore", "--plant", string(bug), "--seeds", fmt.Sprint(plantSeeds),
			"--max-failures", "1", "--jobs", "2", "--progress", "off", "--out", "out"}, extra...)
		r, err := cmdtest.Run(ctx, tagged, dir, nil, args...)
		Expect(err).NotTo(HaveOccurred())
		Expect(r.Code).To(Equal(1), "a campaign with %s planted must fail\nstdout:\n%s\nstderr:\n%s", bug, r.Stdout, r.Stderr)
		s := readSummary(filepath.Join(dir, "out", "summary.json"))
		Expect(s.Failed).To(BeNumerically(">=", 1))
		Expect(s.Failures).NotTo(BeEmpty())
		f := s.Failures[0]
		Expect(f.First.Index).To(BeNumerically("<", plantSeeds))
		if signature != "" {
			Expect(f.Signature).To(ContainSubstring(signature))
		}
		Expect(f.Shrunk).NotTo(BeEmpty(), "the first failure of %s was not shrunk", bug)
		small, err := os.ReadFile(filepath.Join(dir, "out", f.Shrunk))
		Expect(err).NotTo(HaveOccurred())
		Expect(explore.StepLines(string(small))).To(Equal(f.ShrunkLines))
		AddReportEntry("planted "+string(bug), fmt.Sprintf("first failing case index %d (seed %d, %s), shrunk to %d step lines: %s",
			f.First.Index, f.First.Seed, f.First.Semantics, f.ShrunkLines, f.Signature))
		fmt.Fprintf(GinkgoWriter, "planted %s: first failing case index %d (seed %d, %s), shrunk to %d lines: %s\n%s",
			bug, f.First.Index, f.First.Seed, f.First.Semantics, f.ShrunkLines, f.Signature, small)
		Expect(f.ShrunkLines).To(BeNumerically("<=", plantMaxShrunk), "shrunk scenario of %s:\n%s", bug, small)

		// The same case (the same index of the same campaign: the shard
		// of that one case), with nothing planted, passes.
		i := f.First.Index
		r = snaplab(ctx, dir, append([]string{"explore", "--seeds", fmt.Sprint(i + 1), "--shard", fmt.Sprintf("%d/%d", i, i+1),
			"--progress", "off", "--out", "clean"}, extra...)...)
		Expect(r.Code).To(Equal(0), "case %d (seed %d, %s) fails with no bug planted too\nstdout:\n%s\nstderr:\n%s",
			i, f.First.Seed, f.First.Semantics, r.Stdout, r.Stderr)
	}

	var entries []TableEntry
	for _, c := range plantedCases {
		entries = append(entries, Entry(string(c.bug), c.bug, c.signature, c.extra))
	}
	DescribeTable("each is found within 300 seeds and shrunk to at most 12 lines",
		func(ctx SpecContext, bug plant.Bug, signature string, extra []string) {
			found(ctx, bug, signature, extra...)
		},
		entries,
	)

	It("has a case for every bug sim/plant lists", func() {
		var names []string
		for _, c := range plantedCases {
			names = append(names, string(c.bug))
		}
		Expect(names).To(Equal(plant.Names()))
	})

	It("refuses an unknown bug, naming the known ones", func(ctx SpecContext) {
		r, err := cmdtest.Run(ctx, tagged, GinkgoT().TempDir(), nil, "explore", "--plant", "no-such-bug", "--seeds", "1")
		Expect(err).NotTo(HaveOccurred())
		Expect(r.Code).To(Equal(2))
		Expect(r.Stderr).To(ContainSubstring(`--plant: unknown bug "no-such-bug"; known bugs: ` + strings.Join(plant.Names(), ", ")))
	})
})

var _ = Describe("a normal build", Label("sim"), func() {
	It("has no --plant: an unknown flag", func(ctx SpecContext) {
		r := snaplab(ctx, GinkgoT().TempDir(), "explore", "--plant", string(plant.OriginWriteSkipsCOW), "--seeds", "1")
		Expect(r.Code).To(Equal(2), "stdout:\n%s\nstderr:\n%s", r.Stdout, r.Stderr)
		Expect(r.Stderr).To(ContainSubstring("flag provided but not defined: -plant"))
	})
})
