package nbd

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"snaplab/sim/block"
)

// conn is one client connection: one goroutine per admitted request, one
// of which at a time reads the next request; replies are serialised
// through a queue that the request goroutines write in turn.
type conn struct {
	s        *Server
	nc       net.Conn
	id       uint64
	log      *slog.Logger
	stopping atomic.Bool
	stopped  chan struct{} // closed by stop
	stopOnce sync.Once
}

func newConn(s *Server, nc net.Conn, id uint64) *conn {
	return &conn{s: s, nc: nc, id: id, stopped: make(chan struct{}),
		log: s.log.With("conn", id, "remote", nc.RemoteAddr().String())}
}

// stop makes the reader stop at its next read or wait for budget;
// in-flight work drains.
func (c *conn) stop() {
	c.stopping.Store(true)
	c.stopOnce.Do(func() { close(c.stopped) })
	c.nc.SetReadDeadline(time.Unix(1, 0))
}

// quiet reports read errors that are a normal end of a connection.
func quiet(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, syscall.ECONNRESET)
}

func (c *conn) serve() {
	defer c.nc.Close()
	if c.s.handshakeTimeout > 0 {
		c.nc.SetDeadline(time.Now().Add(c.s.handshakeTimeout))
	}
	if c.stopping.Load() {
		return
	}
	br := bufio.NewReaderSize(c.nc, 64<<10)
	sess, tc, err := c.s.negotiateConn(c.nc, br, bufio.NewWriterSize(c.nc, 4<<10))
	if tc != nil { // NBD_OPT_STARTTLS: br reads TLS now, replies must go through it too
		defer tc.Close() // close_notify, then the deferred c.nc.Close closes the socket
		c.s.mu.Lock()    // Shutdown reads c.nc
		c.nc = serverTLSConn{Conn: tc, raw: c.nc}
		c.s.mu.Unlock()
	}
	switch {
	case errors.Is(err, errAbort):
		c.log.Debug("nbd: client aborted negotiation")
		return
	case err != nil && c.stopping.Load():
		c.log.Debug("nbd: negotiation cut by shutdown", "err", err)
		return
	case err != nil:
		c.log.Warn("nbd: negotiation failed, closing", "err", err)
		return
	}
	defer c.s.closeHandle(sess.exp) // transmit returns after the last request
	c.nc.SetDeadline(time.Time{})
	if c.stopping.Load() {
		return
	}
	c.log = c.log.With("export", sess.name)
	c.log.Debug("nbd: transmission", "structured", sess.sr, "meta", sess.meta, "blocksizes", sess.blockSizes)
	c.transmit(sess, br)
}

// reply is one complete reply (simple, or all chunks of a structured one).
type reply struct {
	parts [][]byte
	buf   *[]byte // pooled buffer to return after writing
	cost  int64   // what the request was charged, released once written
}

// transmit serves requests leader/follower style, as nbdkit's threads do:
// the goroutine holding the reader role reads one request, hands the role
// to another goroutine and serves the request itself, so a request never
// waits for another goroutine to be scheduled before it runs. The
// goroutines are kept for the connection's life (an idle one waits for the
// reader role; a new one starts only when none is idle), so a request does
// not pay for a fresh goroutine's stack growing through the device's call
// chain: that was an eighth of the server's time on 4 KiB requests.
//
// The reader admits each request against the connection's and the
// server's budgets (budget.go) before it reads the request's payload, and
// while they are spent it reads nothing more, so the client's socket
// pushes back. What a request was charged is released once its reply has
// been written to the socket.
func (c *conn) transmit(sess *session, br *bufio.Reader) {
	lk := sess.exp.locks
	if lk == nil { // a session made without AddExport
		lk = newRangeLock()
	}
	t := &transmission{c: c, sess: sess, dev: sess.exp.Dev, lk: lk, br: br,
		wake: make(chan struct{}, 1), gone: make(chan struct{}), readerDone: make(chan struct{})}
	t.workers.Add(1)
	if sess.exp.Serial {
		t.hold = true
		if n, ok := t.dev.(WaitNotifier); ok {
			n.NotifyWait(t.goConcurrent)
		}
		go t.serial()
	} else {
		go t.worker()
	}
	<-t.readerDone
	t.wg.Wait()
	t.workers.Wait()
	if t.disc != nil {
		c.s.completed(*t.disc, 0)
	}
	// Every reply has been written (or dropped on a broken connection):
	// each request's goroutine returned from send before wg.Done, and the
	// sender that found the queue idle wrote until it was empty.
}

type transmission struct {
	c    *conn
	sess *session
	dev  block.Device // the export's device, or this connection's handle on it
	lk   *rangeLock   // orders read-modify-writes against other writes
	wg   sync.WaitGroup

	// Reader role: used only by the goroutine holding readMu.
	readMu     sync.Mutex
	br         *bufio.Reader
	hdr        [requestSize]byte
	disc       *Request
	readerDone chan struct{} // closed when reading has stopped
	stopped    bool          // reading has stopped: workers return
	idle       atomic.Int32  // workers waiting for the reader role
	workers    sync.WaitGroup

	// Budget state, guarded by Server.bmu (budget.go).
	reqs     int    // requests admitted and not yet released
	bytes    int64  // their cost
	srvBytes int64  // the part of bytes granted by the server budget
	ftag     uint64 // finish tag of the last server grant
	wcost    int64  // waiting for the server budget: cost,
	wstart   uint64 // start tag,
	wseq     uint64 // arrival order,
	granted  bool   // and whether it was granted
	wake     chan struct{}

	// Broken connection: set once, when the client went away without
	// NBD_CMD_DISC or a reply could not be written. Requests not yet on the
	// device are dropped, budget waits end, replies are discarded.
	goneFlag atomic.Bool
	gone     chan struct{}
	goneOnce sync.Once

	// Output queue, written by whichever sender finds nobody writing
	// (flat combining: no writer goroutine, no hand-off per reply, and
	// replies queued meanwhile go out in the same writev).
	mu      sync.Mutex
	queue   []reply
	spare   []reply
	writing bool
	broken  bool
	// Export.Serial: replies are queued and written by flush, until the
	// connection turns concurrent (goConcurrent).
	hold       bool
	heldCost   int64
	concurrent atomic.Bool
	bufs       net.Buffers
}

func (t *transmission) isGone() bool { return t.goneFlag.Load() }

// markGone breaks the connection: queued work is dropped and the socket
// closed, which also ends a reply write blocked on a client that stopped
// reading.
func (t *transmission) markGone() {
	t.goneOnce.Do(func() {
		t.goneFlag.Store(true)
		close(t.gone)
		t.mu.Lock()
		t.broken = true
		t.mu.Unlock()
		t.c.nc.Close()
	})
}

// worker takes the reader role, reads a request, passes the role on and
// serves the request, until reading stops.
func (t *transmission) worker() {
	defer t.workers.Done()
	t.work()
}

func (t *transmission) work() {
	for {
		t.idle.Add(1)
		t.readMu.Lock()
		t.idle.Add(-1)
		if t.stopped {
			t.readMu.Unlock()
			return
		}
		r, req, payload, cost, ok := t.lead()
		if !ok {
			t.stopped = true
			close(t.readerDone)
			t.readMu.Unlock()
			return
		}
		if t.idle.Load() == 0 {
			t.workers.Add(1)
			go t.worker()
		}
		t.readMu.Unlock()
		t.do(r, req, payload, cost)
	}
}

// Serial batches (Export.Serial): replies are written when this many are
// waiting, or this many bytes of requests' cost, or no request is buffered.
const (
	serialBatch     = 16
	serialBatchCost = 1 << 20
)

// serial serves the connection's requests in order on one goroutine
// (Export.Serial), holding replies back until the batch is written.
// Held replies keep their requests' cost charged, at most about
// serialBatchCost per connection, so the budget they hold cannot be what
// the next admission waits for.
//
// A request that is about to wait in its device (a suspended device; the
// device says so through WaitNotifier) turns the connection concurrent for
// the rest of its life (goConcurrent): the held replies are written,
// another goroutine takes over reading, and this one, once its request is
// done, becomes one of the workers. So later requests still reach the
// device while one waits, as they reach a suspended dm device's queue.
func (t *transmission) serial() {
	defer t.workers.Done()
	t.readMu.Lock() // the reader role, until reading stops or goConcurrent
	for !t.concurrent.Load() {
		if t.br.Buffered() < requestSize {
			t.flush() // the next read may wait for the client
		}
		r, req, payload, cost, ok := t.lead()
		if !ok {
			t.flush()
			t.stopped = true
			close(t.readerDone)
			t.readMu.Unlock()
			return
		}
		t.do(r, req, payload, cost)
		if t.concurrent.Load() {
			break
		}
		t.mu.Lock()
		full := len(t.queue) >= serialBatch || t.heldCost >= serialBatchCost
		t.mu.Unlock()
		if full {
			t.flush()
		}
	}
	t.work()
}

// WaitNotifier is a device (or a connection's opened handle) that can tell
// when a call is about to wait for something outside it (a suspended
// device's resume). NotifyWait registers fn, which the device calls on the
// calling goroutine right before such a wait; calls that complete at once
// do not call it.
type WaitNotifier interface {
	NotifyWait(fn func())
}

// goConcurrent turns a serial connection concurrent (see serial). It runs
// on the goroutine of the request about to wait; in serial mode that is the
// reader, which holds readMu.
func (t *transmission) goConcurrent() {
	if t.concurrent.Load() {
		return
	}
	t.concurrent.Store(true)
	t.mu.Lock()
	t.hold = false
	t.mu.Unlock()
	t.send(reply{}) // what was held
	t.workers.Add(1)
	go t.worker()
	t.readMu.Unlock()
}

// flush writes the replies held back (Export.Serial).
func (t *transmission) flush() {
	t.mu.Lock()
	if len(t.queue) == 0 {
		t.mu.Unlock()
		return
	}
	t.hold = false
	t.mu.Unlock()
	t.send(reply{})
	t.mu.Lock()
	t.hold = !t.concurrent.Load()
	t.heldCost = 0
	t.mu.Unlock()
}

// lead holds the reader role until it has a request to serve; ok is false
// when reading has stopped.
func (t *transmission) lead() (r Request, req request, payload *[]byte, cost int64, ok bool) {
	for {
		r, req, ok = t.readHeader()
		if !ok {
			return
		}
		cost = 0
		if req.cmd != CmdDisc {
			cost = t.sess.cost(req)
			if !t.admit(cost) {
				if t.isGone() {
					t.c.log.Debug("nbd: connection broke while waiting for budget", "handle", req.handle)
				}
				return r, req, nil, 0, false
			}
		}
		payload, ok = t.readPayload(req)
		if !ok {
			t.release(cost, 1)
			return r, req, nil, 0, false
		}
		t.c.s.arrived(r)
		if req.cmd == CmdDisc {
			t.disc = &r
			return r, req, nil, 0, false
		}
		t.wg.Add(1)
		if errno, msg := t.sess.check(req); errno != 0 {
			putBuf(payload)
			t.c.log.Debug("nbd: request refused", "cmd", req.cmd, "handle", req.handle,
				"offset", req.offset, "length", req.length, "errno", errno, "msg", msg)
			t.finish(r, req, cost, errno, msg, reply{})
			continue
		}
		return r, req, payload, cost, true
	}
}

// readHeader reads the next request header; ok is false when reading must
// stop (end of stream, a protocol violation, shutdown). A client that ends
// the stream without NBD_CMD_DISC breaks the connection.
func (t *transmission) readHeader() (r Request, req request, ok bool) {
	c, br := t.c, t.br
	if _, err := io.ReadFull(br, t.hdr[:]); err != nil {
		switch {
		case c.stopping.Load() && errors.Is(err, os.ErrDeadlineExceeded):
			return r, req, false // Shutdown: drain, do not cancel
		case errors.Is(err, io.ErrUnexpectedEOF):
			c.log.Warn("nbd: client vanished inside a request header, closing", "err", err)
		case !quiet(err):
			c.log.Warn("nbd: reading request, closing", "err", err)
		}
		t.markGone()
		return r, req, false
	}
	req, err := parseRequest(t.hdr[:])
	if err != nil {
		c.log.Warn("nbd: malformed request, closing", "err", err)
		return r, req, false
	}
	r = Request{Export: t.sess.name, Conn: c.id, Handle: req.handle, Command: req.cmd,
		Flags: req.flags, Offset: req.offset, Length: req.length}
	return r, req, true
}

// readPayload reads a WRITE's payload; one over MaxPayload is skipped (the
// request is refused). ok is false, and the connection broken, when the
// client vanished inside it.
func (t *transmission) readPayload(req request) (payload *[]byte, ok bool) {
	if req.cmd != CmdWrite {
		return nil, true
	}
	var err error
	if req.length <= MaxPayload {
		payload = getBuf(int(req.length))
		_, err = io.ReadFull(t.br, *payload)
	} else {
		_, err = io.CopyN(io.Discard, t.br, int64(req.length))
	}
	if err != nil {
		putBuf(payload)
		if !t.c.stopping.Load() {
			t.c.log.Warn("nbd: client vanished inside a write payload, closing",
				"handle", req.handle, "offset", req.offset, "length", req.length, "err", err)
		}
		t.markGone()
		return nil, false
	}
	return payload, true
}

// finish reports completion and queues the reply: rp on success, or an
// error reply for errno.
func (t *transmission) finish(r Request, req request, cost int64, errno syscall.Errno, msg string, rp reply) {
	t.c.s.completed(r, errno)
	if errno != 0 {
		if rp.buf != nil {
			putBuf(rp.buf)
		}
		if t.sess.sr {
			rp = reply{parts: [][]byte{appendErrorChunk(nil, req.handle, errno, msg)}}
		} else {
			rp = reply{parts: [][]byte{appendSimpleReply(make([]byte, 0, simpleReplySize), errno, req.handle)}}
		}
	} else if rp.parts == nil {
		rp = reply{parts: [][]byte{appendSimpleReply(make([]byte, 0, simpleReplySize), 0, req.handle)}}
	}
	rp.cost = cost
	t.send(rp)
	t.wg.Done()
}

// drop ends a request of a broken connection without running it.
func (t *transmission) drop(r Request, payload *[]byte, cost int64) {
	putBuf(payload)
	t.c.s.completed(r, syscall.ECONNRESET)
	t.release(cost, 1)
	t.wg.Done()
}

// send queues rp and, unless another sender is writing, writes the queue
// until it is empty. What each reply's request was charged is released
// once the reply is written, or dropped on a broken connection.
func (t *transmission) send(rp reply) {
	t.mu.Lock()
	if t.broken {
		var held []reply
		if !t.writing { // else the writer drops them
			held, t.queue = t.queue, nil // replies held back (Export.Serial) are dropped too
		}
		t.mu.Unlock()
		if rp.parts != nil { // not flush's empty reply
			held = append(held, rp)
		}
		var cost int64
		for _, r := range held {
			putBuf(r.buf)
			cost += r.cost
		}
		if len(held) > 0 {
			t.release(cost, len(held))
		}
		return
	}
	if rp.parts != nil {
		t.queue = append(t.queue, rp)
		t.heldCost += rp.cost
	}
	if t.writing || t.hold {
		t.mu.Unlock()
		return
	}
	t.writing = true
	for len(t.queue) > 0 {
		batch := t.queue
		t.queue = t.spare[:0]
		broken := t.broken
		t.mu.Unlock()

		if !broken {
			for _, r := range batch {
				t.bufs = append(t.bufs, r.parts...)
			}
			v := t.bufs
			_, err := v.WriteTo(t.c.nc)
			clear(t.bufs)
			t.bufs = t.bufs[:0]
			if err != nil {
				if !quiet(err) && !errors.Is(err, syscall.EPIPE) {
					t.c.log.Warn("nbd: writing reply, closing", "err", err)
				}
				t.markGone()
			}
		}
		var cost int64
		for _, r := range batch {
			putBuf(r.buf)
			cost += r.cost
		}
		t.release(cost, len(batch))
		clear(batch)

		t.mu.Lock()
		t.spare = batch[:0]
	}
	t.writing = false
	t.mu.Unlock()
}

// Buffer pool: power-of-two size classes from 4 KiB to MaxPayload.
const minClass = 12

var pools [26 - minClass + 1]sync.Pool

func class(n int) int {
	c := 0
	for (1 << (minClass + c)) < n {
		c++
	}
	return c
}

func getBuf(n int) *[]byte {
	c := class(n)
	if v := pools[c].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(minClass+c))
	return &b
}

func putBuf(b *[]byte) {
	if b == nil {
		return
	}
	pools[class(cap(*b))].Put(b)
}
