// Package block defines snaplab's block-device interface and the devices
// that implement it in memory.
//
// A Device is a fixed-size array of bytes addressed by byte offset. Its
// methods are synchronous: a call returns when the operation is complete in
// the device's volatile cache (WriteAt) or durable (Flush, or a FUA write).
// Timing and reordering are not modelled here; the simulator's event loop
// decides when an operation is issued.
//
// Errors returned by a Device are *Error values naming the device, the
// operation, the byte offset and length, and an errno, so callers can test
// them with errors.Is(err, syscall.EIO) and print them as the kernel would.
//
// Optional behaviour is expressed by small extra interfaces (Discarder,
// FUAWriter, Mapper) that a caller discovers with a type assertion, in the
// style of io/fs.
package block

import (
	"errors"
	"fmt"
	"syscall"
)

// SectorSize is the unit of device-mapper tables and of dm-snapshot chunk
// sizes.
const SectorSize = 512

// Device is a block device.
type Device interface {
	// Name is the device's name as scenarios and recordings use it.
	Name() string
	// Size is the device size in bytes; a multiple of SectorSize.
	Size() int64
	// ReadAt reads len(p) bytes at off. It follows io.ReaderAt, except that
	// a read past the end is an error (EINVAL), never a short read.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes len(p) bytes at off into the volatile write cache.
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes every completed write durable.
	Flush() error
}

// FUAWriter is implemented by devices that can make a single write durable
// without flushing the whole cache (REQ_FUA).
type FUAWriter interface {
	WriteAtFUA(p []byte, off int64) (int, error)
}

// FlushAter is implemented by devices that hear where a flush request was
// sent: an empty flush still carries a sector (Linux's dm linear target
// moves it to its start), and the block layer logs a failed flush there.
// The sector changes nothing else: the whole cache is flushed.
type FlushAter interface {
	FlushAt(off int64) error
}

// FlushAt flushes d, telling it the flush request's byte offset when it is
// a FlushAter.
func FlushAt(d Device, off int64) error {
	if f, ok := d.(FlushAter); ok {
		return f.FlushAt(off)
	}
	return d.Flush()
}

// Discarder is implemented by devices that can deallocate a range
// (REQ_OP_DISCARD / NBD_CMD_TRIM). Discarded ranges read back as zeros.
type Discarder interface {
	Discard(off, length int64) error
}

// Opener is implemented by devices that count their users, as a kernel
// block device counts opens (dmsetup info's "Open count"). Open returns a
// handle bound to the device as it is now: while the handle is open the
// device counts it, and its I/O never reaches another device that later
// takes the same name (it fails with ENXIO once the device is gone). Close
// releases the handle; closing twice is harmless.
type Opener interface {
	Open() (OpenDevice, error)
}

// OpenDevice is a handle returned by Opener.Open.
type OpenDevice interface {
	Device
	Close() error
}

// Extent is a byte range of a device.
type Extent struct {
	Off, Len int64
	// Hole is true when the range holds no data and reads as zeros.
	Hole bool
}

// Mapper is implemented by devices that know which ranges hold data, as
// NBD's base:allocation metadata context reports it.
type Mapper interface {
	// Map describes [off, off+length) as consecutive extents in offset order.
	Map(off, length int64) ([]Extent, error)
}

// WriteFUA writes p at off durably: through FUAWriter when d has it, else
// as a write followed by a flush.
func WriteFUA(d Device, p []byte, off int64) (int, error) {
	if f, ok := d.(FUAWriter); ok {
		return f.WriteAtFUA(p, off)
	}
	n, err := d.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	return n, d.Flush()
}

// Error is an I/O error on a device.
type Error struct {
	Dev   string        // device name
	Op    string        // "read", "write", "flush", "discard"
	Off   int64         // byte offset
	Len   int64         // byte length
	Errno syscall.Errno // EIO, ENOSPC, EINVAL, EPERM, ...
	Err   error         // optional cause (a fault site, a lower device's error)
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s %s at offset %d length %d: %s", e.Dev, e.Op, e.Off, e.Len, ErrnoName(e.Errno))
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap lets errors.Is match both the errno and the cause.
func (e *Error) Unwrap() []error {
	if e.Err != nil {
		return []error{e.Errno, e.Err}
	}
	return []error{e.Errno}
}

// Errno extracts the errno of err: the first syscall.Errno in its chain, or
// EIO for any other non-nil error, or 0 for nil.
func Errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	// The usual cases without errors.As (which unwraps an *Error into a
	// new slice).
	switch e := err.(type) {
	case *Error:
		return e.Errno
	case syscall.Errno:
		return e
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return en
	}
	return syscall.EIO
}

// ErrnoName is the symbolic name of an errno as scenarios and recordings
// spell it ("EIO", "ENOSPC", ...).
func ErrnoName(e syscall.Errno) string {
	switch e {
	case 0:
		return "OK"
	case syscall.EIO:
		return "EIO"
	case syscall.ENOSPC:
		return "ENOSPC"
	case syscall.EINVAL:
		return "EINVAL"
	case syscall.EPERM:
		return "EPERM"
	case syscall.ENXIO:
		return "ENXIO"
	case syscall.ENOMEM:
		return "ENOMEM"
	case syscall.EBUSY:
		return "EBUSY"
	case syscall.ENODEV:
		return "ENODEV"
	case syscall.EROFS:
		return "EROFS"
	case syscall.EAGAIN:
		return "EAGAIN"
	case syscall.ENOENT:
		return "ENOENT"
	case syscall.EBADF:
		return "EBADF"
	case syscall.EOPNOTSUPP:
		return "EOPNOTSUPP"
	}
	return fmt.Sprintf("errno%d", int(e))
}

// ParseErrno is the inverse of ErrnoName.
func ParseErrno(s string) (syscall.Errno, error) {
	for _, e := range []syscall.Errno{0, syscall.EIO, syscall.ENOSPC, syscall.EINVAL, syscall.EPERM,
		syscall.ENXIO, syscall.ENOMEM, syscall.EBUSY, syscall.ENODEV, syscall.EROFS, syscall.EAGAIN,
		syscall.ENOENT, syscall.EBADF, syscall.EOPNOTSUPP} {
		if ErrnoName(e) == s {
			return e, nil
		}
	}
	return 0, fmt.Errorf("unknown errno %q", s)
}

// CheckRange returns an EINVAL *Error when [off, off+n) is not inside a
// device of the given size.
func CheckRange(dev, op string, size, off, n int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return &Error{Dev: dev, Op: op, Off: off, Len: n, Errno: syscall.EINVAL,
			Err: fmt.Errorf("range beyond device end %d", size)}
	}
	return nil
}
