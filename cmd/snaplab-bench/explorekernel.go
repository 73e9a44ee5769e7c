package main

import (
	"context"
	"flag"
	"fmt"
	"sync"
	"time"

	"snaplab/sim/explore"
	"snaplab/sim/run"
	"snaplab/vmtest/guestexec"
)

// The explore-kernel group measures the kernel-differential campaign as
// `snaplab explore --executor kernel --compare sim --guests N` runs it:
// -explore-kernel-guests guests booted (boot excluded), then cases 0 to
// -explore-kernel-cases of the campaign (--ops 60, mainline, faults,
// swarm, no seeded interleavings), each on the real kernel and on the
// simulator (explore.CompareCase), spread over the guests. The figure is
// wall-clock scenarios per minute, explore_kernel_scenarios_per_minute,
// target >= 17: 500 seeds in half an hour. A difference the cases find is
// a result of the campaign, noted, not an error of the group.
func init() { register("explore-kernel", benchExploreKernel) }

var (
	exploreKernelGuests = flag.Int("explore-kernel-guests", 2, "explore-kernel: guests")
	exploreKernelCases  = flag.Int("explore-kernel-cases", 12, "explore-kernel: cases run")
)

func benchExploreKernel(emit func(Result)) error {
	ctx := context.Background()
	cfg := explore.Config{Seed: 1, Ops: 60, Semantics: []string{"mainline"}, Faults: true, Swarm: true}
	var execs []run.Executor
	for range *exploreKernelGuests {
		vm, err := bootGuest(ctx, guestexec.GuestKernel)
		if err != nil {
			return err
		}
		defer vm.Kill()
		execs = append(execs, guestexec.New(vm, guestexec.GuestKernel))
	}
	var mu sync.Mutex
	next := uint64(0)
	var failed int
	var failErr error
	start := time.Now()
	var wg sync.WaitGroup
	for _, ex := range execs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= uint64(*exploreKernelCases) {
					return
				}
				r := explore.CompareCase(ctx, cfg, cfg.Case(i), ex, run.Sim{})
				mu.Lock()
				if !r.Pass {
					failed++
					if len(r.Signature) > 10 && r.Signature[:10] == "executor: " && failErr == nil {
						failErr = fmt.Errorf("case %d: %s", i, r.Failure.Msg)
					}
					note("explore-kernel: case %d (seed %d) differs: line %d: %s: %s", i, r.Seed, r.Failure.Line, r.Failure.Text, r.Failure.Msg)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if failErr != nil {
		return failErr
	}
	note("explore-kernel: %d cases on %d guests in %.1fs, %d with differences", *exploreKernelCases, len(execs), el.Seconds(), failed)
	emit(Result{Name: "explore_kernel_scenarios_per_minute", Value: float64(*exploreKernelCases) / el.Minutes(), Unit: "scenarios/min", Op: ">=", Target: 17})
	return nil
}
