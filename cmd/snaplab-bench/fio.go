package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The fio client and the process measurements shared by the nbd and
// nbd_core groups: one fio job (ioengine=nbd, libnbd over a unix socket) per
// run, time-based, and the server's CPU time (utime+stime of every thread,
// /proc/PID/stat) over the run.

var (
	nbdRuntime = flag.Duration("nbd-runtime", 10*time.Second, "nbd, nbd_core: length of each fio run")
	nbdRuns    = flag.Int("nbd-runs", 3, "nbd, nbd_core: runs per workload and server, alternated between the servers; the median is reported")
)

type fioWorkload struct {
	name  string // figure name stem
	rw    string // fio rw=
	bs    string
	depth int
	dir   string // "read" or "write": which fio statistics to take
	iops  bool   // report IOPS (else MiB/s)
}

func (w fioWorkload) unit() string {
	if w.iops {
		return "ops/s"
	}
	return "MiB/s"
}

// The four plain workloads, reads first: they follow a prefill of the whole
// export, so that they read data, not holes.
var nbdWorkloads = []fioWorkload{
	{"rand_4k_read", "randread", "4k", 16, "read", true},
	{"seq_1m_read", "read", "1m", 4, "read", false},
	{"rand_4k_write", "randwrite", "4k", 16, "write", true},
	{"seq_1m_write", "write", "1m", 4, "write", false},
}

// prefill writes the whole export once in 1 MiB sequential writes.
var prefill = fioWorkload{"prefill", "write", "1m", 4, "write", false}

// fioResult is one fio run's figures.
type fioResult struct {
	rate  float64 // IOPS or MiB/s, as the workload reports
	bytes int64   // bytes moved
	secs  float64 // fio's runtime
}

// runFio runs one fio job on uri. A time-based run lasts d; with d == 0 the
// job moves ioSize bytes ("" for the whole export once).
func runFio(ctx context.Context, uri string, w fioWorkload, d time.Duration, ioSize string) (fioResult, error) {
	args := []string{"--name=" + w.name, "--ioengine=nbd", "--uri=" + uri, "--numjobs=1",
		"--rw=" + w.rw, "--bs=" + w.bs, "--iodepth=" + strconv.Itoa(w.depth),
		"--randrepeat=0", "--output-format=json"}
	if d > 0 {
		args = append(args, "--time_based", fmt.Sprintf("--runtime=%dms", d.Milliseconds()))
	}
	if ioSize != "" {
		args = append(args, "--io_size="+ioSize)
	}
	limit := 10 * time.Minute
	if d > 0 {
		limit = d + 2*time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "fio", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fioResult{}, fmt.Errorf("fio %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	// The nbd engine prints "fio: connected to NBD server" before the JSON.
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var res struct {
		Jobs []map[string]json.RawMessage `json:"jobs"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) != 1 {
		return fioResult{}, fmt.Errorf("fio output: %v (%d jobs)", err, len(res.Jobs))
	}
	var st struct {
		IOPS     float64 `json:"iops"`
		BwBytes  float64 `json:"bw_bytes"`
		IOBytes  int64   `json:"io_bytes"`
		Runtime  int64   `json:"runtime"` // ms
		TotalIOs int64   `json:"total_ios"`
	}
	if err := json.Unmarshal(res.Jobs[0][w.dir], &st); err != nil {
		return fioResult{}, fmt.Errorf("fio %s statistics: %w", w.dir, err)
	}
	if jerr := string(res.Jobs[0]["error"]); jerr != "0" || st.TotalIOs == 0 {
		return fioResult{}, fmt.Errorf("fio job error %s after %d I/Os: %s", jerr, st.TotalIOs, bytes.TrimSpace(stderr.Bytes()))
	}
	r := fioResult{rate: st.IOPS, bytes: st.IOBytes, secs: float64(st.Runtime) / 1000}
	if !w.iops {
		r.rate = st.BwBytes / (1 << 20)
	}
	return r, nil
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/PID/stat's times
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// cpuSeconds returns the user and system CPU time of every thread of pid,
// living or exited, from /proc/PID/stat.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields after it follow the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the name", pid, len(f))
	}
	// f[0] is field 3 (state): utime is field 14, stime field 15.
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return float64(ut+st) / clockTicks, nil
}

// procStatusMiB returns a "kB" line of /proc/PID/status (VmRSS, VmHWM) in MiB.
func procStatusMiB(pid int, key string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, key+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status: %s %q: %v", pid, key, rest, err)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s line", pid, key)
}

// memAvailableMiB is MemAvailable from /proc/meminfo.
func memAvailableMiB() (float64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("/proc/meminfo: no MemAvailable line")
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func figures(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = num(x)
	}
	return strings.Join(s, " ")
}

// note prints an informational line (not a figure) on stderr.
func note(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "snaplab-bench: "+format+"\n", a...)
}

func needTools(bins ...string) error {
	for _, bin := range bins {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s not found (run `make deps`): %w", bin, err)
		}
	}
	return nil
}

// nbdkit is `nbdkit memory SIZE` on a unix socket.
type nbdkit struct {
	cmd    *exec.Cmd
	uri    string
	pid    int
	exited chan struct{}
	err    error // Wait's, once exited is closed
}

func startNbdkit(dir, name, size string) (*nbdkit, error) {
	sock := dir + "/nbdkit-" + name + ".sock"
	pidf := dir + "/nbdkit-" + name + ".pid"
	os.Remove(pidf)
	cmd := exec.Command("nbdkit", "--foreground", "-U", sock, "-P", pidf, "memory", size)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting nbdkit: %w", err)
	}
	k := &nbdkit{cmd: cmd, uri: "nbd+unix:///?socket=" + sock, pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() {
		k.err = cmd.Wait()
		close(k.exited)
	}()
	// nbdkit writes its pid file once it accepts connections.
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(pidf)
		if err == nil && len(bytes.TrimSpace(b)) > 0 {
			if p, _ := strconv.Atoi(string(bytes.TrimSpace(b))); p != k.pid {
				k.stop()
				return nil, fmt.Errorf("nbdkit's pid file says %s, started %d", bytes.TrimSpace(b), k.pid)
			}
			return k, nil
		}
		select {
		case <-k.exited:
			return nil, fmt.Errorf("nbdkit %s ended before serving: %v", strings.Join(cmd.Args[1:], " "), k.err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			k.stop()
			return nil, fmt.Errorf("nbdkit: %s not written after 30s: %v", pidf, err)
		}
	}
}

func (k *nbdkit) stop() {
	k.cmd.Process.Signal(syscall.SIGTERM)
	<-k.exited
}
