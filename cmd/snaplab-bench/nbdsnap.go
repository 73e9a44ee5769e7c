package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/live"
	"snaplab/vmtest/nbd"
	"snaplab/vmtest/vmexec"
)

func init() {
	register("nbd-snapshot", benchNBDSnapshot)
	register("vm-replay", benchVMReplay)
}

// benchNBDSnapshot serves, through the simulator, a snapshot-origin device
// whose every first write to a chunk copies it into a persistent snapshot,
// and measures fio's 4 KiB random writes on it against the same workload
// on a plain memory disk served by the same server, in the same run.
func benchNBDSnapshot(emit func(Result)) error {
	dir, err := os.MkdirTemp("", "nbdsnap")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sc, err := script.Parse("bench", fmt.Sprintf(`disk origin %d
disk cow %d
dmsetup create snap --table "0 %d snapshot origin cow P 8"
dmsetup create base --table "0 %d snapshot-origin origin"
`, nbdBenchSize, nbdBenchSize+nbdBenchSize/8, nbdBenchSize/512, nbdBenchSize/512))
	if err != nil {
		return err
	}
	d, err := live.Start(sc, run.Options{})
	if err != nil {
		return err
	}
	defer d.Close()
	l, err := nbd.ListenUnix(filepath.Join(dir, "sim.sock"))
	if err != nil {
		return err
	}
	srv := nbd.NewServer()
	if err := srv.AddExport(nbd.Export{Name: "base", Dev: d.Device("base")}); err != nil {
		return err
	}
	flat := &flatDisk{data: make([]byte, nbdBenchSize)}
	if err := srv.AddExport(nbd.Export{Name: "flat", Dev: flat}); err != nil {
		return err
	}
	go srv.Serve(l)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	w := fioWorkload{"rand_4k_write", "randwrite", "4k", "write", true}
	snap, err := runFio(nbd.URI(l.Addr(), "base"), w)
	if err != nil {
		return fmt.Errorf("snapshot-origin device: %w", err)
	}
	plain, err := runFio(nbd.URI(l.Addr(), "flat"), w)
	if err != nil {
		return fmt.Errorf("plain disk: %w", err)
	}
	emit(Result{Name: "nbd_snapshot_cow_rand_4k_write", Value: snap, Unit: "ops/s", Op: ">=", Target: 5000})
	emit(Result{Name: "nbd_snapshot_cow_vs_plain_ratio", Value: snap / plain, Unit: "x", Op: ">=", Target: 0.25})
	return nil
}

// benchVMReplay times a whole handover scenario on the vm executor (a guest
// does the I/O) and the in-process replay of its recording.
func benchVMReplay(emit func(Result)) error {
	ctx := context.Background()
	vm, err := bootGuest(ctx)
	if err != nil {
		return err
	}
	defer vm.Kill()
	text, err := os.ReadFile("scenarios/library/seed-call-sequence.scn")
	if err != nil {
		return err
	}
	sc, err := script.Parse("seed-call-sequence", string(text))
	if err != nil {
		return err
	}
	var rec bytes.Buffer
	start := time.Now()
	rep, err := vmexec.New(vm).Run(ctx, sc, run.Options{Record: &rec})
	onVM := time.Since(start)
	if err != nil {
		return err
	}
	if !rep.Pass() {
		return fmt.Errorf("scenario failed on vm: %v", rep.Failures)
	}
	r, err := record.Read(bytes.NewReader(rec.Bytes()))
	if err != nil {
		return err
	}
	best := time.Duration(1 << 62)
	runtime.GC()
	for i := 0; i < 20; i++ {
		start = time.Now()
		_, diff, err := run.Replay(r, run.Options{})
		d := time.Since(start)
		if err != nil || diff != "" {
			return fmt.Errorf("replay: %v %s", err, diff)
		}
		best = min(best, d)
	}
	emit(Result{Name: "vm_handover_scenario", Value: onVM.Seconds(), Unit: "s", Op: "<=", Target: 10})
	emit(Result{Name: "vm_handover_scenario_replay", Value: best.Seconds() * 1000, Unit: "ms", Op: "<=", Target: 100})
	emit(Result{Name: "vm_vs_replay_ratio", Value: float64(onVM) / float64(best), Unit: "x", Op: ">=", Target: 100})
	return nil
}
