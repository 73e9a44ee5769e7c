package gen

import (
	"fmt"
	"testing"

	"snaplab/sim/run"
	"snaplab/sim/script"
)

// BenchmarkGenerateConfigRun is a campaign's rate per core: seeds/s of
// GenerateConfig plus parsing and running the scenario on the simulator
// (oracle and every check on, recording off), for the classic op set and
// for every option, at --ops 60 and 1000.
func BenchmarkGenerateConfigRun(b *testing.B) {
	for _, ops := range []int{60, 1000} {
		for _, c := range []struct {
			name string
			cfg  Config
		}{
			{"classic", Config{}},
			{"all-mainline", Config{Semantics: "mainline", Faults: true, Swarm: true, Interleave: true}},
			{"all-seed", Config{Semantics: "seed", Faults: true, Swarm: true, Interleave: true}},
		} {
			cfg := c.cfg
			cfg.Ops = ops
			b.Run(fmt.Sprintf("ops=%d/%s", ops, c.name), func(b *testing.B) {
				seed := uint64(0)
				for b.Loop() {
					seed++
					text, _ := GenerateConfig(seed, cfg)
					sc, err := script.Parse("gen.scn", text)
					if err != nil {
						b.Fatal(err)
					}
					if rep := run.Run(sc, run.Options{}); !rep.Pass() {
						b.Fatalf("seed %d %s: %v", seed, cfg, rep.Failures[0])
					}
				}
				b.ReportMetric(float64(seed)/b.Elapsed().Seconds(), "seeds/s")
			})
		}
	}
}
