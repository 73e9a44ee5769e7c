package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"snaplab/scenarios/cmdtest"
	"snaplab/sim/record"
)

// The nbd group measures `snaplab serve` as users run it: the command built
// from this tree, a live simulator session, recording on (-record to a file),
// NBD on a unix socket. The client is fio's nbd engine (libnbd), one job;
// the reference is `nbdkit memory` driven by the same client in the same run.
//
//   - Four plain workloads on `disk d 1GiB` (export d) against `nbdkit memory
//     1G`: 4 KiB random reads at queue depth 16, 1 MiB sequential reads at
//     QD4, 4 KiB random writes at QD16, 1 MiB sequential writes at QD4, in
//     that order, after a prefill of both servers' whole disk (1 MiB writes),
//     one server process each for the four. Each workload runs -nbd-runs
//     times (3) per server for -nbd-runtime (10 s), alternating the servers
//     (and which one goes first), and the medians are compared:
//     nbd_serve_W_vs_nbdkit_ratio (target >= 1).
//   - nbd_serve_W_cpu_per_GB: the server's CPU time (utime+stime of all its
//     threads, /proc/PID/stat, taken before and after each run) per 10^9
//     bytes fio moved, median of the runs; the target is 1.5 times nbdkit's
//     median in the same run. nbd_nbdkit_W_cpu_per_GB is that reference; its
//     target, twice what nbdkit 1.32 took on the 2-core development machine
//     (issue 10), only says whether the reference ran as usual: a miss there
//     means the machine was busy and the serve targets were loose.
//   - nbd_serve_rss_after_workloads, nbd_nbdkit_rss_after_workloads: each
//     server's VmRSS (/proc/PID/status) after the four workloads. A disk holds
//     at most its 1 GiB, so the bound is 1.2 x 1 GiB + 64 MiB.
//   - nbd_serve_snapshot_cow_rand_4k_write_vs_nbdkit_ratio: 4 KiB random writes
//     at QD16 to a snapshot-origin (export base) with a live persistent
//     snapshot of chunk size 4 KiB on a COW big enough for every chunk, so each
//     first write to a chunk copies it; a fresh serve per run, alternated with
//     a fresh `nbdkit memory 1G` doing the same workload; target >= 0.7.
//   - nbd_serve_1TiB_rss_after_1GiB_rand_4k_writes: VmRSS of a serve of
//     `disk d 1TiB` after fio wrote 1 GiB in random 4 KiB writes at QD16
//     (recording on); target 1.2 x 1 GiB + 64 MiB.
//
// Each fio run's figures for both servers, the prefill times, the peak RSS
// and the recordings' sizes are printed on stderr. A serve whose RSS passes
// -nbd-max-rss is killed (the machine has no swap) and the group fails,
// saying so.
func init() { register("nbd", benchServe) }

var nbdMaxRSS = flag.Float64("nbd-max-rss", 0, "nbd: MiB of RSS at which a snaplab serve is killed and the group fails (default: half the memory available when the group starts)")

const (
	gib = 1 << 30
	// rssBound is the memory target for a disk holding 1 GiB: 1.2 x the
	// bytes written plus 64 MiB, in MiB (issue 10, item 3).
	rssBound = 1.2*1024 + 64
)

// nbdkit 1.32's CPU-seconds per 10^9 bytes on the 2-core development
// machine (issue 10), by workload: the reference lines' targets are twice
// these.
var nbdkitCPUPerGB = map[string]float64{
	"rand_4k_read":  1.5,
	"seq_1m_read":   0.38,
	"rand_4k_write": 1.45,
	"seq_1m_write":  0.35,
}

func benchServe(emit func(Result)) error {
	if err := needTools("fio", "nbdkit"); err != nil {
		return err
	}
	if *nbdMaxRSS == 0 {
		avail, err := memAvailableMiB()
		if err != nil {
			return err
		}
		*nbdMaxRSS = avail / 2
	}
	dir, err := os.MkdirTemp("", "snaplab-bench-nbd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	bin, err := cmdtest.Build(dir)
	if err != nil {
		return err
	}
	note("nbd: built %s in %.1fs; runs of %v, %d per server and workload; serve killed past %.0f MiB RSS",
		bin, time.Since(start).Seconds(), *nbdRuntime, *nbdRuns, *nbdMaxRSS)
	ctx := context.Background()
	if err := servePlain(ctx, emit, bin, dir); err != nil {
		return err
	}
	if err := serveSnapshot(ctx, emit, bin, dir); err != nil {
		return err
	}
	return serveMemory(ctx, emit, bin, dir)
}

// servePlain runs the four plain workloads.
func servePlain(ctx context.Context, emit func(Result), bin, dir string) error {
	s, err := startServe(bin, dir, "plain", "disk d 1GiB\n", "d")
	if err != nil {
		return err
	}
	defer s.kill()
	k, err := startNbdkit(dir, "plain", "1G")
	if err != nil {
		return err
	}
	defer k.stop()
	for _, t := range []struct {
		name, uri string
	}{{"snaplab serve", s.uri}, {"nbdkit", k.uri}} {
		r, err := s.guarded(func() (fioResult, error) { return runFio(ctx, t.uri, prefill, 0, "") })
		if err != nil {
			return fmt.Errorf("prefill of %s: %w", t.name, err)
		}
		note("nbd: prefill of %s: %.0f MiB in %.1fs", t.name, float64(r.bytes)/(1<<20), r.secs)
	}
	for _, w := range nbdWorkloads {
		ours, theirs, err := alternate(ctx, "nbd", w, side{"snaplab serve", s.uri, s.pid, s.guarded}, side{"nbdkit", k.uri, k.pid, unguarded})
		if err != nil {
			return err
		}
		emit(Result{Name: "nbd_serve_" + w.name + "_vs_nbdkit_ratio", Value: median(ours.rates) / median(theirs.rates), Unit: "x", Op: ">=", Target: 1.0})
		kitCPU := median(theirs.cpuPerGB)
		emit(Result{Name: "nbd_serve_" + w.name + "_cpu_per_GB", Value: median(ours.cpuPerGB), Unit: "CPU-s/GB", Op: "<=", Target: 1.5 * kitCPU})
		emit(Result{Name: "nbd_nbdkit_" + w.name + "_cpu_per_GB", Value: kitCPU, Unit: "CPU-s/GB", Op: "<=", Target: 2 * nbdkitCPUPerGB[w.name]})
	}
	for _, t := range []struct {
		name string
		pid  int
	}{{"serve", s.pid}, {"nbdkit", k.pid}} {
		rss, err := procStatusMiB(t.pid, "VmRSS")
		if err != nil {
			return err
		}
		emit(Result{Name: "nbd_" + t.name + "_rss_after_workloads", Value: rss, Unit: "MiB", Op: "<=", Target: rssBound})
	}
	return s.stop()
}

// serveSnapshot runs 4 KiB random writes on a snapshot-origin with a live
// persistent snapshot, a fresh serve and a fresh nbdkit for each run.
func serveSnapshot(ctx context.Context, emit func(Result), bin, dir string) error {
	// 1 GiB origin, 4 KiB chunks; the COW holds every chunk of the origin
	// plus the metadata (one 4 KiB area per 256 exceptions, 4 MiB).
	const scn = `disk origin 1GiB
disk cow 1088MiB
dmsetup create snap --table "0 2097152 snapshot origin cow P 8"
dmsetup create base --table "0 2097152 snapshot-origin origin"
`
	w := fioWorkload{"snapshot_cow_rand_4k_write", "randwrite", "4k", 16, "write", true}
	var ours, theirs sideRuns
	for i := range *nbdRuns {
		serveRun := func() error {
			s, err := startServe(bin, dir, fmt.Sprintf("snapshot%d", i), scn, "base")
			if err != nil {
				return err
			}
			defer s.kill()
			if err := ours.measure(ctx, w, side{"snaplab serve", s.uri, s.pid, s.guarded}); err != nil {
				return err
			}
			return s.stop()
		}
		kitRun := func() error {
			k, err := startNbdkit(dir, fmt.Sprintf("snapshot%d", i), "1G")
			if err != nil {
				return err
			}
			defer k.stop()
			return theirs.measure(ctx, w, side{"nbdkit", k.uri, k.pid, unguarded})
		}
		first, second := serveRun, kitRun
		if i%2 == 1 {
			first, second = kitRun, serveRun
		}
		if err := first(); err != nil {
			return err
		}
		if err := second(); err != nil {
			return err
		}
	}
	note("nbd: %s: snaplab serve %s (%s), nbdkit rand_4k_write %s (%s)", w.name,
		num(median(ours.rates)), figures(ours.rates), num(median(theirs.rates)), figures(theirs.rates))
	emit(Result{Name: "nbd_serve_" + w.name + "_vs_nbdkit_ratio", Value: median(ours.rates) / median(theirs.rates), Unit: "x", Op: ">=", Target: 0.7})
	return nil
}

// serveMemory writes 1 GiB in random 4 KiB writes over a 1 TiB disk.
func serveMemory(ctx context.Context, emit func(Result), bin, dir string) error {
	s, err := startServe(bin, dir, "memory", "disk d 1TiB\n", "d")
	if err != nil {
		return err
	}
	defer s.kill()
	w := fioWorkload{"memory_rand_4k_write", "randwrite", "4k", 16, "write", true}
	r, err := s.guarded(func() (fioResult, error) { return runFio(ctx, s.uri, w, 0, "1g") })
	if err != nil {
		return fmt.Errorf("%s on snaplab serve: %w", w.name, err)
	}
	if r.bytes != gib {
		return fmt.Errorf("%s: fio wrote %d bytes, want %d", w.name, r.bytes, gib)
	}
	rss, err := procStatusMiB(s.pid, "VmRSS")
	if err != nil {
		return err
	}
	note("nbd: 1 GiB of random 4 KiB writes on a 1 TiB disk: %.0f ops/s, %.1fs", r.rate, r.secs)
	emit(Result{Name: "nbd_serve_1TiB_rss_after_1GiB_rand_4k_writes", Value: rss, Unit: "MiB", Op: "<=", Target: rssBound})
	return s.stop()
}

// side is one server as a workload sees it.
type side struct {
	name  string
	uri   string
	pid   int // 0: no CPU figure
	guard func(func() (fioResult, error)) (fioResult, error)
}

func unguarded(f func() (fioResult, error)) (fioResult, error) { return f() }

// sideRuns collects one server's runs of a workload.
type sideRuns struct {
	rates, cpuPerGB []float64
}

// measure runs w once on s, with its CPU time.
func (r *sideRuns) measure(ctx context.Context, w fioWorkload, s side) error {
	var before float64
	if s.pid != 0 {
		var err error
		if before, err = cpuSeconds(s.pid); err != nil {
			return err
		}
	}
	res, err := s.guard(func() (fioResult, error) { return runFio(ctx, s.uri, w, *nbdRuntime, "") })
	if err != nil {
		return fmt.Errorf("%s on %s: %w", w.name, s.name, err)
	}
	r.rates = append(r.rates, res.rate)
	if s.pid != 0 {
		after, err := cpuSeconds(s.pid)
		if err != nil {
			return err
		}
		r.cpuPerGB = append(r.cpuPerGB, (after-before)/(float64(res.bytes)/1e9))
	}
	return nil
}

// alternate runs w -nbd-runs times on each of a and b, alternating, a first
// on even runs and b first on odd ones.
func alternate(ctx context.Context, group string, w fioWorkload, a, b side) (ra, rb sideRuns, err error) {
	for i := range *nbdRuns {
		first, fr, second, sr := a, &ra, b, &rb
		if i%2 == 1 {
			first, fr, second, sr = b, &rb, a, &ra
		}
		if err := fr.measure(ctx, w, first); err != nil {
			return ra, rb, err
		}
		if err := sr.measure(ctx, w, second); err != nil {
			return ra, rb, err
		}
	}
	cpu := ""
	if a.pid != 0 && b.pid != 0 {
		cpu = fmt.Sprintf("; CPU-s/GB %s (%s), %s (%s)", num(median(ra.cpuPerGB)), figures(ra.cpuPerGB), num(median(rb.cpuPerGB)), figures(rb.cpuPerGB))
	}
	note("%s: %s %s: %s %s (%s), %s %s (%s)%s", group, w.name, w.unit(),
		a.name, num(median(ra.rates)), figures(ra.rates), b.name, num(median(rb.rates)), figures(rb.rates), cpu)
	return ra, rb, nil
}

// serveProc is a running `snaplab serve -socket S -record R SCENARIO`.
type serveProc struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // stdout, line by line; closed at its end
	stderr *cmdtest.SyncBuffer
	uri    string
	pid    int
	rec    string
	exited chan struct{}
	err    error // Wait's, once exited is closed

	mu      sync.Mutex
	tripped string // why the RSS guard killed it
}

// startServe writes the scenario to dir/NAME.scn, starts serve on it and
// waits for its "ready:" line; uri is the export's.
func startServe(bin, dir, name, scn, export string) (*serveProc, error) {
	path := filepath.Join(dir, name+".scn")
	if err := os.WriteFile(path, []byte(scn), 0o644); err != nil {
		return nil, err
	}
	s := &serveProc{name: name, rec: filepath.Join(dir, name+".jsonl"), stderr: &cmdtest.SyncBuffer{},
		lines: make(chan string, 64), exited: make(chan struct{})}
	s.cmd = exec.Command(bin, "serve", "-socket", filepath.Join(dir, name+".sock"), "-record", s.rec, path)
	s.cmd.Dir = dir
	s.cmd.Stderr = s.stderr
	var err error
	if s.stdin, err = s.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting snaplab serve: %w", err)
	}
	s.pid = s.cmd.Process.Pid
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
		s.err = s.cmd.Wait()
		close(s.exited)
	}()
	go s.watch()
	timeout := time.After(2 * time.Minute)
	var seen []string
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				<-s.exited
				return nil, fmt.Errorf("snaplab serve %s ended before ready (%v): stdout %q, stderr %q", name, s.err, seen, s.stderr.String())
			}
			seen = append(seen, l)
			if strings.HasPrefix(l, "nbd+unix:///"+export+"?") {
				s.uri = l
			}
			if strings.HasPrefix(l, "ready:") {
				if s.uri == "" {
					s.kill()
					return nil, fmt.Errorf("snaplab serve %s: no URI for export %s in %q", name, export, seen)
				}
				return s, nil
			}
		case <-timeout:
			s.kill()
			return nil, fmt.Errorf("snaplab serve %s: not ready after 2 minutes: stdout %q, stderr %q", name, seen, s.stderr.String())
		}
	}
}

// watch kills the server if its RSS passes -nbd-max-rss.
func (s *serveProc) watch() {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.exited:
			return
		case <-t.C:
			rss, err := procStatusMiB(s.pid, "VmRSS")
			if err != nil || rss <= *nbdMaxRSS {
				continue
			}
			s.mu.Lock()
			s.tripped = fmt.Sprintf("snaplab serve's RSS reached %.0f MiB, past -nbd-max-rss %.0f MiB: killed", rss, *nbdMaxRSS)
			s.mu.Unlock()
			s.cmd.Process.Signal(syscall.SIGKILL)
			return
		}
	}
}

// guarded runs f and, if the RSS guard killed the server meanwhile, says so.
func (s *serveProc) guarded(f func() (fioResult, error)) (fioResult, error) {
	r, err := f()
	s.mu.Lock()
	why := s.tripped
	s.mu.Unlock()
	if why != "" {
		return r, fmt.Errorf("%s (fio: %v)", why, err)
	}
	if err != nil {
		select {
		case <-s.exited:
			return r, fmt.Errorf("%w; snaplab serve exited: %v, stderr %q", err, s.err, tail(s.stderr.String()))
		default:
		}
	}
	return r, err
}

// stop sends quit and checks that the server stopped cleanly and wrote its
// recording, then deletes the recording.
func (s *serveProc) stop() error {
	hwm, _ := procStatusMiB(s.pid, "VmHWM")
	fmt.Fprintln(s.stdin, "quit")
	var out []string
	recorded := false
	timeout := time.After(5 * time.Minute)
	for done := false; !done; {
		select {
		case l, ok := <-s.lines:
			if !ok {
				done = true
				break
			}
			out = append(out, l)
			if l == "recording: "+s.rec {
				recorded = true
			}
		case <-timeout:
			s.kill()
			return fmt.Errorf("snaplab serve %s: not stopped 5 minutes after quit: stdout %q, stderr %q", s.name, out, tail(s.stderr.String()))
		}
	}
	<-s.exited
	if s.err != nil || !recorded {
		return fmt.Errorf("snaplab serve %s after quit: %v, stdout %q, stderr %q", s.name, s.err, out, tail(s.stderr.String()))
	}
	// The recording and its sidecar (the data clients wrote).
	var size [2]int64
	paths := [2]string{s.rec, record.SidecarPath(s.rec)}
	for i, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			size[i] = fi.Size()
		}
		os.Remove(p)
	}
	note("nbd: serve %s stopped: peak RSS %.0f MiB, recording %.1f MiB + sidecar %.1f MiB", s.name, hwm, float64(size[0])/(1<<20), float64(size[1])/(1<<20))
	return nil
}

// kill ends the server if it still runs.
func (s *serveProc) kill() {
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	for range s.lines {
	}
	<-s.exited
}

func tail(s string) string {
	if len(s) > 2000 {
		return "..." + s[len(s)-2000:]
	}
	return s
}
