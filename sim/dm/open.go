package dm

import (
	"fmt"
	"syscall"

	"snaplab/sim/block"
)

// Handle is an open of a disk or a mapped device, as a process holds an
// open file descriptor on its block device node (blkdev_get, dm_blk_open).
//
// A Handle is bound to the device it was opened on, not to the name: once
// that device is removed its I/O fails with ENXIO, and it never reaches a
// device created later under the same name. A counted handle counts in the
// device's open count (dmsetup info's "Open count") until it is closed, so
// `dmsetup remove` refuses the device with EBUSY and `remove --force` leaves
// it with an error table; an uncounted one does not (a harness stand-in
// for short per-I/O opens, see vmtest/guestexec). Disks have no open count:
// opening one counts nothing.
type Handle struct {
	node    Node
	md      *MappedDevice // nil for a disk
	counted bool
	closed  bool
}

// Open opens the named disk or mapped device. It fails with ENXIO, as the
// kernel's open of a device node without a device does, when there is no
// such device, or when the mapped device has no gendisk yet (no table was
// ever loaded: the kernel adds the disk at the first table load).
func (c *Control) Open(name string, counted bool) (*Handle, error) {
	n := c.Node(name)
	if n == nil {
		return nil, &block.Error{Dev: name, Op: "open", Errno: syscall.ENXIO, Err: fmt.Errorf("no disk or dm device named %s", name)}
	}
	h := &Handle{node: n, counted: counted}
	if md, ok := n.(*MappedDevice); ok {
		if !md.everLoaded {
			return nil, &block.Error{Dev: name, Op: "open", Errno: syscall.ENXIO, Err: fmt.Errorf("dm device %s (%s) has no gendisk: no table was ever loaded", name, md.dev)}
		}
		h.md = md
		if counted {
			md.opens++
		}
	}
	return h, nil
}

// Node is the disk or mapped device the handle was opened on.
func (h *Handle) Node() Node { return h.node }

// Name is the name of the device the handle was opened on.
func (h *Handle) Name() string { return h.node.Name() }

// Counted reports whether the handle counts in its device's open count.
func (h *Handle) Counted() bool { return h.counted }

// Closed reports whether Close was called.
func (h *Handle) Closed() bool { return h.closed }

// Gone reports whether the device the handle was opened on has been
// removed (its name may since belong to another device).
func (h *Handle) Gone() bool { return h.md != nil && h.md.removed }

// Close releases the handle; closing twice is harmless.
func (h *Handle) Close() {
	if h.closed {
		return
	}
	h.closed = true
	if h.md != nil && h.counted && h.md.opens > 0 {
		h.md.opens--
	}
}

// Submit submits a user bio through the handle: to the device it was opened
// on (a mapped device counts it as outstanding user I/O until it ends). A
// removed device ends it with ENXIO; a closed handle with EBADF.
func (h *Handle) Submit(b *Bio) {
	if h.closed {
		b.End(&block.Error{Dev: h.node.Name(), Op: b.Op.String(), Off: int64(b.Sector) * block.SectorSize, Len: int64(b.Bytes()),
			Errno: syscall.EBADF, Err: fmt.Errorf("handle closed")})
		return
	}
	if h.md != nil {
		h.md.SubmitUser(b) // a removed device ends it with ENXIO
		return
	}
	h.node.Submit(b)
}

// HasNode reports whether libdm has made the device's /dev/mapper node:
// with udev disabled (DM_DISABLE_UDEV=1, as the kernel executor runs
// dmsetup) the node appears at the first successful resume, and goes with
// the device. A path-based open of a device without one fails with ENOENT.
func (md *MappedDevice) HasNode() bool { return md.hasNode && !md.removed }

// Opens is how many counted handles hold md open.
func (md *MappedDevice) Opens() int { return md.opens }

// Removed reports whether md has been removed (DM_DEV_REMOVE).
func (md *MappedDevice) Removed() bool { return md.removed }
