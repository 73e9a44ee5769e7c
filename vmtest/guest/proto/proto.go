// Package proto is the wire protocol between the host and snaplab's guest
// agent (cmd/snaplab-guest): JSON lines over a virtio-serial port named
// PortName.
//
// Contract:
//   - Every message is one JSON object on one line (no line limit).
//   - The agent speaks first: once the host side of the port is connected
//     it sends an unsolicited Response with ID 0 and Op "ready" carrying
//     the kernel version.
//   - The host sends Requests with a non-zero ID; the agent answers each
//     with exactly one Response carrying the same ID. Requests run
//     concurrently in the agent, so responses may come out of order.
//   - Every Response names an errno ("OK", "EIO", "EINVAL", ...) for the
//     operation; a malformed request is answered with EINVAL and a message
//     naming what is wrong, never by dropping the connection.
//   - When the host closes its side the agent powers the guest off.
//   - A guest restored from a saved state (vmtest/qemu's WithRestore)
//     announced readiness to the host that saved it, not to this one: the
//     host sends "resume" instead of waiting for "ready". The agent sets
//     the guest's wall clock to the host's time it carries and answers as
//     to hello; Client.Resume takes that answer as the ready message.
//
// Client is the host side: typed methods for each operation, matched by ID,
// with a context deadline on every call.
package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"syscall"

	"golang.org/x/sys/unix"
	"snaplab/sim/block"
	"snaplab/sim/pattern"
)

// PortName is the virtio-serial port name the agent listens on.
const PortName = "snaplab.agent"

// Operations.
const (
	OpReady    = "ready"    // agent → host, unsolicited, ID 0
	OpHello    = "hello"    // kernel version, uptime, modules
	OpDisks    = "disks"    // virtio disks and their serials
	OpRead     = "read"     // read a range, verify a pattern, hash it
	OpWrite    = "write"    // write a pattern to a range
	OpDiscard  = "discard"  // ioctl(BLKDISCARD) on a range
	OpFsync    = "fsync"    // fsync a disk, or the file held by a handle
	OpSync     = "sync"     // sync(2): write back every device's dirty pages
	OpExec     = "exec"     // run a program
	OpKmsg     = "kmsg"     // kernel log records since a cursor
	OpOpen     = "open"     // open a disk or path read-only and hold it open, by handle
	OpClose    = "close"    // close a handle opened by open
	OpPoweroff = "poweroff" // answer, then power the guest off
	OpResume   = "resume"   // after a restore: set the wall clock, answer as hello
)

// MaxIOLen bounds a single read or write so a bad request cannot exhaust
// guest memory.
const MaxIOLen = 64 << 20

// MaxHead bounds how many leading bytes a read returns verbatim.
const MaxHead = 4096

// Request is one host → agent message.
type Request struct {
	ID uint64 `json:"id"`
	Op string `json:"op"`

	// Target of read, write, discard and fsync: a virtio disk by serial,
	// or a path (e.g. /dev/mapper/snap1). Exactly one of them.
	Serial string `json:"serial,omitempty"`
	Path   string `json:"path,omitempty"`
	// WaitMS is how long to wait for the disk to appear (hot-plug); 0
	// means the agent's default.
	WaitMS int64 `json:"wait_ms,omitempty"`

	// Off and Len: the byte range of a read, write or discard. A
	// discard's range is the kernel's to check (BLKDISCARD: 512-byte
	// aligned, within the device) and is not bounded by MaxIOLen: it
	// moves no data.
	Off    int64 `json:"off,omitempty"`
	Len    int64 `json:"len,omitempty"`
	Direct bool  `json:"direct,omitempty"` // O_DIRECT with page-aligned buffers
	// Pattern is written by a write and verified by a read (sim/pattern).
	Pattern string `json:"pattern,omitempty"`
	// PatternOff is the pattern offset of the first byte; Off when nil.
	PatternOff *int64 `json:"pattern_off,omitempty"`
	FUA        bool   `json:"fua,omitempty"`   // write: open with O_DSYNC
	Fsync      bool   `json:"fsync,omitempty"` // write: fsync after writing
	Head       int    `json:"head,omitempty"`  // read: return this many leading bytes

	// Exec.
	Argv      []string `json:"argv,omitempty"`
	Env       []string `json:"env,omitempty"`
	Stdin     string   `json:"stdin,omitempty"`
	TimeoutMS int64    `json:"timeout_ms,omitempty"`

	// Kmsg: first sequence number wanted.
	Cursor uint64 `json:"cursor,omitempty"`

	// Open, close: the host's name for the open file (at most
	// MaxHandleLen bytes). The agent holds it open between the two, so
	// the device counts it in its open count.
	//
	// Write (not Direct) and fsync with a handle go through the file held
	// under it, which they open read-write (without O_DIRECT) when the
	// handle is not held yet; it stays open until a close request. So a
	// buffered write's pages stay in the device's page cache, and the
	// error of their write-back reaches the fsync of the same file
	// (errseq).
	Handle string `json:"handle,omitempty"`

	// Resume: the host's wall clock (Unix nanoseconds) when it sent the
	// request; 0 leaves the guest's clock alone.
	ClockNS int64 `json:"clock_ns,omitempty"`
}

// MaxHandleLen bounds a handle name.
const MaxHandleLen = 128

// Disk is a virtio disk as the guest sees it.
type Disk struct {
	Serial string `json:"serial"`
	Name   string `json:"name"` // vda, vdb, ...
	Size   int64  `json:"size"` // bytes
}

// Verdict is the outcome of verifying read data against a pattern.
type Verdict struct {
	OK    bool   `json:"ok"`
	Off   int64  `json:"off,omitempty"` // device offset of the first mismatch
	Want  byte   `json:"want,omitempty"`
	Got   byte   `json:"got,omitempty"`
	Looks string `json:"looks,omitempty"` // "zero" or "unknown"
}

// KmsgRecord is one kernel log record (/dev/kmsg).
type KmsgRecord struct {
	Seq   uint64 `json:"seq"`
	Level int    `json:"level"`
	USec  uint64 `json:"usec"`
	Msg   string `json:"msg"`
}

// Response is one agent → host message.
type Response struct {
	ID        uint64 `json:"id"`
	Op        string `json:"op"`
	Errno     string `json:"errno"`           // "OK" on success
	Error     string `json:"error,omitempty"` // what failed, for humans
	ElapsedUS int64  `json:"elapsed_us"`

	// ready / hello / resume
	Kernel  string   `json:"kernel,omitempty"`
	Uptime  float64  `json:"uptime,omitempty"`
	Modules []string `json:"modules,omitempty"`

	Disks []Disk `json:"disks,omitempty"`

	// read / write / discard
	Device string   `json:"device,omitempty"` // the path operated on
	N      int64    `json:"n,omitempty"`      // bytes transferred
	Phase  string   `json:"phase,omitempty"`  // which step failed: open, write, read, fsync, discard
	SHA256 string   `json:"sha256,omitempty"`
	Head   []byte   `json:"head,omitempty"`
	Verify *Verdict `json:"verify,omitempty"`

	// exec
	Stdout string `json:"stdout,omitempty"`
	Stderr string `json:"stderr,omitempty"`
	Exit   int    `json:"exit,omitempty"`

	// kmsg
	Kmsg []KmsgRecord `json:"kmsg,omitempty"`
	Next uint64       `json:"next,omitempty"`
}

// ErrnoName names an errno as responses carry it: "OK" for 0, the
// block package's names where it has one, else the kernel's symbol.
func ErrnoName(e syscall.Errno) string {
	if s := block.ErrnoName(e); len(s) < 5 || s[:5] != "errno" {
		return s
	}
	if s := unix.ErrnoName(e); s != "" {
		return s
	}
	return fmt.Sprintf("errno%d", int(e))
}

// ParseErrno is the inverse of ErrnoName.
func ParseErrno(name string) (syscall.Errno, error) {
	if name == "OK" {
		return 0, nil
	}
	for e := syscall.Errno(1); e < 256; e++ {
		if ErrnoName(e) == name {
			return e, nil
		}
	}
	var n int
	if _, err := fmt.Sscanf(name, "errno%d", &n); err == nil && n > 0 && fmt.Sprintf("errno%d", n) == name {
		return syscall.Errno(n), nil
	}
	return 0, fmt.Errorf("unknown errno name %q", name)
}

// OpError is a failed agent operation: the guest kernel (or the agent's
// validation) returned Errno.
type OpError struct {
	Op     string
	Device string // path or serial, when the operation had one
	Off    int64
	Len    int64
	Phase  string
	Errno  syscall.Errno
	Msg    string
}

func (e *OpError) Error() string {
	s := "guest " + e.Op
	if e.Device != "" {
		s += fmt.Sprintf(" %s", e.Device)
		if e.Op == OpRead || e.Op == OpWrite || e.Op == OpDiscard {
			s += fmt.Sprintf(" at offset %d length %d", e.Off, e.Len)
		}
	}
	if e.Phase != "" {
		s += " (" + e.Phase + ")"
	}
	s += ": " + ErrnoName(e.Errno)
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	return s
}

// Unwrap lets errors.Is(err, syscall.EIO) match.
func (e *OpError) Unwrap() error { return e.Errno }

// Err is nil when the response reports success, else an *OpError. req
// supplies the device and range for the message and may be nil.
func (r *Response) Err(req *Request) error {
	if r.Errno == "OK" {
		return nil
	}
	en, err := ParseErrno(r.Errno)
	if err != nil {
		en = syscall.EIO
	}
	oe := &OpError{Op: r.Op, Device: r.Device, Phase: r.Phase, Errno: en, Msg: r.Error}
	if req != nil {
		oe.Off, oe.Len = req.Off, req.Len
		if oe.Device == "" {
			oe.Device = req.Target()
		}
	}
	return oe
}

// Target names the request's disk: its serial, or its path.
func (r *Request) Target() string {
	if r.Serial != "" {
		return "serial " + r.Serial
	}
	return r.Path
}

// ErrBadRequest marks a request the agent refuses to run.
var ErrBadRequest = errors.New("bad request")

// Validate checks that a request is well formed for its operation.
func (r *Request) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: request %d (%s): %s", ErrBadRequest, r.ID, r.Op, fmt.Sprintf(format, a...))
	}
	if r.ID == 0 {
		return bad("id must be non-zero")
	}
	needTarget := func() error {
		switch {
		case r.Serial == "" && r.Path == "":
			return bad("needs serial or path")
		case r.Serial != "" && r.Path != "":
			return bad("has both serial %q and path %q", r.Serial, r.Path)
		case r.Path != "" && r.Path[0] != '/':
			return bad("path %q is not absolute", r.Path)
		case r.WaitMS < 0:
			return bad("wait_ms %d is negative", r.WaitMS)
		}
		return nil
	}
	needRange := func() error {
		switch {
		case r.Off < 0:
			return bad("offset %d is negative", r.Off)
		case r.Len <= 0:
			return bad("length %d must be positive", r.Len)
		case r.Len > MaxIOLen:
			return bad("length %d exceeds the limit %d", r.Len, MaxIOLen)
		case r.Direct && (r.Off%512 != 0 || r.Len%512 != 0):
			return bad("O_DIRECT needs 512-byte alignment: offset %d length %d", r.Off, r.Len)
		}
		return nil
	}
	switch r.Op {
	case OpHello, OpDisks, OpPoweroff, OpKmsg, OpSync:
		return nil
	case OpResume:
		if r.ClockNS < 0 {
			return bad("clock_ns %d is negative", r.ClockNS)
		}
		return nil
	case OpFsync:
		if len(r.Handle) > MaxHandleLen {
			return bad("handle of %d bytes exceeds %d", len(r.Handle), MaxHandleLen)
		}
		return needTarget()
	case OpOpen, OpClose:
		if r.Handle == "" || len(r.Handle) > MaxHandleLen {
			return bad("needs a handle of 1..%d bytes", MaxHandleLen)
		}
		if r.Op == OpClose {
			if r.Serial != "" || r.Path != "" {
				return bad("close takes a handle only")
			}
			return nil
		}
		return needTarget()
	case OpDiscard:
		if err := needTarget(); err != nil {
			return err
		}
		switch {
		case r.Off < 0:
			return bad("offset %d is negative", r.Off)
		case r.Len <= 0:
			return bad("length %d must be positive", r.Len)
		case r.Off > math.MaxInt64-r.Len:
			return bad("range at offset %d length %d overflows", r.Off, r.Len)
		case r.Pattern != "" || r.PatternOff != nil || r.Direct || r.FUA || r.Fsync || r.Head != 0 || r.Handle != "":
			return bad("a discard takes a target and a range only (no pattern, direct, fua, fsync, head or handle)")
		}
		return nil
	case OpRead, OpWrite:
		if err := needTarget(); err != nil {
			return err
		}
		if err := needRange(); err != nil {
			return err
		}
		if r.Op == OpWrite && r.Pattern == "" {
			return bad("needs a pattern to write")
		}
		if r.Pattern != "" {
			if err := pattern.Valid(r.Pattern); err != nil {
				return bad("%v", err)
			}
		}
		if r.Head < 0 || r.Head > MaxHead {
			return bad("head %d outside 0..%d", r.Head, MaxHead)
		}
		if r.Op == OpRead && (r.FUA || r.Fsync) {
			return bad("fua and fsync apply to writes only")
		}
		if r.Handle != "" {
			switch {
			case r.Op != OpWrite:
				return bad("a handle on a read (only buffered writes and fsync go through a held file)")
			case r.Direct || r.FUA:
				return bad("a write through a held file is buffered: no direct, no fua")
			case len(r.Handle) > MaxHandleLen:
				return bad("handle of %d bytes exceeds %d", len(r.Handle), MaxHandleLen)
			}
		}
		return nil
	case OpExec:
		if len(r.Argv) == 0 || r.Argv[0] == "" {
			return bad("needs argv")
		}
		if r.TimeoutMS < 0 {
			return bad("timeout_ms %d is negative", r.TimeoutMS)
		}
		return nil
	case "":
		return bad("missing op")
	}
	return bad("unknown op %q", r.Op)
}

// DecodeRequest parses and validates one request line. On error the
// returned Request still carries whatever ID and Op could be read, so the
// agent can address its error reply.
func DecodeRequest(line []byte) (Request, error) {
	var r Request
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		var probe struct {
			ID uint64 `json:"id"`
			Op string `json:"op"`
		}
		_ = json.Unmarshal(line, &probe)
		return Request{ID: probe.ID, Op: probe.Op}, fmt.Errorf("%w: line %.80q: %v", ErrBadRequest, line, err)
	}
	if dec.More() {
		return Request{ID: r.ID, Op: r.Op}, fmt.Errorf("%w: line %.80q: trailing data after the request", ErrBadRequest, line)
	}
	if err := r.Validate(); err != nil {
		return r, err
	}
	return r, nil
}

// DecodeResponse parses one response line.
func DecodeResponse(line []byte) (Response, error) {
	var r Response
	if err := json.Unmarshal(line, &r); err != nil {
		return Response{}, fmt.Errorf("agent response %.80q: %w", line, err)
	}
	if r.Op == "" {
		return Response{}, fmt.Errorf("agent response %.80q: missing op", line)
	}
	if r.Errno == "" {
		return Response{}, fmt.Errorf("agent response %.80q: missing errno", line)
	}
	return r, nil
}
