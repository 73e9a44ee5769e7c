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

// conn is one client connection: a reader goroutine (serve), one goroutine
// per in-flight request (bounded by a semaphore), and a writer goroutine
// that serialises replies.
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
	sess, err := c.s.negotiate(br, bufio.NewWriterSize(c.nc, 4<<10))
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

func (c *conn) transmit(sess *session, br *bufio.Reader) {
	max := c.s.maxInFlight
	t := &transmission{c: c, sess: sess, replies: make(chan reply, max), sem: make(chan struct{}, max)}
	wdone := make(chan struct{})
	go t.writer(wdone)

	var hdr [requestSize]byte
	var disc *Request
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				c.log.Warn("nbd: client vanished inside a request header, closing", "err", err)
			} else if !quiet(err) {
				c.log.Warn("nbd: reading request, closing", "err", err)
			}
			break
		}
		req, err := parseRequest(hdr[:])
		if err != nil {
			c.log.Warn("nbd: malformed request, closing", "err", err)
			break
		}
		r := Request{Export: sess.name, Conn: c.id, Handle: req.handle, Command: req.cmd,
			Flags: req.flags, Offset: req.offset, Length: req.length}
		var payload *[]byte
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
				break
			}
		}
		c.s.arrived(r)
		if req.cmd == CmdDisc {
			disc = &r
			break
		}
		t.sem <- struct{}{}
		t.wg.Add(1)
		if errno, msg := sess.check(req); errno != 0 {
			putBuf(payload)
			c.log.Debug("nbd: request refused", "cmd", req.cmd, "handle", req.handle,
				"offset", req.offset, "length", req.length, "errno", errno, "msg", msg)
			t.finish(r, req, errno, msg, reply{})
			continue
		}
		go t.do(r, req, payload)
	}
	t.wg.Wait()
	if disc != nil {
		c.s.completed(*disc, 0)
	}
	close(t.replies)
	<-wdone
}

type transmission struct {
	c       *conn
	sess    *session
	replies chan reply
	sem     chan struct{}
	wg      sync.WaitGroup
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
	t.replies <- rp // never blocks: capacity equals the in-flight limit
	<-t.sem
	t.wg.Done()
}

func (t *transmission) writer(done chan<- struct{}) {
	defer close(done)
	bw := bufio.NewWriterSize(t.c.nc, 64<<10)
	var werr error
	for rp := range t.replies {
		if werr == nil {
			for _, p := range rp.parts {
				if _, werr = bw.Write(p); werr != nil {
					break
				}
			}
			if werr == nil && len(t.replies) == 0 {
				werr = bw.Flush()
			}
			if werr != nil {
				if !quiet(werr) && !errors.Is(werr, syscall.EPIPE) {
					t.c.log.Warn("nbd: writing reply, closing", "err", werr)
				}
				t.c.nc.Close() // unblocks the reader
			}
		}
		if rp.buf != nil {
			putBuf(rp.buf)
		}
	}
	if werr == nil {
		bw.Flush()
	}
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
