package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"snaplab/sim/block"
)

// openerDev counts its users as a dm device counts opens. I/O must go
// through the handles Open returns; I/O on the device itself is counted
// as a fault, and so is a handle closed while a call on it is running.
type openerDev struct {
	*memDev
	failOpen error
	gate     chan struct{} // when set, handle reads wait for it

	mu            sync.Mutex
	opens, closes int
	handles       []*devHandle
	direct        int // calls on the device itself
	closedBusy    int // handles closed with a call running
	entered       chan struct{}
}

func newOpenerDev(name string) *openerDev {
	return &openerDev{memDev: newMemDev(name, 4<<20), entered: make(chan struct{}, 64)}
}

func (o *openerDev) Open() (block.OpenDevice, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.failOpen != nil {
		return nil, o.failOpen
	}
	o.opens++
	h := &devHandle{o: o, id: o.opens}
	o.handles = append(o.handles, h)
	return h, nil
}

func (o *openerDev) count() (opens, closes, direct, closedBusy int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.opens, o.closes, o.direct, o.closedBusy
}

func (o *openerDev) ReadAt(p []byte, off int64) (int, error) {
	o.mu.Lock()
	o.direct++
	o.mu.Unlock()
	return o.memDev.ReadAt(p, off)
}

func (o *openerDev) WriteAt(p []byte, off int64) (int, error) {
	o.mu.Lock()
	o.direct++
	o.mu.Unlock()
	return o.memDev.WriteAt(p, off)
}

type devHandle struct {
	o      *openerDev
	id     int
	closed atomic.Bool
	busy   atomic.Int64
	ios    atomic.Int64
}

func (h *devHandle) Name() string { return h.o.name }
func (h *devHandle) Size() int64  { return h.o.size }

func (h *devHandle) call(op string, off, n int64, f func() error) error {
	h.busy.Add(1)
	defer h.busy.Add(-1)
	if h.closed.Load() {
		return &block.Error{Dev: h.o.name, Op: op, Off: off, Len: n, Errno: syscall.ENXIO, Err: errors.New("handle closed")}
	}
	h.ios.Add(1)
	return f()
}

func (h *devHandle) ReadAt(p []byte, off int64) (int, error) {
	return len(p), h.call("read", off, int64(len(p)), func() error {
		if h.o.gate != nil {
			h.o.entered <- struct{}{}
			<-h.o.gate
		}
		_, err := h.o.memDev.ReadAt(p, off)
		return err
	})
}

func (h *devHandle) WriteAt(p []byte, off int64) (int, error) {
	return len(p), h.call("write", off, int64(len(p)), func() error {
		_, err := h.o.memDev.WriteAt(p, off)
		return err
	})
}

func (h *devHandle) Flush() error {
	return h.call("flush", 0, 0, h.o.memDev.Flush)
}

func (h *devHandle) Close() error {
	if h.closed.Swap(true) {
		return nil
	}
	h.o.mu.Lock()
	defer h.o.mu.Unlock()
	h.o.closes++
	if h.busy.Load() != 0 {
		h.o.closedBusy++
	}
	return nil
}

// balanced waits until every handle opened has been closed.
func (o *openerDev) balanced(t testing.TB, what string) {
	t.Helper()
	waitFor(t, what+": every opened handle closed", 5*time.Second, func() bool {
		opens, closes, _, _ := o.count()
		return opens == closes
	})
	if _, _, direct, busy := o.count(); direct != 0 || busy != 0 {
		t.Fatalf("%s: %d calls bypassed the handles, %d handles closed with a call running", what, direct, busy)
	}
}

func TestOpenerHandlePerConnection(t *testing.T) {
	dev := newOpenerDev("snap1")
	s := startServer(t, []Export{{Name: "snap1", Dev: dev}})

	// NBD_OPT_INFO does not enter transmission: no open.
	c := dialRaw(t, s.addr)
	c.greet(flagCFixedNewstyle)
	c.sendOpt(optInfo, infoData("snap1"))
	if rs := c.readUntilAck(); rs[len(rs)-1].typ != repAck {
		t.Fatalf("INFO: %+v", rs)
	}
	if opens, _, _, _ := dev.count(); opens != 0 {
		t.Fatalf("INFO opened the device %d times", opens)
	}
	// NBD_OPT_GO opens; the connection's I/O goes to its handle.
	c.sendOpt(optGo, infoData("snap1"))
	c.readUntilAck()
	if opens, closes, _, _ := dev.count(); opens != 1 || closes != 0 {
		t.Fatalf("after GO: %d opens %d closes", opens, closes)
	}
	// A second connection, by NBD_OPT_EXPORT_NAME, has its own handle.
	c2 := dialRaw(t, s.addr)
	c2.openExportName("snap1")
	waitFor(t, "the second connection's open", 5*time.Second, func() bool { o, _, _, _ := dev.count(); return o == 2 })
	data := bytes.Repeat([]byte("open"), 1024)
	c.send(0, CmdWrite, 1, 0, 4096, data)
	if errno, _ := c.readSimple(); errno != 0 {
		t.Fatalf("write: errno %d", errno)
	}
	c2.send(0, CmdRead, 2, 0, 4096, nil)
	if errno, _ := c2.readSimple(); errno != 0 || !bytes.Equal(c2.read(4096), data) {
		t.Fatalf("read through the second handle: errno %d", errno)
	}
	dev.mu.Lock()
	h1, h2 := dev.handles[0], dev.handles[1]
	dev.mu.Unlock()
	if h1.ios.Load() != 1 || h2.ios.Load() != 1 {
		t.Errorf("handle I/O counts %d and %d, want 1 each", h1.ios.Load(), h2.ios.Load())
	}
	// DISC closes one; the other connection is unaffected.
	c.send(0, CmdDisc, 3, 0, 0, nil)
	c.closed()
	waitFor(t, "the handle of the disconnected client closed", 5*time.Second, func() bool { return h1.closed.Load() })
	if h2.closed.Load() {
		t.Fatal("the other connection's handle was closed")
	}
	c2.send(0, CmdFlush, 4, 0, 0, nil)
	if errno, _ := c2.readSimple(); errno != 0 {
		t.Fatalf("flush on the remaining handle: errno %d", errno)
	}
	// An abrupt end closes it too.
	c2.c.Close()
	dev.balanced(t, "after both clients left")
}

// TestOpenerClosedAfterInFlight: a client that vanishes with a request on
// the device has its handle closed only once the request returned.
func TestOpenerClosedAfterInFlight(t *testing.T) {
	dev := newOpenerDev("busy")
	dev.gate = make(chan struct{})
	s := startServer(t, []Export{{Name: "busy", Dev: dev}})
	c := dialRaw(t, s.addr)
	c.open("busy", goOpts{})
	c.send(0, CmdRead, 1, 0, 4096, nil)
	select {
	case <-dev.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the read did not reach the connection's handle")
	}
	c.c.Close()
	time.Sleep(50 * time.Millisecond)
	if _, closes, _, _ := dev.count(); closes != 0 {
		t.Fatal("handle closed while its request was still on the device")
	}
	close(dev.gate)
	dev.balanced(t, "after the request returned")
}

func TestOpenerOpenFails(t *testing.T) {
	dev := newOpenerDev("gone")
	dev.failOpen = &block.Error{Dev: "gone", Op: "open", Errno: syscall.ENXIO, Err: errors.New("device is being removed")}
	s := startServer(t, []Export{{Name: "gone", Dev: dev}})
	c := dialRaw(t, s.addr)
	c.greet(flagCFixedNewstyle)
	c.sendOpt(optGo, infoData("gone"))
	r := c.readOptReply()
	if r.typ != repErrUnknown || !strings.Contains(string(r.data), "device is being removed") || !strings.Contains(string(r.data), "gone") {
		t.Fatalf("GO when Open fails: reply 0x%x %q, want NBD_REP_ERR_UNKNOWN with the error", r.typ, r.data)
	}
	// The negotiation goes on; INFO does not open, so it works.
	c.sendOpt(optInfo, infoData("gone"))
	if rs := c.readUntilAck(); rs[len(rs)-1].typ != repAck {
		t.Fatalf("INFO after a failed GO: %+v", rs)
	}
	e := dialRaw(t, s.addr)
	e.greet(flagCFixedNewstyle)
	e.sendOpt(optExportName, []byte("gone"))
	e.closed()
	if opens, closes, _, _ := dev.count(); opens != 0 || closes != 0 {
		t.Fatalf("%d opens %d closes", opens, closes)
	}
}

// TestOpenerAbruptAndShutdown: however clients leave, and when the server
// shuts down, every handle opened is closed once.
func TestOpenerAbruptAndShutdown(t *testing.T) {
	dev := newOpenerDev("many")
	dir := t.TempDir()
	l, err := Listen(dir + "/s")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer()
	if err := s.AddExport(Export{Name: "many", Dev: dev}); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	ways := []func(c *rawClient){
		func(c *rawClient) { // GO, then gone before reading the reply
			c.greet(flagCFixedNewstyle)
			c.sendOpt(optGo, infoData("many"))
		},
		func(c *rawClient) { // EXPORT_NAME, then gone
			c.greet(flagCFixedNewstyle)
			c.sendOpt(optExportName, []byte("many"))
		},
		func(c *rawClient) { // mid request
			c.open("many", goOpts{})
			c.write(reqBytes(0, CmdWrite, 1, 0, 4096)[:20])
		},
		func(c *rawClient) { // mid payload
			c.open("many", goOpts{})
			c.write(append(reqBytes(0, CmdWrite, 1, 0, 4096), make([]byte, 100)...))
		},
		func(c *rawClient) { // requests in flight, replies unread
			c.open("many", goOpts{sr: true})
			for i := range 20 {
				c.write(reqBytes(0, CmdRead, uint64(i), 0, 1<<20))
			}
		},
		func(c *rawClient) { // garbage
			c.open("many", goOpts{})
			c.write(bytes.Repeat([]byte{0xee}, 28))
		},
	}
	for i, f := range ways {
		t.Run(fmt.Sprint("way ", i), func(t *testing.T) {
			c := dialRaw(t, l.Addr())
			f(c)
			c.c.Close()
			dev.balanced(t, fmt.Sprint("client leaving way ", i))
		})
	}
	// Connections still open at Shutdown.
	var cs []*rawClient
	for range 5 {
		c := dialRaw(t, l.Addr())
		c.open("many", goOpts{})
		cs = append(cs, c)
	}
	waitFor(t, "five handles open", 5*time.Second, func() bool {
		o, cl, _, _ := dev.count()
		return o-cl == 5
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatal(err)
	}
	opens, closes, direct, busy := dev.count()
	if opens != closes || direct != 0 || busy != 0 {
		t.Fatalf("after Shutdown: %d opens %d closes, %d direct calls, %d closed busy", opens, closes, direct, busy)
	}
	for _, c := range cs {
		c.closed()
	}
}
