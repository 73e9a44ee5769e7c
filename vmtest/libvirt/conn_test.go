package libvirt

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/libvirttest"
)

// procedure numbers (remote_protocol.x, qemu_protocol.x) the tests look for.
const (
	procQEMUEventRegister = 4 // QEMU_PROC_CONNECT_DOMAIN_MONITOR_EVENT_REGISTER
	qemuProgram           = 0x20008087
)

// mockDialer dials go-libvirt's libvirttest mock daemon, records the
// (program, procedure) of every call sent, and can be told to fail dials.
// Each dial gets a new mock: the mock numbers its replies itself, from 1,
// as a new client numbers its calls.
type mockDialer struct {
	m        *libvirttest.MockLibvirt
	refuse   atomic.Bool
	dials    atomic.Int32
	mu       sync.Mutex
	sent     [][2]uint32
	lastConn net.Conn
}

func (d *mockDialer) Dial() (net.Conn, error) {
	d.dials.Add(1)
	if d.refuse.Load() {
		return nil, errors.New("connection refused (test)")
	}
	d.mu.Lock()
	if d.dials.Load() > 1 {
		d.m = libvirttest.New()
	}
	m := d.m
	d.mu.Unlock()
	c, err := m.Dial()
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.lastConn = m.Test
	d.mu.Unlock()
	return &spyConn{Conn: c, d: d}, nil
}

func (d *mockDialer) count(prog, proc uint32) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, s := range d.sent {
		if s == [2]uint32{prog, proc} {
			n++
		}
	}
	return n
}

// dropServer closes the mock daemon's end: the daemon died.
func (d *mockDialer) dropServer() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lastConn.Close()
}

type spyConn struct {
	net.Conn
	d *mockDialer
}

func (c *spyConn) Write(p []byte) (int, error) {
	if len(p) >= 16 {
		c.d.mu.Lock()
		c.d.sent = append(c.d.sent, [2]uint32{binary.BigEndian.Uint32(p[4:8]), binary.BigEndian.Uint32(p[12:16])})
		c.d.mu.Unlock()
	}
	return c.Conn.Write(p)
}

func newMock(t *testing.T, timeout time.Duration) (*mockDialer, *conn) {
	t.Helper()
	d := &mockDialer{m: libvirttest.New()}
	c, err := openConn(context.Background(), "test:///mock", dialWith(d), timeout, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	c.retry = 300 * time.Millisecond
	t.Cleanup(c.close)
	return d, c
}

// mockGuest is a Guest on the mock's domain "test".
func mockGuest(t *testing.T, c *conn) *Guest {
	g := &Guest{o: defaultOptions(), c: c, name: "test", slowdown: 1, exited: make(chan struct{})}
	if err := c.do(context.Background(), "lookup", func(l *golibvirt.Libvirt) (err error) {
		g.dom, err = l.DomainLookupByName("test")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return g
}

func TestQMPThroughLibvirt(t *testing.T) {
	d, c := newMock(t, 2*time.Second)
	g := mockGuest(t, c)
	out, err := g.QMP(context.Background(), "query-version", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"major":2`) {
		t.Errorf("query-version returned %s", out)
	}
	d.m.Fail = true
	_, err = g.QMP(context.Background(), "drive-foo", nil)
	if err == nil || !strings.Contains(err.Error(), "QMP drive-foo: CommandNotFound: The command drive-foo has not been found") {
		t.Errorf("a QMP error: got %v", err)
	}
}

// A call the daemon never answers ends at the per-call deadline, naming
// the call (the mock answers no DomainResume).
func TestCallDeadline(t *testing.T) {
	_, c := newMock(t, 300*time.Millisecond)
	g := mockGuest(t, c)
	start := time.Now()
	err := c.do(context.Background(), "resume test", func(l *golibvirt.Libvirt) error { return l.DomainResume(g.dom) })
	if err == nil || !strings.Contains(err.Error(), "resume test: no reply within 300ms") || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("the call returned after %v", el)
	}
	// The caller's deadline, when sooner, wins.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.do(ctx, "resume test", func(l *golibvirt.Libvirt) error { return l.DomainResume(g.dom) }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
}

// The daemon goes away: the connection is made again and the caller's
// subscriptions with it.
func TestReconnectResubscribes(t *testing.T) {
	d, c := newMock(t, 2*time.Second)
	c.retry = 3 * time.Second
	g := mockGuest(t, c)
	subs := 0
	if err := c.subscribe(context.Background(), "subscribe", func(l *golibvirt.Libvirt) error {
		subs++
		_, err := l.SubscribeQEMUEvents(context.Background(), "test")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n := d.count(qemuProgram, procQEMUEventRegister); n != 1 {
		t.Fatalf("event registrations before the drop: %d", n)
	}
	d.dropServer()
	deadline := time.Now().Add(3 * time.Second)
	for c.Redials() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if c.Redials() != 1 || subs != 2 {
		t.Fatalf("after the drop: %d reconnects, %d subscriptions; want 1 and 2", c.Redials(), subs)
	}
	if n := d.count(qemuProgram, procQEMUEventRegister); n != 2 {
		t.Errorf("event registrations after the reconnect: %d, want 2", n)
	}
	if _, err := g.QMP(context.Background(), "query-version", nil); err != nil {
		t.Errorf("a call after the reconnect: %v", err)
	}
}

// The daemon is gone for good: calls fail fast with a LostError saying
// so, instead of waiting forever.
func TestLostDaemonFailsFast(t *testing.T) {
	d, c := newMock(t, 5*time.Second)
	g := mockGuest(t, c)
	d.refuse.Store(true)
	d.dropServer()
	start := time.Now()
	_, err := g.QMP(context.Background(), "query-version", nil)
	var lost *LostError
	if !errors.As(err, &lost) {
		t.Fatalf("got %v, want a LostError", err)
	}
	if !strings.Contains(err.Error(), "connection to the daemon lost (did libvirtd die?)") || !strings.Contains(err.Error(), "connection refused (test)") {
		t.Errorf("message: %v", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("failing took %v", el)
	}
	if d.dials.Load() < 2 {
		t.Errorf("no reconnect was tried (%d dials)", d.dials.Load())
	}
	// Kill still returns (it cannot destroy the domain: it says why).
	g.dom.Name = "test"
	if err := g.kill(); err == nil || !errors.As(err, &lost) {
		t.Errorf("kill with the daemon gone: %v", err)
	}
}

// A connection that cannot be made at all is an error naming the URI.
func TestConnectRefused(t *testing.T) {
	d := &mockDialer{m: libvirttest.New()}
	d.refuse.Store(true)
	_, err := openConn(context.Background(), "test:///mock", dialWith(d), time.Second, t.Logf)
	if err == nil || !strings.Contains(err.Error(), "libvirt test:///mock: connect: ") {
		t.Fatalf("got %v", err)
	}
}
