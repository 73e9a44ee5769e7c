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
)

// conn is one client connection: one goroutine per in-flight request
// (bounded by a semaphore), one of which at a time reads the next request;
// replies are serialised through a queue that the request goroutines write
// in turn.
type conn struct {
	s        *Server
	nc       net.Conn
	id       uint64
	log      *slog.Logger
	stopping atomic.Bool
}

func newConn(s *Server, nc net.Conn, id uint64) *conn {
	return &conn{s: s, nc: nc, id: id,
		log: s.log.With("conn", id, "remote", nc.RemoteAddr().String())}
}

// stop makes the reader stop at its next read; in-flight work drains.
func (c *conn) stop() {
	c.stopping.Store(true)
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
}

// transmit serves requests leader/follower style, as nbdkit's threads do:
// the goroutine holding the reader role reads one request, hands the role
// to a new goroutine and serves the request itself, so a request never
// waits for another goroutine to be scheduled before it runs.
func (c *conn) transmit(sess *session, br *bufio.Reader) {
	t := &transmission{c: c, sess: sess, br: br, sem: make(chan struct{}, c.s.maxInFlight),
		readerDone: make(chan struct{})}
	go t.lead()
	<-t.readerDone
	t.wg.Wait()
	if t.disc != nil {
		c.s.completed(*t.disc, 0)
	}
	// Every reply has been written (or dropped on a broken connection):
	// each request's goroutine returned from send before wg.Done.
}

// lead holds the reader role until it has a request to serve.
func (t *transmission) lead() {
	for {
		r, req, payload, ok := t.readRequest()
		if !ok {
			close(t.readerDone)
			return
		}
		t.sem <- struct{}{}
		t.wg.Add(1)
		if errno, msg := t.sess.check(req); errno != 0 {
			putBuf(payload)
			t.c.log.Debug("nbd: request refused", "cmd", req.cmd, "handle", req.handle,
				"offset", req.offset, "length", req.length, "errno", errno, "msg", msg)
			t.finish(r, req, errno, msg, reply{})
			continue
		}
		go t.lead()
		t.do(r, req, payload)
		return
	}
}

// readRequest reads the next request and its payload; ok is false when
// reading must stop (end of stream, NBD_CMD_DISC, a protocol violation).
func (t *transmission) readRequest() (r Request, req request, payload *[]byte, ok bool) {
	c, br := t.c, t.br
	if _, err := io.ReadFull(br, t.hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			c.log.Warn("nbd: client vanished inside a request header, closing", "err", err)
		} else if !quiet(err) {
			c.log.Warn("nbd: reading request, closing", "err", err)
		}
		return r, req, nil, false
	}
	req, err := parseRequest(t.hdr[:])
	if err != nil {
		c.log.Warn("nbd: malformed request, closing", "err", err)
		return r, req, nil, false
	}
	r = Request{Export: t.sess.name, Conn: c.id, Handle: req.handle, Command: req.cmd,
		Flags: req.flags, Offset: req.offset, Length: req.length}
	if req.cmd == CmdWrite {
		if req.length <= MaxPayload {
			payload = getBuf(int(req.length))
			_, err = io.ReadFull(br, *payload)
		} else {
			_, err = io.CopyN(io.Discard, br, int64(req.length))
		}
		if err != nil {
			putBuf(payload)
			c.log.Warn("nbd: client vanished inside a write payload, closing",
				"handle", req.handle, "offset", req.offset, "length", req.length, "err", err)
			return r, req, nil, false
		}
	}
	c.s.arrived(r)
	if req.cmd == CmdDisc {
		t.disc = &r
		return r, req, nil, false
	}
	return r, req, payload, true
}

type transmission struct {
	c    *conn
	sess *session
	sem  chan struct{} // in-flight slots
	wg   sync.WaitGroup

	// Reader role: used only by the goroutine holding it.
	br         *bufio.Reader
	hdr        [requestSize]byte
	disc       *Request
	readerDone chan struct{} // closed when reading has stopped

	// Output queue, written by whichever sender finds nobody writing
	// (flat combining: no writer goroutine, no hand-off per reply, and
	// replies queued meanwhile go out in the same writev).
	mu      sync.Mutex
	queue   []reply
	spare   []reply
	writing bool
	broken  bool
	bufs    net.Buffers
}

// finish reports completion and queues the reply: rp on success, or an
// error reply for errno.
func (t *transmission) finish(r Request, req request, errno syscall.Errno, msg string, rp reply) {
	t.c.s.completed(r, errno)
	if errno != 0 {
		if rp.buf != nil {
			putBuf(rp.buf)
		}
		if t.sess.sr {
			rp = reply{parts: [][]byte{appendErrorChunk(nil, req.handle, errno, msg)}}
		} else {
			rp = reply{parts: [][]byte{appendSimpleReply(nil, errno, req.handle)}}
		}
	} else if rp.parts == nil {
		rp = reply{parts: [][]byte{appendSimpleReply(nil, 0, req.handle)}}
	}
	t.send(rp)
	<-t.sem
	t.wg.Done()
}

// send queues rp and, unless another sender is writing, writes the queue
// until it is empty.
func (t *transmission) send(rp reply) {
	t.mu.Lock()
	t.queue = append(t.queue, rp)
	if t.writing {
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
				broken = true
				t.c.nc.Close() // unblocks the reader
			}
		}
		for _, r := range batch {
			putBuf(r.buf)
		}
		clear(batch)

		t.mu.Lock()
		t.broken = t.broken || broken
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
