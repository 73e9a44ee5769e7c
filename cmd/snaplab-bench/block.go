package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"snaplab/sim/block"
	"snaplab/sim/pattern"
)

// The block group measures the in-memory disk, the reference device:
//
//   - mem_1TiB_rss_after_1GiB: resident memory added by writing 1 GiB in
//     1 MiB writes, spread over a 1 TiB Mem (sparse pages: the size costs
//     nothing, the data costs itself plus a little).
//   - mem_4k_write_iops, mem_4k_read_iops: random 4 KiB-aligned writes, then
//     reads, on a fresh 1 GiB Mem, from one goroutine. Every simulated disk
//     is a Mem, so the floor is twice the simulator's own bare-disk target
//     (sim_bare_disk_4k_write_iops >= 100000).
func init() {
	register("block", func(emit func(Result)) error {
		rss, err := memRSSAfter1GiB()
		if err != nil {
			return err
		}
		emit(Result{Name: "mem_1TiB_rss_after_1GiB", Value: rss, Unit: "MiB", Op: "<=", Target: 1.2*1024 + 64})
		w, r, err := memIOPS(1<<30, 2*time.Second)
		if err != nil {
			return err
		}
		emit(Result{Name: "mem_4k_write_iops", Value: w, Unit: "ops/s", Op: ">=", Target: 200000})
		emit(Result{Name: "mem_4k_read_iops", Value: r, Unit: "ops/s", Op: ">=", Target: 200000})
		return nil
	})
}

// vmRSS returns the resident set size of this process in bytes.
func vmRSS() (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/self/status: VmRSS %q: %v", rest, err)
			}
			return kb << 10, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("/proc/self/status: no VmRSS line")
}

func settle() {
	runtime.GC()
	debug.FreeOSMemory()
}

func memRSSAfter1GiB() (float64, error) {
	const size, chunk, total = 1 << 40, 1 << 20, 1 << 30
	settle()
	before, err := vmRSS()
	if err != nil {
		return 0, err
	}
	m, err := block.NewMem("rss", size)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, chunk)
	pattern.Fill(buf, "rss", 0)
	stride := int64(size / (total / chunk))
	offs := make([]int64, 0, total/chunk)
	for i := range int64(total / chunk) {
		// Spread over the whole disk, sector- but not page-aligned.
		off := i*stride + (i*7919%4096)*block.SectorSize
		offs = append(offs, off)
		if _, err := m.WriteAt(buf, off); err != nil {
			return 0, err
		}
	}
	settle()
	after, err := vmRSS()
	if err != nil {
		return 0, err
	}
	// The data is really there.
	got := make([]byte, chunk)
	for _, off := range []int64{offs[0], offs[len(offs)/2], offs[len(offs)-1]} {
		if _, err := m.ReadAt(got, off); err != nil {
			return 0, err
		}
		if err := pattern.Verify(got, "rss", 0); err != nil {
			return 0, fmt.Errorf("read back at %d: %v", off, err)
		}
	}
	if st := m.Stats(); st.Bytes < total {
		return 0, fmt.Errorf("1 TiB Mem holds %d bytes after writing %d", st.Bytes, total)
	}
	runtime.KeepAlive(m)
	return float64(after-before) / (1 << 20), nil
}

// memIOPS runs random 4 KiB writes for d, then random 4 KiB reads for d,
// on a fresh Mem of size bytes, and returns both rates.
func memIOPS(size int64, d time.Duration) (write, read float64, err error) {
	settle()
	m, err := block.NewMem("iops", size)
	if err != nil {
		return 0, 0, err
	}
	buf := make([]byte, 4096)
	pattern.Fill(buf, "iops", 0)
	rng := rand.New(rand.NewPCG(1, 2))
	run := func(op func(off int64) error) (float64, error) {
		start := time.Now()
		var n int
		for {
			for range 1024 {
				if err := op(rng.Int64N(size/4096) * 4096); err != nil {
					return 0, err
				}
			}
			n += 1024
			if el := time.Since(start); el >= d {
				return float64(n) / el.Seconds(), nil
			}
		}
	}
	write, err = run(func(off int64) error { _, err := m.WriteAt(buf, off); return err })
	if err != nil {
		return 0, 0, err
	}
	read, err = run(func(off int64) error { _, err := m.ReadAt(buf, off); return err })
	return write, read, err
}
