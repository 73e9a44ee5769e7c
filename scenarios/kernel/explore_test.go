package kernel_test

import (
	"fmt"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/sim/explore"
	"snaplab/sim/gen"
	"snaplab/sim/run"
)

// The kernel-differential exploration sample: the cases `snaplab explore
// --executor kernel --compare sim` runs (generated with faults and swarm,
// mainline, no seeded interleavings), -kernel.seeds of them from seed 1,
// each on the real kernel and on the simulator. Every difference is
// reported, with the case's scenario; `make explore-kernel` runs the long
// campaign.
var _ = Describe("kernel-differential exploration", Label("kernel"), func() {
	It(fmt.Sprintf("agrees with the simulator on %d generated cases with faults", *seeds), func(ctx SpecContext) {
		cfg := explore.Config{Seed: 1, Ops: *ops, Semantics: []string{"mainline"}, Faults: true, Swarm: true}
		sum := explore.NewSummary(cfg, "kernel/sim", uint64(*seeds), explore.Shard{})
		var bad []string
		for i := range uint64(*seeds) {
			k := cfg.Case(i)
			By(fmt.Sprintf("case %d (seed %d)", i, k.Seed))
			r := explore.CompareCase(ctx, cfg, k, ex, run.Sim{})
			sum.Add(r)
			if !r.Pass {
				bad = append(bad, fmt.Sprintf("seed %d: line %d: %s\n    %s\nscenario:\n%s", k.Seed, r.Failure.Line, r.Failure.Text, r.Failure.Msg, r.Text))
			}
		}
		AddReportEntry("coverage", sum.Coverage)
		Expect(bad).To(BeEmpty(), "kernel (first) and simulator (second) disagree:\n%s", strings.Join(bad, "\n"))
		Expect(sum.Kinds[gen.KFaultWindow]).To(BeNumerically(">", 0), "no fault was generated: %v", sum.Kinds)
	}, SpecTimeout(25*time.Minute))
})
