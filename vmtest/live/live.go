// Package live drives a simulator session from the outside world: NBD
// clients, a guest, a person typing dmsetup lines.
//
// The simulated world stays single-threaded and deterministic: the
// run.Session is owned by whichever goroutine holds the driver's lock (an
// NBD request's, a control line's), one at a time, so a request runs on
// its own goroutine without a hand-off to another. After each request the
// world runs until nothing is left to run (a settle point). The
// session's recording holds every request in arrival order, with the data
// written, and every settle point, so `snaplab replay` reproduces a live
// session in process, without its clients, with identical results.
//
// I/O to a suspended device waits, as in the kernel: the caller's goroutine
// blocks until a later control line resumes the device (or the driver
// closes, which fails the request with ESHUTDOWN).
//
// A client that opens a device (block.Opener on Driver.Device, as an NBD
// connection does when it enters transmission) holds it open as a process
// holds /dev/mapper/NAME open: counted in `dmsetup info`'s open count,
// refused by `dmsetup remove` (EBUSY), and bound to that device, never to
// a later one of the same name. The vm executor's exports are uncounted
// (Uncounted): they stand in for the guest's per-I/O opens. Opens, closes
// and the open each request came through are recorded and replayed.
package live

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/sim/snapshot"
)

// ErrClosed is returned to requests still waiting when the driver closes.
var ErrClosed = errors.New("live: simulator session closed")

// Driver owns a session.
type Driver struct {
	mu     sync.Mutex
	closed chan struct{} // closed once the session is finished
	done   bool          // under mu: the session is finished

	// Under mu.
	s        *run.Session
	sc       *script.Scenario
	lines    int // lines of the scenario so far: the setup's and those added
	arrivals map[string]*arrivalLog
}

// arrivalLog counts a device's requests and keeps the latest
// arrivalWindow of them: enough for a step to find the requests it caused,
// bounded however long the session runs.
type arrivalLog struct {
	n      int
	recent []Arrival // ring: request i is at recent[i%arrivalWindow], for the last arrivalWindow
}

const arrivalWindow = 4096

func (l *arrivalLog) add(a Arrival) {
	if len(l.recent) < arrivalWindow {
		l.recent = append(l.recent, a)
	} else {
		l.recent[l.n%arrivalWindow] = a
	}
	l.n++
}

// since returns the requests after the first n that are still kept.
func (l *arrivalLog) since(n int) []Arrival {
	var out []Arrival
	for i := max(n, l.n-len(l.recent)); i < l.n; i++ {
		out = append(out, l.recent[i%arrivalWindow])
	}
	return out
}

// Arrival is one request that reached a device, in arrival order.
type Arrival struct {
	Op  dm.Op
	Off int64
	Len int64
}

// Start runs every step of sc (the setup) in a new session and starts the
// loop. It fails if a setup step fails.
func Start(sc *script.Scenario, opts run.Options) (*Driver, error) {
	return start(sc, opts, len(sc.Steps))
}

// StartEmpty starts a session for sc without running any of its steps: the
// caller runs them (the vm executor) with Session.
func StartEmpty(sc *script.Scenario, opts run.Options) (*Driver, error) {
	return start(sc, opts, 0)
}

func start(sc *script.Scenario, opts run.Options, setup int) (*Driver, error) {
	d := &Driver{closed: make(chan struct{}), sc: sc, lines: strings.Count(sc.Text, "\n") + 1, arrivals: map[string]*arrivalLog{}}
	d.s = run.NewSession(sc, opts)
	for i := range sc.Steps[:setup] {
		if msg := d.s.Exec(&sc.Steps[i]); msg != "" {
			d.s.Finish()
			return nil, fmt.Errorf("%s:%d: setup step %q failed: %s", sc.Name, sc.Steps[i].Line, sc.Steps[i].Text, msg)
		}
	}
	d.s.Settle()
	return d, nil
}

// do runs fn with the session, holding the lock.
func (d *Driver) do(fn func()) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done {
		return ErrClosed
	}
	fn()
	return nil
}

// Exec runs one more scenario line (a dmsetup line, a fault, a log check)
// in the session and returns what it printed and "" or the failure.
func (d *Driver) Exec(line string) (out string, failure string, err error) {
	err = d.do(func() {
		if t := strings.TrimSpace(line); t == "" || strings.HasPrefix(t, "#") {
			return // blank line or comment
		}
		// Parsed in the context of the lines before it, without parsing
		// them again: a long session stays linear.
		stp, perr := d.sc.ParseMore(d.lines+1, line)
		if perr != nil {
			failure = perr.Error()
			return
		}
		st := *stp
		switch st.Kind {
		case script.KRead, script.KWrite, script.KFlush, script.KDiscard, script.KWait, script.KDisk:
			failure = fmt.Sprintf("%s lines are not accepted in a live session (I/O comes from clients)", st.Kind)
			return
		}
		d.lines++
		failure = d.s.Exec(&st)
		res := d.s.LastResult()
		out = res.Stdout + res.Stderr
		d.s.Settle()
	})
	return out, failure, err
}

// Session gives fn the session, holding the lock: no request runs
// meanwhile.
func (d *Driver) Session(fn func(s *run.Session)) error { return d.do(func() { fn(d.s) }) }

// Close finishes the session, fails waiting requests and returns the
// report (nil if it was closed before).
func (d *Driver) Close() *run.Report {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done {
		return nil
	}
	rep := d.s.Finish()
	d.done = true
	close(d.closed)
	return rep
}

// Arrivals is how many requests have arrived for the named device (0 once
// the driver is closed: nothing arrives any more).
func (d *Driver) Arrivals(name string) int {
	n := 0
	_ = d.do(func() {
		if l := d.arrivals[name]; l != nil {
			n = l.n
		}
	})
	return n
}

// ArrivalsSince returns the requests that arrived for the named device
// after the first n, of the latest 4096 (arrivalWindow) it keeps (none
// once the driver is closed).
func (d *Driver) ArrivalsSince(name string, n int) []Arrival {
	var out []Arrival
	_ = d.do(func() {
		if l := d.arrivals[name]; l != nil {
			out = l.since(n)
		}
	})
	return out
}

// DeviceInfo describes a disk or dm device of the session.
type DeviceInfo struct {
	Name           string
	Size           int64
	PreferredBlock uint32
	// Live is false for a dm device without a live table; Suspended is
	// true for a suspended dm device (disks are always live).
	Live, Suspended bool
	// Disk is true for a disk, false for a dm device.
	Disk bool
	// Discard is true for a device that takes discards (its queue's
	// max_discard_sectors is not 0, dm.SupportsDiscard): every disk, a dm
	// device whose live table's targets all do.
	Discard bool
}

// Devices lists the session's disks and dm devices; it fails once the
// driver is closed.
func (d *Driver) Devices() ([]DeviceInfo, error) {
	var out []DeviceInfo
	err := d.do(func() {
		ctl := d.s.Control()
		for _, disk := range ctl.Disks() {
			out = append(out, DeviceInfo{Name: disk.Name(), Size: disk.Size(), PreferredBlock: 4096, Live: true, Disk: true, Discard: true})
		}
		for _, md := range ctl.Devices() {
			pb := uint32(4096)
			if t := md.Live(); t != nil {
				for _, ti := range t.Targets {
					if s, ok := ti.Target.(*snapshot.Snapshot); ok && s.ChunkSize() > 0 {
						pb = max(pb, s.ChunkSize()*block.SectorSize)
					}
				}
			}
			out = append(out, DeviceInfo{Name: md.Name(), Size: md.Size(), PreferredBlock: pb, Live: md.Live() != nil, Suspended: md.IsSuspended(),
				Discard: dm.SupportsDiscard(md)})
		}
	})
	return out, err
}

// DeviceOption changes what Driver.Device returns.
type DeviceOption func(*device)

// Uncounted makes the device's opens (block.Opener) count nothing in the
// device's open count: for the vm executor, whose NBD exports stand in for
// the guest's per-I/O opens and whose scenarios remove a device while its
// QEMU disk is still plugged. Its opens are still bound to the device as it
// was when opened.
func Uncounted() DeviceOption { return func(v *device) { v.counted = false } }

// Device returns a block.Device whose I/O goes through the session, to
// whichever disk or dm device has the name at the time of each request:
// safe for concurrent use; calls block while the device is suspended.
//
// It implements block.Opener: Open returns a handle bound to the device as
// it is now (Session.Open), counted in its open count, as an NBD connection
// that opens its export when it enters transmission is counted by the
// kernel: `dmsetup remove` refuses the device with EBUSY while the handle
// is open, and once the device is gone (only possible for an uncounted
// handle) the handle's I/O fails with ENXIO instead of reaching a device
// created later under the same name. Close releases it; Close twice, or
// after the driver closed, is harmless.
func (d *Driver) Device(name string, opts ...DeviceOption) block.Device {
	v := &device{d: d, name: name, counted: true}
	for _, o := range opts {
		o(v)
	}
	return v
}

type device struct {
	d       *Driver
	name    string
	counted bool
	// id is the open a handle's I/O goes through (0: the device by name).
	id run.OpenID
	// onWait, set on a handle (NotifyWait), runs before a call waits for
	// its device (a suspended device's resume).
	onWait func()
}

func (v *device) Name() string { return v.name }

func (v *device) Size() int64 {
	var size int64
	_ = v.d.do(func() {
		var n block.Device
		if v.id != 0 {
			if h := v.d.s.Opened(v.id); h != nil {
				n = h.Node()
			}
		} else if node := v.d.s.Control().Node(v.name); node != nil {
			n = node
		}
		if n != nil {
			size = n.Size()
		}
	})
	return size
}

// Open implements block.Opener.
func (v *device) Open() (block.OpenDevice, error) {
	var id run.OpenID
	var err error
	if derr := v.d.do(func() {
		if v.counted {
			id, err = v.d.s.Open(v.name)
		} else {
			id, err = v.d.s.OpenUncounted(v.name)
		}
	}); derr != nil {
		return nil, &block.Error{Dev: v.name, Op: "open", Errno: syscall.ESHUTDOWN, Err: derr}
	}
	if err != nil {
		return nil, err
	}
	return &openDevice{dev: &device{d: v.d, name: v.name, counted: v.counted, id: id}}, nil
}

// openDevice is a handle returned by device.Open: I/O goes through the
// session's open dev.id.
type openDevice struct {
	dev  *device
	once sync.Once
}

func (o *openDevice) Name() string                                { return o.dev.Name() }
func (o *openDevice) Size() int64                                 { return o.dev.Size() }
func (o *openDevice) ReadAt(p []byte, off int64) (int, error)     { return o.dev.ReadAt(p, off) }
func (o *openDevice) WriteAt(p []byte, off int64) (int, error)    { return o.dev.WriteAt(p, off) }
func (o *openDevice) WriteAtFUA(p []byte, off int64) (int, error) { return o.dev.WriteAtFUA(p, off) }
func (o *openDevice) Flush() error                                { return o.dev.Flush() }
func (o *openDevice) Discard(off, length int64) error             { return o.dev.Discard(off, length) }

// NotifyWait makes the handle call fn, on the calling goroutine, before
// a call of it waits for its device (queued on a suspended device), so
// that an NBD server serving the handle's requests one at a time
// (nbd.Export.Serial) can go on reading the connection's other requests.
// Not safe to call concurrently with I/O on the handle.
func (o *openDevice) NotifyWait(fn func()) { o.dev.onWait = fn }

// Close implements block.OpenDevice.
func (o *openDevice) Close() error {
	var err error
	o.once.Do(func() {
		if derr := o.dev.d.do(func() { err = o.dev.d.s.CloseOpen(o.dev.id) }); derr != nil {
			err = nil // the session is gone, and its opens with it
		}
	})
	return err
}

func (v *device) io(op dm.Op, p []byte, off int64, fua bool) error {
	return v.ioN(op, p, int64(len(p)), off, fua)
}

// ioN submits op; n is the length (p is nil for a discard).
func (v *device) ioN(op dm.Op, p []byte, n, off int64, fua bool) error {
	ch := make(chan error, 1)
	// p is the caller's until this returns: the session is done with a
	// request's buffer when it completes (the disk has copied a write,
	// the recording has stored it), and once the driver is closed nothing
	// runs in the session any more.
	buf := p
	if err := v.d.do(func() {
		l := v.d.arrivals[v.name]
		if l == nil {
			l = &arrivalLog{}
			v.d.arrivals[v.name] = l
		}
		l.add(Arrival{Op: op, Off: off, Len: n})
		done := func(err error) { ch <- err }
		if op == dm.OpDiscard {
			v.d.s.ExternalDiscard(v.name, v.id, off, n, done)
		} else if v.id != 0 {
			v.d.s.ExternalVia(v.id, op, off, buf, fua, done)
		} else {
			v.d.s.External(v.name, op, off, buf, fua, done)
		}
		v.d.s.Settle()
	}); err != nil {
		return &block.Error{Dev: v.name, Op: op.String(), Off: off, Len: n, Errno: syscall.ESHUTDOWN, Err: err}
	}
	select {
	case err := <-ch:
		return err // completed as the world settled
	default:
	}
	if v.onWait != nil {
		v.onWait() // queued: it waits for a resume
	}
	select {
	case err := <-ch:
		return err
	case <-v.d.closed:
		return &block.Error{Dev: v.name, Op: op.String(), Off: off, Len: n, Errno: syscall.ESHUTDOWN, Err: ErrClosed}
	}
}

func (v *device) ReadAt(p []byte, off int64) (int, error) {
	if err := v.io(dm.OpRead, p, off, false); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (v *device) WriteAt(p []byte, off int64) (int, error) {
	if err := v.io(dm.OpWrite, p, off, false); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (v *device) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := v.io(dm.OpWrite, p, off, true); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (v *device) Flush() error { return v.io(dm.OpFlush, nil, 0, false) }

func (v *device) Discard(off, length int64) error {
	return v.ioN(dm.OpDiscard, nil, length, off, false)
}
