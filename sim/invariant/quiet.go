package invariant

import (
	"fmt"
	"syscall"

	"snaplab/sim/block"
	"snaplab/sim/dm"
)

// quiet is a read-only view of a simulated node that reaches the bytes
// below every fault layer: a checker's reads must not fire fault rules,
// draw their randomness or count as operations, or the run it checks would
// change. Reads through a dm device follow its live table's synchronous
// mapping (linear, zero), as an exception store's own I/O does.
type quiet struct{ n dm.Node }

// unwrapper is a device layered over another (block.Faulty).
type unwrapper interface{ Unwrap() block.Device }

func (q quiet) Name() string { return q.n.Name() }
func (q quiet) Size() int64  { return q.n.Size() }
func (q quiet) Flush() error { return nil }

func (q quiet) WriteAt(p []byte, off int64) (int, error) {
	return 0, &block.Error{Dev: q.n.Name(), Op: "write", Off: off, Len: int64(len(p)), Errno: syscall.EROFS,
		Err: fmt.Errorf("a checker's view of the device is read-only")}
}

func (q quiet) ReadAt(p []byte, off int64) (int, error) {
	if err := peek(q.n, p, off, 0); err != nil {
		return 0, err
	}
	return len(p), nil
}

// maxStack bounds how deep peek follows dm devices stacked on each other
// (a table cannot name its own device, but a checker must never loop).
const maxStack = 16

// peek reads len(p) bytes at off of n without side effects.
func peek(n dm.Node, p []byte, off int64, depth int) error {
	if err := block.CheckRange(n.Name(), "read", n.Size(), off, int64(len(p))); err != nil {
		return err
	}
	switch d := n.(type) {
	case *dm.Disk:
		var dev block.Device = d.Device
		for {
			u, ok := dev.(unwrapper)
			if !ok {
				break
			}
			dev = u.Unwrap()
		}
		_, err := dev.ReadAt(p, off)
		return err
	case *dm.MappedDevice:
		if depth >= maxStack {
			return &block.Error{Dev: d.Name(), Op: "read", Off: off, Len: int64(len(p)), Errno: syscall.ELOOP,
				Err: fmt.Errorf("devices stacked more than %d deep", maxStack)}
		}
		t := d.Live()
		for len(p) > 0 {
			sector := uint64(off) / block.SectorSize
			ti := t.TargetAt(sector)
			if ti == nil {
				return &block.Error{Dev: d.Name(), Op: "read", Off: off, Len: int64(len(p)), Errno: syscall.EIO, Err: fmt.Errorf("no target at sector %d", sector)}
			}
			sm, ok := ti.Target.(dm.SyncMapper)
			if !ok {
				return &block.Error{Dev: d.Name(), Op: "read", Off: off, Len: int64(len(p)), Errno: syscall.EIO,
					Err: fmt.Errorf("target %s at sector %d cannot be read synchronously", ti.Type.Name, sector)}
			}
			rel := sector - ti.Begin
			k := min(uint64(len(p)), (ti.Len-rel)*block.SectorSize-uint64(off)%block.SectorSize)
			lower, lsec, err := sm.SyncMap(ti, rel)
			if err != nil {
				return err
			}
			if lower == nil {
				clear(p[:k])
			} else if err := peek(lower, p[:k], int64(lsec)*block.SectorSize+off%block.SectorSize, depth+1); err != nil {
				return err
			}
			p = p[k:]
			off += int64(k)
		}
		return nil
	}
	return &block.Error{Dev: n.Name(), Op: "read", Off: off, Len: int64(len(p)), Errno: syscall.EIO,
		Err: fmt.Errorf("a checker cannot read a %T without side effects", n)}
}
