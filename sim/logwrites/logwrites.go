// Package logwrites reads and writes the on-disk log of Linux's
// log-writes device-mapper target (drivers/md/dm-log-writes.c), the format
// the replay-log tool (xfstests src/log-writes) reads.
//
// Contract:
//   - The format is the kernel's, byte for byte. Everything is
//     little-endian. Sector 0 (of SectorSize bytes) holds the super block:
//     magic 0x6a736677736872, version 1, nr_entries (u64 each), sectorsize
//     (u32), then zeros. Entries follow from byte SectorSize on, each
//     starting a sector: a 32-byte log_write_entry (sector, nr_sectors,
//     flags, data_len; u64 each) zero-padded to SectorSize, then, unless the
//     entry is a discard, nr_sectors sectors of the data written.
//   - Entry sectors and lengths are in units of SectorSize (the logical
//     block size of the logged device), not 512-byte sectors.
//   - A MARK entry holds its name right after the 32-byte entry in the same
//     sector, data_len bytes long, not NUL-terminated in data_len (the
//     padding zeros terminate it). The kernel keeps at most
//     SectorSize-32-1 bytes of a name (MaxMark); data_len is 0 on every
//     other entry.
//   - nr_entries counts the entries a reader may trust: the kernel rewrites
//     the super block after each FUA or MARK entry (and ends every log with
//     the mark "dm-log-writes-end" when the target is removed), so entries
//     written after the last such one are not counted. Read returns exactly
//     nr_entries entries; whatever lies beyond them is ignored.
//   - Read never panics and never allocates more than the input holds: an
//     error names the byte offset and the entry index and says what is wrong.
//   - Nothing here starts goroutines, reads the clock or iterates a map.
package logwrites

import (
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

// Format constants, as dm-log-writes.c defines them.
const (
	Magic   = 0x6a736677736872 // WRITE_LOG_MAGIC
	Version = 1                // WRITE_LOG_VERSION

	FlagFlush    = 1 << 0 // LOG_FLUSH_FLAG: REQ_PREFLUSH
	FlagFUA      = 1 << 1 // LOG_FUA_FLAG: REQ_FUA
	FlagDiscard  = 1 << 2 // LOG_DISCARD_FLAG: REQ_OP_DISCARD
	FlagMark     = 1 << 3 // LOG_MARK_FLAG: a "dmsetup message DEV 0 mark NAME"
	FlagMetadata = 1 << 4 // LOG_METADATA_FLAG: REQ_META

	knownFlags = FlagFlush | FlagFUA | FlagDiscard | FlagMark | FlagMetadata

	// EntrySize is the size of struct log_write_entry.
	EntrySize = 32
	// superSize is the part of struct log_write_super that carries
	// fields (the struct is padded to 32 bytes; the kernel copies the
	// padding from its stack, so readers ignore it).
	superSize = 28

	// EndMark is the mark the kernel logs when the target is removed.
	EndMark = "dm-log-writes-end"

	// maxSectorSize bounds the sector size a log may claim (the largest
	// logical block size Linux allows is 64 KiB).
	maxSectorSize = 64 << 10
)

// MaxMark is the longest mark name the kernel keeps for a log of the given
// sector size (log_mark: kstrndup(name, SectorSize - 32 - 1)).
func MaxMark(sectorSize uint32) int { return int(sectorSize) - EntrySize - 1 }

// Entry is one logged request.
type Entry struct {
	Sector    uint64 // first sector written, in the log's SectorSize units
	NrSectors uint64 // its length, in the same units (0 for a flush, a mark)
	Flags     uint64 // Flag* bits
	Mark      string // a MARK entry's name
	Data      []byte // a write's NrSectors*SectorSize bytes; nil otherwise
}

// Log is a whole log.
type Log struct {
	SectorSize uint32
	Entries    []Entry
}

// FlagString names flags as replay-log prints them ("FLUSH|FUA"; "NONE"
// for a plain write).
func FlagString(f uint64) string {
	names := []struct {
		bit  uint64
		name string
	}{{FlagFlush, "FLUSH"}, {FlagFUA, "FUA"}, {FlagDiscard, "DISCARD"}, {FlagMark, "MARK"}, {FlagMetadata, "METADATA"}}
	var parts []string
	for _, n := range names {
		if f&n.bit != 0 {
			parts = append(parts, n.name)
			f &^= n.bit
		}
	}
	if f != 0 {
		parts = append(parts, fmt.Sprintf("UNKNOWN.0x%x", f))
	}
	if len(parts) == 0 {
		return "NONE"
	}
	return strings.Join(parts, "|")
}

// String describes e on one line: "write 8+8 FUA", "flush 0+0 FLUSH",
// "mark \"name\"".
func (e Entry) String() string {
	switch {
	case e.Flags&FlagMark != 0:
		return fmt.Sprintf("mark %q", e.Mark)
	case e.Flags&FlagDiscard != 0:
		return fmt.Sprintf("discard %d+%d %s", e.Sector, e.NrSectors, FlagString(e.Flags))
	case e.NrSectors == 0:
		return fmt.Sprintf("flush %d+0 %s", e.Sector, FlagString(e.Flags))
	}
	return fmt.Sprintf("write %d+%d %s", e.Sector, e.NrSectors, FlagString(e.Flags))
}

// Error is what Read returns for a malformed log.
type Error struct {
	Off   int64 // byte offset in the log of what is wrong
	Entry int   // index of the entry (-1: the super block)
	Msg   string
}

func (e *Error) Error() string {
	if e.Entry < 0 {
		return fmt.Sprintf("log-writes super block at byte %d: %s", e.Off, e.Msg)
	}
	return fmt.Sprintf("log-writes entry %d at byte %d: %s", e.Entry, e.Off, e.Msg)
}

// Read decodes the log held in the first size bytes of r.
func Read(r io.ReaderAt, size int64) (*Log, error) {
	superErr := func(off int64, format string, a ...any) error {
		return &Error{Off: off, Entry: -1, Msg: fmt.Sprintf(format, a...)}
	}
	if size < superSize {
		return nil, superErr(0, "the log is %d bytes, shorter than a super block (%d)", size, superSize)
	}
	var sb [superSize]byte
	if _, err := r.ReadAt(sb[:], 0); err != nil {
		return nil, superErr(0, "read: %v", err)
	}
	if m := binary.LittleEndian.Uint64(sb[0:]); m != Magic {
		return nil, superErr(0, "bad magic %#x (want %#x): not a dm-log-writes log", m, uint64(Magic))
	}
	if v := binary.LittleEndian.Uint64(sb[8:]); v != Version {
		return nil, superErr(8, "version %d (want %d)", v, Version)
	}
	nr := binary.LittleEndian.Uint64(sb[16:])
	ss := binary.LittleEndian.Uint32(sb[24:])
	if ss < 512 || ss > maxSectorSize || ss&(ss-1) != 0 {
		return nil, superErr(24, "sectorsize %d (want a power of two from 512 to %d)", ss, maxSectorSize)
	}
	sectorSize := int64(ss)
	// Every entry takes at least a sector: a count the log cannot hold is
	// refused before anything is allocated for it.
	if room := uint64(size/sectorSize) - 1; size < sectorSize || nr > room {
		return nil, superErr(16, "nr_entries %d: a log of %d bytes holds at most %d entries of %d bytes",
			nr, size, max(size/sectorSize-1, 0), sectorSize)
	}
	l := &Log{SectorSize: ss, Entries: make([]Entry, 0, nr)}
	buf := make([]byte, sectorSize)
	off := sectorSize
	for i := 0; uint64(i) < nr; i++ {
		entErr := func(at int64, format string, a ...any) error {
			return &Error{Off: at, Entry: i, Msg: fmt.Sprintf(format, a...)}
		}
		if off > size-sectorSize {
			return nil, entErr(off, "entry past the end of the log (%d bytes)", size)
		}
		if _, err := r.ReadAt(buf, off); err != nil {
			return nil, entErr(off, "read: %v", err)
		}
		e := Entry{
			Sector:    binary.LittleEndian.Uint64(buf[0:]),
			NrSectors: binary.LittleEndian.Uint64(buf[8:]),
			Flags:     binary.LittleEndian.Uint64(buf[16:]),
		}
		dataLen := binary.LittleEndian.Uint64(buf[24:])
		if e.Flags&^knownFlags != 0 {
			return nil, entErr(off+16, "unknown flags %#x", e.Flags&^knownFlags)
		}
		if e.Flags == 0 && e.NrSectors == 0 {
			return nil, entErr(off, "empty entry (flags 0, nr_sectors 0): the log ends before its nr_entries (%d)", nr)
		}
		pad := EntrySize
		if e.Flags&FlagMark != 0 {
			if e.Flags != FlagMark {
				return nil, entErr(off+16, "a mark with other flags (%s)", FlagString(e.Flags))
			}
			if e.NrSectors != 0 || e.Sector != 0 {
				return nil, entErr(off, "a mark with sector %d, nr_sectors %d (want 0, 0)", e.Sector, e.NrSectors)
			}
			if dataLen > uint64(MaxMark(ss)) {
				return nil, entErr(off+24, "data_len %d: a mark name is at most %d bytes in %d-byte sectors", dataLen, MaxMark(ss), ss)
			}
			name := buf[EntrySize : EntrySize+int(dataLen)]
			for j, c := range name {
				if c == 0 {
					return nil, entErr(off+EntrySize+int64(j), "data_len %d mismatch: the mark name ends after %d bytes", dataLen, j)
				}
			}
			e.Mark = string(name)
			pad += int(dataLen)
		} else if dataLen != 0 {
			return nil, entErr(off+24, "data_len %d mismatch: only a mark has data_len, a %s entry has 0", dataLen, FlagString(e.Flags))
		}
		for j := pad; j < len(buf); j++ {
			if buf[j] != 0 {
				return nil, entErr(off+int64(j), "non-zero byte %#x in the entry's padding", buf[j])
			}
		}
		off += sectorSize
		if e.Flags&(FlagMark|FlagDiscard) == 0 && e.NrSectors > 0 {
			if e.NrSectors > uint64(size-off)/uint64(sectorSize) {
				return nil, entErr(off-sectorSize, "data of %d sectors of %d bytes past the end of the log (%d bytes)", e.NrSectors, ss, size)
			}
			e.Data = make([]byte, int64(e.NrSectors)*sectorSize)
			if _, err := r.ReadAt(e.Data, off); err != nil {
				return nil, entErr(off, "read data: %v", err)
			}
			off += int64(len(e.Data))
		}
		l.Entries = append(l.Entries, e)
	}
	return l, nil
}

// Writer writes a log to an io.WriterAt, entry by entry. Close writes the
// super block with the number of entries.
type Writer struct {
	w    io.WriterAt
	ss   int64
	next int64
	n    uint64
	pad  []byte
}

// NewWriter starts a log of the given sector size on w.
func NewWriter(w io.WriterAt, sectorSize uint32) (*Writer, error) {
	if sectorSize < 512 || sectorSize > maxSectorSize || sectorSize&(sectorSize-1) != 0 {
		return nil, fmt.Errorf("log-writes: sector size %d: want a power of two from 512 to %d", sectorSize, maxSectorSize)
	}
	return &Writer{w: w, ss: int64(sectorSize), next: int64(sectorSize), pad: make([]byte, sectorSize)}, nil
}

// Check reports what makes e unfit for a log of the given sector size.
func Check(e Entry, sectorSize uint32) error {
	ss := uint64(sectorSize)
	switch {
	case e.Flags&^knownFlags != 0:
		return fmt.Errorf("unknown flags %#x", e.Flags&^knownFlags)
	case e.Flags&FlagMark != 0:
		if e.Flags != FlagMark || e.Sector != 0 || e.NrSectors != 0 || e.Data != nil {
			return fmt.Errorf("a mark has no other flag, no sector and no data")
		}
		if len(e.Mark) > MaxMark(sectorSize) {
			return fmt.Errorf("mark %q: longer than %d bytes", e.Mark, MaxMark(sectorSize))
		}
		if strings.IndexByte(e.Mark, 0) >= 0 {
			return fmt.Errorf("mark %q: holds a NUL byte", e.Mark)
		}
	case e.Mark != "":
		return fmt.Errorf("a name on an entry that is not a mark")
	case e.Flags == 0 && e.NrSectors == 0:
		return fmt.Errorf("an entry without flags writes at least a sector")
	case e.Flags&FlagDiscard != 0:
		if e.Data != nil {
			return fmt.Errorf("a discard has no data")
		}
	case uint64(len(e.Data)) != e.NrSectors*ss || e.NrSectors > 1<<40:
		return fmt.Errorf("data of %d bytes for %d sectors of %d bytes", len(e.Data), e.NrSectors, ss)
	}
	return nil
}

// Append writes e after the entries already written.
func (w *Writer) Append(e Entry) error {
	if err := Check(e, uint32(w.ss)); err != nil {
		return fmt.Errorf("log-writes: entry %d: %w", w.n, err)
	}
	sec := w.pad
	clear(sec)
	binary.LittleEndian.PutUint64(sec[0:], e.Sector)
	binary.LittleEndian.PutUint64(sec[8:], e.NrSectors)
	binary.LittleEndian.PutUint64(sec[16:], e.Flags)
	binary.LittleEndian.PutUint64(sec[24:], uint64(len(e.Mark)))
	copy(sec[EntrySize:], e.Mark)
	if _, err := w.w.WriteAt(sec, w.next); err != nil {
		return err
	}
	w.next += w.ss
	if len(e.Data) > 0 {
		if _, err := w.w.WriteAt(e.Data, w.next); err != nil {
			return err
		}
		w.next += int64(len(e.Data))
	}
	w.n++
	return nil
}

// Entries is the number of entries appended.
func (w *Writer) Entries() uint64 { return w.n }

// Size is the log's length in bytes so far.
func (w *Writer) Size() int64 { return w.next }

// Close writes the super block. It does not close the underlying writer.
func (w *Writer) Close() error {
	sec := w.pad
	clear(sec)
	binary.LittleEndian.PutUint64(sec[0:], Magic)
	binary.LittleEndian.PutUint64(sec[8:], Version)
	binary.LittleEndian.PutUint64(sec[16:], w.n)
	binary.LittleEndian.PutUint32(sec[24:], uint32(w.ss))
	_, err := w.w.WriteAt(sec, 0)
	return err
}

// Buffer is an in-memory io.WriterAt (and io.ReaderAt) for Encode.
type Buffer struct{ b []byte }

// WriteAt writes p at off, growing the buffer.
func (b *Buffer) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if end := off + int64(len(p)); end > int64(len(b.b)) {
		b.b = append(b.b, make([]byte, end-int64(len(b.b)))...)
	}
	return copy(b.b[off:], p), nil
}

// ReadAt reads from the buffer as io.ReaderAt does.
func (b *Buffer) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(b.b)) {
		return 0, io.EOF
	}
	n := copy(p, b.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Bytes is the buffer's content.
func (b *Buffer) Bytes() []byte { return b.b }

// Encode returns l as the bytes of a log.
func Encode(l *Log) ([]byte, error) {
	var b Buffer
	w, err := NewWriter(&b, l.SectorSize)
	if err != nil {
		return nil, err
	}
	for _, e := range l.Entries {
		if err := w.Append(e); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Offsets returns the byte offset in the log of each entry's sector; a
// write's data follows at Offsets[i]+SectorSize.
func Offsets(l *Log) []int64 {
	out := make([]int64, len(l.Entries))
	off := int64(l.SectorSize)
	for i, e := range l.Entries {
		out[i] = off
		off += int64(l.SectorSize) + int64(len(e.Data))
	}
	return out
}
