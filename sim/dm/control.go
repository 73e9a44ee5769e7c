// Package dm is the simulated device-mapper core: mapped devices with live
// and inactive tables, the control operations behind dmsetup (create, load,
// suspend, resume, clear, remove, status, table, info, ls, message), the
// simple targets (linear, error, zero) and the kernel log.
//
// Contract: every operation runs inside one simulated world and may step its
// event loop (suspend drains in-flight I/O). Operations fail with *IoctlError,
// which carries the ioctl name and errno exactly as dmsetup reports them, and
// they write the kernel's "device-mapper:" log lines to the Control's Log.
// Output text (status, table, info, ls) is byte-identical to dmsetup's.
package dm

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"snaplab/sim/block"
	"snaplab/sim/profile"
	"snaplab/sim/world"
)

// KLog is the kernel log: the lines the kernel would print, in order.
type KLog struct {
	lines []string
}

// Printf appends "device-mapper: <prefix>: <msg>".
func (l *KLog) Printf(prefix, format string, a ...any) {
	l.lines = append(l.lines, LogPrefix+prefix+": "+fmt.Sprintf(format, a...))
}

// Lines returns every line logged so far.
func (l *KLog) Lines() []string { return l.lines }

// Len is the number of lines logged so far (a cursor for Since).
func (l *KLog) Len() int { return len(l.lines) }

// Since returns the lines logged after cursor.
func (l *KLog) Since(cursor int) []string {
	if cursor >= len(l.lines) {
		return nil
	}
	return l.lines[cursor:]
}

// IoctlError is a failed dm ioctl as dmsetup reports it.
type IoctlError struct {
	Ioctl string // "create", "reload", "resume", "suspend", "remove", "message", ...
	Dev   string
	Errno syscall.Errno
	// Num, when set, is printed as libdm does for a task addressed by
	// device number too (the reload and resume of `dmsetup create`).
	Num *DevNum
}

func (e *IoctlError) Error() string {
	num := ""
	if e.Num != nil {
		num = fmt.Sprintf("(%d:%d)", e.Num.Major, e.Num.Minor)
	}
	return fmt.Sprintf(LogPrefix+"%s ioctl on %s %s failed: %s", e.Ioctl, e.Dev, num, strerror(e.Errno))
}

// NotFoundError is a command naming a device that does not exist.
type NotFoundError struct{ Name string }

func (e *NotFoundError) Error() string { return "Device does not exist." }

func strerror(e syscall.Errno) string {
	switch e {
	case syscall.EINVAL:
		return "Invalid argument"
	case syscall.EBUSY:
		return "Device or resource busy"
	case syscall.ENXIO:
		return "No such device or address"
	case syscall.ENOMEM:
		return "Cannot allocate memory"
	case syscall.ENODEV:
		return "No such device"
	case syscall.ENOENT:
		return "No such file or directory"
	case syscall.EIO:
		return "Input/output error"
	case syscall.EEXIST:
		return "File exists"
	case syscall.ENOTTY:
		return "Inappropriate ioctl for device"
	}
	return e.Error()
}

// Control is the simulated machine's device-mapper control plane plus the
// disks attached to the machine.
type Control struct {
	W   *world.World
	Log *KLog
	// Profile is the kernel release whose behaviour the control plane
	// and its targets model where releases differ (sim/profile).
	Profile profile.Profile
	disks   []*Disk
	devs    []*MappedDevice // sorted by name
	types   map[string]*TargetType
	state   map[string]any
}

// NewControl returns a control plane with the linear, error and zero
// targets registered.
func NewControl(w *world.World) *Control {
	c := &Control{W: w, Log: &KLog{}, Profile: profile.Default, types: map[string]*TargetType{}, state: map[string]any{}}
	registerBasicTargets(c)
	return c
}

// Register adds a target type.
func (c *Control) Register(tt *TargetType) { c.types[tt.Name] = tt }

// TargetTypes lists registered target types in name order.
func (c *Control) TargetTypes() []*TargetType {
	out := make([]*TargetType, 0, len(c.types))
	for _, tt := range c.types {
		out = append(out, tt)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// State returns per-control state of a target type (the kernel's globals,
// such as dm-snapshot's _origins), creating it with mk on first use.
func (c *Control) State(key string, mk func() any) any {
	if v, ok := c.state[key]; ok {
		return v
	}
	v := mk()
	c.state[key] = v
	return v
}

// AddDisk attaches dev as a disk with the next virtio device number.
func (c *Control) AddDisk(dev block.Device, logicalBlockSize uint32) (*Disk, error) {
	if logicalBlockSize == 0 {
		logicalBlockSize = block.SectorSize
	}
	if _, err := c.lookupNode(dev.Name()); err == nil {
		return nil, fmt.Errorf("disk %s: name already in use", dev.Name())
	}
	d := &Disk{Device: dev, w: c.W, dev: DevNum{VirtioMajor, uint32(16 * len(c.disks))}, lbs: logicalBlockSize}
	c.disks = append(c.disks, d)
	return d, nil
}

// Disks returns the attached disks in declaration order.
func (c *Control) Disks() []*Disk { return c.disks }

// Devices returns the mapped devices in name order.
func (c *Control) Devices() []*MappedDevice { return c.devs }

// Device returns the named mapped device or nil.
func (c *Control) Device(name string) *MappedDevice {
	i := sort.Search(len(c.devs), func(i int) bool { return c.devs[i].name >= name })
	if i < len(c.devs) && c.devs[i].name == name {
		return c.devs[i]
	}
	return nil
}

// Node returns the disk or mapped device with the given name, or nil.
func (c *Control) Node(name string) Node {
	if md := c.Device(name); md != nil {
		return md
	}
	for _, d := range c.disks {
		if d.Name() == name {
			return d
		}
	}
	return nil
}

// lookupNode resolves a device path as a table names it: "major:minor",
// "/dev/mapper/NAME", "/dev/dm-N", "/dev/disk/by-id/virtio-NAME",
// "/dev/NAME" or a bare NAME.
func (c *Control) lookupNode(path string) (Node, error) {
	if maj, min, ok := parseDevNum(path); ok {
		for _, d := range c.disks {
			if d.dev.Major == maj && d.dev.Minor == min {
				return d, nil
			}
		}
		for _, md := range c.devs {
			if md.dev.Major == maj && md.dev.Minor == min {
				return md, nil
			}
		}
		return nil, fmt.Errorf("no device %s", path)
	}
	name := path
	switch {
	case strings.HasPrefix(path, "/dev/mapper/"):
		name = strings.TrimPrefix(path, "/dev/mapper/")
		if md := c.Device(name); md != nil {
			return md, nil
		}
		return nil, fmt.Errorf("no device %s", path)
	case strings.HasPrefix(path, "/dev/dm-"):
		n, err := strconv.ParseUint(strings.TrimPrefix(path, "/dev/dm-"), 10, 32)
		if err == nil {
			return c.lookupNode(fmt.Sprintf("%d:%d", DMMajor, n))
		}
	case strings.HasPrefix(path, "/dev/disk/by-id/virtio-"):
		name = strings.TrimPrefix(path, "/dev/disk/by-id/virtio-")
	case strings.HasPrefix(path, "/dev/"):
		name = strings.TrimPrefix(path, "/dev/")
	}
	if n := c.Node(name); n != nil {
		return n, nil
	}
	return nil, fmt.Errorf("no device %s", path)
}

func parseDevNum(s string) (uint32, uint32, bool) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, false
	}
	maj, err1 := strconv.ParseUint(a, 10, 32)
	min, err2 := strconv.ParseUint(b, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return uint32(maj), uint32(min), true
}

func (c *Control) openCount(n Node) int {
	count := 0
	for _, md := range c.devs {
		for _, t := range []*Table{md.live, md.inactive} {
			if t == nil {
				continue
			}
			for _, ti := range t.Targets {
				for _, d := range ti.Deps {
					if d == n {
						count++
					}
				}
			}
		}
	}
	if md, ok := n.(*MappedDevice); ok {
		count += md.userPending + md.opens
	}
	return count
}

// OpenCount is the device's open count as dmsetup info shows it: tables
// holding it, counted handles (Open) and users with I/O outstanding.
func (c *Control) OpenCount(md *MappedDevice) int { return c.openCount(md) }

func (c *Control) freeMinor() uint32 {
	used := map[uint32]bool{}
	for _, md := range c.devs {
		used[md.dev.Minor] = true
	}
	m := uint32(0)
	for used[m] {
		m++
	}
	return m
}

// Create makes a new mapped device with no table (DM_DEV_CREATE).
func (c *Control) Create(name, uuid string, readOnly bool) (*MappedDevice, error) {
	if name == "" || len(name) > 127 || strings.Contains(name, "/") {
		return nil, &IoctlError{Ioctl: "create", Dev: name, Errno: syscall.EINVAL}
	}
	if c.Device(name) != nil {
		return nil, &IoctlError{Ioctl: "create", Dev: name, Errno: syscall.EBUSY}
	}
	if uuid != "" {
		for _, md := range c.devs {
			if md.uuid == uuid {
				return nil, &IoctlError{Ioctl: "create", Dev: name, Errno: syscall.EBUSY}
			}
		}
	}
	md := &MappedDevice{ctl: c, name: name, uuid: uuid, dev: DevNum{DMMajor, c.freeMinor()}, readOnly: readOnly}
	i := sort.Search(len(c.devs), func(i int) bool { return c.devs[i].name >= name })
	c.devs = append(c.devs, nil)
	copy(c.devs[i+1:], c.devs[i:])
	c.devs[i] = md
	return md, nil
}

func (c *Control) get(name, ioctl string) (*MappedDevice, error) {
	md := c.Device(name)
	if md == nil {
		return nil, &IoctlError{Ioctl: ioctl, Dev: name, Errno: syscall.ENXIO}
	}
	return md, nil
}

// Load constructs a table from text and makes it md's inactive table
// (DM_TABLE_LOAD). A previous inactive table is destroyed only after the
// new one has been constructed, as table_load does.
func (c *Control) Load(name, text string) error {
	md, err := c.get(name, "reload")
	if err != nil {
		return err
	}
	lines, err := ParseTable(text)
	if err != nil {
		return err
	}
	t := &Table{ctl: c, md: md, Mode: "rw"}
	if md.readOnly {
		t.Mode = "r"
	}
	fail := func(errno syscall.Errno) error {
		derr := destroyTable(t)
		c.Log.Printf("ioctl", "error adding target to table")
		for _, n := range t.leaked {
			c.Log.Printf("table", "%s: dm_table_destroy: dm_put_device call missing for %s", md.dev, n.Dev())
		}
		return join(&IoctlError{Ioctl: "reload", Dev: name, Errno: errno}, derr)
	}
	if len(lines) == 0 {
		c.Log.Printf("ioctl", "populate_table: no targets specified")
		return &IoctlError{Ioctl: "reload", Dev: name, Errno: syscall.EINVAL}
	}
	next := uint64(0)
	for _, l := range lines {
		if l.Len == 0 {
			c.Log.Printf("table", "%s: zero-length target", md.dev)
			return fail(syscall.EINVAL)
		}
		tt := c.types[l.Type]
		if tt == nil {
			c.Log.Printf("table", "%s: %s: unknown target type", md.dev, l.Type)
			return fail(syscall.EINVAL)
		}
		ti := &TargetInstance{Table: t, Type: tt, Begin: l.Start, Len: l.Len, Args: l.Args}
		if l.Start != next {
			c.Log.Printf("table", "%s: %s: %s (%s)", md.dev, l.Type, "Gap in table", errnoPE(syscall.EINVAL))
			return fail(syscall.EINVAL)
		}
		tgt, err := tt.Ctr(ti, l.Args)
		if err != nil {
			ce, ok := err.(*CtrError)
			if !ok {
				ce = &CtrError{Msg: err.Error(), Errno: syscall.EINVAL}
			}
			c.Log.Printf("table", "%s: %s: %s (%s)", md.dev, l.Type, ce.Msg, errnoPE(ce.Errno))
			ti.Deps = nil
			return fail(ce.Errno)
		}
		ti.Target = tgt
		t.Targets = append(t.Targets, ti)
		md.everLoaded = true
		next = l.Start + l.Len
	}
	old := md.inactive
	md.inactive = t
	if old != nil {
		return destroyTable(old)
	}
	return nil
}

func errnoPE(e syscall.Errno) string {
	switch e {
	case syscall.EINVAL:
		return "-EINVAL"
	case syscall.ENOMEM:
		return "-ENOMEM"
	case syscall.ENXIO:
		return "-ENXIO"
	case syscall.EBUSY:
		return "-EBUSY"
	case syscall.EIO:
		return "-EIO"
	case syscall.ENOTBLK:
		return "-ENOTBLK"
	case syscall.ENODEV:
		return "-ENODEV"
	case syscall.ENOENT:
		return "-ENOENT"
	}
	return fmt.Sprintf("%d", -int(e))
}

// join is errors.Join that leaves a lone error as it is (callers and tests
// look at its type).
func join(errs ...error) error {
	var only error
	n := 0
	for _, e := range errs {
		if e != nil {
			only = e
			n++
		}
	}
	if n <= 1 {
		return only
	}
	return errors.Join(errs...)
}

// destroyTable runs every target's destructor, last first, even after one
// failed; it returns their errors joined.
func destroyTable(t *Table) error {
	var errs []error
	for i := len(t.Targets) - 1; i >= 0; i-- {
		ti := t.Targets[i]
		if d, ok := ti.Target.(Destructor); ok {
			if err := d.Dtr(ti); err != nil {
				errs = append(errs, err)
			}
		}
		ti.Deps = nil
	}
	return join(errs...)
}

// Clear destroys md's inactive table (DM_TABLE_CLEAR).
func (c *Control) Clear(name string) error {
	md, err := c.get(name, "clear")
	if err != nil {
		return err
	}
	if md.inactive != nil {
		t := md.inactive
		md.inactive = nil
		return destroyTable(t)
	}
	return nil
}

// Suspend suspends md (DM_DEV_SUSPEND with the suspend flag): presuspend,
// block new bios, wait for in-flight ones, postsuspend. Suspending a
// suspended device succeeds and does nothing.
func (c *Control) Suspend(name string) error {
	md, err := c.get(name, "suspend")
	if err != nil {
		return err
	}
	return md.suspend()
}

func (md *MappedDevice) suspend() error {
	if md.suspended {
		return nil
	}
	if md.live != nil {
		for _, ti := range md.live.Targets {
			if h, ok := ti.Target.(PreSuspender); ok {
				if err := h.PreSuspend(ti); err != nil {
					return err
				}
			}
		}
	}
	md.suspended = true
	if err := md.ctl.W.RunUntil(fmt.Sprintf("in-flight I/O on %s to drain", md.name), func() bool { return md.inflight == 0 }); err != nil {
		return err
	}
	if md.live != nil {
		for _, ti := range md.live.Targets {
			if h, ok := ti.Target.(PostSuspender); ok {
				h.PostSuspend(ti)
			}
		}
	}
	return nil
}

// Resume makes the inactive table live if there is one (suspending first),
// runs the targets' preresume checks and resumes (DM_DEV_SUSPEND without the
// suspend flag, i.e. do_resume). A failed preresume leaves the device
// suspended with the new table live. The replaced table is destroyed after
// the resume, successful or not.
func (c *Control) Resume(name string) error {
	md, err := c.get(name, "resume")
	if err != nil {
		return err
	}
	var old *Table
	if md.inactive != nil {
		if !md.suspended {
			if err := md.suspend(); err != nil {
				return err
			}
		}
		old = md.live
		// The queue limits are the new table's, computed before it is
		// bound: whether every target takes discards now.
		md.discards = tableDiscards(md.inactive)
		md.live = md.inactive
		md.inactive = nil
	}
	var rerr error
	if md.suspended {
		rerr = md.resume()
	}
	if old != nil {
		if err := destroyTable(old); err != nil {
			return join(rerr, err)
		}
	}
	if rerr == nil {
		// libdm (udev disabled) makes /dev/mapper/NAME after a
		// successful resume ioctl, even one that had nothing to do.
		md.hasNode = true
	}
	return rerr
}

func (md *MappedDevice) resume() error {
	if md.live == nil || len(md.live.Targets) == 0 {
		return &IoctlError{Ioctl: "resume", Dev: md.name, Errno: syscall.EINVAL}
	}
	if md.live != nil {
		for _, ti := range md.live.Targets {
			if h, ok := ti.Target.(PreResumer); ok {
				if err := h.PreResume(ti); err != nil {
					md.ctl.Log.Printf("table", "%s: %s: preresume failed, error = %d", md.dev, ti.Type.Name, -int(block.Errno(err)))
					return &IoctlError{Ioctl: "resume", Dev: md.name, Errno: block.Errno(err)}
				}
			}
		}
		var errs []error
		for _, ti := range md.live.Targets {
			if h, ok := ti.Target.(Resumer); ok {
				if err := h.Resume(ti); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if len(errs) > 0 {
			// Every target resumed as far as it could; the device runs
			// on, and the resume reports the simulator's failure.
			md.suspended = false
			md.kick()
			return join(errs...)
		}
	}
	md.suspended = false
	md.kick()
	return nil
}

// Remove destroys md (DM_DEV_REMOVE). It fails with EBUSY while another
// table, a counted handle (Open) or an outstanding user bio holds the
// device open. Handles still bound to the removed device get ENXIO.
func (c *Control) Remove(name string) error {
	md, err := c.get(name, "remove")
	if err != nil {
		return err
	}
	if c.openCount(md) > 0 {
		return &IoctlError{Ioctl: "remove", Dev: name, Errno: syscall.EBUSY}
	}
	var errs []error
	if md.inactive != nil {
		t := md.inactive
		md.inactive = nil
		if err := destroyTable(t); err != nil {
			errs = append(errs, err)
		}
	}
	if md.live != nil {
		if !md.suspended {
			if err := c.W.RunUntil("in-flight I/O on "+name+" to drain", func() bool { return md.inflight == 0 }); err != nil {
				return join(append(errs, err)...)
			}
			for _, ti := range md.live.Targets {
				if h, ok := ti.Target.(PreSuspender); ok {
					if err := h.PreSuspend(ti); err != nil {
						return join(append(errs, err)...)
					}
				}
			}
			for _, ti := range md.live.Targets {
				if h, ok := ti.Target.(PostSuspender); ok {
					h.PostSuspend(ti)
				}
			}
		}
		t := md.live
		md.live = nil
		if err := destroyTable(t); err != nil {
			errs = append(errs, err)
		}
	}
	md.removed = true
	for i, d := range c.devs {
		if d == md {
			c.devs = append(c.devs[:i], c.devs[i+1:]...)
			break
		}
	}
	q := md.deferred
	md.deferred = nil
	for _, b := range q {
		b.End(md.ioErr(b.Op.String(), b.Sector, b.Bytes(), syscall.ENXIO, fmt.Errorf("device removed")))
	}
	// The device is gone; a destructor's failure (the simulator's) is
	// still reported.
	return join(errs...)
}

// Message sends a target message (DM_TARGET_MSG) to the target at sector.
func (c *Control) Message(name string, sector uint64, args []string) (string, error) {
	md, err := c.get(name, "message")
	if err != nil {
		return "", err
	}
	if len(args) > 0 && strings.HasPrefix(args[0], "@") {
		// Messages to DM core itself (@cancel_deferred_remove, ...).
		c.Log.Printf("ioctl", "Unsupported message sent to DM core: %s", strings.Join(args, " "))
		return "", &IoctlError{Ioctl: "message", Dev: name, Errno: syscall.EINVAL}
	}
	if md.live == nil {
		c.Log.Printf("ioctl", "The device has no table.")
		return "", &IoctlError{Ioctl: "message", Dev: name, Errno: syscall.EINVAL}
	}
	ti := md.live.TargetAt(sector)
	if ti == nil {
		c.Log.Printf("ioctl", "Target message sector outside device.")
		return "", &IoctlError{Ioctl: "message", Dev: name, Errno: syscall.EINVAL}
	}
	m, ok := ti.Target.(Messager)
	if !ok {
		c.Log.Printf("ioctl", "Target type does not support messages")
		return "", &IoctlError{Ioctl: "message", Dev: name, Errno: syscall.EINVAL}
	}
	out, err := m.Message(ti, args)
	if err != nil {
		return "", &IoctlError{Ioctl: "message", Dev: name, Errno: block.Errno(err)}
	}
	return out, nil
}

// StatusLines returns md's live table status lines ("0 131072 snapshot 16/32768 16").
func (md *MappedDevice) StatusLines(inactive bool) []string {
	t := md.live
	if inactive {
		t = md.inactive
	}
	if t == nil {
		return nil
	}
	return t.Lines(func(ti *TargetInstance) string { return ti.Target.Status(ti) })
}

// TableLines returns md's live (or inactive) table lines.
func (md *MappedDevice) TableLines(inactive bool) []string {
	t := md.live
	if inactive {
		t = md.inactive
	}
	if t == nil {
		return nil
	}
	return t.Lines(func(ti *TargetInstance) string { return ti.Target.Table(ti) })
}

// TableEvent signals a table event (dm_table_event), as a target does when
// its state changes (e.g. a snapshot is invalidated).
func (ti *TargetInstance) TableEvent() {
	if ti.Table.md != nil && (ti.Table.md.live == ti.Table) {
		ti.Table.md.eventNr++
	}
}
