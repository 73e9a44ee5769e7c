package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// testServer runs a Server on a unix socket in a short temp dir.
type testServer struct {
	*Server
	addr net.Addr
	dir  string
}

func startServer(t testing.TB, exports []Export, opts ...Option) *testServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbdt")
	if err != nil {
		t.Fatal(err)
	}
	l, err := ListenUnix(filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(opts...)
	for _, e := range exports {
		if err := s.AddExport(e); err != nil {
			t.Fatal(err)
		}
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		os.RemoveAll(dir)
	})
	return &testServer{Server: s, addr: l.Addr(), dir: dir}
}

// rawClient speaks the protocol byte by byte, for negative tests.
type rawClient struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t testing.TB, addr net.Addr) *rawClient {
	t.Helper()
	c, err := net.Dial(addr.Network(), addr.String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, c: c, r: bufio.NewReader(c)}
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.c.Write(b); err != nil {
		c.t.Fatalf("client write: %v", err)
	}
}

func (c *rawClient) read(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.r, b); err != nil {
		c.t.Fatalf("client read %d bytes: %v", n, err)
	}
	return b
}

// closed asserts that the server closed the connection.
func (c *rawClient) closed() {
	c.t.Helper()
	b, err := io.ReadAll(c.r)
	// A close with unread client bytes is a reset: still closed by the server.
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		c.t.Fatalf("want server to close, got %v after %d bytes", err, len(b))
	}
}

// greet reads the greeting and sends client flags.
func (c *rawClient) greet(clientFlags uint32) {
	c.t.Helper()
	g := c.read(18)
	if binary.BigEndian.Uint64(g) != magicNBD || binary.BigEndian.Uint64(g[8:]) != magicIHaveOpt {
		c.t.Fatalf("bad greeting % x", g)
	}
	if f := binary.BigEndian.Uint16(g[16:]); f != flagFixedNewstyle|flagNoZeroes {
		c.t.Fatalf("handshake flags 0x%x", f)
	}
	c.write(binary.BigEndian.AppendUint32(nil, clientFlags))
}

func (c *rawClient) sendOpt(opt uint32, data []byte) {
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *rawClient) readOptReply() optReply {
	c.t.Helper()
	h := c.read(20)
	if m := binary.BigEndian.Uint64(h); m != magicOptReply {
		c.t.Fatalf("option reply magic 0x%x", m)
	}
	n := binary.BigEndian.Uint32(h[16:])
	return optReply{binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:]), c.read(int(n))}
}

// readUntilAck collects replies up to the final one (ACK or an error).
func (c *rawClient) readUntilAck() []optReply {
	c.t.Helper()
	var rs []optReply
	for {
		r := c.readOptReply()
		rs = append(rs, r)
		if r.typ == repAck || r.typ&repErrBit != 0 {
			return rs
		}
	}
}

func infoData(name string, infos ...uint16) []byte {
	d := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	d = append(d, name...)
	d = binary.BigEndian.AppendUint16(d, uint16(len(infos)))
	for _, i := range infos {
		d = binary.BigEndian.AppendUint16(d, i)
	}
	return d
}

func metaData(name string, queries ...string) []byte {
	d := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	d = append(d, name...)
	d = binary.BigEndian.AppendUint32(d, uint32(len(queries)))
	for _, q := range queries {
		d = binary.BigEndian.AppendUint32(d, uint32(len(q)))
		d = append(d, q...)
	}
	return d
}

type goOpts struct {
	sr, meta, blockSize bool
}

// open negotiates the export with NBD_OPT_GO and returns its size and
// transmission flags.
func (c *rawClient) open(name string, o goOpts) (uint64, uint16) {
	c.t.Helper()
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	if o.sr {
		c.sendOpt(optStructuredReply, nil)
		if r := c.readOptReply(); r.typ != repAck {
			c.t.Fatalf("STRUCTURED_REPLY: reply 0x%x %q", r.typ, r.data)
		}
	}
	if o.meta {
		c.sendOpt(optSetMetaContext, metaData(name, metaAllocation))
		rs := c.readUntilAck()
		if len(rs) != 2 || rs[0].typ != repMetaContext {
			c.t.Fatalf("SET_META_CONTEXT: %+v", rs)
		}
	}
	var infos []uint16
	if o.blockSize {
		infos = append(infos, infoBlockSize)
	}
	c.sendOpt(optGo, infoData(name, infos...))
	var size uint64
	var flags uint16
	for _, r := range c.readUntilAck() {
		if r.typ&repErrBit != 0 {
			c.t.Fatalf("GO %q: error 0x%x %q", name, r.typ, r.data)
		}
		if r.typ == repInfo && binary.BigEndian.Uint16(r.data) == infoExport {
			size = binary.BigEndian.Uint64(r.data[2:])
			flags = binary.BigEndian.Uint16(r.data[10:])
		}
	}
	return size, flags
}

func (c *rawClient) send(flags uint16, cmd Command, handle, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, uint16(cmd))
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	c.write(append(b, payload...))
}

// readSimple reads a simple reply header.
func (c *rawClient) readSimple() (errno uint32, handle uint64) {
	c.t.Helper()
	h := c.read(16)
	if m := binary.BigEndian.Uint32(h); m != magicSimple {
		c.t.Fatalf("simple reply magic 0x%x", m)
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

type chunk struct {
	flags, typ uint16
	handle     uint64
	payload    []byte
}

func (c *rawClient) readChunk() chunk {
	c.t.Helper()
	h := c.read(20)
	if m := binary.BigEndian.Uint32(h); m != magicStructured {
		c.t.Fatalf("structured reply magic 0x%x", m)
	}
	return chunk{binary.BigEndian.Uint16(h[4:]), binary.BigEndian.Uint16(h[6:]),
		binary.BigEndian.Uint64(h[8:]), c.read(int(binary.BigEndian.Uint32(h[16:])))}
}

// readReply reads one reply in either form: a simple reply, or structured
// chunks up to DONE. It returns the errno and, for reads, the data
// reassembled relative to off (length n).
func (c *rawClient) readReply(off uint64, n int) (errno uint32, handle uint64, data []byte, chunks []chunk) {
	c.t.Helper()
	m, err := c.r.Peek(4)
	if err != nil {
		c.t.Fatalf("reading reply: %v", err)
	}
	if binary.BigEndian.Uint32(m) == magicSimple {
		errno, handle = c.readSimple()
		return errno, handle, nil, nil
	}
	data = make([]byte, n)
	for {
		ch := c.readChunk()
		chunks = append(chunks, ch)
		handle = ch.handle
		switch ch.typ {
		case chunkOffsetData:
			o := binary.BigEndian.Uint64(ch.payload)
			copy(data[o-off:], ch.payload[8:])
		case chunkOffsetHole:
			o := binary.BigEndian.Uint64(ch.payload)
			clear(data[o-off : o-off+uint64(binary.BigEndian.Uint32(ch.payload[8:]))])
		case chunkError:
			errno = binary.BigEndian.Uint32(ch.payload)
		}
		if ch.flags&replyFlagDone != 0 {
			return errno, handle, data, chunks
		}
	}
}
