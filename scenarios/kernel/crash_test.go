package kernel_test

import (
	"fmt"
	"path/filepath"
	"slices"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/sim/crash"
	"snaplab/sim/script"
)

// Crash states on the real kernel: for a sample of library scenarios with
// persistent snapshots, a few of the crash states sim/crash checks (a
// boundary in the middle, a torn seeded cut, the end) are dumped as raw
// images and a scenario that loads them; the real dm-snapshot must load
// the same images to the same status, table and reads as the simulator.
var _ = Describe("crash states on kernel and sim", Label("kernel"), func() {
	for _, name := range []string{"persistent-reload-keeps-exceptions", "handover-pending-copies", "cow-full-origin-write-invalidates"} {
		name := name
		It(name, func(ctx SpecContext) {
			sc, err := script.ParseFile(filepath.Join("../library", name+".scn"))
			Expect(err).NotTo(HaveOccurred())
			opts := crash.Options{Seeds: 2, Torn: true, DumpSparse: true}
			all, err := crash.Check(sc, opts)
			Expect(err).NotTo(HaveOccurred())
			Expect(all.Bad).To(BeNil(), "%s", all.Bad)
			// The middle boundary, the last seeded state, the end.
			var picks []int
			var seeded []int
			for _, c := range all.Cuts {
				if c.Kind == "seeded" {
					seeded = append(seeded, c.Index)
				}
			}
			picks = append(picks, all.Cuts[len(all.Cuts)/2].Index)
			if len(seeded) > 0 && !slices.Contains(picks, seeded[len(seeded)-1]) {
				picks = append(picks, seeded[len(seeded)-1])
			}
			if last := all.Cuts[len(all.Cuts)-1].Index; !slices.Contains(picks, last) {
				picks = append(picks, last)
			}
			opts.DumpDir, opts.DumpCuts = GinkgoT().TempDir(), picks
			res, err := crash.Check(sc, opts)
			Expect(err).NotTo(HaveOccurred())
			Expect(res.Dumped).To(HaveLen(len(picks)))
			for i, path := range res.Dumped {
				d, err := script.ParseFile(path)
				Expect(err).NotTo(HaveOccurred())
				d.Dir = filepath.Dir(path)
				By(fmt.Sprintf("%s: %s", filepath.Base(path), res.Cuts[picks[i]]))
				both(ctx, d)
			}
		}, SpecTimeout(3*time.Minute))
	}
})
