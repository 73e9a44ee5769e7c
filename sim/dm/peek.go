package dm

import (
	"fmt"
	"syscall"

	"snaplab/sim/block"
)

// MaxStack bounds how deep checkers (Peek among them) follow dm devices
// stacked on each other: a table cannot name its own device, but a
// checker must never loop.
const MaxStack = 16

// Peek reads len(p) bytes at off of n without side effects on the
// simulated world, for checkers that look at a run without changing it: a
// dm device is read through its live table's synchronous mappings (linear,
// zero), as an exception store's own I/O is, and a disk by readDisk, which
// must read below every fault layer (no rule may fire, draw randomness or
// count the read). Errors name the device and the offset.
func Peek(n Node, p []byte, off int64, readDisk func(d *Disk, p []byte, off int64) error) error {
	return peek(n, p, off, readDisk, 0)
}

func peek(n Node, p []byte, off int64, readDisk func(*Disk, []byte, int64) error, depth int) error {
	if err := block.CheckRange(n.Name(), "read", n.Size(), off, int64(len(p))); err != nil {
		return err
	}
	fail := func(errno syscall.Errno, err error) error {
		return &block.Error{Dev: n.Name(), Op: "read", Off: off, Len: int64(len(p)), Errno: errno, Err: err}
	}
	switch d := n.(type) {
	case *Disk:
		return readDisk(d, p, off)
	case *MappedDevice:
		if depth >= MaxStack {
			return fail(syscall.ELOOP, fmt.Errorf("devices stacked more than %d deep", MaxStack))
		}
		t := d.Live()
		if t == nil {
			return fail(syscall.ENXIO, fmt.Errorf("no live table"))
		}
		for len(p) > 0 {
			sector := uint64(off) / block.SectorSize
			ti := t.TargetAt(sector)
			if ti == nil {
				return fail(syscall.EIO, fmt.Errorf("no target at sector %d", sector))
			}
			sm, ok := ti.Target.(SyncMapper)
			if !ok {
				return fail(syscall.EIO, fmt.Errorf("target %s at sector %d cannot be read synchronously", ti.Type.Name, sector))
			}
			rel := sector - ti.Begin
			k := min(uint64(len(p)), (ti.Len-rel)*block.SectorSize-uint64(off)%block.SectorSize)
			lower, lsec, err := sm.SyncMap(ti, rel)
			if err != nil {
				return fmt.Errorf("%s at byte %d: %w", d.Name(), off, err)
			}
			if lower == nil {
				clear(p[:k])
			} else if err := peek(lower, p[:k], int64(lsec)*block.SectorSize+off%block.SectorSize, readDisk, depth+1); err != nil {
				return err
			}
			p = p[k:]
			off += int64(k)
		}
		return nil
	}
	return fail(syscall.EIO, fmt.Errorf("a %T cannot be read without side effects", n))
}
