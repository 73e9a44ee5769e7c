// Package nbdclient is a small NBD client for snaplab's soak and tests: the
// fixed-newstyle handshake, NBD_OPT_GO (or the old NBD_OPT_EXPORT_NAME) and
// simple replies, with any number of requests in flight from concurrent
// goroutines.
//
// Contract:
//
//   - Dial negotiates one export. With BlockSizes (the default) it asks for
//     NBD_INFO_BLOCK_SIZE and must then send requests aligned to MinBlock;
//     without it the client negotiates nothing, as plain clients do, and may
//     send byte-granular requests.
//   - ReadAt, WriteAt and Flush are safe for concurrent use; each waits for
//     its own reply. Send queues a request without waiting (a flood), and
//     the reply is consumed and dropped by the reader.
//   - A server error reply is returned as an *Error carrying the errno. A
//     broken connection fails every waiting call with the cause.
//   - Close sends NBD_CMD_DISC and closes; Abort closes the socket at once,
//     as a crashed client would.
package nbdclient

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

const (
	magicNBD      = 0x4e42444d41474943
	magicIHaveOpt = 0x49484156454F5054
	magicOptReply = 0x3e889045565a9
	magicRequest  = 0x25609513
	magicSimple   = 0x67446698

	optExportName = 1
	optGo         = 7
	repAck        = 1
	repInfo       = 3
	repErrBit     = 1 << 31
	infoExport    = 0
	infoBlockSize = 3

	cmdRead  = 0
	cmdWrite = 1
	cmdDisc  = 2
	cmdFlush = 3
	flagFUA  = 1
)

// Options configure Dial.
type Options struct {
	// NoBlockSizes negotiates no block sizes (byte-granular requests).
	NoBlockSizes bool
	// ExportName uses NBD_OPT_EXPORT_NAME instead of NBD_OPT_GO.
	ExportName bool
	// Stalled leaves replies unread until Resume (or Abort), as a client
	// that floods a server without reading its answers does.
	Stalled bool
}

// Error is an error reply from the server.
type Error struct {
	Op    string
	Off   int64
	Len   int
	Errno syscall.Errno
}

func (e *Error) Error() string {
	return fmt.Sprintf("nbd %s at offset %d length %d: %v", e.Op, e.Off, e.Len, e.Errno)
}

// Unwrap lets errors.Is match the errno.
func (e *Error) Unwrap() error { return e.Errno }

// Client is one connection to one export.
type Client struct {
	nc     net.Conn
	Export string
	Size   int64
	// Block sizes the server advertised (0 when not negotiated).
	MinBlock, PrefBlock, MaxBlock uint32

	wmu sync.Mutex // request writes
	bw  *bufio.Writer

	mu      sync.Mutex
	next    uint64
	pending map[uint64]*call
	err     error // set once the connection broke
	done    chan struct{}
	br      *bufio.Reader
	once    sync.Once // starts the reader
}

type call struct {
	op   string
	off  int64
	buf  []byte // read destination (nil: discard the data)
	n    int    // read length
	errc chan error
}

// Dial connects to addr ("unix:/path", a path with a slash, or host:port)
// and negotiates export.
func Dial(ctx context.Context, addr, export string, o Options) (*Client, error) {
	network := "tcp"
	if len(addr) > 5 && addr[:5] == "unix:" {
		network, addr = "unix", addr[5:]
	} else {
		for _, ch := range addr {
			if ch == '/' {
				network = "unix"
				break
			}
		}
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	c := &Client{nc: nc, Export: export, bw: bufio.NewWriterSize(nc, 256<<10), pending: map[uint64]*call{}, done: make(chan struct{})}
	br := bufio.NewReaderSize(nc, 256<<10)
	if err := c.handshake(br, o); err != nil {
		nc.Close()
		return nil, fmt.Errorf("nbd %s export %q: %w", addr, export, err)
	}
	nc.SetDeadline(time.Time{})
	c.br = br
	if !o.Stalled {
		c.Resume()
	}
	return c, nil
}

func (c *Client) handshake(br *bufio.Reader, o Options) error {
	var hello [18]byte
	if _, err := io.ReadFull(br, hello[:]); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hello[0:]) != magicNBD || binary.BigEndian.Uint64(hello[8:]) != magicIHaveOpt {
		return errors.New("not a newstyle NBD server")
	}
	noZeroes := binary.BigEndian.Uint16(hello[16:])&2 != 0
	cflags := uint32(1)
	if noZeroes {
		cflags |= 2
	}
	b := binary.BigEndian.AppendUint32(nil, cflags)
	if o.ExportName {
		b = appendOpt(b, optExportName, []byte(c.Export))
		if _, err := c.nc.Write(b); err != nil {
			return err
		}
		var r [10]byte
		if _, err := io.ReadFull(br, r[:]); err != nil {
			return fmt.Errorf("export %q refused (connection closed): %w", c.Export, err)
		}
		c.Size = int64(binary.BigEndian.Uint64(r[0:]))
		if !noZeroes {
			if _, err := io.CopyN(io.Discard, br, 124); err != nil {
				return err
			}
		}
		return nil
	}
	data := binary.BigEndian.AppendUint32(nil, uint32(len(c.Export)))
	data = append(data, c.Export...)
	if o.NoBlockSizes {
		data = binary.BigEndian.AppendUint16(data, 0)
	} else {
		data = binary.BigEndian.AppendUint16(data, 1)
		data = binary.BigEndian.AppendUint16(data, infoBlockSize)
	}
	b = appendOpt(b, optGo, data)
	if _, err := c.nc.Write(b); err != nil {
		return err
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return fmt.Errorf("option reply: %w", err)
		}
		if binary.BigEndian.Uint64(h[0:]) != magicOptReply {
			return errors.New("bad option reply magic")
		}
		typ := binary.BigEndian.Uint32(h[12:])
		n := binary.BigEndian.Uint32(h[16:])
		if n > 1<<20 {
			return fmt.Errorf("option reply of %d bytes", n)
		}
		d := make([]byte, n)
		if _, err := io.ReadFull(br, d); err != nil {
			return err
		}
		switch {
		case typ&repErrBit != 0:
			return fmt.Errorf("NBD_OPT_GO refused (0x%x): %s", typ, d)
		case typ == repAck:
			return nil
		case typ == repInfo && len(d) >= 2:
			switch binary.BigEndian.Uint16(d) {
			case infoExport:
				if len(d) >= 12 {
					c.Size = int64(binary.BigEndian.Uint64(d[2:]))
				}
			case infoBlockSize:
				if len(d) >= 14 {
					c.MinBlock = binary.BigEndian.Uint32(d[2:])
					c.PrefBlock = binary.BigEndian.Uint32(d[6:])
					c.MaxBlock = binary.BigEndian.Uint32(d[10:])
				}
			}
		}
	}
}

func appendOpt(b []byte, opt uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// Resume starts reading replies on a Stalled client.
func (c *Client) Resume() { c.once.Do(func() { go c.reader(c.br) }) }

func (c *Client) reader(br *bufio.Reader) {
	var h [16]byte
	var err error
	for {
		if _, err = io.ReadFull(br, h[:]); err != nil {
			break
		}
		if m := binary.BigEndian.Uint32(h[0:]); m != magicSimple {
			err = fmt.Errorf("reply magic 0x%08x (structured replies were not negotiated)", m)
			break
		}
		errno := syscall.Errno(binary.BigEndian.Uint32(h[4:]))
		handle := binary.BigEndian.Uint64(h[8:])
		c.mu.Lock()
		cl := c.pending[handle]
		delete(c.pending, handle)
		c.mu.Unlock()
		if cl == nil {
			err = fmt.Errorf("reply to unknown handle %d", handle)
			break
		}
		if errno == 0 && cl.n > 0 {
			if cl.buf != nil {
				_, err = io.ReadFull(br, cl.buf)
			} else {
				_, err = io.CopyN(io.Discard, br, int64(cl.n))
			}
			if err != nil {
				cl.errc <- err
				break
			}
		}
		if errno != 0 {
			cl.errc <- &Error{Op: cl.op, Off: cl.off, Len: cl.n, Errno: errno}
		} else {
			cl.errc <- nil
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = fmt.Errorf("connection closed: %w", err)
	}
	c.mu.Lock()
	c.err = err
	for h, cl := range c.pending {
		cl.errc <- err
		delete(c.pending, h)
	}
	c.mu.Unlock()
	close(c.done)
}

// start sends one request and returns its reply channel.
func (c *Client) start(cmd, flags uint16, off int64, n int, payload, dst []byte, discard bool) (chan error, error) {
	cl := &call{op: [...]string{"read", "write", "disc", "flush"}[cmd], off: off, buf: dst, errc: make(chan error, 1)}
	if cmd == cmdRead {
		cl.n = n
		if discard {
			cl.buf = nil
		}
	}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.next++
	h := c.next
	if cmd != cmdDisc {
		c.pending[h] = cl
	}
	c.mu.Unlock()
	var hdr [28]byte
	binary.BigEndian.PutUint32(hdr[0:], magicRequest)
	binary.BigEndian.PutUint16(hdr[4:], flags)
	binary.BigEndian.PutUint16(hdr[6:], cmd)
	binary.BigEndian.PutUint64(hdr[8:], h)
	binary.BigEndian.PutUint64(hdr[16:], uint64(off))
	binary.BigEndian.PutUint32(hdr[24:], uint32(n))
	c.wmu.Lock()
	c.bw.Write(hdr[:])
	if payload != nil {
		c.bw.Write(payload)
	}
	err := c.bw.Flush()
	c.wmu.Unlock()
	if err != nil {
		c.mu.Lock()
		delete(c.pending, h)
		c.mu.Unlock()
		return nil, err
	}
	return cl.errc, nil
}

func (c *Client) wait(errc chan error, err error) error {
	if err != nil {
		return err
	}
	return <-errc
}

// ReadAt reads len(p) bytes at off.
func (c *Client) ReadAt(p []byte, off int64) error {
	return c.wait(c.start(cmdRead, 0, off, len(p), nil, p, false))
}

// WriteAt writes p at off, durably when fua is set.
func (c *Client) WriteAt(p []byte, off int64, fua bool) error {
	flags := uint16(0)
	if fua {
		flags = flagFUA
	}
	return c.wait(c.start(cmdWrite, flags, off, len(p), p, nil, false))
}

// Flush asks for every acknowledged write to be made durable.
func (c *Client) Flush() error { return c.wait(c.start(cmdFlush, 0, 0, 0, nil, nil, false)) }

// SendRead queues a read of n bytes at off whose data is dropped; the
// returned channel receives its outcome.
func (c *Client) SendRead(off int64, n int) (<-chan error, error) {
	return c.start(cmdRead, 0, off, n, nil, nil, true)
}

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close sends NBD_CMD_DISC and closes the connection once the server has
// answered every outstanding request.
func (c *Client) Close() error {
	_, err := c.start(cmdDisc, 0, 0, 0, nil, nil, false)
	if err == nil {
		if tc, ok := c.nc.(interface{ CloseWrite() error }); ok {
			tc.CloseWrite()
		}
		<-c.done
	}
	return c.nc.Close()
}

// Abort closes the socket at once, with requests in flight.
func (c *Client) Abort() {
	if tc, ok := c.nc.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.nc.Close()
	c.Resume() // fails the waiters of a stalled client
}
