package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"snaplab/sim/block"
	"snaplab/vmtest/nbd"
)

// The nbd_core group measures the NBD server package alone (vmtest/nbd, in
// this process), not what users run: it serves a plain 1 GiB byte slice
// (flatDisk, no simulator, no recording), so its figures bound what the
// protocol layer costs. The client and method are the nbd group's: fio's
// nbd engine, one job, the four plain workloads after a prefill of both
// disks, -nbd-runs runs of -nbd-runtime alternated with `nbdkit memory 1G`,
// medians; one line per workload, nbd_core_W_vs_nbdkit_ratio (target >= 1).
func init() { register("nbd_core", benchNBDCore) }

func benchNBDCore(emit func(Result)) error {
	if err := needTools("fio", "nbdkit"); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "snaplab-bench-nbdcore-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	disk := &flatDisk{data: make([]byte, gib)}
	l, err := nbd.ListenUnix(filepath.Join(dir, "core.sock"))
	if err != nil {
		return err
	}
	srv := nbd.NewServer()
	if err := srv.AddExport(nbd.Export{Name: "bench", Dev: disk}); err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
	}()
	k, err := startNbdkit(dir, "core", "1G")
	if err != nil {
		return err
	}
	defer k.stop()
	ours := side{"vmtest/nbd", nbd.URI(l.Addr(), "bench"), 0, unguarded}
	theirs := side{"nbdkit", k.uri, 0, unguarded}
	ctx := context.Background()
	for _, s := range []side{ours, theirs} {
		if _, err := runFio(ctx, s.uri, prefill, 0, ""); err != nil {
			return fmt.Errorf("prefill of %s: %w", s.name, err)
		}
	}
	for _, w := range nbdWorkloads {
		a, b, err := alternate(ctx, "nbd_core", w, ours, theirs)
		if err != nil {
			return err
		}
		emit(Result{Name: "nbd_core_" + w.name + "_vs_nbdkit_ratio", Value: median(a.rates) / median(b.rates), Unit: "x", Op: ">=", Target: 1.0})
	}
	return nil
}

// flatDisk is a plain memory disk: one byte slice behind a RWMutex. The
// group compares servers, so the disk does no more than nbdkit's memory
// plugin (block.Mem also models a volatile cache with undo copies).
type flatDisk struct {
	mu   sync.RWMutex
	data []byte
}

func (d *flatDisk) Name() string { return "bench" }
func (d *flatDisk) Size() int64  { return int64(len(d.data)) }
func (d *flatDisk) Flush() error { return nil }

func (d *flatDisk) ReadAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange("bench", "read", d.Size(), off, int64(len(p))); err != nil {
		return 0, err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	return copy(p, d.data[off:]), nil
}

func (d *flatDisk) WriteAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange("bench", "write", d.Size(), off, int64(len(p))); err != nil {
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return copy(d.data[off:], p), nil
}
