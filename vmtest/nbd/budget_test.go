package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fifoDev executes one call at a time in arrival order, as vmtest/live's
// devices do (callers queue on an unbuffered channel), and makes each read
// cost perMiB per MiB. It counts the calls that reached it.
type fifoDev struct {
	*memDev
	perMiB time.Duration
	jobs   chan func()
	calls  atomic.Int64

	mu       sync.Mutex
	bigTime  time.Duration // time spent in reads of 1 MiB or more,
	bigBytes int64         // the bytes they read,
	bigs     int           // and their number
}

// bigMean is the time the device spent on size bytes of large reads (the
// server splits a request into calls of at most 1 MiB).
func (d *fifoDev) bigMean(size int64) time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.bigBytes == 0 {
		return 0
	}
	return time.Duration(int64(d.bigTime) * size / d.bigBytes)
}

func newFifoDev(t testing.TB, name string, size int64, perMiB time.Duration) *fifoDev {
	d := &fifoDev{memDev: newMemDev(name, size), perMiB: perMiB, jobs: make(chan func())}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for f := range d.jobs {
			f()
		}
	}()
	t.Cleanup(func() { close(d.jobs); <-done }) // after the server's Shutdown
	return d
}

func (d *fifoDev) run(f func()) {
	d.calls.Add(1)
	done := make(chan struct{})
	d.jobs <- func() { f(); close(done) }
	<-done
}

func (d *fifoDev) ReadAt(p []byte, off int64) (n int, err error) {
	d.run(func() {
		start := time.Now()
		time.Sleep(time.Duration(int64(d.perMiB) * int64(len(p)) >> 20))
		if d.perMiB > 0 && len(p) >= 1<<20 { // a slow zero device: no copy loop to compete for the CPUs
			clear(p)
			n = len(p)
		} else {
			n, err = d.memDev.ReadAt(p, off)
		}
		if len(p) >= 1<<20 {
			d.mu.Lock()
			d.bigTime += time.Since(start)
			d.bigBytes += int64(len(p))
			d.bigs++
			d.mu.Unlock()
		}
	})
	return n, err
}

func (d *fifoDev) WriteAt(p []byte, off int64) (n int, err error) {
	d.run(func() { n, err = d.memDev.WriteAt(p, off) })
	return n, err
}

// watchStats samples s.Stats() until stop is closed and returns the
// largest Bytes and Requests seen.
func watchStats(s *Server, stop <-chan struct{}) (maxBytes *atomic.Int64, maxReqs *atomic.Int64) {
	maxBytes, maxReqs = new(atomic.Int64), new(atomic.Int64)
	go func() {
		for {
			st := s.Stats()
			if st.Bytes > maxBytes.Load() {
				maxBytes.Store(st.Bytes)
			}
			if int64(st.Requests) > maxReqs.Load() {
				maxReqs.Store(int64(st.Requests))
			}
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	}()
	return maxBytes, maxReqs
}

// heapAlloc is the live heap after garbage collection (twice: pooled
// buffers survive one collection).
func heapAlloc() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// flood pipelines n READs of size bytes without reading any reply.
func flood(c *rawClient, n int, size uint32) {
	var b []byte
	for i := range n {
		b = append(b, reqBytes(0, CmdRead, uint64(i), 0, size)...)
	}
	c.write(b)
}

func waitFor(t testing.TB, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", limit, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestStalledFloodIsBounded: a client that pipelines many 32 MiB READs and
// never reads a reply holds at most its connection budget; once it
// closes, what it queued stops at once.
func TestStalledFloodIsBounded(t *testing.T) {
	for _, serial := range []bool{false, true} {
		t.Run(map[bool]string{false: "concurrent", true: "serial"}[serial], func(t *testing.T) { stalledFlood(t, serial) })
	}
}

// stalledFlood is TestStalledFloodIsBounded on an export served
// concurrently or (Export.Serial) in order on one goroutine, whose held
// replies must not hold budget once the connection breaks.
func stalledFlood(t *testing.T, serial bool) {
	const (
		reqs    = 40
		reqSize = 32 << 20
	)
	dev := newFifoDev(t, "flooded", 64<<20, time.Millisecond) // 32 ms a request: queued work would show
	s := startServer(t, []Export{{Name: "d", Dev: dev, Serial: serial}})
	base := heapAlloc()
	stop := make(chan struct{})
	maxBytes, maxReqs := watchStats(s.Server, stop)

	c := dialRaw(t, s.addr)
	c.open("d", goOpts{blockSize: true})
	flood(c, reqs, reqSize)
	fill := int64(DefaultMaxConnBytes)
	if serial {
		fill = reqSize // one request at a time: its reply blocks the connection
	}
	waitFor(t, "the connection to fill its budget", 10*time.Second, func() bool {
		return s.Stats().Bytes >= fill
	})
	time.Sleep(100 * time.Millisecond) // let anything unbounded show
	grown := heapAlloc() - base
	st := s.Stats()
	close(stop)
	t.Logf("flood of %d x 32 MiB unread: %d requests, %d MiB in flight (peak %d, %d MiB), heap +%d MiB, %d device calls",
		reqs, st.Requests, st.Bytes>>20, maxReqs.Load(), maxBytes.Load()>>20, grown>>20, dev.calls.Load())
	if maxBytes.Load() > DefaultMaxConnBytes {
		t.Errorf("bytes in flight peaked at %d, over the connection budget %d", maxBytes.Load(), DefaultMaxConnBytes)
	}
	if grown > DefaultMaxConnBytes+16<<20 {
		t.Errorf("heap grew by %d MiB under the flood, budget %d MiB", grown>>20, DefaultMaxConnBytes>>20)
	}

	c.c.Close()
	closed := time.Now()
	atClose := dev.calls.Load()
	waitFor(t, "the broken connection to end", 5*time.Second, func() bool { return s.Stats().Conns == 0 })
	settled := dev.calls.Load()
	t.Logf("client closed: %d device calls (of 1 MiB) then, %d when the connection ended %v later",
		atClose, settled, time.Since(closed).Round(time.Millisecond))
	time.Sleep(200 * time.Millisecond)
	// A request is served in calls of at most maxDataCall.
	if after := dev.calls.Load(); after != settled || after > atClose+2*reqSize/maxDataCall || after >= reqs*reqSize/maxDataCall {
		t.Errorf("device calls went on after the client closed: %d at close, %d when the connection ended, %d later (of %d requests sent, %d calls each)",
			atClose, settled, after, reqs, reqSize/maxDataCall)
	}
	if st := s.Stats(); st.Requests != 0 || st.Bytes != 0 || st.Waiting != 0 {
		t.Errorf("after the connection ended: %+v", st)
	}
}

// TestStalledFloodsShareServerBudget: many stalled flooders together hold
// at most the server budget, while another client's small reads still go
// through (the per-connection reserve).
func TestStalledFloodsShareServerBudget(t *testing.T) {
	const (
		flooders  = 8
		reqs      = 10
		reqSize   = 32 << 20
		srvBudget = 128 << 20
	)
	dev := newMemDev("shared", 64<<20)
	s := startServer(t, []Export{{Name: "d", Dev: dev}}, WithMaxServerBytes(srvBudget))
	g0, f0 := runtime.NumGoroutine(), fdCount(t)
	base := heapAlloc()
	stop := make(chan struct{})
	maxBytes, _ := watchStats(s.Server, stop)
	var cs []*rawClient
	for range flooders {
		c := dialRaw(t, s.addr)
		c.open("d", goOpts{})
		flood(c, reqs, reqSize)
		cs = append(cs, c)
	}
	waitFor(t, "the flooders to fill the server budget and wait", 10*time.Second, func() bool {
		st := s.Stats()
		return st.Bytes >= srvBudget && st.Waiting > 0
	})
	small := dialRaw(t, s.addr)
	small.open("d", goOpts{sr: true})
	for i := range 20 {
		start := time.Now()
		small.send(0, CmdRead, uint64(i), uint64(i)*4096, 4096, nil)
		if errno, h, _, _ := small.readReply(uint64(i)*4096, 4096); errno != 0 || h != uint64(i) {
			t.Fatalf("small read %d: errno %d handle %d", i, errno, h)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("small read %d took %v while stalled clients hold the budget", i, d)
		}
	}
	grown := heapAlloc() - base
	close(stop)
	t.Logf("%d stalled flooders: peak %d MiB in flight (server budget %d MiB), heap +%d MiB; %+v",
		flooders, maxBytes.Load()>>20, srvBudget>>20, grown>>20, s.Stats())
	if limit := int64(srvBudget + reserveBytes); maxBytes.Load() > limit {
		t.Errorf("bytes in flight peaked at %d, over the server budget %d plus one reserve", maxBytes.Load(), srvBudget)
	}
	if grown > srvBudget+32<<20 {
		t.Errorf("heap grew by %d MiB, server budget %d MiB", grown>>20, srvBudget>>20)
	}
	for _, c := range cs {
		c.c.Close()
	}
	small.c.Close()
	waitFor(t, "every connection to end", 5*time.Second, func() bool { return s.Stats().Conns == 0 })
	if st := s.Stats(); st.Requests != 0 || st.Bytes != 0 || st.Waiting != 0 {
		t.Errorf("after every connection ended: %+v", st)
	}
	settle(t, g0, f0)
}

// floodReader keeps depth READs of size bytes in flight on its own
// connection and reads every reply, until ctx ends.
func floodReader(ctx context.Context, t testing.TB, addr net.Addr, depth int, size uint32, wg *sync.WaitGroup) {
	defer wg.Done()
	c := dialRaw(t, addr)
	c.c.SetDeadline(time.Time{})
	c.open("d", goOpts{blockSize: true})
	go func() { <-ctx.Done(); c.c.Close() }()
	var sent uint64
	send := func() {
		sent++
		if _, err := c.c.Write(reqBytes(0, CmdRead, sent, (sent%2)*uint64(size), size)); err != nil && ctx.Err() == nil {
			t.Errorf("flooder write: %v", err)
		}
	}
	for range depth {
		send()
	}
	buf := make([]byte, size)
	r := bufio.NewReaderSize(c.c, 1<<20)
	for {
		var h [16]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			if ctx.Err() == nil {
				t.Errorf("flooder read: %v", err)
			}
			return
		}
		if errno := binary.BigEndian.Uint32(h[4:]); errno != 0 {
			t.Errorf("flooder read: errno %d", errno)
			return
		}
		if _, err := io.ReadFull(r, buf); err != nil {
			if ctx.Err() == nil {
				t.Errorf("flooder read: %v", err)
			}
			return
		}
		send()
	}
}

// readLatencies issues rounds of depth reads of size bytes on a fresh
// connection, think apart, and returns each read's latency, sorted.
func readLatencies(t testing.TB, addr net.Addr, rounds, depth int, size uint32, region uint64, think time.Duration) []time.Duration {
	c := dialRaw(t, addr)
	c.c.SetDeadline(time.Now().Add(2 * time.Minute))
	c.open("d", goOpts{blockSize: true})
	var lat []time.Duration
	start := time.Now()
	for i := range rounds {
		if time.Since(start) > 30*time.Second {
			break // far too slow already; what was measured says so
		}
		time.Sleep(think)
		sent := map[uint64]time.Time{}
		for j := range depth {
			h := uint64(i*depth + j)
			sent[h] = time.Now()
			c.send(0, CmdRead, h, region+uint64(j)*uint64(size), size, nil)
		}
		for range depth {
			errno, h := c.readSimple()
			if errno != 0 {
				t.Errorf("%d-byte read: errno %d", size, errno)
				return nil
			}
			if _, err := io.CopyN(io.Discard, c.r, int64(size)); err != nil {
				t.Errorf("%d-byte read: %v", size, err)
				return nil
			}
			lat = append(lat, time.Since(sent[h]))
		}
	}
	slices.Sort(lat)
	return lat
}

// TestFairUnderFlood: flooders pipelining 8 MiB reads on a device that
// executes one call at a time and takes 8 ms per MiB, while two light
// clients read: one 4 KiB reads 4 at a time, one a 1 MiB read now and
// then. Their reads are admitted before the flooders' next ones (the 4 KiB
// ones through the per-connection reserve, the 1 MiB ones by fair
// queuing: they ask for less than their share), so each waits for about
// one budget release plus the big reads the budget admitted ahead of it,
// not for every flooder's turn. (The flooders' reads are not 32 MiB so
// that copying replies does not saturate a small test machine's CPUs,
// which would make reply writes, not the device, the bottleneck.)
func TestFairUnderFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("takes seconds")
	}
	const (
		flooders = 16
		depth    = 4
		bigSize  = 8 << 20
		perMiB   = 8 * time.Millisecond
		budget   = 2 * bigSize
	)
	dev := newFifoDev(t, "slow", 2<<30, perMiB)
	s := startServer(t, []Export{{Name: "d", Dev: dev}}, WithMaxServerBytes(budget))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for range flooders {
		wg.Add(1)
		go floodReader(ctx, t, s.addr, depth, bigSize, &wg)
	}
	waitFor(t, "the flooders to queue for the budget", 10*time.Second, func() bool {
		return s.Stats().Waiting >= flooders/2
	})
	var small, medium []time.Duration
	var rw sync.WaitGroup
	rw.Add(2)
	go func() { defer rw.Done(); small = readLatencies(t, s.addr, 40, 4, 4096, 1<<30, 0) }()
	go func() {
		defer rw.Done()
		medium = readLatencies(t, s.addr, 30, 1, 1<<20, 1<<30+64<<20, 50*time.Millisecond)
	}()
	rw.Wait()
	if t.Failed() {
		return
	}
	// A read waits for about one budget release and for the big reads the
	// budget admitted ahead of it (budget/bigSize = 2; the device serves
	// them in 1 MiB pieces), each taking bigT on the device (64 ms asked, a
	// little more in practice): a few bigT at most. Granting in arrival
	// order instead makes the 1 MiB reads wait for every flooder's turn
	// (p50 about 17 bigT), and without the reserve the 4 KiB ones too; the
	// server before budgets queued every flooder's reads on the device
	// ahead of them (about 64 bigT). The medians tell fair from unfair;
	// the p99 bounds are generous, for loaded machines.
	bigT := dev.bigMean(bigSize)
	for _, m := range []struct {
		name     string
		lat      []time.Duration
		p50, p99 time.Duration
	}{
		{"4 KiB reads, 4 at a time", small, 4 * bigT, 8 * bigT},
		{"1 MiB reads, one every 50 ms", medium, 4 * bigT, 16 * bigT},
	} {
		p50, p99 := m.lat[len(m.lat)/2], m.lat[len(m.lat)*99/100]
		t.Logf("%d flooders x %d x %d MiB reads, one device call at a time, %v per big read: %s: p50 %v p99 %v max %v (bounds %v, %v)",
			flooders, depth, bigSize>>20, bigT.Round(time.Millisecond), m.name, p50.Round(time.Millisecond),
			p99.Round(time.Millisecond), m.lat[len(m.lat)-1].Round(time.Millisecond), m.p50.Round(time.Millisecond), m.p99.Round(time.Millisecond))
		if p50 > m.p50 || p99 > m.p99 {
			t.Errorf("%s under the flood: p50 %v p99 %v, want under %v and %v (%v per big read)", m.name, p50, p99, m.p50, m.p99, bigT)
		}
	}
	dev.mu.Lock()
	t.Logf("device calls %d, %d of them big", dev.calls.Load(), dev.bigs)
	dev.mu.Unlock()
}

// TestBudgetWaitersGiveUp: a connection whose reader waits for the server
// budget ends, charging nothing, when its client goes away, and when the
// server shuts down.
func TestBudgetWaitersGiveUp(t *testing.T) {
	dev := newMemDev("d", 64<<20)
	s := startServer(t, []Export{{Name: "d", Dev: dev}}, WithMaxServerBytes(32<<20))
	hog := dialRaw(t, s.addr)
	hog.open("d", goOpts{})
	flood(hog, 4, 32<<20) // holds the whole budget, reads nothing
	waitFor(t, "the hog to hold the budget", 5*time.Second, func() bool { return s.Stats().Bytes >= 32<<20 })
	w := dialRaw(t, s.addr)
	w.open("d", goOpts{})
	w.send(0, CmdRead, 1, 0, 1<<20, nil) // over the reserve: waits
	waitFor(t, "the second client to wait", 5*time.Second, func() bool { return s.Stats().Waiting == 2 })
	w.c.Close()
	// Its reader reads nothing while it waits, but looks for its client's
	// hang-up: the connection ends while the hog still holds the budget
	// (it used to wait for the budget, holding its place and its slot).
	waitFor(t, "the closed waiter's connection to end", 5*time.Second, func() bool {
		st := s.Stats()
		return st.Conns == 1 && st.Waiting == 1
	})
	hog.c.Close()
	waitFor(t, "both connections to end", 5*time.Second, func() bool { return s.Stats().Conns == 0 })
	if st := s.Stats(); st.Bytes != 0 || st.Requests != 0 || st.Waiting != 0 {
		t.Fatalf("after both ended: %+v", st)
	}

	hog = dialRaw(t, s.addr)
	hog.open("d", goOpts{})
	flood(hog, 4, 32<<20)
	waitFor(t, "the hog to hold the budget again", 5*time.Second, func() bool { return s.Stats().Bytes >= 32<<20 })
	w = dialRaw(t, s.addr)
	w.open("d", goOpts{})
	w.send(0, CmdRead, 1, 0, 1<<20, nil)
	waitFor(t, "the second client to wait again", 5*time.Second, func() bool { return s.Stats().Waiting == 2 })
	ctx, cancelShutdown := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancelShutdown()
	// The hog's replies can never be written: Shutdown gives up at the
	// deadline and closes the connections; the waiters must not hang on.
	if err := s.Shutdown(ctx); err != context.DeadlineExceeded {
		t.Fatalf("Shutdown with a client that reads nothing: %v", err)
	}
	waitFor(t, "connections to end after Shutdown", 5*time.Second, func() bool { return s.Stats().Conns == 0 })
	if st := s.Stats(); st.Bytes != 0 || st.Requests != 0 || st.Waiting != 0 {
		t.Fatalf("after Shutdown: %+v", st)
	}
}

// TestDiscKeepsDraining: NBD_CMD_DISC still lets every admitted request
// finish and its reply go out, however large.
func TestDiscKeepsDraining(t *testing.T) {
	dev := newMemDev("d", 64<<20)
	s := startServer(t, []Export{{Name: "d", Dev: dev}})
	c := dialRaw(t, s.addr)
	c.open("d", goOpts{})
	var b []byte
	for i := range 6 {
		b = append(b, reqBytes(0, CmdRead, uint64(i), 0, 32<<20)...)
	}
	b = append(b, reqBytes(0, CmdDisc, 99, 0, 0)...)
	c.write(b)
	got := 0
	for range 6 {
		if errno, _ := c.readSimple(); errno != 0 {
			t.Fatalf("errno %d", errno)
		}
		if _, err := io.CopyN(io.Discard, c.r, 32<<20); err != nil {
			t.Fatal(err)
		}
		got++
	}
	c.closed()
	if got != 6 {
		t.Fatalf("%d replies", got)
	}
}

// TestMaxConnsRefusal: a connection over the limit is told why.
func TestMaxConnsRefusal(t *testing.T) {
	_, ex := stdExports(t)
	s := startServer(t, ex, WithMaxConns(1))
	a := dialRaw(t, s.addr)
	a.open("disk", goOpts{})
	waitFor(t, "the first connection to count", 5*time.Second, func() bool { return s.Stats().Conns == 1 })

	b := dialRaw(t, s.addr)
	b.greet(flagCFixedNewstyle | flagCNoZeroes)
	b.sendOpt(optList, nil)
	r := b.readOptReply()
	if r.typ != repErrPolicy || !containsAll(string(r.data), "1 connections", "limit") {
		t.Fatalf("LIST over the limit: reply 0x%x %q, want NBD_REP_ERR_POLICY naming the limit", r.typ, r.data)
	}
	b.sendOpt(optGo, infoData("disk"))
	if r := b.readOptReply(); r.typ != repErrPolicy || r.opt != optGo {
		t.Fatalf("GO over the limit: reply %+v", r)
	}
	if st := s.Stats(); st.Refusing != 1 || st.Conns != 1 {
		t.Errorf("while refusing: %+v", st)
	}
	b.sendOpt(optAbort, nil)
	if r := b.readOptReply(); r.typ != repAck {
		t.Fatalf("ABORT over the limit: reply %+v", r)
	}
	b.closed()

	e := dialRaw(t, s.addr)
	e.greet(flagCFixedNewstyle)
	e.sendOpt(optExportName, []byte("disk"))
	e.closed()

	// A client that says nothing is closed after the refusal timeout.
	start := time.Now()
	silent := dialRaw(t, s.addr)
	silent.closed()
	if d := time.Since(start); d > refuseTimeout+time.Second {
		t.Errorf("silent over-limit connection closed after %v", d)
	}
	waitFor(t, "refusals to end", 5*time.Second, func() bool { return s.Stats().Refusing == 0 })

	// QEMU shows the message.
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Log("qemu-io is not installed (make deps): not checking what QEMU shows")
	} else {
		cmd := exec.Command("qemu-io", "-f", "raw", "-c", "read 0 512", URI(s.addr, "disk"))
		out, err := cmd.CombinedOutput()
		if err == nil || !containsAll(string(out), "server busy", "its connection limit") {
			t.Errorf("qemu-io over the connection limit: %v\n%s", err, out)
		}
	}

	// The served connection was never disturbed.
	a.send(0, CmdRead, 1, 0, 512, nil)
	if errno, _ := a.readSimple(); errno != 0 {
		t.Fatalf("served connection: errno %d", errno)
	}
	a.read(512)
}

func containsAll(s string, subs ...string) bool {
	for _, x := range subs {
		if !strings.Contains(s, x) {
			return false
		}
	}
	return true
}

// TestDefaults: the limits a NewServer starts with.
func TestDefaults(t *testing.T) {
	s := NewServer()
	if s.maxConns != DefaultMaxConns || s.maxInFlight != DefaultMaxInFlight ||
		s.maxConnBytes != DefaultMaxConnBytes || s.maxServerBytes != DefaultMaxServerBytes {
		t.Fatalf("defaults: conns %d in-flight %d conn bytes %d server bytes %d",
			s.maxConns, s.maxInFlight, s.maxConnBytes, s.maxServerBytes)
	}
	s = NewServer(WithMaxConns(0), WithMaxConnBytes(1<<20), WithMaxServerBytes(8<<20), WithMaxInFlight(3))
	if s.maxConns != 0 || s.maxConnBytes != 1<<20 || s.maxServerBytes != 8<<20 || s.maxInFlight != 3 {
		t.Fatalf("options not applied: %d %d %d %d", s.maxConns, s.maxConnBytes, s.maxServerBytes, s.maxInFlight)
	}
}

// TestConnBudgetLoneRequest: a request larger than the connection budget
// is still served when nothing else is in flight; the budget then holds
// the next one back until the reply is written.
func TestConnBudgetLoneRequest(t *testing.T) {
	dev := newMemDev("d", 64<<20)
	s := startServer(t, []Export{{Name: "d", Dev: dev}}, WithMaxConnBytes(1<<20))
	c := dialRaw(t, s.addr)
	c.open("d", goOpts{})
	flood(c, 3, 8<<20)
	waitFor(t, "one request admitted", 5*time.Second, func() bool { return s.Stats().Requests == 1 })
	time.Sleep(50 * time.Millisecond)
	if st := s.Stats(); st.Requests != 1 || st.Bytes != 8<<20 {
		t.Fatalf("with a 1 MiB connection budget and 8 MiB reads pending: %+v, want exactly one admitted", st)
	}
	for i := range 3 {
		if errno, h := c.readSimple(); errno != 0 || h != uint64(i) {
			t.Fatalf("reply %d: errno %d handle %d", i, errno, h)
		}
		if _, err := io.CopyN(io.Discard, c.r, 8<<20); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the budget released", 5*time.Second, func() bool { return s.Stats().Bytes == 0 })
}
