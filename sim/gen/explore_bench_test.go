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

// exploreTexts is the bench's corpus: `snaplab gen --ops 1000` for seeds
// 1..n.
func exploreTexts(n int) []string {
	texts := make([]string, n)
	for i := range texts {
		texts[i] = Generate(uint64(i+1), 1000)
	}
	return texts
}

// BenchmarkExplore is the exploration rate (issue 10, item 4): scenarios
// of 1000 random steps run on the simulator with the oracle and every
// check on, with the recording off (Record nil) and on (written to
// io.Discard). Each is parsed and run as `snaplab run` does a file (the
// texts are generated before the timer starts), so the heap holds one
// scenario at a time. Its figures are scenarios/s and scenarios per CPU
// second, the rate per core whatever else the machine runs (use -cpu 1).
// The target is 200 scenarios/s per core.
func BenchmarkExplore(b *testing.B) {
	texts := exploreTexts(50)
	for _, c := range []struct {
		name string
		rec  io.Writer
	}{{"record=off", nil}, {"record=on", io.Discard}} {
		b.Run(c.name, func(b *testing.B) {
			n := 0
			cpu0 := cpuTime()
			for b.Loop() {
				i := n % len(texts)
				n++
				name := fmt.Sprintf("gen-%d", i+1)
				sc, err := script.Parse(name+".scn", texts[i])
				if err != nil {
					b.Fatal(err)
				}
				sc.Name, sc.Dir = name, "."
				rep := run.Run(sc, run.Options{Record: c.rec})
				if !rep.Pass() {
					b.Fatalf("%s: %v", sc.Name, rep.Failures[0])
				}
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "scenarios/s")
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
