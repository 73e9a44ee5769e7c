package nbd

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"

	"snaplab/sim/block"
)

// Devices are sector-addressed underneath (a dm bio carries a sector
// number), so every call this server makes on a device is whole sectors.
// Clients that did not negotiate block sizes may ask for any byte range:
// reads read the covering sectors and answer the bytes asked for; writes
// and write-zeroes read, modify and write the partial head and tail
// sectors, under a range lock that keeps other writes out of those sectors
// meanwhile; trims trim only the whole sectors inside the range.

// rmwMerge is the largest covering range an unaligned write sends to the
// device as one merged write; longer ones write the head sector, the
// aligned middle straight from the payload, then the tail sector.
const rmwMerge = 64 << 10

func alignDown(x int64) int64 { return x &^ (MinBlock - 1) }
func alignUp(x int64) int64   { return (x + MinBlock - 1) &^ (MinBlock - 1) }

// errUnaligned marks a device call that would not be whole sectors: a bug
// in this server, refused rather than let the device misplace the bytes.
var errUnaligned = errors.New("nbd: internal error: device I/O not aligned to 512-byte sectors refused")

func unaligned(dev block.Device, op string, off, n int64) error {
	if (off|n)%MinBlock == 0 {
		return nil
	}
	return &block.Error{Dev: dev.Name(), Op: op, Off: off, Len: n, Errno: syscall.EIO, Err: errUnaligned}
}

// Device calls are at most this long: a request is served as a run of
// calls, so that on a device that serves one call at a time in arrival
// order (vmtest/live: the simulator's loop) another client's small request
// waits behind at most one piece of each large one, not behind all of them
// (the block layer splits bios for the same reason).
const (
	maxDataCall    = 1 << 20
	maxDiscardCall = 16 << 20
)

// devRead, devWrite and devDiscard are the only ways ops reach a device's
// data: each refuses a range that is not whole sectors, and splits it into
// calls of at most maxDataCall (maxDiscardCall).
func devRead(dev block.Device, p []byte, off int64) error {
	if err := unaligned(dev, "read", off, int64(len(p))); err != nil {
		return err
	}
	for len(p) > 0 {
		k := min(len(p), maxDataCall)
		if _, err := dev.ReadAt(p[:k], off); err != nil {
			return err
		}
		p, off = p[k:], off+int64(k)
	}
	return nil
}

func devWrite(dev block.Device, p []byte, off int64, fua bool) error {
	if err := unaligned(dev, "write", off, int64(len(p))); err != nil {
		return err
	}
	for len(p) > 0 {
		k := min(len(p), maxDataCall)
		var err error
		if fua {
			_, err = block.WriteFUA(dev, p[:k], off)
		} else {
			_, err = dev.WriteAt(p[:k], off)
		}
		if err != nil {
			return err
		}
		p, off = p[k:], off+int64(k)
	}
	return nil
}

func devDiscard(dev block.Device, d block.Discarder, off, n int64) error {
	if err := unaligned(dev, "discard", off, n); err != nil {
		return err
	}
	for n > 0 {
		k := min(n, maxDiscardCall)
		if err := d.Discard(off, k); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// devZero zeroes whole sectors [off, off+n): by discarding when allowed and
// possible, else (also when the device refuses discards: EOPNOTSUPP) by
// writing zeros.
func devZero(dev block.Device, off, n int64, noHole bool) error {
	if d, ok := dev.(block.Discarder); ok && !noHole {
		if err := devDiscard(dev, d, off, n); !errors.Is(err, syscall.EOPNOTSUPP) {
			return err
		}
	}
	for done := int64(0); done < n; {
		k := min(n-done, int64(len(zeros)))
		if err := devWrite(dev, zeros[:k], off+done, false); err != nil {
			return err
		}
		done += k
	}
	return nil
}

// rangeLock orders writes to one device against read-modify-writes.
// Ordinary (aligned) writes, trims and zeroes are shared holders: they
// never wait for each other. A read-modify-write is an exclusive holder of
// its covering sectors: it waits for every overlapping holder that came
// before it, and holders that come after it and overlap wait for it.
//
// While no exclusive holder exists, shared holders only count themselves
// in fast (two atomic operations, no lock); an exclusive holder first
// waits for that count to drain, and shared holders that see it register
// their range under mu instead.
type rangeLock struct {
	fast atomic.Int64 // shared holders that took the fast path
	excl atomic.Int64 // exclusive holders, waiting or holding

	mu   sync.Mutex
	cond sync.Cond
	held []span // registered holders in arrival order
	next uint64
}

type span struct {
	off, end int64
	excl     bool
	id       uint64
}

func newRangeLock() *rangeLock {
	l := &rangeLock{}
	l.cond.L = &l.mu
	return l
}

// fastToken is the token of a shared hold on the fast path.
const fastToken = 0

// lockShared holds [off, end) shared and returns the token for unlock.
func (l *rangeLock) lockShared(off, end int64) uint64 {
	l.fast.Add(1)
	if l.excl.Load() == 0 {
		return fastToken
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fast.Add(-1) == 0 {
		l.cond.Broadcast()
	}
	id := l.register(off, end, false)
	for l.blocked(id) {
		l.cond.Wait()
	}
	return id
}

// lockExcl holds [off, end) exclusively and returns the token for unlock.
func (l *rangeLock) lockExcl(off, end int64) uint64 {
	l.excl.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	id := l.register(off, end, true)
	for l.fast.Load() != 0 || l.blocked(id) {
		l.cond.Wait()
	}
	return id
}

func (l *rangeLock) unlock(id uint64) {
	if id == fastToken {
		if l.fast.Add(-1) == 0 && l.excl.Load() != 0 {
			l.mu.Lock()
			l.cond.Broadcast()
			l.mu.Unlock()
		}
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, h := range l.held {
		if h.id == id {
			l.held = append(l.held[:i], l.held[i+1:]...)
			if h.excl {
				l.excl.Add(-1)
			}
			break
		}
	}
	l.cond.Broadcast()
}

func (l *rangeLock) register(off, end int64, excl bool) uint64 {
	l.next++
	id := l.next + 1 // never fastToken
	l.held = append(l.held, span{off: off, end: end, excl: excl, id: id})
	return id
}

// blocked reports whether an earlier registered holder conflicts with id.
func (l *rangeLock) blocked(id uint64) bool {
	var me span
	for _, h := range l.held {
		if h.id == id {
			me = h
			break
		}
	}
	for _, h := range l.held {
		if h.id == id {
			return false
		}
		if (h.excl || me.excl) && h.off < me.end && me.off < h.end {
			return true
		}
	}
	return false
}

// writeRange writes p (or zeros when p is nil) at [off, off+n) on dev,
// whatever the alignment: aligned ranges go straight to the device under a
// shared hold, others are read-modify-written under an exclusive hold of
// their covering sectors.
func writeRange(dev block.Device, lk *rangeLock, p []byte, off, n int64, fua, noHole bool) error {
	if (off|n)%MinBlock == 0 {
		id := lk.lockShared(off, off+n)
		defer lk.unlock(id)
		if p != nil {
			return devWrite(dev, p, off, fua)
		}
		if err := devZero(dev, off, n, noHole); err != nil {
			return err
		}
		if fua {
			return dev.Flush()
		}
		return nil
	}
	a, b := alignDown(off), alignUp(off+n)
	id := lk.lockExcl(a, b)
	defer lk.unlock(id)
	if err := rmw(dev, p, off, n, fua, noHole); err != nil {
		return fmt.Errorf("unaligned write of %d bytes at offset %d (read-modify-write of [%d, %d)): %w", n, off, a, b, err)
	}
	return nil
}

// rmw writes an unaligned range; the caller holds its covering sectors.
func rmw(dev block.Device, p []byte, off, n int64, fua, noHole bool) error {
	a, b := alignDown(off), alignUp(off+n)
	headPartial, tailPartial := off != a, off+n != b
	// put copies the new bytes of [lo, hi) into dst, which holds the
	// device's bytes from base.
	put := func(dst []byte, base, lo, hi int64) {
		if p == nil {
			clear(dst[lo-base : hi-base])
		} else {
			copy(dst[lo-base:hi-base], p[lo-off:hi-off])
		}
	}
	if p != nil && b-a <= rmwMerge {
		buf := getBuf(int(b - a))
		defer putBuf(buf)
		cov := *buf
		switch {
		case headPartial && tailPartial && b-a <= 2*MinBlock:
			if err := devRead(dev, cov, a); err != nil {
				return err
			}
		default:
			if headPartial {
				if err := devRead(dev, cov[:MinBlock], a); err != nil {
					return err
				}
			}
			if tailPartial {
				if err := devRead(dev, cov[len(cov)-MinBlock:], b-MinBlock); err != nil {
					return err
				}
			}
		}
		put(cov, a, off, off+n)
		return devWrite(dev, cov, a, fua)
	}
	var sec [MinBlock]byte
	midStart, midEnd := a, b
	if headPartial {
		if err := devRead(dev, sec[:], a); err != nil {
			return err
		}
		put(sec[:], a, off, min(off+n, a+MinBlock))
		if err := devWrite(dev, sec[:], a, fua); err != nil {
			return err
		}
		midStart = a + MinBlock
	}
	if tailPartial && b-MinBlock >= midStart {
		t := b - MinBlock
		if err := devRead(dev, sec[:], t); err != nil {
			return err
		}
		put(sec[:], t, max(off, t), off+n)
		if err := devWrite(dev, sec[:], t, fua); err != nil {
			return err
		}
		midEnd = t
	}
	if midStart >= midEnd {
		return nil
	}
	if p != nil {
		return devWrite(dev, p[midStart-off:midEnd-off], midStart, fua)
	}
	if err := devZero(dev, midStart, midEnd-midStart, noHole); err != nil {
		return err
	}
	if fua {
		return dev.Flush()
	}
	return nil
}
