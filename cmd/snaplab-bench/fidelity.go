package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/guestexec"
	"snaplab/vmtest/qemu"
)

// The library group runs the mainline library (the scenarios the kernel
// can run) on the simulator and on the real kernel in one guest (boot
// excluded):
//
//   - library_N_scenarios_on_sim: the whole library on the simulator, in
//     process, one after the other.
//   - library_kernel_median_per_scenario: the median wall time of one
//     scenario on the kernel executor (its disks plugged in over NBD, the
//     dmsetup commands and I/O run by the guest, unplugging).
func init() { register("library", benchLibrary) }

func benchLibrary(emit func(Result)) error {
	paths, _ := filepath.Glob("scenarios/library/*.scn")
	sort.Strings(paths)
	var scs []*script.Scenario
	kernel := guestexec.New(nil, guestexec.GuestKernel) // for Supported; booted below
	for _, p := range paths {
		sc, err := script.ParseFile(p)
		if err != nil {
			return err
		}
		if kernel.Supported(sc) == nil {
			scs = append(scs, sc)
		}
	}
	if len(scs) == 0 {
		return fmt.Errorf("no library scenarios found (run from the repository root)")
	}
	start := time.Now()
	for _, sc := range scs {
		if rep := run.Run(sc, run.Options{}); !rep.Pass() {
			return fmt.Errorf("%s fails on sim: %v", sc.Name, rep.Failures)
		}
	}
	onSim := time.Since(start)

	ctx := context.Background()
	vm, err := bootGuest(ctx, guestexec.GuestKernel)
	if err != nil {
		return err
	}
	defer vm.Kill()
	var ex run.Executor = guestexec.New(vm, guestexec.GuestKernel)
	perScenario := make([]time.Duration, 0, len(scs))
	for _, sc := range scs {
		start := time.Now()
		rep, err := ex.Run(ctx, sc, run.Options{})
		perScenario = append(perScenario, time.Since(start))
		if err != nil {
			return fmt.Errorf("%s on the kernel: %w", sc.Name, err)
		}
		if !rep.Pass() {
			return fmt.Errorf("%s fails on the kernel: %v", sc.Name, rep.Failures)
		}
	}
	slices.Sort(perScenario)
	emit(Result{Name: fmt.Sprintf("library_%d_scenarios_on_sim", len(scs)), Value: onSim.Seconds(), Unit: "s", Op: "<=", Target: 5})
	emit(Result{Name: "library_kernel_median_per_scenario", Value: perScenario[len(perScenario)/2].Seconds(), Unit: "s", Op: "<=", Target: 1.5})
	return nil
}

// bootGuest boots a guest of mode m with the bench's -accel; the caller
// kills it.
func bootGuest(ctx context.Context, m guestexec.Mode) (*qemu.VM, error) {
	return guestexec.Boot(ctx, m, nil, vmOpts...)
}
