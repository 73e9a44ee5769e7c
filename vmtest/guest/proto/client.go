package proto

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// ErrClosed is returned by calls on a client whose connection has ended.
var ErrClosed = errors.New("agent connection closed")

// Client is the host side of the agent protocol. It is safe for concurrent
// use; calls are matched to responses by ID.
type Client struct {
	conn io.ReadWriteCloser

	wmu sync.Mutex // serialises writes

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan Response
	err     error // why the connection ended
	ready   *Response

	readyCh chan struct{} // closed on the ready message
	done    chan struct{} // closed when the reader ends

	// MapErr, when set before the first call, turns a transport failure
	// (EOF, reset) into the error callers see, e.g. one naming why the VM
	// went away. It runs once, on the reader goroutine.
	MapErr func(error) error
}

// NewClient starts reading responses from conn.
func NewClient(conn io.ReadWriteCloser) *Client {
	c := &Client{conn: conn, pending: map[uint64]chan Response{},
		readyCh: make(chan struct{}), done: make(chan struct{})}
	go c.read()
	return c
}

func (c *Client) read() {
	r := bufio.NewReaderSize(c.conn, 64<<10)
	var err error
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			resp, derr := DecodeResponse(line)
			if derr != nil {
				err = fmt.Errorf("agent protocol error: %w", derr)
				break
			}
			c.deliver(resp)
		}
		if err != nil {
			break
		}
	}
	if errors.Is(err, io.EOF) {
		err = fmt.Errorf("%w: EOF from the guest", ErrClosed)
	} else if !errors.Is(err, ErrClosed) {
		err = fmt.Errorf("%w: %v", ErrClosed, err)
	}
	c.mu.Lock()
	if c.err == nil {
		if c.MapErr != nil {
			c.mu.Unlock()
			err = c.MapErr(err)
			c.mu.Lock()
		}
		if c.err == nil {
			c.err = err
		}
	}
	c.mu.Unlock()
	close(c.done)
}

func (c *Client) deliver(resp Response) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if resp.ID == 0 {
		if resp.Op == OpReady && c.ready == nil {
			c.ready = &resp
			close(c.readyCh)
		}
		return
	}
	if ch, ok := c.pending[resp.ID]; ok {
		delete(c.pending, resp.ID)
		ch <- resp
	}
}

// Err is why the connection ended, or nil while it is up.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close ends the connection; the agent powers the guest off when it sees
// the host go away.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.err == nil {
		c.err = ErrClosed
	}
	c.mu.Unlock()
	err := c.conn.Close()
	<-c.done
	return err
}

// IsReady reports whether the agent's ready message has arrived.
func (c *Client) IsReady() bool {
	select {
	case <-c.readyCh:
		return true
	default:
		return false
	}
}

// Ready waits for the agent's ready message and returns it.
func (c *Client) Ready(ctx context.Context) (Response, error) {
	select {
	case <-c.readyCh:
		return *c.ready, nil
	case <-c.done:
		select {
		case <-c.readyCh:
			return *c.ready, nil
		default:
		}
		return Response{}, c.Err()
	case <-ctx.Done():
		return Response{}, fmt.Errorf("waiting for the agent's ready message: %w", context.Cause(ctx))
	}
}

// Do sends req (its ID is assigned here) and waits for the response. The
// error is a transport or deadline failure; an operation's errno is in the
// response (see Response.Err).
func (c *Client) Do(ctx context.Context, req Request) (Response, error) {
	ch := make(chan Response, 1)
	c.mu.Lock()
	select {
	case <-c.done:
		c.mu.Unlock()
		return Response{}, c.Err()
	default:
	}
	c.nextID++
	req.ID = c.nextID
	c.pending[req.ID] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, req.ID)
		c.mu.Unlock()
	}

	b, err := json.Marshal(req)
	if err != nil {
		forget()
		return Response{}, fmt.Errorf("encoding %s request: %w", req.Op, err)
	}
	b = append(b, '\n')
	werr := make(chan error, 1)
	go func() {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		_, err := c.conn.Write(b)
		werr <- err
	}()
	for {
		select {
		case err := <-werr:
			if err != nil {
				forget()
				if e := c.Err(); e != nil {
					return Response{}, e
				}
				return Response{}, fmt.Errorf("sending %s request %d: %w", req.Op, req.ID, err)
			}
			werr = nil
		case resp := <-ch:
			return resp, nil
		case <-c.done:
			forget()
			return Response{}, fmt.Errorf("%s request %d: %w", req.Op, req.ID, c.Err())
		case <-ctx.Done():
			forget()
			return Response{}, fmt.Errorf("%s request %d (%s): no answer: %w", req.Op, req.ID, req.Target(), context.Cause(ctx))
		}
	}
}

// call runs req and turns a failed errno into an *OpError.
func (c *Client) call(ctx context.Context, req Request) (Response, error) {
	resp, err := c.Do(ctx, req)
	if err != nil {
		return resp, err
	}
	return resp, resp.Err(&req)
}

// Hello returns the kernel version, uptime and loaded modules.
func (c *Client) Hello(ctx context.Context) (Response, error) {
	return c.call(ctx, Request{Op: OpHello})
}

// Resume is the ready handshake with the agent of a guest restored from a
// saved state: that agent announced readiness long ago, to the host that
// saved the guest, and now waits for requests. Resume sends "resume" with
// the host's wall clock (the agent sets the guest's clock to it) and takes
// the answer as the ready message, so Ready and IsReady work as after a
// boot. It returns that message (Op "ready").
func (c *Client) Resume(ctx context.Context) (Response, error) {
	resp, err := c.call(ctx, Request{Op: OpResume, ClockNS: time.Now().UnixNano()})
	if err != nil {
		return resp, err
	}
	resp.ID, resp.Op = 0, OpReady
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ready != nil {
		return *c.ready, nil
	}
	c.ready = &resp
	close(c.readyCh)
	return resp, nil
}

// Disks lists the guest's virtio disks.
func (c *Client) Disks(ctx context.Context) ([]Disk, error) {
	resp, err := c.call(ctx, Request{Op: OpDisks})
	return resp.Disks, err
}

// ReadReq describes a read. Set Serial or Path.
type ReadReq struct {
	Serial, Path string
	Off, Len     int64
	Direct       bool
	// Pattern, when set, is verified; the verdict is in Response.Verify.
	Pattern    string
	PatternOff *int64
	Head       int   // leading bytes to return
	WaitMS     int64 // how long to wait for the disk to appear
}

// Read reads a range. A mismatch against the pattern is not an error: see
// Response.Verify. A failed read returns an *OpError naming the errno.
func (c *Client) Read(ctx context.Context, r ReadReq) (Response, error) {
	return c.call(ctx, Request{Op: OpRead, Serial: r.Serial, Path: r.Path, Off: r.Off, Len: r.Len,
		Direct: r.Direct, Pattern: r.Pattern, PatternOff: r.PatternOff, Head: r.Head, WaitMS: r.WaitMS})
}

// WriteReq describes a write. Set Serial or Path.
type WriteReq struct {
	Serial, Path string
	Off, Len     int64
	Pattern      string
	PatternOff   *int64
	Direct       bool
	FUA          bool // O_DSYNC
	Fsync        bool // fsync after the write
	WaitMS       int64
	// Handle, for a buffered write: write through the file held under
	// this name, opening it (read-write, no O_DIRECT) if it is not held.
	Handle string
}

// Write writes a pattern to a range.
func (c *Client) Write(ctx context.Context, w WriteReq) (Response, error) {
	return c.call(ctx, Request{Op: OpWrite, Serial: w.Serial, Path: w.Path, Off: w.Off, Len: w.Len,
		Pattern: w.Pattern, PatternOff: w.PatternOff, Direct: w.Direct, FUA: w.FUA, Fsync: w.Fsync, WaitMS: w.WaitMS, Handle: w.Handle})
}

// DiscardReq describes a discard. Set Serial or Path.
type DiscardReq struct {
	Serial, Path string
	Off, Len     int64
	WaitMS       int64 // how long to wait for the disk to appear
}

// Discard is ioctl(BLKDISCARD) on a range of a disk or path, opened for
// writing as the ioctl needs. A failed discard returns an *OpError naming
// the kernel's errno: EOPNOTSUPP from a device without discard support,
// EINVAL for a range that is not 512-byte aligned or passes the device's
// end, EIO, ...
func (c *Client) Discard(ctx context.Context, d DiscardReq) (Response, error) {
	return c.call(ctx, Request{Op: OpDiscard, Serial: d.Serial, Path: d.Path, Off: d.Off, Len: d.Len, WaitMS: d.WaitMS})
}

// FsyncHandle fsyncs the file held under handle, opening it read-write
// on the disk (serial) or path if it is not held yet.
func (c *Client) FsyncHandle(ctx context.Context, serial, path, handle string) (Response, error) {
	return c.call(ctx, Request{Op: OpFsync, Serial: serial, Path: path, Handle: handle})
}

// Sync is sync(2): every device's dirty pages are written back.
func (c *Client) Sync(ctx context.Context) (Response, error) {
	return c.call(ctx, Request{Op: OpSync})
}

// Fsync flushes a disk (serial) or path.
func (c *Client) Fsync(ctx context.Context, serial, path string) (Response, error) {
	return c.call(ctx, Request{Op: OpFsync, Serial: serial, Path: path})
}

// ExecReq describes a program run.
type ExecReq struct {
	Argv      []string
	Env       []string // added to the agent's environment
	Stdin     string
	TimeoutMS int64
}

// Exec runs a program in the guest. A non-zero exit status is not an
// error: see Response.Exit. Failing to start it is (e.g. ENOENT).
func (c *Client) Exec(ctx context.Context, e ExecReq) (Response, error) {
	return c.call(ctx, Request{Op: OpExec, Argv: e.Argv, Env: e.Env, Stdin: e.Stdin, TimeoutMS: e.TimeoutMS})
}

// OpenReq describes an open to hold. Set Serial or Path.
type OpenReq struct {
	Serial, Path string
	Handle       string // the name CloseHandle takes
	WaitMS       int64  // how long to wait for a disk (by serial) to appear
}

// OpenHandle opens a disk or path read-only in the guest and keeps it open
// under the name o.Handle until CloseHandle: the guest kernel counts it as
// an open of the device (dmsetup info's "Open count"). A failed open
// returns an *OpError naming the errno (ENOENT: no such node; ENXIO: a
// node without a device; EEXIST: the handle name is in use).
func (c *Client) OpenHandle(ctx context.Context, o OpenReq) (Response, error) {
	return c.call(ctx, Request{Op: OpOpen, Serial: o.Serial, Path: o.Path, Handle: o.Handle, WaitMS: o.WaitMS})
}

// CloseHandle closes a handle opened by OpenHandle (EBADF if none is open
// under that name).
func (c *Client) CloseHandle(ctx context.Context, handle string) (Response, error) {
	return c.call(ctx, Request{Op: OpClose, Handle: handle})
}

// Kmsg returns the kernel log records with sequence numbers >= cursor, and
// the cursor for the next call.
func (c *Client) Kmsg(ctx context.Context, cursor uint64) ([]KmsgRecord, uint64, error) {
	resp, err := c.call(ctx, Request{Op: OpKmsg, Cursor: cursor})
	return resp.Kmsg, resp.Next, err
}

// Poweroff asks the agent to power the guest off. It returns once the
// agent has acknowledged.
func (c *Client) Poweroff(ctx context.Context) error {
	_, err := c.call(ctx, Request{Op: OpPoweroff})
	return err
}
