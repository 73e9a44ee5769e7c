package dm

import (
	"fmt"
	"syscall"

	"snaplab/sim/block"
)

// MappedDevice is a device-mapper device (struct mapped_device): a name, a
// live and an inactive table, and a suspend state.
type MappedDevice struct {
	ctl      *Control
	name     string
	uuid     string
	dev      DevNum
	live     *Table
	inactive *Table
	readOnly bool

	suspended   bool // user-visible (dmsetup suspend)
	internal    int  // internal suspends (dm_internal_suspend_fast), nested
	deferred    []*Bio
	inflight    int
	eventNr     uint32
	removed     bool
	everLoaded  bool // a table was loaded once: the gendisk exists
	userPending int  // bios submitted by users and not yet ended
	opens       int  // counted handles open on the device (Control.Open)
	hasNode     bool // libdm made /dev/mapper/NAME (first successful resume)
	// discards is whether the queue takes discards, computed when the
	// live table was swapped in (dm_swap_table's queue limits) and kept
	// until the next swap, whatever happens to its devices meanwhile.
	discards bool
}

// Name is the device's name.
func (md *MappedDevice) Name() string { return md.name }

// UUID is the device's uuid ("" if none).
func (md *MappedDevice) UUID() string { return md.uuid }

// Dev implements Node.
func (md *MappedDevice) Dev() DevNum { return md.dev }

// Live returns the live table or nil.
func (md *MappedDevice) Live() *Table { return md.live }

// Inactive returns the inactive table or nil.
func (md *MappedDevice) Inactive() *Table { return md.inactive }

// IsSuspended reports the user-visible suspend state.
func (md *MappedDevice) IsSuspended() bool { return md.suspended }

// Size implements block.Device: the live table's size in bytes.
func (md *MappedDevice) Size() int64 {
	if md.live == nil {
		return 0
	}
	return int64(md.live.Size()) * block.SectorSize
}

// LogicalBlockSize implements Node: the largest of the lower devices'.
func (md *MappedDevice) LogicalBlockSize() uint32 {
	lbs := uint32(block.SectorSize)
	if md.live != nil {
		for _, ti := range md.live.Targets {
			for _, d := range ti.Deps {
				if l := d.LogicalBlockSize(); l > lbs {
					lbs = l
				}
			}
		}
	}
	return lbs
}

func (md *MappedDevice) ioErr(op string, sector, n uint64, errno syscall.Errno, cause error) error {
	return &block.Error{Dev: md.name, Op: op, Off: int64(sector) * block.SectorSize, Len: int64(n), Errno: errno, Err: cause}
}

// SubmitUser submits a bio on behalf of a user (scenario, guest, NBD
// client): counted as holding the device open until it ends.
func (md *MappedDevice) SubmitUser(b *Bio) {
	md.userPending++
	end := b.end
	b.end = func(err error) {
		md.userPending--
		if end != nil {
			end(err)
		}
	}
	md.Submit(b)
}

// Submit implements Node: the dm core's entry point (dm_submit_bio).
func (md *MappedDevice) Submit(b *Bio) {
	if md.removed {
		b.End(md.ioErr(b.Op.String(), b.Sector, b.Bytes(), syscall.ENXIO, fmt.Errorf("device removed")))
		return
	}
	if b.Op == OpDiscard && !SupportsDiscard(md) {
		// The queue advertises no discard support: BLKDISCARD fails with
		// EOPNOTSUPP before any bio is made, submit_bio_noacct fails a
		// discard bio with BLK_STS_NOTSUPP.
		b.End(md.ioErr("discard", b.Sector, b.Bytes(), syscall.EOPNOTSUPP, fmt.Errorf("device does not support discard")))
		return
	}
	if md.suspended || md.internal > 0 {
		md.deferred = append(md.deferred, b)
		return
	}
	md.dispatch(b)
}

func (md *MappedDevice) dispatch(b *Bio) {
	t := md.live
	size := uint64(0)
	if t != nil {
		size = t.Size()
	}
	if b.Op != OpFlush {
		if b.Bytes()%block.SectorSize != 0 {
			b.End(md.ioErr(b.Op.String(), b.Sector, b.Bytes(), syscall.EINVAL, fmt.Errorf("length not a multiple of %d", block.SectorSize)))
			return
		}
		if b.Sector+b.Sectors() > size || b.Sector > size {
			errno := syscall.EINVAL
			if b.Op == OpWrite {
				errno = syscall.ENOSPC
			}
			b.End(md.ioErr(b.Op.String(), b.Sector, b.Bytes(), errno, fmt.Errorf("beyond device end (%d sectors)", size)))
			return
		}
		if b.Op == OpWrite && md.readOnly {
			b.End(md.ioErr("write", b.Sector, b.Bytes(), syscall.EROFS, fmt.Errorf("read-only device")))
			return
		}
	}
	if t == nil || len(t.Targets) == 0 {
		b.End(md.ioErr(b.Op.String(), b.Sector, b.Bytes(), syscall.EIO, fmt.Errorf("no table")))
		return
	}
	md.inflight++
	// Every piece is made before the first is mapped: a target may end
	// its piece at once.
	type piece struct {
		ti *TargetInstance
		b  *Bio
	}
	var buf [4]piece
	pieces := buf[:0]
	if b.Op == OpFlush {
		for _, ti := range t.Targets {
			pieces = append(pieces, piece{ti, &Bio{Op: OpFlush}})
		}
	} else {
		sector := b.Sector
		end := b.Sector + b.Sectors()
		if b.Sectors() == 0 {
			end = sector
		}
		for sector < end || (len(pieces) == 0 && sector == end) {
			ti := t.TargetAt(sector)
			if ti == nil {
				break
			}
			rel := sector - ti.Begin
			n := min(end-sector, ti.Len-rel)
			if m, ok := ti.Target.(MaxIOer); ok {
				if max := m.MaxIO(ti); max > 0 {
					n = min(n, max-rel%max)
				}
			}
			pb := &Bio{Op: b.Op, Sector: rel, FUA: b.FUA}
			if b.Op == OpDiscard {
				pb.Len = n * block.SectorSize
			} else {
				lo := (sector - b.Sector) * block.SectorSize
				pb.Data = b.Data[lo : lo+n*block.SectorSize]
			}
			pieces = append(pieces, piece{ti, pb})
			sector += n
			if n == 0 {
				break
			}
		}
	}
	if len(pieces) == 1 {
		// A single piece ends the bio itself (the usual case: no
		// completion count to allocate).
		pieces[0].b.parent, pieces[0].b.dev = b, md
	} else {
		// The pieces' completions, gathered: one allocation.
		fan := &struct {
			firstErr  error
			remaining int
		}{remaining: len(pieces)}
		done := func(err error) {
			if err != nil && fan.firstErr == nil {
				fan.firstErr = err
			}
			fan.remaining--
			if fan.remaining == 0 {
				md.inflight--
				b.End(fan.firstErr)
			}
		}
		for _, p := range pieces {
			p.b.end = done
		}
	}
	for _, p := range pieces {
		p.ti.Target.Map(p.ti, p.b)
	}
}

// TargetAt returns the target covering sector, or nil.
func (t *Table) TargetAt(sector uint64) *TargetInstance {
	lo, hi := 0, len(t.Targets)
	for lo < hi {
		m := (lo + hi) / 2
		ti := t.Targets[m]
		switch {
		case sector < ti.Begin:
			hi = m
		case sector >= ti.Begin+ti.Len:
			lo = m + 1
		default:
			return ti
		}
	}
	return nil
}

// InternalSuspend blocks new bios and waits for in-flight ones, without
// touching the user-visible state (dm_internal_suspend_fast).
func (md *MappedDevice) InternalSuspend() error {
	md.internal++
	return md.ctl.W.RunUntil(fmt.Sprintf("in-flight I/O on %s to drain", md.name), func() bool { return md.inflight == 0 })
}

// InternalResume undoes InternalSuspend.
func (md *MappedDevice) InternalResume() {
	if md.internal > 0 {
		md.internal--
	}
	md.kick()
}

func (md *MappedDevice) kick() {
	if md.suspended || md.internal > 0 {
		return
	}
	q := md.deferred
	md.deferred = nil
	for _, b := range q {
		md.dispatch(b)
	}
}

// Synchronous block.Device view, for exception stores and kcopyd when this
// device is another target's lower device.

func (md *MappedDevice) syncIO(op string, p []byte, off int64, fn func(n Node, p []byte, off int64) error) error {
	if err := block.CheckRange(md.name, op, md.Size(), off, int64(len(p))); err != nil {
		return err
	}
	for len(p) > 0 {
		sector := uint64(off) / block.SectorSize
		ti := md.live.TargetAt(sector)
		sm, ok := ti.Target.(SyncMapper)
		if !ok {
			return md.ioErr(op, sector, uint64(len(p)), syscall.EIO, fmt.Errorf("target %s cannot serve synchronous I/O", ti.Type.Name))
		}
		rel := sector - ti.Begin
		n := min(uint64(len(p)), (ti.Len-rel)*block.SectorSize-uint64(off)%block.SectorSize)
		node, lsec, err := sm.SyncMap(ti, rel)
		if err != nil {
			return err
		}
		if node == nil { // zero target
			if op == "read" {
				clear(p[:n])
			}
		} else if err := fn(node, p[:n], int64(lsec)*block.SectorSize+off%block.SectorSize); err != nil {
			return err
		}
		p = p[n:]
		off += int64(n)
	}
	return nil
}

// ReadAt implements block.Device synchronously.
func (md *MappedDevice) ReadAt(p []byte, off int64) (int, error) {
	err := md.syncIO("read", p, off, func(n Node, p []byte, off int64) error { _, err := n.ReadAt(p, off); return err })
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAt implements block.Device synchronously.
func (md *MappedDevice) WriteAt(p []byte, off int64) (int, error) {
	err := md.syncIO("write", p, off, func(n Node, p []byte, off int64) error { _, err := n.WriteAt(p, off); return err })
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAtFUA implements block.FUAWriter synchronously.
func (md *MappedDevice) WriteAtFUA(p []byte, off int64) (int, error) {
	err := md.syncIO("write", p, off, func(n Node, p []byte, off int64) error { _, err := block.WriteFUA(n, p, off); return err })
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush implements block.Device: flushes every lower device.
func (md *MappedDevice) Flush() error {
	if md.live == nil {
		return nil
	}
	for _, ti := range md.live.Targets {
		for _, d := range ti.Deps {
			if err := d.Flush(); err != nil {
				return err
			}
		}
	}
	return nil
}
