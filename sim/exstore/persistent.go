package exstore

import (
	"fmt"
	"syscall"

	"snaplab/sim/block"
	"snaplab/sim/plant"
)

// persistent is the "P"/"PO" store: struct pstore of dm-snap-persistent.c.
type persistent struct {
	cow      block.Device
	lbs      uint32 // logical block size of the COW in sectors
	log      Logger
	overflow bool
	chunk    uint32 // sectors; 0 = not given (yet)

	readOnce bool   // ReadMetadata was called (the kernel calls it once)
	loaded   bool   // ReadMetadata succeeded (or returned invalid)
	valid    uint32 // ps->valid
	version  uint32
	epa      uint32 // exceptions_per_area

	// area is the in-memory copy of the current metadata area (one chunk,
	// raw on-disk bytes, like ps->area); zero and header are the kernel's
	// zero_area and header_area. All are allocated only once a chunk of
	// that size is known to fit on the COW.
	area, zero, header []byte

	currentArea uint64
	nextFree    uint64
	committed   uint32 // current_committed
	pending     int    // pending_count
	callbacks   []func(bool)

	// What structural checkers see (LayoutOf): successful area writes,
	// the last one's area and entry count, and whether the last header
	// write failed.
	areaWrites   uint64
	lastArea     uint64
	lastEntries  uint32
	headerFailed bool
}

func (p *persistent) Type() string             { return "P" }
func (p *persistent) Overflow() bool           { return p.overflow }
func (p *persistent) SetOverflow(o bool)       { p.overflow = o }
func (p *persistent) ChunkSize() uint32        { return p.chunk }
func (p *persistent) ClearChunkSize()          { p.chunk = 0 }
func (p *persistent) Pending() int             { return p.pending }
func (p *persistent) cowSectors() uint64       { return uint64(p.cow.Size()) / block.SectorSize }
func (p *persistent) chunkBytes() int          { return int(p.chunk) * block.SectorSize }
func (p *persistent) warn(msg string)          { p.log(LevelWarn, PrefixPersistent, msg) }
func (p *persistent) areaWhat(k uint64) string { return fmt.Sprintf("area %d", k) }

func (p *persistent) TableArgs() string {
	t := "P"
	if p.overflow {
		t = "PO"
	}
	return fmt.Sprintf("%s %d", t, p.chunk)
}

// Usage is persistent_usage: next_free*chunk, the COW size, and the header
// plus current_area+1 metadata chunks.
func (p *persistent) Usage() (allocated, total, metadata uint64) {
	c := uint64(p.chunk)
	return p.nextFree * c, p.cowSectors(), (p.currentArea + 1 + numHeaderChunks) * c
}

func (p *persistent) ReadMetadata(add func(old, new uint64) error) (bool, error) {
	if p.readOnce {
		return false, fmt.Errorf("exstore: %s: ReadMetadata called twice on one store", p.cow.Name())
	}
	p.readOnce = true
	isNew, err := p.readHeader()
	if err != nil {
		return false, err
	}
	p.epa = uint32(uint64(p.chunk) * block.SectorSize / diskExceptionSize)
	p.callbacks = make([]func(bool), 0, min(p.epa, 1024))
	if isNew {
		if err := p.writeHeader(); err != nil {
			p.warn("write_header failed")
			return false, err
		}
		p.currentArea = 0
		if err := p.zeroDiskArea(0); err != nil {
			p.warn("zero_disk_area(0) failed")
			return false, err
		}
		p.area = make([]byte, p.chunkBytes())
		p.loaded = true
		return false, nil
	}
	if p.version != diskVersion {
		p.warn(fmt.Sprintf("unable to handle snapshot disk version %d", int32(p.version)))
		return false, &MetadataError{Dev: p.cow.Name(), What: "header", Off: 8, Errno: syscall.EINVAL,
			Msg: fmt.Sprintf("unable to handle snapshot disk version %d", int32(p.version))}
	}
	if p.valid == 0 {
		p.loaded = true
		return true, nil
	}
	if err := p.readExceptions(add); err != nil {
		return false, err
	}
	p.loaded = true
	return false, nil
}

// readHeader is read_header: it picks the chunk size to read chunk 0 with,
// decodes the header and applies the on-disk chunk size.
func (p *persistent) readHeader() (isNew bool, err error) {
	supplied := p.chunk != 0
	if !supplied {
		p.chunk = max(DefaultChunkSize, p.lbs)
	}
	if _, _, ok := chunkRange(p.cow, p.chunk, 0); !ok {
		return false, chunkIO(p.cow, "read", nil, p.chunk, 0, "header")
	}
	buf := make([]byte, p.chunkBytes())
	if err := chunkIO(p.cow, "read", buf, p.chunk, 0, "header"); err != nil {
		return false, err
	}
	h := decodeHeader(buf)
	if h.Magic == 0 {
		return true, nil
	}
	if h.Magic != Magic {
		p.warn("Invalid or corrupt snapshot")
		return false, &MetadataError{Dev: p.cow.Name(), What: "header", Off: 0, Errno: syscall.ENXIO,
			Msg: fmt.Sprintf("Invalid or corrupt snapshot: magic %#08x, want %#08x (\"SnAp\")", h.Magic, Magic)}
	}
	p.valid, p.version = h.Valid, h.Version
	if h.ChunkSize == p.chunk {
		return false, nil
	}
	if supplied {
		p.warn(fmt.Sprintf("chunk size %d in device metadata overrides table chunk size of %d.", h.ChunkSize, p.chunk))
	}
	if reason := checkChunkSize(h.ChunkSize, p.lbs); reason != "" {
		p.log(LevelErr, PrefixPersistent, fmt.Sprintf("invalid on-disk chunk size %d: %s.", h.ChunkSize, reason))
		return false, &MetadataError{Dev: p.cow.Name(), What: "header", Off: 12, Errno: syscall.EINVAL,
			Msg: fmt.Sprintf("invalid on-disk chunk size %d: %s", h.ChunkSize, reason)}
	}
	p.chunk = h.ChunkSize
	return false, nil
}

// readExceptions is read_exceptions/insert_exceptions: walk the areas from
// 0 until one is not full; next_free ends past the highest new_chunk.
func (p *persistent) readExceptions(add func(old, new uint64) error) error {
	buf := []byte(nil)
	for k := uint64(0); ; k++ {
		c := areaLocation(p.epa, k)
		if _, _, ok := chunkRange(p.cow, p.chunk, c); !ok {
			return chunkIO(p.cow, "read", nil, p.chunk, c, p.areaWhat(k))
		}
		if buf == nil {
			buf = make([]byte, p.chunkBytes())
		}
		if err := chunkIO(p.cow, "read", buf, p.chunk, c, p.areaWhat(k)); err != nil {
			return err
		}
		full := true
		for i := uint32(0); i < p.epa; i++ {
			old, nw := getException(buf, i)
			if nw == 0 {
				p.committed = i
				full = false
				break
			}
			if p.nextFree <= nw {
				p.nextFree = nw + 1
			}
			if add != nil {
				if err := add(old, nw); err != nil {
					off, _, _ := chunkRange(p.cow, p.chunk, c)
					return &MetadataError{Dev: p.cow.Name(), What: fmt.Sprintf("area %d entry %d", k, i),
						Off: off + int64(i)*diskExceptionSize, Errno: block.Errno(err),
						Msg: fmt.Sprintf("exception %d -> %d rejected", old, nw), Err: err}
				}
			}
		}
		if !full {
			p.currentArea = k
			p.area = buf
			p.nextFree = skipMetadata(p.epa, p.nextFree)
			return nil
		}
	}
}

func (p *persistent) writeHeader() error {
	if p.chunk == 0 {
		// The kernel would write through a header buffer it never
		// allocated; there is no chunk to write.
		return &MetadataError{Dev: p.cow.Name(), What: "header", Off: 0, Errno: syscall.EINVAL,
			Msg: "chunk size unknown: metadata was never read"}
	}
	if p.header == nil {
		if _, _, ok := chunkRange(p.cow, p.chunk, 0); !ok {
			return chunkIO(p.cow, "write", nil, p.chunk, 0, "header")
		}
		p.header = make([]byte, p.chunkBytes())
	}
	encodeHeader(p.header, Header{Magic: Magic, Valid: p.valid, Version: p.version, ChunkSize: p.chunk})
	return chunkIO(p.cow, "write", p.header, p.chunk, 0, "header")
}

func (p *persistent) zeroDiskArea(k uint64) error {
	c := areaLocation(p.epa, k)
	if _, _, ok := chunkRange(p.cow, p.chunk, c); !ok {
		return chunkIO(p.cow, "write", nil, p.chunk, c, p.areaWhat(k))
	}
	if p.zero == nil {
		p.zero = make([]byte, p.chunkBytes())
	}
	return chunkIO(p.cow, "write", p.zero, p.chunk, c, p.areaWhat(k))
}

// Prepare is persistent_prepare_exception.
func (p *persistent) Prepare() (uint64, error) {
	if !p.loaded || p.chunk == 0 {
		return 0, fmt.Errorf("exstore: %s: prepare before the persistent store's metadata was read", p.cow.Name())
	}
	size := p.cowSectors()
	need := (p.nextFree + 1) * uint64(p.chunk)
	if size < need {
		off, n, _ := chunkRange(p.cow, p.chunk, p.nextFree)
		return 0, enospc(p.cow.Name(), off, n, need, size)
	}
	c := p.nextFree
	p.nextFree = skipMetadata(p.epa, p.nextFree+1)
	p.pending++
	return c, nil
}

// Commit is persistent_commit_exception, batching included.
func (p *persistent) Commit(old, new uint64, valid bool, done func(ok bool)) {
	if !p.loaded || p.area == nil {
		// Only reachable by a caller bug or after an invalid load: nothing
		// can be recorded.
		if p.pending > 0 {
			p.pending--
		}
		if done != nil {
			done(false)
		}
		return
	}
	if !valid {
		p.valid = 0
	}
	putException(p.area, p.committed, old, new)
	p.committed++
	p.callbacks = append(p.callbacks, done)
	// pending_count: a Commit without a Prepare would drive the kernel's
	// counter negative and stall the batch forever; clamp at zero instead
	// so callbacks are never lost.
	if p.pending > 0 {
		p.pending--
	}
	if p.pending != 0 && p.committed != p.epa {
		return
	}
	full := p.committed == p.epa
	if full && p.zeroDiskArea(p.currentArea+1) != nil {
		p.valid = 0
	}
	if p.valid != 0 {
		if chunkIO(p.cow, "write+fua", p.area, p.chunk, areaLocation(p.epa, p.currentArea), p.areaWhat(p.currentArea)) != nil {
			p.valid = 0
		} else {
			p.wroteArea(p.currentArea, p.committed)
		}
	}
	if full {
		p.committed = 0
		p.currentArea++
		if !plant.Is(plant.AreaNotZeroed) {
			clear(p.area)
		}
	}
	cbs := p.callbacks
	p.callbacks = p.callbacks[:0:0]
	for _, cb := range cbs {
		if cb != nil {
			cb(p.valid != 0)
		}
	}
}

// Drop is persistent_drop_snapshot.
func (p *persistent) Drop() {
	p.valid = 0
	if plant.Is(plant.InvalidationHeaderNotWritten) {
		return
	}
	err := p.writeHeader()
	p.headerFailed = err != nil
	if err != nil {
		p.warn("write header failed")
	}
}

// wroteArea notes a successful write of area k holding n entries.
func (p *persistent) wroteArea(k uint64, n uint32) {
	p.areaWrites++
	p.lastArea, p.lastEntries = k, n
}
