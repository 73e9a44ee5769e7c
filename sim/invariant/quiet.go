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
	if err := peek(q.n, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// peek reads len(p) bytes at off of n without side effects: a disk in the
// device below all its fault layers.
func peek(n dm.Node, p []byte, off int64) error {
	return dm.Peek(n, p, off, func(d *dm.Disk, p []byte, off int64) error {
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
	})
}
