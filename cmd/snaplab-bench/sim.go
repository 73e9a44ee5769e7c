package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/exstore"
	"snaplab/sim/pattern"
	"snaplab/sim/snapshot"
	"snaplab/sim/world"
)

// The sim group measures the simulator in process, its I/O submitted and
// completed through the event loop as a simulated machine's:
//
//   - sim_bare_disk_4k_write_iops, sim_snapshot_cow_4k_write_iops: 200,000
//     random 4 KiB writes over 1 GiB, on a bare memory disk and through a
//     snapshot-origin with one persistent snapshot (a copy on every first
//     write to a 4 KiB chunk).
//   - sim_handover_1K_exceptions, sim_handover_1M_exceptions: the median of
//     -handover-runs (1000) handovers of a persistent COW holding 1000 and
//     2^20 exceptions: the time of the destination's `dmsetup resume`, which
//     takes the exceptions over; each is checked to have left the source
//     Invalid, and the last destination's status to count every exception.
//     sim_handover_1M_vs_1K_ratio divides the two medians.
//   - sim_origin_1TiB_rss_after_1GiB: resident memory added by 1 GiB of 1 MiB
//     writes at random places of a 1 TiB origin through snapshot-origin.
func init() { register("sim", benchSim) }

type simRig struct {
	w   *world.World
	ctl *dm.Control
}

func newSimRig(disks ...struct {
	name string
	size int64
}) (*simRig, error) {
	w := world.New(0)
	ctl := dm.NewControl(w)
	snapshot.Register(ctl)
	for _, d := range disks {
		m, err := block.NewMem(d.name, d.size)
		if err != nil {
			return nil, err
		}
		if _, err := ctl.AddDisk(m, 512); err != nil {
			return nil, err
		}
	}
	return &simRig{w, ctl}, nil
}

func disk(name string, size int64) struct {
	name string
	size int64
} {
	return struct {
		name string
		size int64
	}{name, size}
}

func (r *simRig) dmsetup(args ...string) error {
	res := r.ctl.Dmsetup(args)
	if res.Exit != 0 {
		return fmt.Errorf("dmsetup %s: %s", strings.Join(args, " "), res.Stderr)
	}
	return nil
}

// io submits a bio to a node and runs the world until it completes.
func (r *simRig) io(node dm.Node, op dm.Op, off int64, buf []byte) error {
	var res error
	done := false
	node.Submit(dm.NewBio(op, uint64(off/512), buf, false, func(err error) { res, done = err, true }))
	if err := r.w.RunUntil("bench io", func() bool { return done }); err != nil {
		return err
	}
	return res
}

const benchOps = 200000

// handoverRuns is how many handovers each size's median is taken over.
var handoverRuns = flag.Int("handover-runs", 1000, "sim: handovers timed at each size (the median is reported)")

// handoverTargetMicros bounds the median handover (the destination's
// resume). The resume is O(1) in the exceptions: one dmsetup command parsed,
// a device looked up, its tables swapped, the snapshot's preresume and resume
// hooks, one event-loop run, and the two exception tables swapped as
// pointers: 0.7 to 1.2 µs on the 2-core development machine. 10 µs leaves
// room for a loaded machine, and copying even the 1K exceptions instead of
// swapping them misses it (a thousand inserts into a fresh Go map take tens
// of µs: 119 µs on that machine).
const handoverTargetMicros = 10.0

// randomWrites issues n random 4 KiB writes over span bytes through node
// and returns ops per second.
func randomWrites(r *simRig, node dm.Node, span int64, n int) (float64, error) {
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 4096)
	pattern.Fill(buf, "B", 0)
	start := time.Now()
	for i := 0; i < n; i++ {
		off := rng.Int64N(span/4096) * 4096
		if err := r.io(node, dm.OpWrite, off, buf); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

func benchSim(emit func(Result)) error {
	// Reference: 4 KiB random writes on a bare memory disk, as an I/O of the
	// simulated machine (submitted, completed through the event loop).
	const span = 1 << 30
	ref, err := newSimRig(disk("bare", span))
	if err != nil {
		return err
	}
	bare, err := randomWrites(ref, ref.ctl.Node("bare"), span, benchOps)
	if err != nil {
		return err
	}
	emit(Result{Name: "sim_bare_disk_4k_write_iops", Value: bare, Unit: "ops/s", Op: ">=", Target: 100000})

	// The same workload through snapshot-origin with one persistent snapshot:
	// every first write to a chunk copies it to the COW.
	r, err := newSimRig(disk("origin", span), disk("cow", span+span/8))
	if err != nil {
		return err
	}
	for _, c := range [][]string{
		{"create", "snap", "--table", "0 2097152 snapshot origin cow P 8"},
		{"create", "base", "--table", "0 2097152 snapshot-origin origin"},
	} {
		if err := r.dmsetup(c...); err != nil {
			return err
		}
	}
	cow, err := randomWrites(r, r.ctl.Node("base"), span, benchOps)
	if err != nil {
		return err
	}
	emit(Result{Name: "sim_snapshot_cow_4k_write_iops", Value: cow, Unit: "ops/s", Op: ">=", Target: 50000})

	// Handover time with 1M vs 1K exceptions: handover swaps tables, it must
	// not copy them. Both sizes: the median of handoverRuns handovers.
	small, err := handoverMedian(1000, *handoverRuns)
	if err != nil {
		return err
	}
	large, err := handoverMedian(1<<20, *handoverRuns)
	if err != nil {
		return err
	}
	emit(Result{Name: "sim_handover_1K_exceptions", Value: small.Seconds() * 1e6, Unit: "µs", Op: "<=", Target: handoverTargetMicros})
	emit(Result{Name: "sim_handover_1M_exceptions", Value: large.Seconds() * 1e6, Unit: "µs", Op: "<=", Target: handoverTargetMicros})
	emit(Result{Name: "sim_handover_1M_vs_1K_ratio", Value: float64(large) / float64(small), Unit: "x", Op: "<=", Target: 1.5})

	// Resident memory after writing 1 GiB through a snapshot-origin device
	// onto a 1 TiB sparse origin.
	rss, err := originRSS()
	if err != nil {
		return err
	}
	emit(Result{Name: "sim_origin_1TiB_rss_after_1GiB", Value: rss, Unit: "MiB", Op: "<=", Target: 1.2*1024 + 64})
	return nil
}

// handoverMedian builds a persistent COW holding n exceptions, activates a
// snapshot on it, then hands the exceptions over runs times in a chain
// (create the next device with no table, load the same snapshot table,
// suspend the current one, resume the next: the timed step, remove the
// old one) and returns the median time of the resumes.
func handoverMedian(n, runs int) (time.Duration, error) {
	chunks := int64(n) + int64(n)/256 + 16
	r, err := newSimRig(disk("origin", chunks*4096), disk("cow", (chunks+int64(n)/256+16)*4096))
	if err != nil {
		return 0, err
	}
	st, err := exstore.New([]string{"P", "8"}, r.ctl.Node("cow"), 512, nil)
	if err != nil {
		return 0, err
	}
	if _, err := st.ReadMetadata(func(old, new uint64) error { return nil }); err != nil {
		return 0, err
	}
	for i := 0; i < n; i++ {
		nc, err := st.Prepare()
		if err != nil {
			return 0, err
		}
		st.Commit(uint64(i), nc, true, func(bool) {})
	}
	table := "0 " + strconv.FormatInt(chunks*8, 10) + " snapshot origin cow P 8"
	if err := r.dmsetup("create", "s0", "--table", table); err != nil {
		return 0, err
	}
	// The exceptions the COW holds, as status counts them: n data chunks,
	// the header and the metadata areas, in sectors.
	want := fmt.Sprintf(" %d/", (int64(n)+2+int64(n)/256)*8)
	check := func(name string) error {
		if got := r.ctl.Dmsetup([]string{"status", name}).Stdout; !strings.Contains(got, want) {
			return fmt.Errorf("%s with %d exceptions: status %q, want %q", name, n, got, want)
		}
		return nil
	}
	if err := check("s0"); err != nil {
		return 0, err
	}
	times := make([]time.Duration, 0, runs)
	runtime.GC()
	for i := 1; i <= runs; i++ {
		old, next := "s"+strconv.Itoa(i-1), "s"+strconv.Itoa(i)
		for _, c := range [][]string{{"create", next, "--notable"}, {"load", next, "--table", table}, {"suspend", old}} {
			if err := r.dmsetup(c...); err != nil {
				return 0, err
			}
		}
		start := time.Now()
		err := r.dmsetup("resume", next)
		times = append(times, time.Since(start))
		if err != nil {
			return 0, err
		}
		// The resume did hand the exceptions over: the source is invalid.
		if got := r.ctl.Dmsetup([]string{"status", old}).Stdout; !strings.Contains(got, " snapshot Invalid") {
			return 0, fmt.Errorf("handover %d of %d exceptions: %s's status %q after %s's resume, want Invalid", i, n, old, got, next)
		}
		if err := r.dmsetup("remove", old); err != nil {
			return 0, err
		}
	}
	if err := check("s" + strconv.Itoa(runs)); err != nil {
		return 0, fmt.Errorf("after %d handovers: %w", runs, err)
	}
	slices.Sort(times)
	return times[len(times)/2], nil
}

func rssMiB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func originRSS() (float64, error) {
	runtime.GC()
	debug.FreeOSMemory()
	before := rssMiB()
	r, err := newSimRig(disk("origin", 1<<40))
	if err != nil {
		return 0, err
	}
	if err := r.dmsetup("create", "base", "--table", fmt.Sprintf("0 %d snapshot-origin origin", int64(1<<40)/512)); err != nil {
		return 0, err
	}
	node := r.ctl.Node("base")
	buf := make([]byte, 1<<20)
	pattern.Fill(buf, "M", 0)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 1024; i++ {
		off := rng.Int64N((1<<40)/(1<<20)) << 20
		if err := r.io(node, dm.OpWrite, off, buf); err != nil {
			return 0, err
		}
	}
	runtime.GC()
	debug.FreeOSMemory()
	after := rssMiB()
	runtime.KeepAlive(r)
	return after - before, nil
}
