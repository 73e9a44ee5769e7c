package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/guest"
	"snaplab/vmtest/kernexec"
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
	for _, p := range paths {
		text, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sc, err := script.Parse(p, string(text))
		if err != nil {
			return err
		}
		sc.Dir = filepath.Dir(p)
		if kernexec.Supported(sc) == nil {
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
	vm, err := bootGuest(ctx, kernexec.ImageOptions()...)
	if err != nil {
		return err
	}
	defer vm.Kill()
	ex := kernexec.New(vm)
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

// bootGuest prepares a guest image with opts and boots it with hot-plug
// slots, returning once its agent is ready; the caller kills it.
func bootGuest(ctx context.Context, opts ...guest.Option) (*qemu.VM, error) {
	img, err := guest.Prepare(ctx, opts...)
	if err != nil {
		return nil, err
	}
	vm, err := qemu.Start(ctx, append([]qemu.Option{qemu.WithImage(img), qemu.WithHotplugSlots(8)}, vmOpts...)...)
	if err != nil {
		return nil, err
	}
	if _, err := vm.Ready(ctx); err != nil {
		vm.Kill()
		return nil, err
	}
	return vm, nil
}
