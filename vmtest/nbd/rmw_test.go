package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"snaplab/sim/block"
)

// sectorDev is addressed by sector underneath, as snaplab's dm devices are
// (sim/run turns a byte offset into a bio's sector by dividing it): an
// unaligned call lands on the sector boundary below its offset. It counts
// such calls, which the server must never make. readDelay widens the
// window of a read-modify-write, for the concurrency tests.
type sectorDev struct {
	*memDev
	readDelay time.Duration
	unaligned atomic.Int64
	calls     atomic.Int64
}

func (d *sectorDev) sector(off, n int64) int64 {
	d.calls.Add(1)
	if (off|n)%MinBlock != 0 {
		d.unaligned.Add(1)
	}
	return off &^ (MinBlock - 1)
}

func (d *sectorDev) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.memDev.ReadAt(p, d.sector(off, int64(len(p))))
	if d.readDelay > 0 { // after the copy: what was read grows stale meanwhile
		time.Sleep(d.readDelay)
	}
	return n, err
}

func (d *sectorDev) WriteAt(p []byte, off int64) (int, error) {
	return d.memDev.WriteAt(p, d.sector(off, int64(len(p))))
}

func (d *sectorDev) WriteAtFUA(p []byte, off int64) (int, error) {
	return d.memDev.WriteAtFUA(p, d.sector(off, int64(len(p))))
}

func (d *sectorDev) Discard(off, n int64) error {
	return d.memDev.Discard(d.sector(off, n), n)
}

func (d *sectorDev) Map(off, n int64) ([]block.Extent, error) {
	return d.memDev.Map(d.sector(off, n), n)
}

// openExportName enters transmission with NBD_OPT_EXPORT_NAME: no block
// sizes, no structured replies.
func (c *rawClient) openExportName(name string) uint64 {
	c.t.Helper()
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.sendOpt(optExportName, []byte(name))
	return binary.BigEndian.Uint64(c.read(10))
}

// unalignedClient drives one connection that negotiated no block sizes and
// checks every reply.
type unalignedClient struct {
	*rawClient
	sr     bool
	handle uint64
}

func (c *unalignedClient) do(flags uint16, cmd Command, off uint64, n uint32, payload []byte) []byte {
	c.t.Helper()
	c.handle++
	c.send(flags, cmd, c.handle, off, n, payload)
	var (
		errno  uint32
		handle uint64
		data   []byte
	)
	if cmd == CmdRead && !c.sr {
		errno, handle = c.readSimple()
		if errno == 0 {
			data = c.read(int(n))
		}
	} else {
		want := 0
		if cmd == CmdRead {
			want = int(n)
		}
		errno, handle, data, _ = c.readReply(off, want)
	}
	if errno != 0 || handle != c.handle {
		c.t.Fatalf("%v at %d length %d: errno %v handle %d (want %d)", cmd, off, n, syscall.Errno(errno), handle, c.handle)
	}
	return data
}

// randLen picks request lengths that exercise every read-modify-write
// shape: one byte, inside a sector, across one or several sector
// boundaries, whole sectors, and longer than rmwMerge.
func randLen(r *rand.Rand, limit int) int {
	var n int
	switch k := r.IntN(10); {
	case k < 2:
		n = 1 + r.IntN(8)
	case k < 5:
		n = 1 + r.IntN(MinBlock)
	case k < 8:
		n = 1 + r.IntN(4*MinBlock)
	case k < 9:
		n = MinBlock * (1 + r.IntN(8))
	default:
		n = rmwMerge + r.IntN(3*rmwMerge)
	}
	return min(n, limit)
}

func TestUnalignedByteExact(t *testing.T) {
	const size = 1 << 20
	modes := []struct {
		name string
		open func(c *rawClient) bool // returns whether replies are structured
	}{
		{"export-name", func(c *rawClient) bool { c.openExportName("d"); return false }},
		{"go-without-block-sizes", func(c *rawClient) bool { c.open("d", goOpts{}); return false }},
		{"go-without-block-sizes-structured", func(c *rawClient) bool { c.open("d", goOpts{sr: true, meta: true}); return true }},
	}
	for mi, m := range modes {
		for _, serial := range []bool{false, true} {
			name := m.name
			if serial {
				name += "-serial" // Export.Serial: one goroutine, batched replies
			}
			t.Run(name, func(t *testing.T) {
				dev := &sectorDev{memDev: newMemDev("sectors", size)}
				s := startServer(t, []Export{{Name: "d", Dev: dev, Serial: serial}})
				rc := dialRaw(t, s.addr)
				rc.c.SetDeadline(time.Now().Add(60 * time.Second))
				c := &unalignedClient{rawClient: rc, sr: m.open(rc)}
				model := make([]byte, size)
				r := rand.New(rand.NewPCG(uint64(mi), 99))
				for i := range 1500 {
					n := randLen(r, size)
					off := r.IntN(size - n + 1)
					if i%7 == 0 { // land at the very ends of sectors and of the device
						off = []int{MinBlock - 1, MinBlock - n%MinBlock, size - n, 0}[i/7%4]
						off = max(0, min(off, size-n))
					}
					fua := uint16(0)
					if r.IntN(4) == 0 {
						fua = FlagFUA
					}
					switch k := r.IntN(10); {
					case k < 5:
						p := make([]byte, n)
						for j := range p {
							p[j] = byte(r.Uint32() | 1) // never zero: a stale zero shows
						}
						c.do(fua, CmdWrite, uint64(off), uint32(n), p)
						copy(model[off:], p)
					case k < 6:
						flags := fua
						if r.IntN(2) == 0 {
							flags |= FlagNoHole
						}
						c.do(flags, CmdWriteZeroes, uint64(off), uint32(n), nil)
						clear(model[off : off+n])
					case k < 7:
						c.do(fua, CmdTrim, uint64(off), uint32(n), nil)
						// Only whole sectors inside the range are trimmed (and
						// memDev's discard zeroes them).
						if a, b := alignUp(int64(off)), alignDown(int64(off+n)); a < b {
							clear(model[a:b])
						}
					default:
						got := c.do(0, CmdRead, uint64(off), uint32(n), nil)
						if !bytes.Equal(got, model[off:off+n]) {
							t.Fatalf("op %d: read at %d length %d differs from the model at byte %d",
								i, off, n, firstDiff(got, model[off:off+n]))
						}
					}
				}
				whole := make([]byte, size)
				if _, err := dev.memDev.ReadAt(whole, 0); err != nil {
					t.Fatal(err)
				}
				if i := firstDiff(whole, model); i >= 0 {
					t.Fatalf("device differs from the model at byte %d", i)
				}
				if u := dev.unaligned.Load(); u != 0 {
					t.Fatalf("%d unaligned calls reached the sector-addressed device", u)
				}
				if !slicesContainsPrefix(dev.opLog(), "fua ") {
					t.Error("no FUA write reached the device although FUA was asked for")
				}
			})
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

func slicesContainsPrefix(l []string, prefix string) bool {
	for _, s := range l {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

// TestUnalignedConcurrentSameSectors has clients own adjacent 100-byte
// stripes, so every sector is shared by five or six of them, and write
// and zero random pieces of their stripes at once. Each client's model of
// its own stripe holds only if read-modify-writes of a shared sector never
// interleave (the range lock).
func TestUnalignedConcurrentSameSectors(t *testing.T) {
	const (
		size    = 1 << 20
		stripe  = 100
		clients = 10
		base    = 3*4096 + 100
		iters   = 200
	)
	dev := &sectorDev{memDev: newMemDev("shared", size), readDelay: 300 * time.Microsecond}
	s := startServer(t, []Export{{Name: "d", Dev: dev}})
	var wg sync.WaitGroup
	models := make([][]byte, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc := dialRaw(t, s.addr)
			rc.c.SetDeadline(time.Now().Add(60 * time.Second))
			var sr bool
			switch i % 3 {
			case 0:
				rc.openExportName("d")
			case 1:
				rc.open("d", goOpts{})
			case 2:
				rc.open("d", goOpts{sr: true})
				sr = true
			}
			c := &unalignedClient{rawClient: rc, sr: sr}
			lo := base + i*stripe
			model := make([]byte, stripe)
			r := rand.New(rand.NewPCG(uint64(i), 7))
			for it := range iters {
				a := r.IntN(stripe)
				b := a + 1 + r.IntN(stripe-a)
				switch k := r.IntN(10); {
				case k < 7:
					p := make([]byte, b-a)
					for j := range p {
						p[j] = byte(i<<5) | byte(it%31) + 1
					}
					c.do(0, CmdWrite, uint64(lo+a), uint32(b-a), p)
					copy(model[a:], p)
				case k < 8:
					c.do(FlagNoHole, CmdWriteZeroes, uint64(lo+a), uint32(b-a), nil)
					clear(model[a:b])
				default:
					if got := c.do(0, CmdRead, uint64(lo), stripe, nil); !bytes.Equal(got, model) {
						t.Errorf("client %d iteration %d: stripe at %d differs from its model at byte %d",
							i, it, lo, firstDiff(got, model))
						return
					}
				}
			}
			models[i] = model
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	got := make([]byte, clients*stripe)
	if _, err := dev.memDev.ReadAt(got, base); err != nil {
		t.Fatal(err)
	}
	if want := bytes.Join(models, nil); !bytes.Equal(got, want) {
		i := firstDiff(got, want)
		t.Fatalf("device differs from the clients' models at byte %d (client %d's stripe): a read-modify-write lost a neighbour's update",
			base+i, i/stripe)
	}
	if u := dev.unaligned.Load(); u != 0 {
		t.Fatalf("%d unaligned calls reached the device", u)
	}
}

// TestBlockSizeClientsStillRefusedUnaligned: what NBD_INFO_BLOCK_SIZE
// advertises is enforced for the clients that asked for it.
func TestBlockSizeClientsStillRefusedUnaligned(t *testing.T) {
	dev := &sectorDev{memDev: newMemDev("d", 1<<20)}
	s := startServer(t, []Export{{Name: "d", Dev: dev}})
	rc := dialRaw(t, s.addr)
	rc.open("d", goOpts{blockSize: true})
	for i, c := range []struct {
		cmd     Command
		off     uint64
		n       uint32
		payload int
	}{{CmdRead, 100, 16, 0}, {CmdWrite, 100, 512, 512}, {CmdWrite, 0, 100, 100}, {CmdWriteZeroes, 1, 512, 0}, {CmdTrim, 512, 1, 0}} {
		rc.send(0, c.cmd, uint64(i), c.off, c.n, make([]byte, c.payload))
		if errno, _, _, _ := rc.readReply(c.off, 0); syscall.Errno(errno) != syscall.EINVAL {
			t.Errorf("%v at %d length %d: errno %v, want EINVAL", c.cmd, c.off, c.n, syscall.Errno(errno))
		}
	}
	if n := dev.calls.Load(); n != 0 {
		t.Errorf("%d device calls for refused requests", n)
	}
}

// TestDeviceCallsRefuseUnaligned is the defensive check: whatever ops
// does, an unaligned range never reaches a device.
func TestDeviceCallsRefuseUnaligned(t *testing.T) {
	dev := &sectorDev{memDev: newMemDev("guarded", 1<<20)}
	p := make([]byte, 16)
	for _, c := range []struct {
		name string
		call func() error
		want string
	}{
		{"read", func() error { return devRead(dev, p, 100) }, "guarded read at offset 100 length 16"},
		{"write", func() error { return devWrite(dev, p, 512, false) }, "guarded write at offset 512 length 16"},
		{"fua write", func() error { return devWrite(dev, make([]byte, 512), 7, true) }, "guarded write at offset 7 length 512"},
		{"discard", func() error { return devDiscard(dev, dev, 512, 1000) }, "guarded discard at offset 512 length 1000"},
		{"zero", func() error { return devZero(dev, 1, 512, true) }, "guarded write at offset 1 length 512"},
	} {
		err := c.call()
		if !errors.Is(err, errUnaligned) || !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an EIO naming %q", c.name, err, c.want)
		}
	}
	if _, err := extents(dev, 100, 16); err != nil {
		t.Errorf("map of an unaligned range: %v (it should ask for the covering sectors)", err)
	}
	if n := dev.unaligned.Load(); n != 0 {
		t.Fatalf("%d unaligned calls reached the device", n)
	}
}

// TestRangeLock: shared holders do not wait for each other; an exclusive
// holder waits for overlapping holders before it, and overlapping holders
// after it wait for it; non-overlapping ones never wait.
func TestRangeLock(t *testing.T) {
	l := newRangeLock()
	blocked := func(f func()) <-chan struct{} {
		done := make(chan struct{})
		go func() { f(); close(done) }()
		return done
	}
	mustBlock := func(what string, done <-chan struct{}) {
		t.Helper()
		select {
		case <-done:
			t.Fatalf("%s did not wait", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
	mustRun := func(what string, done <-chan struct{}) {
		t.Helper()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s still waits", what)
		}
	}
	s1 := l.lockShared(0, 4096) // fast path
	s2 := l.lockShared(0, 4096)
	if s1 != fastToken || s2 != fastToken {
		t.Fatalf("shared holds with no exclusive holder took the slow path: %d %d", s1, s2)
	}
	var x1 uint64
	ex := blocked(func() { x1 = l.lockExcl(512, 1024) })
	mustBlock("an exclusive hold over fast shared holders", ex)
	// While an exclusive holder waits, a non-overlapping write goes on...
	var s3 uint64
	mustRun("a non-overlapping shared hold", blocked(func() { s3 = l.lockShared(8192, 12288) }))
	// ...and an overlapping one queues behind it.
	var s4 uint64
	sh := blocked(func() { s4 = l.lockShared(1000, 2000) })
	mustBlock("an overlapping shared hold behind a waiting exclusive", sh)
	l.unlock(s1)
	mustBlock("the exclusive hold with one fast holder left", ex)
	l.unlock(s2)
	mustRun("the exclusive hold", ex)
	mustBlock("an overlapping shared hold behind a held exclusive", sh)
	var x2 uint64
	mustRun("a non-overlapping exclusive hold", blocked(func() { x2 = l.lockExcl(4096, 4608) }))
	l.unlock(x1)
	mustRun("the overlapping shared hold", sh)
	for _, id := range []uint64{s3, s4, x2} {
		l.unlock(id)
	}
	if l.excl.Load() != 0 || l.fast.Load() != 0 || len(l.held) != 0 {
		t.Fatalf("lock not empty after every unlock: excl %d fast %d held %v", l.excl.Load(), l.fast.Load(), l.held)
	}
	if l.lockShared(0, 1) != fastToken {
		t.Fatal("fast path not restored")
	}
}

// TestNbdshUnaligned has libnbd, told not to ask for block sizes nor to
// check alignment, write and read random unaligned ranges.
func TestNbdshUnaligned(t *testing.T) {
	if _, err := exec.LookPath("nbdsh"); err != nil {
		t.Skip("nbdsh (python3-libnbd) is not installed: run `make deps`; skipping the libnbd unaligned I/O test")
	}
	const size = 1 << 20
	dev := &sectorDev{memDev: newMemDev("libnbd", size)}
	s := startServer(t, []Export{{Name: "d", Dev: dev}})
	for _, structured := range []bool{true, false} {
		t.Run(fmt.Sprint("structured=", structured), func(t *testing.T) {
			script := fmt.Sprintf(`
import random
h.set_strict_mode(0)
h.set_request_block_size(False)
h.set_request_structured_replies(%s)
h.connect_uri(%q)
assert h.get_structured_replies_negotiated() == %s
size = h.get_size()
model = bytearray(h.pread(size, 0))
random.seed(5)
for i in range(600):
    n = random.choice([1, 2, 7, 100, 511, 512, 513, 1000, 1536, 4097, 70000, 200001])
    off = random.choice([random.randrange(0, size - n), 511, 513 - n %% 2, size - n])
    off = max(0, min(off, size - n))
    k = random.random()
    if k < 0.5:
        buf = random.randbytes(n)
        h.pwrite(buf, off, nbd.CMD_FLAG_FUA if i %% 5 == 0 else 0)
        model[off:off+n] = buf
    elif k < 0.6:
        h.zero(n, off)
        model[off:off+n] = bytes(n)
    else:
        got = h.pread(n, off)
        assert got == model[off:off+n], ("read", i, off, n)
assert h.pread(size, 0) == model
h.shutdown()
print("ok", h.get_structured_replies_negotiated())
`, pyBool(structured), URI(s.addr, "d"), pyBool(structured))
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "nbdsh", "-c", script)
			cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "ok") {
				t.Fatalf("nbdsh: %v\n%s", err, out)
			}
		})
	}
	if u := dev.unaligned.Load(); u != 0 {
		t.Fatalf("%d unaligned calls reached the device", u)
	}
}

func pyBool(b bool) string {
	if b {
		return "True"
	}
	return "False"
}
