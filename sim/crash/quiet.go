package crash

import (
	"fmt"
	"syscall"

	"snaplab/sim/block"
	"snaplab/sim/dm"
)

// view is a read-only view of a node of the run the checker follows that
// reads below every fault layer: what the checker reads of the running
// scenario (the live view, the pre-image, the tables a COW held) must not
// fire a fault rule, draw a rule's randomness or count as an operation of
// the run, or the run would change and fail reads the scenario never
// made. A scenario disk is read in its memory disk (the volatile cache
// visible), a dm device through its live table's synchronous mapping
// (linear, zero), as an exception store's own I/O is.
type view struct {
	c *checker
	n dm.Node
}

// maxStack bounds how deep a view follows dm devices stacked on each
// other (a table cannot name its own device, but the checker must never
// loop).
const maxStack = 16

func (c *checker) view(n dm.Node) view { return view{c: c, n: n} }

func (v view) Name() string { return v.n.Name() }
func (v view) Size() int64  { return v.n.Size() }
func (v view) Flush() error { return nil }

func (v view) WriteAt(p []byte, off int64) (int, error) {
	return 0, &block.Error{Dev: v.n.Name(), Op: "write", Off: off, Len: int64(len(p)), Errno: syscall.EROFS,
		Err: fmt.Errorf("the crash checker's view of the run is read-only")}
}

func (v view) ReadAt(p []byte, off int64) (int, error) {
	if err := v.c.peek(v.n, p, off, 0); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Map reports a scenario disk's extents (its memory disk's), so fill
// skips holes; anything else is one data extent.
func (v view) Map(off, length int64) ([]block.Extent, error) {
	if d, ok := v.n.(*dm.Disk); ok {
		if w, ok := d.Device.(*disk); ok && w.c == v.c {
			return w.mem.Map(off, length)
		}
	}
	if err := block.CheckRange(v.n.Name(), "map", v.n.Size(), off, length); err != nil {
		return nil, err
	}
	return []block.Extent{{Off: off, Len: length}}, nil
}

// peek reads len(p) bytes at off of n without side effects on the run.
func (c *checker) peek(n dm.Node, p []byte, off int64, depth int) error {
	if err := block.CheckRange(n.Name(), "read", n.Size(), off, int64(len(p))); err != nil {
		return err
	}
	switch d := n.(type) {
	case *dm.Disk:
		if w, ok := d.Device.(*disk); ok && w.c == c {
			_, err := w.mem.ReadAt(p, off)
			return err
		}
		return &block.Error{Dev: d.Name(), Op: "read", Off: off, Len: int64(len(p)), Errno: syscall.EIO,
			Err: fmt.Errorf("disk %s is not one the crash checker follows (%T): it cannot be read below its fault layer", d.Name(), d.Device)}
	case *dm.MappedDevice:
		if depth >= maxStack {
			return &block.Error{Dev: d.Name(), Op: "read", Off: off, Len: int64(len(p)), Errno: syscall.ELOOP,
				Err: fmt.Errorf("devices stacked more than %d deep", maxStack)}
		}
		t := d.Live()
		if t == nil {
			return &block.Error{Dev: d.Name(), Op: "read", Off: off, Len: int64(len(p)), Errno: syscall.ENXIO,
				Err: fmt.Errorf("no live table")}
		}
		for len(p) > 0 {
			sector := uint64(off) / block.SectorSize
			ti := t.TargetAt(sector)
			if ti == nil {
				return &block.Error{Dev: d.Name(), Op: "read", Off: off, Len: int64(len(p)), Errno: syscall.EIO,
					Err: fmt.Errorf("no target at sector %d", sector)}
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
				return fmt.Errorf("%s at byte %d: %w", d.Name(), off, err)
			}
			if lower == nil {
				clear(p[:k])
			} else if err := c.peek(lower, p[:k], int64(lsec)*block.SectorSize+off%block.SectorSize, depth+1); err != nil {
				return err
			}
			p = p[k:]
			off += int64(k)
		}
		return nil
	}
	return &block.Error{Dev: n.Name(), Op: "read", Off: off, Len: int64(len(p)), Errno: syscall.EIO,
		Err: fmt.Errorf("the crash checker cannot read a %T without side effects", n)}
}
