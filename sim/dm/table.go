package dm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
)

// Target is an instance of a target type in a table: one line of it.
// Map receives bios whose Sector is relative to the target's start and that
// never cross the target's end or a MaxIO boundary; it must end every bio
// eventually, directly or by remapping it.
type Target interface {
	Map(ti *TargetInstance, b *Bio)
	// Status is the STATUSTYPE_INFO text (after "start len type ").
	Status(ti *TargetInstance) string
	// Table is the STATUSTYPE_TABLE text.
	Table(ti *TargetInstance) string
}

// Optional target hooks, discovered by type assertion as the kernel's
// target_type callbacks are optional. PreSuspend, Resume and Dtr return void
// in the kernel; here they return the simulator's own failure: a hook that
// waits (for a merge to stop, pending exceptions to finish, in-flight I/O to
// drain) returns *world.ErrStuck when the world goes quiet first, where the
// kernel would hang. The ioctl then fails with it.
type (
	PreSuspender interface {
		PreSuspend(ti *TargetInstance) error
	}
	PostSuspender interface{ PostSuspend(ti *TargetInstance) }
	PreResumer    interface {
		PreResume(ti *TargetInstance) error
	}
	Resumer interface {
		Resume(ti *TargetInstance) error
	}
	Destructor interface {
		Dtr(ti *TargetInstance) error
	}
	Messager interface {
		Message(ti *TargetInstance, args []string) (string, error)
	}
	// MaxIOer limits bios to boundaries of MaxIO sectors relative to the
	// target's start (ti->max_io_len); 0 means no limit.
	MaxIOer interface {
		MaxIO(ti *TargetInstance) uint64
	}
	// SyncMapper lets a target serve synchronous I/O (when its device is
	// the lower device of an exception store).
	SyncMapper interface {
		SyncMap(ti *TargetInstance, sector uint64) (Node, uint64, error)
	}
	// DiscardTarget is a target that takes discards
	// (ti->num_discard_bios > 0) when SupportsDiscard says so: a target
	// that does not implement it takes none, and a device whose live
	// table has such a target does not support discards at all
	// (dm_table_supports_discards).
	DiscardTarget interface {
		SupportsDiscard(ti *TargetInstance) bool
	}
)

// SupportsDiscard reports whether node n takes discards (its queue's
// max_discard_sectors is not 0): every simulated disk does (one whose
// device cannot discard completes them doing nothing, DoSync); a mapped
// device if it has a live table and every target of it did when that
// table was swapped in (Linux 6.1's dm_table_supports_discards: each
// target has discard bios and either takes them itself or all its
// devices do). Queue limits are computed at the swap and not again: a
// handover destination resumed while its source existed keeps the
// source's chunk size as its discard limit after the source is removed
// (discard-handover-limits.scn).
func SupportsDiscard(n Node) bool {
	switch d := n.(type) {
	case *Disk:
		return true
	case *MappedDevice:
		return d.live != nil && d.discards
	}
	return false
}

// tableDiscards is dm_table_supports_discards for table t about to go
// live, with its queue's max_discard_sectors not 0.
func tableDiscards(t *Table) bool {
	if t == nil || len(t.Targets) == 0 {
		return false
	}
	for _, ti := range t.Targets {
		dt, ok := ti.Target.(DiscardTarget)
		if !ok || !dt.SupportsDiscard(ti) {
			return false
		}
	}
	return true
}

// CtrError is a constructor failure: the kernel's ti->error and errno.
type CtrError struct {
	Msg   string
	Errno syscall.Errno
}

func (e *CtrError) Error() string { return e.Msg }

// Errf returns a *CtrError with errno EINVAL.
func Errf(format string, a ...any) *CtrError {
	return &CtrError{Msg: fmt.Sprintf(format, a...), Errno: syscall.EINVAL}
}

// TargetType constructs targets of one type.
type TargetType struct {
	Name    string
	Version [3]int
	// Ctr builds the target from its arguments; errors are *CtrError.
	Ctr func(ti *TargetInstance, args []string) (Target, error)
}

// TargetInstance is a target in a table: the kernel's struct dm_target.
type TargetInstance struct {
	Table  *Table
	Type   *TargetType
	Begin  uint64 // sectors
	Len    uint64 // sectors
	Args   []string
	Target Target
	// Deps are the nodes this target opened (dm_get_device).
	Deps []Node
}

// Control returns the control plane the target lives in.
func (ti *TargetInstance) Control() *Control { return ti.Table.ctl }

// GetDevice opens a device named by path, as dm_get_device does.
func (ti *TargetInstance) GetDevice(path string) (Node, error) {
	n, err := ti.Table.ctl.lookupNode(path)
	if err != nil {
		return nil, &noDeviceError{err}
	}
	if md, ok := n.(*MappedDevice); ok && md == ti.Table.md {
		return nil, fmt.Errorf("device %s refers to itself", path)
	}
	ti.Deps = append(ti.Deps, n)
	return n, nil
}

// noDeviceError is a path that names no device.
type noDeviceError struct{ error }

func (e *noDeviceError) Unwrap() error { return e.error }

// DeviceErrno is the errno a constructor returns when GetDevice failed
// with err: the profile's for a path naming no device (ENODEV on 6.1,
// ENOENT on 6.12), else ENODEV.
func (ti *TargetInstance) DeviceErrno(err error) syscall.Errno {
	var nd *noDeviceError
	if errors.As(err, &nd) {
		return ti.Table.ctl.Profile.NoDeviceErrno
	}
	return syscall.ENODEV
}

// FreedDeviceName stands, in the kernel's "device NAME not in table
// devices list", for a name read from freed memory (6.12's snapshot
// constructor; sim/profile SameDevicePutTwice): the kernel executor
// normalises such a name to it.
const FreedDeviceName = "(freed)"

// PutFreedDevice models a dm_put_device on a table device that a mode
// upgrade already freed (sim/profile SameDevicePutTwice): the put finds
// nothing, logging the freed name, and the reference the table still holds
// on n is reported when the table is destroyed.
func (ti *TargetInstance) PutFreedDevice(n Node) {
	ti.Table.ctl.Log.Printf("table", "%s: device %s not in table devices list", ti.Table.md.dev, FreedDeviceName)
	ti.Table.leaked = append(ti.Table.leaked, n)
}

// Device is the mapped device holding the target's table.
func (ti *TargetInstance) Device() *MappedDevice { return ti.Table.md }

// Suspended reports whether the target's mapped device is suspended
// (dm_suspended(ti)).
func (ti *TargetInstance) Suspended() bool { return ti.Table.md != nil && ti.Table.md.suspended }

// Remap sends b (relative to the target) to node at sector; b ends when
// the lower bio does.
func (ti *TargetInstance) Remap(b *Bio, node Node, sector uint64) {
	node.Submit(b.Child(sector))
}

// Table is a device-mapper table: targets in sector order, no gaps.
type Table struct {
	ctl     *Control
	md      *MappedDevice
	Targets []*TargetInstance
	Mode    string // "rw" or "r"
	// leaked are devices a failed constructor released once too few
	// times: the table's destruction reports each (LeakDevice).
	leaked []Node
}

// Size is the table's length in sectors.
func (t *Table) Size() uint64 {
	if len(t.Targets) == 0 {
		return 0
	}
	last := t.Targets[len(t.Targets)-1]
	return last.Begin + last.Len
}

// Lines renders each target as "start len type params" using fn for params.
func (t *Table) Lines(fn func(ti *TargetInstance) string) []string {
	out := make([]string, len(t.Targets))
	for i, ti := range t.Targets {
		out[i] = fmt.Sprintf("%d %d %s %s", ti.Begin, ti.Len, ti.Type.Name, fn(ti))
	}
	return out
}

// TableLine is one parsed "start length type args..." line.
type TableLine struct {
	Start, Len uint64
	Type       string
	Args       []string
}

// FormatError is a table text dmsetup cannot parse.
type FormatError struct{ Line int }

func (e *FormatError) Error() string {
	return fmt.Sprintf("Invalid format on line %d of table .", e.Line)
}

// ParseTable splits table text as dmsetup does: lines separated by
// newlines, '#' starts a comment, blank lines are skipped, each line is
// "start length type params". libdm escapes backslashes before the kernel
// splits params on white space, so params are plain white-space separated
// words.
func ParseTable(text string) ([]TableLine, error) {
	var out []TableLine
	for i, raw := range strings.Split(text, "\n") {
		line := raw
		if j := strings.IndexByte(line, '#'); j >= 0 {
			line = line[:j]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 3 {
			return nil, &FormatError{Line: i + 1}
		}
		start, err1 := strconv.ParseUint(f[0], 10, 64)
		n, err2 := strconv.ParseUint(f[1], 10, 64)
		if err1 != nil || err2 != nil || len(f[2]) >= 16 {
			return nil, &FormatError{Line: i + 1}
		}
		out = append(out, TableLine{Start: start, Len: n, Type: f[2], Args: f[3:]})
	}
	return out, nil
}
