package logwrites

import "fmt"

// Target turns the requests a device completes, in completion order, into
// log entries in the order the kernel's log-writes target logs them
// (log_writes_map, normal_end_io, log_writes_dtr):
//   - a write or discard without FUA or PREFLUSH waits on a list of
//     unflushed entries;
//   - a flush (REQ_PREFLUSH, with or without data) is logged after the
//     entries that were unflushed when it was submitted, which it takes;
//   - a FUA write is logged as it completes;
//   - a mark is logged at once (ahead of unflushed writes);
//   - End (the target's removal) logs what is still unflushed, then the
//     mark "dm-log-writes-end".
//
// Requests here complete as they are submitted (the simulator's devices are
// synchronous), so a flush takes exactly the entries before it.
type Target struct {
	ss        uint64
	out       []Entry
	unflushed []Entry
}

// NewTarget logs for a device of the given logical block size.
func NewTarget(sectorSize uint32) *Target { return &Target{ss: uint64(sectorSize)} }

// SectorSize is the log's sector size.
func (t *Target) SectorSize() uint32 { return uint32(t.ss) }

// Write logs a write of data at byte offset off; preflush and fua are the
// request's REQ_PREFLUSH and REQ_FUA. A write of no data without preflush
// is not logged (log_writes_map ignores it).
func (t *Target) Write(off int64, data []byte, preflush, fua bool) error {
	if len(data) == 0 && !preflush {
		return nil
	}
	if err := t.aligned(off, int64(len(data))); err != nil {
		return err
	}
	e := Entry{Sector: uint64(off) / t.ss, NrSectors: uint64(len(data)) / t.ss}
	if len(data) > 0 {
		e.Data = append([]byte(nil), data...)
	}
	if preflush {
		e.Flags |= FlagFlush
	}
	if fua {
		e.Flags |= FlagFUA
	}
	switch {
	case preflush:
		t.out = append(t.out, t.unflushed...)
		t.unflushed = t.unflushed[:0]
		t.out = append(t.out, e)
	case fua:
		t.out = append(t.out, e)
	default:
		t.unflushed = append(t.unflushed, e)
	}
	return nil
}

// Flush logs an empty REQ_PREFLUSH request sent to byte offset off.
func (t *Target) Flush(off int64) error { return t.Write(off, nil, true, false) }

// Discard logs a discard of n bytes at off.
func (t *Target) Discard(off, n int64) error {
	if n == 0 {
		return nil
	}
	if err := t.aligned(off, n); err != nil {
		return err
	}
	t.unflushed = append(t.unflushed, Entry{Sector: uint64(off) / t.ss, NrSectors: uint64(n) / t.ss, Flags: FlagDiscard})
	return nil
}

// Mark logs a mark, its name cut to what the kernel keeps.
func (t *Target) Mark(name string) {
	if m := MaxMark(uint32(t.ss)); len(name) > m {
		name = name[:m]
	}
	t.out = append(t.out, Entry{Flags: FlagMark, Mark: name})
}

// End logs what the target's removal does: the unflushed entries, then
// EndMark.
func (t *Target) End() {
	t.out = append(t.out, t.unflushed...)
	t.unflushed = nil
	t.Mark(EndMark)
}

// Log is what was logged so far (not the unflushed entries).
func (t *Target) Log() *Log { return &Log{SectorSize: uint32(t.ss), Entries: t.out} }

func (t *Target) aligned(off, n int64) error {
	if off < 0 || uint64(off)%t.ss != 0 || uint64(n)%t.ss != 0 {
		return fmt.Errorf("log-writes: request at byte %d of %d bytes is not in whole %d-byte sectors", off, n, t.ss)
	}
	return nil
}
