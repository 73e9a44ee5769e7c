package crash

import (
	"snaplab/sim/block"
)

// opKind is what a disk operation does to the volatile cache.
type opKind int

const (
	opWrite   opKind = iota // a plain write: volatile
	opFUA                   // a FUA write: durable when it returns
	opFlush                 // every completed write becomes durable
	opDiscard               // like a plain write of zeros
)

func (k opKind) String() string {
	switch k {
	case opWrite:
		return "write"
	case opFUA:
		return "fua write"
	case opFlush:
		return "flush"
	}
	return "discard"
}

// pending is a plain write or discard a disk completed since its last
// flush: which sectors a seeded cut may keep or lose.
type pending struct {
	op      int // the operation's index in the run
	lo, n   int64
	discard bool
}

// disk is a scenario disk as the checker sees it: the session's device
// (the fault wrapper around the memory disk) wrapped so that every
// operation that can change what a power cut leaves is seen before and
// after it runs.
type disk struct {
	c     *checker
	name  string
	idx   int    // declaration order
	lbs   uint32 // logical block size
	inner block.Device
	mem   *block.Mem
	init  *block.Mem // the content after the disk step (its image, or zeros)
	// unflushed lists the plain writes and discards since the last
	// flush, in completion order.
	unflushed []pending
	// dropFlush is a planted defect for tests: a disk that ignores
	// REQ_PREFLUSH and REQ_FUA (flushes do nothing, FUA writes land as
	// plain writes), so no commit is ever durable.
	dropFlush bool
	// sh saves the durable data volatile writes overwrite, for the crash
	// images (image); exact says it holds all of it (the disk had no
	// volatile data when the wrapper came).
	sh    shadow
	exact bool
}

var (
	_ block.Device    = (*disk)(nil)
	_ block.FUAWriter = (*disk)(nil)
	_ block.Discarder = (*disk)(nil)
	_ block.Mapper    = (*disk)(nil)
)

// Unwrap returns the session's device under the wrapper, for checkers
// that read below the layers (sim/invariant).
func (d *disk) Unwrap() block.Device { return d.inner }

func (d *disk) Name() string                            { return d.inner.Name() }
func (d *disk) Size() int64                             { return d.inner.Size() }
func (d *disk) ReadAt(p []byte, off int64) (int, error) { return d.inner.ReadAt(p, off) }

// save keeps the durable data of [off, off+n) before a volatile write or
// discard changes it (not in the counting run, which takes no state).
func (d *disk) save(off, n int64) {
	if d.c.count || !d.exact {
		return
	}
	if err := d.sh.save(d.mem, off, n); err != nil {
		d.exact = false // the images are cloned from here on
	}
}

func (d *disk) WriteAt(p []byte, off int64) (int, error) {
	i := d.c.before(d, opWrite, off, p)
	d.save(off, int64(len(p)))
	n, err := d.inner.WriteAt(p, off)
	d.c.after(d, i, opWrite, off, int64(len(p)), err)
	return n, err
}

func (d *disk) WriteAtFUA(p []byte, off int64) (int, error) {
	if d.dropFlush {
		return d.WriteAt(p, off)
	}
	i := d.c.before(d, opFUA, off, p)
	n, err := block.WriteFUA(d.inner, p, off)
	if err == nil {
		d.sh.settle(off, int64(len(p)))
	}
	d.c.after(d, i, opFUA, off, int64(len(p)), err)
	return n, err
}

func (d *disk) Flush() error {
	i := d.c.before(d, opFlush, 0, nil)
	if d.dropFlush {
		return nil
	}
	err := d.inner.Flush()
	if err == nil {
		d.sh.flushed()
	}
	d.c.after(d, i, opFlush, 0, 0, err)
	return err
}

func (d *disk) Discard(off, length int64) error {
	i := d.c.before(d, opDiscard, off, nil)
	d.save(off, length)
	var err error
	if dc, ok := d.inner.(block.Discarder); ok {
		err = dc.Discard(off, length)
	} else {
		err = block.CheckRange(d.name, "discard", d.Size(), off, length)
	}
	d.c.after(d, i, opDiscard, off, length, err)
	return err
}

func (d *disk) Map(off, length int64) ([]block.Extent, error) {
	if m, ok := d.inner.(block.Mapper); ok {
		return m.Map(off, length)
	}
	return []block.Extent{{Off: off, Len: length}}, nil
}
