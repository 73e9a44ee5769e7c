// Package agent is the guest side of the host↔agent protocol
// (vmtest/guest/proto): it serves requests read from a virtio-serial port
// and runs them against the guest kernel.
//
// Serve is independent of the machine it runs on: sysfs, /dev and
// /dev/kmsg are taken from Config, so the same code is tested on the host
// against a fake sysfs tree and regular files. cmd/snaplab-guest is the
// /init that wires it to the real guest.
//
// Disks are looked up by their virtio serial (/sys/block/vd*/serial) on
// every request, waiting briefly for a hot-plugged disk to appear; never
// by letter. Reads and writes with Direct use O_DIRECT and page-aligned
// buffers. A discard is ioctl(BLKDISCARD) on the target opened for writing
// (the ioctl needs it); the range goes to the kernel unchecked, so its
// errno (EINVAL, EOPNOTSUPP, EIO) is the kernel's. An open request holds its file open under the host's handle name
// until the matching close request (or the end of Serve), so the guest
// kernel counts it as an open of the device. Every operation reports its
// errno; a bad request is answered with EINVAL and a message, never a
// panic.
package agent

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"snaplab/sim/pattern"
	"snaplab/vmtest/guest/proto"
)

// Config locates the machine's interfaces.
type Config struct {
	SysBlock string // "/sys/block"
	DevDir   string // "/dev"
	Kmsg     string // "/dev/kmsg"
	// Kernel and Modules are reported by ready and hello.
	Kernel  string
	Modules []string
	// Uptime reports seconds since boot; nil means /proc/uptime.
	Uptime func() float64
	// DiskWait is the default time to wait for a disk to appear.
	DiskWait time.Duration
	// Env is the base environment of exec'd programs.
	Env []string
	// Poweroff is called after the poweroff request has been answered.
	Poweroff func()
	// SetClock sets the wall clock, for resume (a guest restored from a
	// saved state is as late as the state is old); nil leaves it alone.
	SetClock func(time.Time) error
}

// DefaultConfig is the configuration of a real guest.
func DefaultConfig() Config {
	var u unix.Utsname
	kernel := ""
	if unix.Uname(&u) == nil {
		kernel = unix.ByteSliceToString(u.Release[:])
	}
	return Config{SysBlock: "/sys/block", DevDir: "/dev", Kmsg: "/dev/kmsg", Kernel: kernel,
		DiskWait: 5 * time.Second,
		Env:      []string{"PATH=/sbin:/bin:/usr/sbin:/usr/bin", "HOME=/", "DM_DISABLE_UDEV=1"},
		SetClock: setClock}
}

// setClock sets CLOCK_REALTIME.
func setClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

type server struct {
	cfg Config
	wmu sync.Mutex
	w   io.Writer
	wg  sync.WaitGroup

	hmu  sync.Mutex
	held map[string]*os.File // open requests' files, by handle
}

// Serve announces readiness on rw, then answers requests until rw reports
// EOF (the host went away), a poweroff request has been answered, or ctx
// ends. It waits for requests in flight before returning. The returned
// error is nil for EOF and poweroff.
func Serve(ctx context.Context, rw io.ReadWriter, cfg Config) error {
	if cfg.DiskWait == 0 {
		cfg.DiskWait = 5 * time.Second
	}
	s := &server{cfg: cfg, w: rw, held: map[string]*os.File{}}
	defer s.closeHeld()
	if err := s.reply(proto.Response{Op: proto.OpReady, Errno: "OK", Kernel: cfg.Kernel,
		Uptime: s.uptime(), Modules: cfg.Modules}); err != nil {
		return fmt.Errorf("announcing readiness: %w", err)
	}
	defer s.wg.Wait()
	r := bufio.NewReaderSize(rw, 64<<10)
	for {
		line, err := r.ReadBytes('\n')
		if len(strings.TrimSpace(string(line))) > 0 {
			req, derr := proto.DecodeRequest(line)
			if derr != nil {
				s.reply(proto.Response{ID: req.ID, Op: orUnknown(req.Op), Errno: "EINVAL", Error: derr.Error()})
			} else if req.Op == proto.OpPoweroff {
				s.wg.Wait()
				s.reply(proto.Response{ID: req.ID, Op: req.Op, Errno: "OK"})
				if cfg.Poweroff != nil {
					cfg.Poweroff()
				}
				return nil
			} else {
				s.wg.Add(1)
				go func() {
					defer s.wg.Done()
					s.reply(s.handle(ctx, req))
				}()
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading requests: %w", err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

func orUnknown(op string) string {
	if op == "" {
		return "unknown"
	}
	return op
}

func (s *server) reply(resp proto.Response) error {
	b, err := json.Marshal(resp)
	if err != nil {
		b, _ = json.Marshal(proto.Response{ID: resp.ID, Op: resp.Op, Errno: "EIO", Error: "encoding reply: " + err.Error()})
	}
	b = append(b, '\n')
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err = s.w.Write(b)
	return err
}

func (s *server) uptime() float64 {
	if s.cfg.Uptime != nil {
		return s.cfg.Uptime()
	}
	// /proc/uptime's first field, without a file system round trip.
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return float64(ts.Nano()/1e7) / 100
}

// handle runs one validated request; it never panics on behalf of a
// request.
func (s *server) handle(ctx context.Context, req proto.Request) (resp proto.Response) {
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			resp = proto.Response{Op: req.Op, Errno: "EIO", Error: fmt.Sprintf("agent panic: %v", p)}
		}
		resp.ID, resp.Op = req.ID, req.Op
		if resp.Errno == "" {
			resp.Errno = "OK"
		}
		resp.ElapsedUS = time.Since(start).Microseconds()
	}()
	switch req.Op {
	case proto.OpHello:
		return proto.Response{Kernel: s.cfg.Kernel, Uptime: s.uptime(), Modules: s.cfg.Modules}
	case proto.OpResume:
		if req.ClockNS != 0 && s.cfg.SetClock != nil {
			if err := s.cfg.SetClock(time.Unix(0, req.ClockNS)); err != nil {
				return fail(fmt.Errorf("setting the wall clock to the host's: %w", err), "clock")
			}
		}
		return proto.Response{Kernel: s.cfg.Kernel, Uptime: s.uptime(), Modules: s.cfg.Modules}
	case proto.OpDisks:
		disks, err := ListDisks(s.cfg.SysBlock)
		if err != nil {
			return fail(err, "")
		}
		return proto.Response{Disks: disks}
	case proto.OpRead:
		return s.read(ctx, req)
	case proto.OpWrite:
		return s.write(ctx, req)
	case proto.OpDiscard:
		return s.discard(ctx, req)
	case proto.OpFsync:
		if req.Handle != "" {
			return s.fsyncHeld(ctx, req)
		}
		return s.fsync(ctx, req)
	case proto.OpSync:
		unix.Sync()
		return proto.Response{}
	case proto.OpOpen:
		return s.open(ctx, req)
	case proto.OpClose:
		return s.close(req)
	case proto.OpExec:
		return s.exec(ctx, req)
	case proto.OpKmsg:
		recs, next, err := ReadKmsg(s.cfg.Kmsg, req.Cursor)
		if err != nil {
			return fail(err, "read")
		}
		return proto.Response{Kmsg: recs, Next: next}
	}
	return proto.Response{Errno: "EINVAL", Error: "unknown op " + req.Op}
}

// fail turns err into an errno response.
func fail(err error, phase string) proto.Response {
	var en syscall.Errno
	if !errors.As(err, &en) {
		en = syscall.EIO
	}
	return proto.Response{Errno: proto.ErrnoName(en), Error: err.Error(), Phase: phase}
}

// ListDisks lists the virtio disks (vd*) under sysBlock with their serial
// and size, in name order.
func ListDisks(sysBlock string) ([]proto.Disk, error) {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, err
	}
	var disks []proto.Disk
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "vd") {
			continue
		}
		serial, err := os.ReadFile(filepath.Join(sysBlock, name, "serial"))
		if err != nil {
			continue // not yet fully registered
		}
		d := proto.Disk{Name: name, Serial: strings.TrimSpace(string(serial))}
		if b, err := os.ReadFile(filepath.Join(sysBlock, name, "size")); err == nil {
			sectors, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			d.Size = sectors * 512
		}
		disks = append(disks, d)
	}
	sort.Slice(disks, func(i, j int) bool { return disks[i].Name < disks[j].Name })
	return disks, nil
}

// resolve finds the device path of a request's target, waiting for a
// hot-plugged disk to appear (and its /dev node to exist).
func (s *server) resolve(ctx context.Context, req proto.Request) (string, error) {
	if req.Path != "" {
		return req.Path, nil
	}
	wait := s.cfg.DiskWait
	if req.WaitMS > 0 {
		wait = time.Duration(req.WaitMS) * time.Millisecond
	}
	deadline := time.Now().Add(wait)
	for {
		disks, err := ListDisks(s.cfg.SysBlock)
		if err == nil {
			for _, d := range disks {
				if d.Serial == req.Serial {
					p := filepath.Join(s.cfg.DevDir, d.Name)
					if _, err := os.Stat(p); err == nil {
						return p, nil
					}
				}
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", fmt.Errorf("no virtio disk with serial %q after %v: %w", req.Serial, wait, syscall.ENODEV)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// openDev opens a disk the host may just have plugged in: until the
// request's wait runs out, ENXIO and ENODEV (the gendisk is not live yet,
// or a node left by an unplugged disk of the same name) are retried.
func (s *server) openDev(dev string, flags int, req proto.Request) (*os.File, error) {
	wait := s.cfg.DiskWait
	if req.WaitMS > 0 {
		wait = time.Duration(req.WaitMS) * time.Millisecond
	}
	deadline := time.Now().Add(wait)
	for {
		f, err := os.OpenFile(dev, flags, 0)
		if err == nil || !(errors.Is(err, syscall.ENXIO) || errors.Is(err, syscall.ENODEV)) || time.Now().After(deadline) {
			return f, err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// alignedBuf returns an n-byte slice starting on a page boundary.
func alignedBuf(n int64) []byte {
	const page = 4096
	b := make([]byte, n+page)
	off := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) % page); r != 0 {
		off = page - r
	}
	return b[off : off+int(n) : off+int(n)]
}

func patternOff(req proto.Request) int64 {
	if req.PatternOff != nil {
		return *req.PatternOff
	}
	return req.Off
}

func (s *server) read(ctx context.Context, req proto.Request) proto.Response {
	dev, err := s.resolve(ctx, req)
	if err != nil {
		return fail(err, "lookup")
	}
	flags := os.O_RDONLY
	if req.Direct {
		flags |= syscall.O_DIRECT
	}
	f, err := s.openDev(dev, flags, req)
	if err != nil {
		r := fail(err, "open")
		r.Device = dev
		return r
	}
	defer f.Close()
	buf := alignedBuf(req.Len)
	n, err := readFull(f, buf, req.Off)
	resp := proto.Response{Device: dev, N: int64(n)}
	if err != nil {
		r := fail(fmt.Errorf("read %s at offset %d length %d: %w", dev, req.Off+int64(n), req.Len-int64(n), err), "read")
		r.Device, r.N = dev, int64(n)
		return r
	}
	sum := sha256.Sum256(buf)
	resp.SHA256 = hex.EncodeToString(sum[:])
	if req.Head > 0 {
		resp.Head = append([]byte(nil), buf[:min(req.Head, len(buf))]...)
	}
	if req.Pattern != "" {
		v := &proto.Verdict{OK: true}
		if err := pattern.Verify(buf, req.Pattern, patternOff(req)); err != nil {
			var m *pattern.Mismatch
			if errors.As(err, &m) {
				// Report the mismatch at the device offset.
				v = &proto.Verdict{Off: m.Off - patternOff(req) + req.Off, Want: m.Want, Got: m.Got, Looks: m.Looks}
			} else {
				v = &proto.Verdict{Looks: err.Error()}
			}
		}
		resp.Verify = v
	}
	return resp
}

func readFull(f *os.File, buf []byte, off int64) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := f.ReadAt(buf[n:], off+int64(n))
		n += m
		if err != nil {
			if errors.Is(err, io.EOF) {
				return n, fmt.Errorf("short read, device ends: %w", syscall.EINVAL)
			}
			return n, err
		}
	}
	return n, nil
}

func (s *server) write(ctx context.Context, req proto.Request) proto.Response {
	if req.Handle != "" {
		return s.writeHeld(ctx, req)
	}
	dev, err := s.resolve(ctx, req)
	if err != nil {
		return fail(err, "lookup")
	}
	flags := os.O_WRONLY
	if req.Direct {
		flags |= syscall.O_DIRECT
	}
	if req.FUA {
		flags |= syscall.O_DSYNC
	}
	f, err := s.openDev(dev, flags, req)
	if err != nil {
		r := fail(err, "open")
		r.Device = dev
		return r
	}
	defer f.Close()
	buf := alignedBuf(req.Len)
	pattern.Fill(buf, req.Pattern, patternOff(req))
	n, err := f.WriteAt(buf, req.Off)
	if err == nil && n < len(buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		r := fail(fmt.Errorf("write %s at offset %d length %d: %w", dev, req.Off+int64(n), req.Len-int64(n), err), "write")
		r.Device, r.N = dev, int64(n)
		return r
	}
	if req.Fsync {
		if err := f.Sync(); err != nil {
			r := fail(fmt.Errorf("fsync %s after writing offset %d length %d: %w", dev, req.Off, req.Len, err), "fsync")
			r.Device, r.N = dev, int64(n)
			return r
		}
	}
	return proto.Response{Device: dev, N: int64(n)}
}

// discard issues BLKDISCARD for [req.Off, req.Off+req.Len) on the target,
// opened write-only (openTarget: a path once, a disk by serial retried).
func (s *server) discard(ctx context.Context, req proto.Request) proto.Response {
	f, dev, resp, ok := s.openTarget(ctx, req, os.O_WRONLY)
	if !ok {
		return resp
	}
	defer f.Close()
	if err := blkDiscard(f, req.Off, req.Len); err != nil {
		r := fail(fmt.Errorf("discard %s at offset %d length %d: %w", dev, req.Off, req.Len, err), "discard")
		r.Device = dev
		return r
	}
	return proto.Response{Device: dev, N: req.Len}
}

// blkDiscard is ioctl(fd, BLKDISCARD, {off, len}); the error is the
// kernel's errno (ENOTTY for a file that is not a block device).
func blkDiscard(f *os.File, off, n int64) error {
	rng := [2]uint64{uint64(off), uint64(n)}
	conn, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno syscall.Errno
	if cerr := conn.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, unix.BLKDISCARD, uintptr(unsafe.Pointer(&rng)))
	}); cerr != nil {
		return cerr
	}
	if errno != 0 {
		return errno
	}
	return nil
}

func (s *server) fsync(ctx context.Context, req proto.Request) proto.Response {
	dev, err := s.resolve(ctx, req)
	if err != nil {
		return fail(err, "lookup")
	}
	f, err := s.openDev(dev, os.O_WRONLY, req)
	if err != nil {
		r := fail(err, "open")
		r.Device = dev
		return r
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		r := fail(fmt.Errorf("fsync %s: %w", dev, err), "fsync")
		r.Device = dev
		return r
	}
	return proto.Response{Device: dev}
}

// open opens the request's disk or path read-only (openTarget), as
// `exec 3<PATH` does, and holds it under req.Handle until a close request.
func (s *server) open(ctx context.Context, req proto.Request) proto.Response {
	s.hmu.Lock()
	_, dup := s.held[req.Handle]
	s.hmu.Unlock()
	if dup {
		return proto.Response{Errno: "EEXIST", Error: fmt.Sprintf("handle %q is already open", req.Handle)}
	}
	f, dev, resp, ok := s.openTarget(ctx, req, os.O_RDONLY)
	if !ok {
		return resp
	}
	s.hmu.Lock()
	defer s.hmu.Unlock()
	if _, dup := s.held[req.Handle]; dup {
		f.Close()
		return proto.Response{Errno: "EEXIST", Device: dev, Error: fmt.Sprintf("handle %q is already open", req.Handle)}
	}
	s.held[req.Handle] = f
	return proto.Response{Device: dev}
}

// openTarget opens the request's path once (ENOENT, ENXIO are the answer,
// not a disk still appearing), or its disk by serial as I/O does (retried:
// it may just have been plugged in), with flag; a failure is the response.
func (s *server) openTarget(ctx context.Context, req proto.Request, flag int) (*os.File, string, proto.Response, bool) {
	dev, err := s.resolve(ctx, req)
	if err != nil {
		return nil, "", fail(err, "lookup"), false
	}
	var f *os.File
	if req.Path != "" {
		f, err = os.OpenFile(dev, flag, 0)
	} else {
		f, err = s.openDev(dev, flag, req)
	}
	if err != nil {
		r := fail(err, "open")
		r.Device = dev
		return nil, dev, r, false
	}
	return f, dev, proto.Response{}, true
}

// close closes a held handle.
func (s *server) close(req proto.Request) proto.Response {
	s.hmu.Lock()
	f, ok := s.held[req.Handle]
	delete(s.held, req.Handle)
	s.hmu.Unlock()
	if !ok {
		return proto.Response{Errno: "EBADF", Error: fmt.Sprintf("no open handle %q", req.Handle)}
	}
	if err := f.Close(); err != nil {
		r := fail(fmt.Errorf("close %s: %w", f.Name(), err), "close")
		r.Device = f.Name()
		return r
	}
	return proto.Response{Device: f.Name()}
}

// closeHeld closes every handle still held when Serve returns.
func (s *server) closeHeld() {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	for h, f := range s.held {
		f.Close()
		delete(s.held, h)
	}
}

func (s *server) exec(ctx context.Context, req proto.Request) proto.Response {
	timeout := 60 * time.Second
	if req.TimeoutMS > 0 {
		timeout = time.Duration(req.TimeoutMS) * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, req.Argv[0], req.Argv[1:]...)
	cmd.Env = append(append([]string(nil), s.cfg.Env...), req.Env...)
	cmd.Stdin = strings.NewReader(req.Stdin)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	err := cmd.Run()
	resp := proto.Response{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		resp.Errno, resp.Error = "ETIMEDOUT", fmt.Sprintf("%q killed after %v", req.Argv, timeout)
		resp.Exit = -1
	case errors.As(err, &ee):
		resp.Exit = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			resp.Exit = 128 + int(ws.Signal())
		}
	default:
		r := fail(fmt.Errorf("starting %q: %w", req.Argv, err), "start")
		r.Stdout, r.Stderr = resp.Stdout, resp.Stderr
		return r
	}
	return resp
}
