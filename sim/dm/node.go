package dm

import (
	"fmt"
	"syscall"

	"snaplab/sim/block"
	"snaplab/sim/world"
)

// DevNum is a device number as the kernel prints it ("253:2").
type DevNum struct{ Major, Minor uint32 }

func (d DevNum) String() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

// Device numbers: dm devices use major 253 and the lowest free minor, as the
// kernel's idr does; disks are virtio-blk disks (major 254, 16 minors each)
// in declaration order, which is how the vm and kernel executors attach them.
const (
	DMMajor     = 253
	VirtioMajor = 254
)

// Op is a bio operation.
type Op uint8

// Operations.
const (
	OpRead Op = iota
	OpWrite
	OpFlush
	OpDiscard
)

func (o Op) String() string {
	switch o {
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpFlush:
		return "flush"
	case OpDiscard:
		return "discard"
	}
	return fmt.Sprintf("op%d", o)
}

// Bio is one I/O request travelling through the device stack. Sector is
// relative to the receiver (a device, or a target's start once mapped).
// Data holds the payload for writes and receives it for reads; for discards
// only its length matters (Len).
type Bio struct {
	Op     Op
	Sector uint64
	Data   []byte
	Len    uint64 // bytes, for OpDiscard (Data is nil)
	FUA    bool
	end    func(error)
	parent *Bio          // ended with this bio when end is nil (Child)
	dev    *MappedDevice // the device whose in-flight count this bio holds, with parent
	ended  bool
}

// NewBio returns a bio that calls end once when it completes.
func NewBio(op Op, sector uint64, data []byte, fua bool, end func(error)) *Bio {
	return &Bio{Op: op, Sector: sector, Data: data, FUA: fua, end: end}
}

// Bytes is the bio's length in bytes.
func (b *Bio) Bytes() uint64 {
	if b.Op == OpDiscard {
		return b.Len
	}
	return uint64(len(b.Data))
}

// Sectors is the bio's length in sectors.
func (b *Bio) Sectors() uint64 { return b.Bytes() / block.SectorSize }

// End completes the bio. Further calls are ignored.
func (b *Bio) End(err error) {
	if b.ended {
		return
	}
	b.ended = true
	switch {
	case b.end != nil:
		b.end(err)
	case b.parent != nil:
		if b.dev != nil {
			b.dev.inflight-- // the only piece of a bio dispatched by dev
		}
		b.parent.End(err)
	}
}

// Clone returns a bio for the same payload with a new completion.
func (b *Bio) Clone(sector uint64, end func(error)) *Bio {
	return &Bio{Op: b.Op, Sector: sector, Data: b.Data, Len: b.Len, FUA: b.FUA, end: end}
}

// Child returns a bio for the same payload at sector whose completion
// completes b: Clone(sector, b.End) without allocating the method value.
func (b *Bio) Child(sector uint64) *Bio {
	return &Bio{Op: b.Op, Sector: sector, Data: b.Data, Len: b.Len, FUA: b.FUA, parent: b}
}

// Node is anything a table line can name: a disk or a mapped device.
//
// Submit is the asynchronous path every bio takes; the synchronous
// block.Device methods are for targets that do direct I/O (exception
// stores, kcopyd) within an event.
type Node interface {
	block.Device
	Dev() DevNum
	Submit(b *Bio)
	// LogicalBlockSize in bytes.
	LogicalBlockSize() uint32
}

// Latencies of simulated I/O, in virtual time.
const (
	DiskLatency   = 20 * world.Microsecond
	KcopyLatency  = 50 * world.Microsecond
	CommitLatency = 10 * world.Microsecond
)

// Disk is a block.Device attached to the simulated machine.
type Disk struct {
	block.Device
	w   *world.World
	dev DevNum
	lbs uint32
}

// Dev implements Node.
func (d *Disk) Dev() DevNum { return d.dev }

// LogicalBlockSize implements Node.
func (d *Disk) LogicalBlockSize() uint32 { return d.lbs }

// WriteAtFUA implements block.FUAWriter: the disk's own FUA write (an
// embedded interface would hide it, and a FUA write would become a write
// and a flush of the whole disk).
func (d *Disk) WriteAtFUA(p []byte, off int64) (int, error) { return block.WriteFUA(d.Device, p, off) }

// Submit performs the bio on the device in a later event.
func (d *Disk) Submit(b *Bio) {
	d.w.After(DiskLatency, "disk.io", func() { b.End(DoSync(d.Device, b)) })
}

// DoSync performs b on dev synchronously; b.Sector is relative to dev.
func DoSync(dev block.Device, b *Bio) error {
	off := int64(b.Sector) * block.SectorSize
	var err error
	switch b.Op {
	case OpRead:
		_, err = dev.ReadAt(b.Data, off)
	case OpWrite:
		if b.FUA {
			_, err = block.WriteFUA(dev, b.Data, off)
		} else {
			_, err = dev.WriteAt(b.Data, off)
		}
	case OpFlush:
		err = block.FlushAt(dev, off)
	case OpDiscard:
		if err = block.CheckRange(dev.Name(), "discard", dev.Size(), off, int64(b.Len)); err == nil {
			if dc, ok := dev.(block.Discarder); ok {
				err = dc.Discard(off, int64(b.Len))
			}
		}
	default:
		err = &block.Error{Dev: dev.Name(), Op: b.Op.String(), Off: off, Errno: syscall.EINVAL}
	}
	return err
}
