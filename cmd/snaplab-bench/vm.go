package main

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"time"

	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/guest"
	"snaplab/vmtest/guestexec"
	"snaplab/vmtest/qemu"
)

// The vm group boots the default test guest (vmtest/guest image) five
// times on q35 and five times on microvm and reports each machine's median
// time from starting QEMU to the agent's ready message.
//
// The vm-replay group runs one handover scenario
// (scenarios/library/seed-call-sequence.scn) on the vm executor in a booted
// guest (boot excluded) and replays its recording in process 20 times:
//
//   - vm_handover_scenario: the scenario's wall time on the vm executor.
//   - vm_handover_replay_per_step: the median replay's wall time divided by
//     the scenario's steps.
func init() {
	register("vm", benchVM)
	register("vm-replay", benchVMReplay)
}

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

const replayRuns = 20

func benchVMReplay(emit func(Result)) error {
	ctx := context.Background()
	vm, err := bootGuest(ctx, guestexec.GuestIO)
	if err != nil {
		return err
	}
	defer vm.Kill()
	sc, err := script.ParseFile("scenarios/library/seed-call-sequence.scn")
	if err != nil {
		return err
	}
	var rec bytes.Buffer
	start := time.Now()
	rep, err := guestexec.New(vm, guestexec.GuestIO).Run(ctx, sc, run.Options{Record: &rec})
	onVM := time.Since(start)
	if err != nil {
		return err
	}
	if !rep.Pass() {
		return fmt.Errorf("scenario failed on vm: %v", rep.Failures)
	}
	if rep.Steps == 0 {
		return fmt.Errorf("the vm executor reports no steps")
	}
	r, err := record.Read(bytes.NewReader(rec.Bytes()))
	if err != nil {
		return err
	}
	times := make([]time.Duration, 0, replayRuns)
	runtime.GC()
	for range replayRuns {
		start = time.Now()
		rrep, diff, err := run.Replay(r, run.Options{})
		times = append(times, time.Since(start))
		if err != nil || diff != "" {
			return fmt.Errorf("replay: %v %s", err, diff)
		}
		if rrep.Steps != rep.Steps {
			return fmt.Errorf("replay ran %d steps, the vm %d", rrep.Steps, rep.Steps)
		}
	}
	slices.Sort(times)
	emit(Result{Name: "vm_handover_scenario", Value: onVM.Seconds(), Unit: "s", Op: "<=", Target: 10})
	emit(Result{Name: "vm_handover_replay_per_step", Value: times[len(times)/2].Seconds() * 1000 / float64(rep.Steps), Unit: "ms", Op: "<=", Target: 1})
	return nil
}
