package main

import (
	"context"
	"fmt"
	"sort"
	"time"

	"snaplab/vmtest/guest"
	"snaplab/vmtest/qemu"
)

// The vm group boots the default test guest (vmtest/guest image, q35,
// TCG here) five times and reports the median time from starting QEMU to
// the agent's ready message; the same for microvm without a target.
func init() { register("vm", benchVM) }

const vmBoots = 5

func benchVM(emit func(Result)) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	img, err := guest.Prepare(ctx)
	if err != nil {
		return err
	}
	for _, c := range []struct {
		machine, name, op string
		target            float64
	}{
		{"q35", "guest_boot_to_agent_ready", "<=", 1.5},
		{"microvm", "guest_boot_to_agent_ready_microvm", "<=", 1.5},
	} {
		med, err := medianBoot(ctx, img, c.machine)
		if err != nil {
			return fmt.Errorf("%s: %w", c.machine, err)
		}
		emit(Result{Name: c.name, Value: med, Unit: "s", Op: c.op, Target: c.target})
	}
	return nil
}

func medianBoot(ctx context.Context, img *guest.Image, machine string) (float64, error) {
	var secs []float64
	for i := 0; i < vmBoots; i++ {
		vm, err := qemu.Start(ctx, append([]qemu.Option{qemu.WithImage(img), qemu.WithMachine(machine)}, vmOpts...)...)
		if err != nil {
			return 0, err
		}
		_, err = vm.Ready(ctx)
		d := time.Since(vm.Started()).Seconds()
		cerr := vm.Close(ctx)
		if err != nil {
			return 0, fmt.Errorf("boot %d: %w", i+1, err)
		}
		if cerr != nil {
			return 0, fmt.Errorf("boot %d: shutdown: %w", i+1, cerr)
		}
		secs = append(secs, d)
	}
	sort.Float64s(secs)
	return secs[len(secs)/2], nil
}
