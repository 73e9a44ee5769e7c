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

func (c *checker) view(n dm.Node) view { return view{c: c, n: n} }

func (v view) Name() string { return v.n.Name() }
func (v view) Size() int64  { return v.n.Size() }
func (v view) Flush() error { return nil }

func (v view) WriteAt(p []byte, off int64) (int, error) {
	return 0, &block.Error{Dev: v.n.Name(), Op: "write", Off: off, Len: int64(len(p)), Errno: syscall.EROFS,
		Err: fmt.Errorf("the crash checker's view of the run is read-only")}
}

func (v view) ReadAt(p []byte, off int64) (int, error) {
	if err := v.c.peek(v.n, p, off); err != nil {
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

// peek reads len(p) bytes at off of n without side effects on the run: a
// scenario disk in its memory disk.
func (c *checker) peek(n dm.Node, p []byte, off int64) error {
	return dm.Peek(n, p, off, func(d *dm.Disk, p []byte, off int64) error {
		if w, ok := d.Device.(*disk); ok && w.c == c {
			_, err := w.mem.ReadAt(p, off)
			return err
		}
		return &block.Error{Dev: d.Name(), Op: "read", Off: off, Len: int64(len(p)), Errno: syscall.EIO,
			Err: fmt.Errorf("disk %s is not one the crash checker follows (%T): it cannot be read below its fault layer", d.Name(), d.Device)}
	})
}
