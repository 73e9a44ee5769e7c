package crash_test

import (
	"syscall"
	"testing"

	"snaplab/sim/explore"
)

// BenchmarkCampaignCases reports crash states checked per second over the
// first 20 cases of a campaign as snaplab explore runs them (60 ops,
// faults, swarm, interleave, both semantics), every case crash-checked
// with 4 seeded cuts (every other case torn). The time includes each
// case's own run, which is small next to its crash check.
func BenchmarkCampaignCases(b *testing.B) {
	c := explore.Config{Seed: 1, Ops: 60, Semantics: []string{"mainline", "seed"}, Faults: true, Swarm: true,
		Interleave: true, PowerCutEvery: 1, PowerCutSeeds: 4}
	states := 0
	cpu := cpuTime()
	for b.Loop() {
		for i := uint64(0); i < 20; i++ {
			r := explore.RunCase(c, c.Case(i))
			if !r.Pass && r.CrashArgs != "" {
				b.Fatalf("case %d: %s", i, r.Failure.Msg)
			}
			states += r.States
		}
	}
	b.ReportMetric(float64(states)/b.Elapsed().Seconds(), "states/s")
	b.ReportMetric(float64(states)/(cpuTime()-cpu), "states/cpu-s")
	b.ReportMetric(float64(states)/float64(b.N), "states/op")
}

// cpuTime is the process's user and system CPU time in seconds: on a
// loaded machine the wall clock says little.
func cpuTime() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
