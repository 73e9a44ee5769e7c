package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"snaplab/sim/block"
	"snaplab/vmtest/nbd"
)

// The nbd group runs the same fio workloads (ioengine=nbd, one job, queue
// depth 16, over unix sockets) against snaplab's NBD server on a plain
// memory disk (flatDisk, which like nbdkit's memory plugin has no write
// cache to model) and against `nbdkit memory` in the same run, and
// reports each of our throughputs (target: nbdkit's) and the ratio
// ours/nbdkit. About 40 s.
func init() { register("nbd", benchNBD) }

const (
	nbdBenchSize    = 64 << 20
	nbdBenchRuntime = "2"
	nbdBenchReps    = 2
)

type fioWorkload struct {
	name string // figure name stem
	rw   string // fio rw=
	bs   string
	dir  string // "read" or "write": which fio statistics to take
	iops bool   // report IOPS (else MiB/s)
}

// Sequential write first: it fills the disk, so later reads see data, not holes.
var nbdWorkloads = []fioWorkload{
	{"seq_1m_write", "write", "1m", "write", false},
	{"seq_1m_read", "read", "1m", "read", false},
	{"rand_4k_read", "randread", "4k", "read", true},
	{"rand_4k_write", "randwrite", "4k", "write", true},
}

func benchNBD(emit func(Result)) error {
	for _, bin := range []string{"fio", "nbdkit"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s not found (run `make deps`): %w", bin, err)
		}
	}
	dir, err := os.MkdirTemp("", "nbdbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// Ours.
	disk := &flatDisk{data: make([]byte, nbdBenchSize)}
	l, err := nbd.ListenUnix(filepath.Join(dir, "ours.sock"))
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
	ours := nbd.URI(l.Addr(), "bench")

	// nbdkit; it writes the pid file once it accepts connections.
	ksock := filepath.Join(dir, "nbdkit.sock")
	kpid := filepath.Join(dir, "nbdkit.pid")
	kit := exec.Command("nbdkit", "--foreground", "--unix", ksock, "--pidfile", kpid, "memory", fmt.Sprint(nbdBenchSize))
	kit.Stderr = os.Stderr
	if err := kit.Start(); err != nil {
		return fmt.Errorf("starting nbdkit: %w", err)
	}
	defer func() {
		kit.Process.Signal(syscall.SIGTERM)
		kit.Wait()
	}()
	if err := waitFile(kpid, 10*time.Second); err != nil {
		return fmt.Errorf("nbdkit: %w", err)
	}
	theirs := nbd.URI(&net.UnixAddr{Name: ksock, Net: "unix"}, "")

	// The machine is shared: alternate the two servers and keep each one's
	// best of nbdBenchReps runs, so a burst of load elsewhere does not decide
	// the ratio.
	for _, w := range nbdWorkloads {
		var a, b float64
		for range nbdBenchReps {
			v, err := runFio(ours, w)
			if err != nil {
				return fmt.Errorf("%s against snaplab: %w", w.name, err)
			}
			a = max(a, v)
			if v, err = runFio(theirs, w); err != nil {
				return fmt.Errorf("%s against nbdkit: %w", w.name, err)
			}
			b = max(b, v)
		}
		unit := "MiB/s"
		if w.iops {
			unit = "ops/s"
		}
		// The target of the raw figure is nbdkit's figure from this run.
		emit(Result{Name: "nbd_" + w.name, Value: a, Unit: unit, Op: ">=", Target: b})
		emit(Result{Name: "nbd_" + w.name + "_vs_nbdkit_ratio", Value: a / b, Unit: "x", Op: ">=", Target: 1.0})
	}
	return nil
}

func waitFile(path string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		_, err := os.Stat(path)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not written after %v: %w", path, limit, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runFio runs one workload and returns IOPS or MiB/s.
func runFio(uri string, w fioWorkload) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "fio", "--name="+w.name, "--ioengine=nbd", "--uri="+uri,
		"--rw="+w.rw, "--bs="+w.bs, "--iodepth=16", "--size="+fmt.Sprint(nbdBenchSize),
		"--time_based", "--runtime="+nbdBenchRuntime, "--randrepeat=0", "--output-format=json")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return 0, fmt.Errorf("fio: %w: %s", err, ee.Stderr)
		}
		return 0, fmt.Errorf("fio: %w", err)
	}
	// The nbd engine prints "fio: connected to NBD server" before the JSON.
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var res struct {
		Jobs []map[string]json.RawMessage `json:"jobs"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) != 1 {
		return 0, fmt.Errorf("fio output: %v (%d jobs)", err, len(res.Jobs))
	}
	var st struct {
		IOPS     float64 `json:"iops"`
		BwBytes  float64 `json:"bw_bytes"`
		TotalIOs int64   `json:"total_ios"`
	}
	if err := json.Unmarshal(res.Jobs[0][w.dir], &st); err != nil {
		return 0, fmt.Errorf("fio %s statistics: %w", w.dir, err)
	}
	if jerr := string(res.Jobs[0]["error"]); jerr != "0" || st.TotalIOs == 0 {
		return 0, fmt.Errorf("fio job error %s after %d I/Os", jerr, st.TotalIOs)
	}
	if w.iops {
		return st.IOPS, nil
	}
	return st.BwBytes / (1 << 20), nil
}

// flatDisk is a plain memory disk: one byte slice behind a RWMutex. The
// benchmark compares servers, so the disk does no more than nbdkit's memory
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
