//go:build unix

package gen

import (
	"fmt"
	"io"
	"syscall"
	"testing"
	"time"

	"snaplab/sim/run"
	"snaplab/sim/script"
)

// exploreScenarios is the bench's corpus: `snaplab gen --ops 1000` for
// seeds 1..n, parsed once.
func exploreScenarios(b *testing.B, n int) []*script.Scenario {
	b.Helper()
	scs := make([]*script.Scenario, n)
	for i := range scs {
		seed := uint64(i + 1)
		name := fmt.Sprintf("gen-%d", seed)
		sc, err := script.Parse(name+".scn", Generate(seed, 1000))
		if err != nil {
			b.Fatal(err)
		}
		sc.Name, sc.Dir = name, "."
		scs[i] = sc
	}
	return scs
}

// BenchmarkExplore is the exploration rate (issue 10, item 4): scenarios
// of 1000 random steps run on the simulator with the oracle and every
// check on, with the recording off (hashed only) and on (written to
// io.Discard). Its figure is scenarios/s; run it with -cpu 1 for the rate
// per core. The target is 200 scenarios/s per core.
func BenchmarkExplore(b *testing.B) {
	scs := exploreScenarios(b, 50)
	for _, c := range []struct {
		name string
		rec  io.Writer
	}{{"record=off", nil}, {"record=on", io.Discard}} {
		b.Run(c.name, func(b *testing.B) {
			n := 0
			cpu0 := cpuTime()
			for b.Loop() {
				sc := scs[n%len(scs)]
				n++
				rep := run.Run(sc, run.Options{Record: c.rec})
				if !rep.Pass() {
					b.Fatalf("%s: %v", sc.Name, rep.Failures[0])
				}
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "scenarios/s")
			// CPU time is the figure per core, whatever else the machine
			// runs meanwhile.
			b.ReportMetric(float64(n)/(cpuTime()-cpu0).Seconds(), "scenarios/cpu-s")
		})
	}
}

// cpuTime is the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
