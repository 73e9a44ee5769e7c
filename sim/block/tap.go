package block

import "syscall"

// Request is one request a Tap saw, in the order its device received it.
type Request struct {
	Op       Op
	Off, Len int64  // the range (a flush: the byte it was sent to, and 0)
	FUA      bool   // a write with forced unit access
	Data     []byte // a write's data; valid only during the call: copy it to keep it
	Err      error  // what the device returned
}

// Tap wraps a Device and reports every write, flush and discard it
// receives, with its outcome, to a function (reads pass through unseen).
// The report comes after the wrapped device returned, in the order the
// calls returned; the simulator's devices are called by one goroutine, so
// that is the order they received them. A Tap always offers FUAWriter,
// FlushAter, Discarder and Mapper: a FUA write on a device without FUA is
// a write and a flush, a discard on one without discard fails with
// EOPNOTSUPP, and Map reports all data.
type Tap struct {
	d  Device
	fn func(Request)
}

var (
	_ Device    = (*Tap)(nil)
	_ FUAWriter = (*Tap)(nil)
	_ Discarder = (*Tap)(nil)
	_ Mapper    = (*Tap)(nil)
	_ FlushAter = (*Tap)(nil)
)

// WithTap wraps d, reporting its requests to fn.
func WithTap(d Device, fn func(Request)) *Tap { return &Tap{d: d, fn: fn} }

// Unwrap returns the wrapped device.
func (t *Tap) Unwrap() Device { return t.d }

// Name is the wrapped device's name.
func (t *Tap) Name() string { return t.d.Name() }

// Size is the wrapped device's size.
func (t *Tap) Size() int64 { return t.d.Size() }

// ReadAt reads from the wrapped device.
func (t *Tap) ReadAt(p []byte, off int64) (int, error) { return t.d.ReadAt(p, off) }

// WriteAt writes to the wrapped device and reports the write.
func (t *Tap) WriteAt(p []byte, off int64) (int, error) {
	n, err := t.d.WriteAt(p, off)
	t.fn(Request{Op: OpWrite, Off: off, Len: int64(len(p)), Data: p, Err: err})
	return n, err
}

// WriteAtFUA writes with FUA to the wrapped device and reports the write.
func (t *Tap) WriteAtFUA(p []byte, off int64) (int, error) {
	n, err := WriteFUA(t.d, p, off)
	t.fn(Request{Op: OpWrite, Off: off, Len: int64(len(p)), FUA: true, Data: p, Err: err})
	return n, err
}

// Flush is FlushAt(0).
func (t *Tap) Flush() error { return t.FlushAt(0) }

// FlushAt flushes the wrapped device and reports the flush.
func (t *Tap) FlushAt(off int64) error {
	err := FlushAt(t.d, off)
	t.fn(Request{Op: OpFlush, Off: off, Err: err})
	return err
}

// Discard discards on the wrapped device and reports the discard.
func (t *Tap) Discard(off, length int64) error {
	var err error
	if d, ok := t.d.(Discarder); ok {
		err = d.Discard(off, length)
	} else {
		err = &Error{Dev: t.d.Name(), Op: "discard", Off: off, Len: length, Errno: syscall.EOPNOTSUPP}
	}
	t.fn(Request{Op: OpDiscard, Off: off, Len: length, Err: err})
	return err
}

// Map maps through the wrapped device, or reports one data extent.
func (t *Tap) Map(off, length int64) ([]Extent, error) {
	if m, ok := t.d.(Mapper); ok {
		return m.Map(off, length)
	}
	if err := CheckRange(t.d.Name(), "map", t.d.Size(), off, length); err != nil {
		return nil, err
	}
	if length == 0 {
		return nil, nil
	}
	return []Extent{{Off: off, Len: length}}, nil
}
