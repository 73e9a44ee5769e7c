package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"snaplab/vmtest/nbdclient"
)

// Config is one soak run.
type Config struct {
	Bin      string        // the snaplab binary
	Duration time.Duration // how long the load runs
	Clients  int           // verifying clients
	Floods   int           // flooding clients (pipelined 32 MiB reads, replies unread, then a reset)
	Seed     uint64
	RSSLimit int64 // bytes; the server's peak RSS must stay under it
	Log      io.Writer
	Progress time.Duration // how often a progress line goes to Log (0: never)
}

// Result holds a run's figures.
type Result struct {
	Ops, Errors, Mismatches   int64
	BytesVerified             int64
	Aborts, Floods, Suspends  int64
	RSSStart, RSSMax, RSSEnd  int64 // bytes
	RSSMaxFirst, RSSMaxSecond int64 // peak RSS in the first and second half of the load after its first quarter
	GoroutinesBefore          int
	GoroutinesAfter           int
	FDsBefore, FDsAfter       int
	InFlightAfter             string
	SmallReadP99              time.Duration
	ServeExit                 int
	Problems                  []string
}

// Device layout. Clients own disjoint regions, so each can verify every
// byte it reads against what it wrote; the snapshot's view of the origin
// regions must stay the pre-image (zeros) whatever the origin clients do.
const (
	region     = 1 << 20
	originBase = 0        // origin clients: [0, 32 MiB) of base
	snapBase   = 64 << 20 // snapshot clients: [64, 96 MiB) of snap
	devSize    = 256 << 20
)

const scenario = `# snaplab soak: an origin with a persistent snapshot, and a plain disk
disk origin 256MiB
disk cow 160MiB
disk scratch 256MiB
dmsetup create snap --table "0 524288 snapshot origin cow P 8"
dmsetup create base --table "0 524288 snapshot-origin origin"
`

type role int

const (
	roleOrigin  role = iota // aligned I/O on base, 1 MiB region each
	roleSnap                // aligned I/O on snap
	roleScratch             // byte-granular I/O on scratch, no block sizes negotiated
	roleLatency             // 4 KiB reads on scratch, timed
)

// Run starts `snaplab serve`, loads it and checks it.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	res := &Result{}
	dir, err := os.MkdirTemp("", "snaplab-soak-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	scn := filepath.Join(dir, "soak.scn")
	if err := os.WriteFile(scn, []byte(scenario), 0o644); err != nil {
		return nil, err
	}
	sock, ctlPath := filepath.Join(dir, "nbd.sock"), filepath.Join(dir, "ctl.sock")
	cmd := exec.Command(cfg.Bin, "serve", "-socket", sock, "-control", ctlPath, "-record", "", scn)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	}()
	pid := cmd.Process.Pid
	if err := waitFor(ctlPath, 20*time.Second); err != nil {
		return nil, fmt.Errorf("serve did not start: %v\n%s", err, out.String())
	}
	ctl, err := dialControl(ctlPath)
	if err != nil {
		return nil, err
	}
	defer ctl.close()
	addr := "unix:" + sock
	logf := func(format string, a ...any) {
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, format+"\n", a...)
		}
	}
	var mu sync.Mutex
	problem := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(res.Problems) < 50 {
			res.Problems = append(res.Problems, fmt.Sprintf(format, a...))
		}
	}

	stats, err := ctl.stats()
	if err != nil {
		return nil, err
	}
	res.GoroutinesBefore = stats["goroutines"]
	res.FDsBefore = countFDs(pid)
	res.RSSStart = rss(pid)

	loadCtx, stopLoad := context.WithTimeout(ctx, cfg.Duration)
	defer stopLoad()
	start := time.Now()
	// Growth is judged after a warm-up: in the first quarter every client
	// and flooder allocates its buffers, and on a busy machine that takes
	// longer than the half of a short soak.
	warm := start.Add(cfg.Duration / 4)
	half := start.Add(cfg.Duration / 4 * 5 / 2)
	var wg sync.WaitGroup
	var lat latencies

	// RSS sampler.
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case <-loadCtx.Done():
				return
			case now := <-t.C:
				r := rss(pid)
				mu.Lock()
				res.RSSMax = max(res.RSSMax, r)
				switch {
				case now.Before(warm):
				case now.Before(half):
					res.RSSMaxFirst = max(res.RSSMaxFirst, r)
				default:
					res.RSSMaxSecond = max(res.RSSMaxSecond, r)
				}
				mu.Unlock()
				if now.Sub(last) >= cfg.Progress && cfg.Progress > 0 {
					last = now
					st, _ := ctl.stats()
					logf("soak: %4.0fs ops=%d errors=%d mismatches=%d rss=%dMiB connections=%d requests=%d bytes=%dMiB waiting=%d", now.Sub(start).Seconds(),
						atomic.LoadInt64(&res.Ops), atomic.LoadInt64(&res.Errors), atomic.LoadInt64(&res.Mismatches), r>>20,
						st["connections"], st["requests-in-flight"], st["bytes-in-flight"]>>20, st["waiting"])
				}
			}
		}
	}()

	// Verifying clients.
	for i := range cfg.Clients {
		r := role(i % 4)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &client{id: i, role: r, addr: addr, res: res, problem: problem, lat: &lat,
				rng: rand.New(rand.NewPCG(cfg.Seed, uint64(i)))}
			c.run(loadCtx)
		}()
	}
	// Flooders: pipelined 32 MiB reads whose replies are never read, then
	// a reset with all of them outstanding.
	for i := range cfg.Floods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(cfg.Seed, 1000+uint64(i)))
			for loadCtx.Err() == nil {
				dev := []string{"origin", "scratch", "snap"}[rng.IntN(3)]
				c, err := nbdclient.Dial(loadCtx, addr, dev, nbdclient.Options{Stalled: true})
				if err != nil {
					if !ended(loadCtx, err) {
						problem("flood: dial %s: %v", dev, err)
					}
					return
				}
				atomic.AddInt64(&res.Floods, 1)
				for range 200 {
					if _, err := c.SendRead(int64(rng.IntN(devSize/(32<<20)))*(32<<20), 32<<20); err != nil {
						break // the server pushes back: the socket is full
					}
				}
				sleep(loadCtx, time.Duration(1+rng.IntN(3))*time.Second)
				c.Abort()
			}
		}()
	}
	// Suspend/resume churn on the origin and the snapshot.
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(cfg.Seed, 2000))
		for loadCtx.Err() == nil {
			sleep(loadCtx, time.Duration(500+rng.IntN(1500))*time.Millisecond)
			dev := []string{"base", "snap"}[rng.IntN(2)]
			if _, err := ctl.do("dmsetup suspend " + dev); err != nil {
				problem("suspend %s: %v", dev, err)
				return
			}
			time.Sleep(time.Duration(20+rng.IntN(200)) * time.Millisecond)
			if _, err := ctl.do("dmsetup resume " + dev); err != nil {
				problem("resume %s: %v", dev, err)
				return
			}
			atomic.AddInt64(&res.Suspends, 1)
		}
	}()
	wg.Wait()
	<-samplerDone

	// After the load: every connection gone, nothing in flight, no leaked
	// goroutine or descriptor.
	deadline := time.Now().Add(20 * time.Second)
	for {
		stats, err = ctl.stats()
		if err != nil {
			return nil, err
		}
		res.GoroutinesAfter = stats["goroutines"]
		res.FDsAfter = countFDs(pid)
		settled := stats["connections"] == 0 && stats["requests-in-flight"] == 0 && stats["bytes-in-flight"] == 0 &&
			res.GoroutinesAfter <= res.GoroutinesBefore+2 && res.FDsAfter <= res.FDsBefore+1
		if settled || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	res.InFlightAfter = fmt.Sprintf("connections %d, requests %d, bytes %d",
		stats["connections"], stats["requests-in-flight"], stats["bytes-in-flight"])
	if stats["connections"] != 0 || stats["requests-in-flight"] != 0 || stats["bytes-in-flight"] != 0 {
		problem("after the load: %s", res.InFlightAfter)
	}
	if res.GoroutinesAfter > res.GoroutinesBefore+2 {
		problem("goroutines: %d before the load, %d after", res.GoroutinesBefore, res.GoroutinesAfter)
	}
	if res.FDsAfter > res.FDsBefore+1 { // +1: the control connection's own descriptor is counted after
		problem("descriptors: %d before the load, %d after", res.FDsBefore, res.FDsAfter)
	}
	res.RSSEnd = rss(pid)
	res.SmallReadP99 = lat.p99()
	if cfg.RSSLimit > 0 && res.RSSMax > cfg.RSSLimit {
		problem("peak RSS %d MiB over the limit %d MiB", res.RSSMax>>20, cfg.RSSLimit>>20)
	}
	if res.RSSMaxFirst > 0 && res.RSSMaxSecond > res.RSSMaxFirst+res.RSSMaxFirst/4+(64<<20) {
		problem("RSS still growing: peak %d MiB in the first half, %d MiB in the second", res.RSSMaxFirst>>20, res.RSSMaxSecond>>20)
	}
	if res.Mismatches > 0 {
		problem("%d reads returned bytes that were never written there", res.Mismatches)
	}
	ctl.do("quit")
	stdin.Close()
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	select {
	case err := <-waitErr:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			res.ServeExit = ee.ExitCode()
		} else if err != nil {
			return nil, err
		}
	case <-time.After(30 * time.Second):
		problem("serve did not exit within 30 s of quit")
		res.ServeExit = -1
	}
	if res.ServeExit != 0 {
		problem("serve exited %d:\n%s", res.ServeExit, tail(out.String(), 4000))
	}
	return res, nil
}

// client is one verifying client: it owns a region of one device and keeps
// a model of it; sectors written by a request that never got its reply
// (the client reset the connection) may hold either version.
type client struct {
	id      int
	role    role
	addr    string
	rng     *rand.Rand
	res     *Result
	problem func(string, ...any)
	lat     *latencies

	dev     string
	base    int64
	ops     int
	model   []byte
	unknown []bool // per byte: content not known (an unacknowledged write)
	c       *nbdclient.Client
}

func (c *client) run(ctx context.Context) {
	switch c.role {
	case roleOrigin:
		c.dev, c.base = "base", originBase+int64(c.id/4)*region
	case roleSnap:
		c.dev, c.base = "snap", snapBase+int64(c.id/4)*region
	case roleScratch:
		c.dev, c.base = "scratch", int64(c.id/4)*region
	case roleLatency:
		c.dev, c.base = "scratch", 128<<20+int64(c.id/4)*region
	}
	c.model = make([]byte, region)
	c.unknown = make([]bool, region)
	defer func() {
		if c.c != nil {
			c.c.Close()
		}
	}()
	for ctx.Err() == nil {
		if c.c == nil && !c.connect(ctx) {
			return
		}
		c.step(ctx)
	}
	// A last full check of the region on a fresh connection.
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
	fin, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if c.connect(fin) {
		c.verify(0, region)
		c.crossCheck()
	}
}

func (c *client) connect(ctx context.Context) bool {
	o := nbdclient.Options{NoBlockSizes: c.role == roleScratch, ExportName: c.role == roleScratch && c.id%8 == 2}
	cl, err := nbdclient.Dial(ctx, c.addr, c.dev, o)
	if err != nil {
		if !ended(ctx, err) {
			c.problem("client %d: dial %s: %v", c.id, c.dev, err)
		}
		return false
	}
	c.c = cl
	return true
}

// span picks a range of the region: aligned to 512 bytes, or any bytes for
// the byte-granular clients.
func (c *client) span(maxLen int) (int64, int) {
	if c.role == roleScratch {
		n := 1 + c.rng.IntN(maxLen)
		return int64(c.rng.IntN(region - n + 1)), n
	}
	n := (1 + c.rng.IntN(maxLen/512)) * 512
	return int64(c.rng.IntN((region-n)/512+1)) * 512, n
}

func (c *client) step(ctx context.Context) {
	atomic.AddInt64(&c.res.Ops, 1)
	c.ops++
	if c.role == roleLatency {
		off := int64(c.rng.IntN(region/4096)) * 4096
		buf := make([]byte, 4096)
		t0 := time.Now()
		err := c.c.ReadAt(buf, c.base+off)
		c.lat.add(time.Since(t0))
		c.check(err, "read", off, 4096)
		if err == nil {
			c.compare(buf, off)
		}
		sleep(ctx, 10*time.Millisecond)
		return
	}
	k := c.rng.IntN(100)
	if c.ops == 3 {
		k = 0 // a write, reset with it outstanding: every client does it once
	}
	switch {
	case k < 45:
		off, n := c.span(256 << 10)
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(c.rng.Uint32())
		}
		if c.rng.IntN(50) == 0 || c.ops == 3 {
			// Reset the connection with a write outstanding. It lands in
			// the last quarter of the region, whose content is never
			// relied on: a request the server already passed to the
			// device still completes (as in the kernel), at any time, for
			// instance after a resume. A byte of it landing anywhere else
			// is caught by the other checks.
			n = min(n, region/4)
			off = region - region/4 + int64(c.rng.IntN(region/4-n+1))
			if c.role != roleScratch {
				off &^= 511
			}
			c.sendWriteAndAbort(p[:n], off)
			for i := range n {
				c.unknown[int(off)+i] = true
			}
			atomic.AddInt64(&c.res.Aborts, 1)
			c.c = nil
			return
		}
		err := c.c.WriteAt(p, c.base+off, c.rng.IntN(10) == 0)
		if c.check(err, "write", off, n) {
			copy(c.model[off:], p)
		}
	case k < 95:
		off, n := c.span(256 << 10)
		c.verify(off, n)
	default:
		c.check(c.c.Flush(), "flush", 0, 0)
	}
}

// sendWriteAndAbort sends a write and resets the connection before its
// reply can be read.
func (c *client) sendWriteAndAbort(p []byte, off int64) {
	errc := make(chan error, 1)
	go func() { errc <- c.c.WriteAt(p, c.base+off, false) }()
	time.Sleep(time.Duration(c.rng.IntN(2000)) * time.Microsecond)
	c.c.Abort()
	<-errc
}

func (c *client) verify(off int64, n int) {
	buf := make([]byte, n)
	if c.check(c.c.ReadAt(buf, c.base+off), "read", off, n) {
		c.compare(buf, off)
		atomic.AddInt64(&c.res.BytesVerified, int64(n))
	}
}

func (c *client) compare(buf []byte, off int64) {
	for i, b := range buf {
		j := int(off) + i
		if c.unknown[j] {
			continue // a write reset in flight may land there at any time
		}
		if b != c.model[j] {
			atomic.AddInt64(&c.res.Mismatches, 1)
			c.problem("client %d: %s at %d: byte %d is 0x%02x, wrote 0x%02x", c.id, c.dev, c.base+int64(j), j, b, c.model[j])
			return
		}
	}
}

// crossCheck reads the other device's view of this region: the snapshot
// still shows the origin regions' pre-image (zeros), and the origin never
// sees what was written to the snapshot.
func (c *client) crossCheck() {
	other := map[role]string{roleOrigin: "snap", roleSnap: "base"}[c.role]
	if other == "" {
		return
	}
	oc, err := nbdclient.Dial(context.Background(), c.addr, other, nbdclient.Options{})
	if err != nil {
		c.problem("client %d: dial %s: %v", c.id, other, err)
		return
	}
	defer oc.Close()
	buf := make([]byte, region)
	if err := oc.ReadAt(buf, c.base); err != nil {
		c.problem("client %d: %s read at %d: %v", c.id, other, c.base, err)
		return
	}
	if i := slices.IndexFunc(buf, func(b byte) bool { return b != 0 }); i >= 0 {
		atomic.AddInt64(&c.res.Mismatches, 1)
		c.problem("client %d: %s at %d holds 0x%02x, want the pre-image 0", c.id, other, c.base+int64(i), buf[i])
	}
}

// check counts an error; connection errors drop the connection.
func (c *client) check(err error, op string, off int64, n int) bool {
	if err == nil {
		return true
	}
	atomic.AddInt64(&c.res.Errors, 1)
	c.problem("client %d: %s %s at %d length %d: %v", c.id, op, c.dev, c.base+off, n, err)
	var ne *nbdclient.Error
	if !errors.As(err, &ne) {
		c.c.Abort()
		c.c = nil
	}
	return false
}

type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) p99() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	return s[len(s)*99/100]
}

// control is a connection to serve's control socket.
type control struct {
	mu sync.Mutex
	nc net.Conn
	br *bufio.Reader
}

func dialControl(path string) (*control, error) {
	nc, err := net.Dial("unix", path)
	if err != nil {
		return nil, err
	}
	return &control{nc: nc, br: bufio.NewReader(nc)}, nil
}

func (c *control) close() { c.nc.Close() }

// do sends one line and returns its output; a "fail:" answer is an error.
func (c *control) do(line string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nc.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := fmt.Fprintln(c.nc, line); err != nil {
		return "", err
	}
	if line == "quit" {
		return "", nil
	}
	var out strings.Builder
	for {
		l, err := c.br.ReadString('\n')
		if err != nil {
			return out.String(), fmt.Errorf("control %q: %w", line, err)
		}
		if l == "ok\n" {
			return out.String(), nil
		}
		if strings.HasPrefix(l, "fail: ") {
			return out.String(), fmt.Errorf("control %q: %s", line, strings.TrimSpace(l))
		}
		out.WriteString(l)
	}
}

func (c *control) stats() (map[string]int, error) {
	out, err := c.do("stats")
	if err != nil {
		return nil, err
	}
	m := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, ok := strings.Cut(l, " ")
		if n, err := strconv.Atoi(v); ok && err == nil {
			m[k] = n
		}
	}
	return m, nil
}

func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func countFDs(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

func waitFor(path string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v", path, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ended reports whether err is the load's end (its context's deadline cut
// a dial short), not a problem. A dial that runs into the context's
// deadline returns net's "i/o timeout", which matches
// context.DeadlineExceeded, and can do so before ctx.Err() turns non-nil:
// the dialer watches the deadline itself, the context's timer fires later.
func ended(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
