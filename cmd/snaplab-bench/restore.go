package main

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"time"

	"snaplab/vmtest/guest"
	"snaplab/vmtest/qemu"
)

// The vm_restore group starts the default test guest (q35 with the 8
// hot-plug slots the executors use) from its saved state
// (qemu.WithRestore) and reports the median, over vmRestores restores, of
// the time from starting QEMU to the agent's answer. The first start saves
// the state when the cache lacks it, and is not counted. Cold boots are
// the vm group's figures.
func init() { register("vm_restore", benchRestore) }

const vmRestores = 7

func benchRestore(emit func(Result)) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	img, err := guest.Prepare(ctx)
	if err != nil {
		return err
	}
	var log bytes.Buffer
	opts := append([]qemu.Option{qemu.WithImage(img), qemu.WithHotplugSlots(8), qemu.WithRestore(true),
		qemu.WithLogf(func(f string, a ...any) { fmt.Fprintf(&log, f+"\n", a...) })}, vmOpts...)
	start := func(i int) (float64, error) {
		log.Reset()
		vm, err := qemu.Start(ctx, opts...)
		if err != nil {
			return 0, fmt.Errorf("start %d: %w", i, err)
		}
		secs := time.Since(vm.Started()).Seconds() // Start returns once the agent is ready
		restored := vm.Restored()
		_, herr := vm.Agent().Hello(ctx)
		cerr := vm.Close(ctx)
		switch {
		case i > 0 && restored == "":
			return 0, fmt.Errorf("start %d booted instead of restoring:\n%s", i, log.String())
		case herr != nil:
			return 0, fmt.Errorf("start %d: the agent: %w", i, herr)
		case cerr != nil:
			return 0, fmt.Errorf("start %d: shutdown: %w", i, cerr)
		}
		return secs, nil
	}
	if _, err := start(0); err != nil {
		return err
	}
	var secs []float64
	for i := 1; i <= vmRestores; i++ {
		s, err := start(i)
		if err != nil {
			return err
		}
		secs = append(secs, s)
	}
	sort.Float64s(secs)
	emit(Result{Name: "guest_restore_to_agent_ready", Value: secs[len(secs)/2], Unit: "s", Op: "<=", Target: 0.5})
	return nil
}
