package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"snaplab/sim/explore"
	"snaplab/sim/gen"
	"snaplab/sim/run"
	"snaplab/sim/script"
)

// The explore group measures the exploration rate: random scenarios of
// `snaplab gen --ops 1000` (gen.Generate(seed, 1000), seeds 1 to
// -explore-scenarios, generated beforehand) each parsed and run on the
// simulator as `snaplab run` does (run.Run, the oracle checking every read,
// every assertion on), once with the recording off and once with it
// streamed to a file per scenario in a temporary directory. The figure is
// scenarios per second of this process's CPU time (user and system, every
// thread: getrusage), so per core whatever the machine's other load:
// explore_scenarios_per_core_record_off and _record_on, target >= 200. A
// scenario that fails is an error of the group, not a figure.
//
// Then the campaign path, as `snaplab explore --ops 1000` runs it:
// explore.RunCase for cases 0 to -explore-scenarios of the default campaign
// (both semantics, faults, swarm, seeded interleavings, the determinism
// gate on every 50th case, the invariants after every step and the oracle
// on every read), per second of CPU: explore_campaign_seeds_per_core,
// target >= 200 as for the plain scenarios.
//
// And the crash checks of a campaign (--power-cut-every 1 --power-cut-seeds
// 4 on cases 0 to -explore-crash-cases at --ops 60): power-cut states
// checked per second of CPU, explore_power_cut_states_per_core, target
// >= 200: a campaign at its target rate (200 seeds/s) crash-checks every
// tenth case, about 8 states each, so 160 states/s per core keep the
// checks from dominating it.
func init() { register("explore", benchExplore) }

var (
	exploreScenarios = flag.Int("explore-scenarios", 200, "explore: scenarios run in each mode (seeds 1..N)")
	exploreCrash     = flag.Int("explore-crash-cases", 40, "explore: campaign cases crash-checked for the power-cut figure")
)

func benchExplore(emit func(Result)) error {
	texts := make([]string, *exploreScenarios)
	for i := range texts {
		texts[i] = gen.Generate(uint64(i+1), 1000)
	}
	dir, err := os.MkdirTemp("", "snaplab-bench-explore-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for _, record := range []bool{false, true} {
		runtime.GC()
		cpu0, err := processCPU()
		if err != nil {
			return err
		}
		wall := time.Now()
		var recBytes int64
		for i, text := range texts {
			name := fmt.Sprintf("gen-%d", i+1)
			sc, err := script.Parse(name+".scn", text)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			sc.Name, sc.Dir = name, dir
			var opts run.Options
			var f *os.File
			var bw *bufio.Writer
			if record {
				if f, err = os.Create(filepath.Join(dir, name+".jsonl")); err != nil {
					return err
				}
				bw = bufio.NewWriterSize(f, 1<<20)
				opts.Record = bw
			}
			rep := run.Run(sc, opts)
			if record {
				err := bw.Flush()
				if n, serr := f.Seek(0, io.SeekCurrent); serr == nil {
					recBytes += n
				}
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return fmt.Errorf("%s: recording: %w", name, err)
				}
			}
			if !rep.Pass() {
				return fmt.Errorf("%s (gen --seed %d --ops 1000) fails: %v", name, i+1, rep.Failures[0])
			}
		}
		el := time.Since(wall)
		cpu1, err := processCPU()
		if err != nil {
			return err
		}
		cpu := cpu1 - cpu0
		mode := "off"
		if record {
			mode = "on"
			note("explore: recordings of %d scenarios: %.1f MiB", len(texts), float64(recBytes)/(1<<20))
		}
		note("explore: recording %s: %d scenarios in %.2fs CPU, %.2fs wall (%.0f/s)", mode, len(texts), cpu.Seconds(), el.Seconds(), float64(len(texts))/el.Seconds())
		emit(Result{Name: "explore_scenarios_per_core_record_" + mode, Value: float64(len(texts)) / cpu.Seconds(), Unit: "scenarios/s", Op: ">=", Target: 200})
	}
	return benchCampaign(emit)
}

func benchCampaign(emit func(Result)) error {
	cfg := explore.Config{Seed: 1, Ops: 1000, Semantics: []string{"mainline", "seed"}, Faults: true, Swarm: true,
		Interleave: true, DeterminismEvery: 50}
	runtime.GC()
	cpu0, err := processCPU()
	if err != nil {
		return err
	}
	wall := time.Now()
	steps := 0
	for i := range uint64(*exploreScenarios) {
		r := explore.RunCase(cfg, cfg.Case(i))
		if !r.Pass {
			return fmt.Errorf("explore case %d (seed %d, %s) fails: line %d: %s: %s", i, r.Seed, r.Semantics, r.Failure.Line, r.Failure.Text, r.Failure.Msg)
		}
		steps += r.Steps
	}
	el := time.Since(wall)
	cpu1, err := processCPU()
	if err != nil {
		return err
	}
	cpu := cpu1 - cpu0
	note("explore: campaign of %d cases (--ops 1000, %d steps): %.2fs CPU, %.2fs wall", *exploreScenarios, steps, cpu.Seconds(), el.Seconds())
	emit(Result{Name: "explore_campaign_seeds_per_core", Value: float64(*exploreScenarios) / cpu.Seconds(), Unit: "seeds/s", Op: ">=", Target: 200})
	return benchPowerCuts(emit)
}

func benchPowerCuts(emit func(Result)) error {
	cfg := explore.Config{Seed: 1, Ops: 60, Semantics: []string{"mainline", "seed"}, Faults: true, Swarm: true,
		Interleave: true, PowerCutEvery: 1, PowerCutSeeds: 4}
	runtime.GC()
	cpu0, err := processCPU()
	if err != nil {
		return err
	}
	wall := time.Now()
	states := 0
	for i := range uint64(*exploreCrash) {
		r := explore.RunCase(cfg, cfg.Case(i))
		if !r.Pass {
			return fmt.Errorf("explore case %d (seed %d, %s) fails: line %d: %s: %s", i, r.Seed, r.Semantics, r.Failure.Line, r.Failure.Text, r.Failure.Msg)
		}
		states += r.States
	}
	el := time.Since(wall)
	cpu1, err := processCPU()
	if err != nil {
		return err
	}
	cpu := cpu1 - cpu0
	note("explore: %d power-cut states of %d cases in %.2fs CPU, %.2fs wall", states, *exploreCrash, cpu.Seconds(), el.Seconds())
	emit(Result{Name: "explore_power_cut_states_per_core", Value: float64(states) / cpu.Seconds(), Unit: "states/s", Op: ">=", Target: 200})
	return nil
}

// processCPU is this process's user and system CPU time, all threads.
func processCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
