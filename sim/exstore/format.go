package exstore

import (
	"encoding/binary"
	"fmt"
	"syscall"

	"snaplab/sim/block"
)

// On-disk format constants (dm-snap-persistent.c).
const (
	// Magic is SNAP_MAGIC, bytes 53 6e 41 70 ("SnAp") on disk.
	Magic = 0x70416e53
	// diskVersion is SNAPSHOT_DISK_VERSION.
	diskVersion = 1
	// numHeaderChunks is NUM_SNAPSHOT_HDR_CHUNKS.
	numHeaderChunks = 1
	// diskExceptionSize is sizeof(struct disk_exception).
	diskExceptionSize = 16
)

// Header is struct disk_header, the first 16 bytes of chunk 0.
type Header struct {
	Magic, Valid, Version, ChunkSize uint32
}

func decodeHeader(b []byte) Header {
	return Header{
		Magic:     binary.LittleEndian.Uint32(b[0:]),
		Valid:     binary.LittleEndian.Uint32(b[4:]),
		Version:   binary.LittleEndian.Uint32(b[8:]),
		ChunkSize: binary.LittleEndian.Uint32(b[12:]),
	}
}

// encodeHeader fills chunk (a whole chunk buffer) as write_header does: the
// header, then zeros.
func encodeHeader(chunk []byte, h Header) {
	clear(chunk)
	binary.LittleEndian.PutUint32(chunk[0:], h.Magic)
	binary.LittleEndian.PutUint32(chunk[4:], h.Valid)
	binary.LittleEndian.PutUint32(chunk[8:], h.Version)
	binary.LittleEndian.PutUint32(chunk[12:], h.ChunkSize)
}

func getException(area []byte, i uint32) (old, new uint64) {
	o := int(i) * diskExceptionSize
	return binary.LittleEndian.Uint64(area[o:]), binary.LittleEndian.Uint64(area[o+8:])
}

func putException(area []byte, i uint32, old, new uint64) {
	o := int(i) * diskExceptionSize
	binary.LittleEndian.PutUint64(area[o:], old)
	binary.LittleEndian.PutUint64(area[o+8:], new)
}

// areaLocation is the chunk holding metadata area k with E entries per area.
func areaLocation(e uint32, k uint64) uint64 {
	return numHeaderChunks + (uint64(e)+1)*k
}

// skipMetadata is the kernel's skip_metadata: a next_free that lands on a
// metadata area moves past it.
func skipMetadata(e uint32, nextFree uint64) uint64 {
	if nextFree%(uint64(e)+1) == numHeaderChunks {
		return nextFree + 1
	}
	return nextFree
}

// MetadataError is a problem with a persistent store's on-disk metadata or
// with the COW I/O that reads or writes it. It names the device and the
// byte offset; errors.Is matches Errno and the cause.
type MetadataError struct {
	Dev   string        // COW device name
	What  string        // "header", "area 3", "area 3 entry 17"
	Off   int64         // byte offset on the COW device
	Errno syscall.Errno // what the kernel returns: ENXIO, EINVAL, EIO, ...
	Msg   string        // what is wrong
	Err   error         // cause, e.g. a *block.Error
}

func (e *MetadataError) Error() string {
	s := fmt.Sprintf("exstore: %s: %s at byte offset %d: %s", e.Dev, e.What, e.Off, e.Msg)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap lets errors.Is match the errno and the cause.
func (e *MetadataError) Unwrap() []error {
	if e.Err != nil {
		return []error{e.Errno, e.Err}
	}
	return []error{e.Errno}
}

// chunkRange returns the byte offset and length of chunk number c, or ok=false
// when it does not fit on dev (or overflows).
func chunkRange(dev block.Device, chunkSectors uint32, c uint64) (off, n int64, ok bool) {
	n = int64(chunkSectors) * block.SectorSize
	size := dev.Size()
	if n <= 0 || size < n || c > uint64((size-n)/n) {
		return int64(min(c, 1<<62/uint64(max(n, 1)))) * n, n, false
	}
	return int64(c) * n, n, true
}

// chunkIO reads or writes a whole chunk as the kernel's chunk_io does. A
// chunk beyond the device end fails with EIO, as the block layer fails such
// a bio, before any buffer is touched. op is "read", "write" or "write+fua"
// (REQ_PREFLUSH|REQ_FUA: a flush, then a FUA write).
func chunkIO(dev block.Device, op string, buf []byte, chunkSectors uint32, c uint64, what string) error {
	off, n, ok := chunkRange(dev, chunkSectors, c)
	if !ok {
		return &MetadataError{Dev: dev.Name(), What: what, Off: off, Errno: syscall.EIO,
			Msg: fmt.Sprintf("chunk %d (%d bytes) is beyond the end of the device (%d bytes)", c, n, dev.Size())}
	}
	if int64(len(buf)) != n {
		panic(fmt.Sprintf("exstore: chunk buffer of %d bytes for chunk size %d", len(buf), n))
	}
	var err error
	switch op {
	case "read":
		_, err = dev.ReadAt(buf, off)
	case "write":
		_, err = dev.WriteAt(buf, off)
	case "write+fua":
		if err = dev.Flush(); err == nil {
			_, err = block.WriteFUA(dev, buf, off)
		}
	}
	if err != nil {
		return &MetadataError{Dev: dev.Name(), What: what, Off: off, Errno: block.Errno(err),
			Msg: op + " of chunk " + fmt.Sprint(c) + " failed", Err: err}
	}
	return nil
}
