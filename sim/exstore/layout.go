package exstore

import (
	"fmt"

	"snaplab/sim/block"
)

// Layout is a store's allocation and metadata state as a structural
// checker (sim/invariant) sees it: read with LayoutOf, never written by the
// checker. Chunk numbers are COW chunks of ChunkSectors sectors.
type Layout struct {
	// Persistent is true for the "P"/"PO" store, false for "N".
	Persistent bool
	// ChunkSectors is the chunk size in sectors (0 while unknown).
	ChunkSectors uint32
	// COWChunks is how many whole chunks fit on the COW device.
	COWChunks uint64
	// PerArea is E, the exceptions per metadata area (persistent, once
	// the metadata was read; 0 otherwise).
	PerArea uint32
	// NextFree is the chunk the next Prepare hands out.
	NextFree uint64
	// Area and Committed locate the first free entry of the table: the
	// area the store holds in memory and its count of committed entries.
	Area      uint64
	Committed uint32
	// Valid is the store's own valid flag (ps->valid; always true for "N").
	Valid bool
	// AreaWrites counts the metadata area writes that succeeded (commits
	// and merge commits); LastArea and LastEntries are the area the last
	// one wrote and how many entries it held.
	AreaWrites  uint64
	LastArea    uint64
	LastEntries uint32
	// HeaderFailed reports that the last header write (Drop's valid=0)
	// failed, so the header on the COW still holds what it held.
	HeaderFailed bool
}

// Wrapper is a Store layered over another (a test's store that plants a
// defect); LayoutOf looks through it.
type Wrapper interface {
	Store
	Unwrap() Store
}

// LayoutOf returns s's layout (through Wrappers). A Store not made by New
// gives the zero Layout and false.
func LayoutOf(s Store) (Layout, bool) {
	for i := 0; i < 16; i++ {
		w, ok := s.(Wrapper)
		if !ok {
			break
		}
		s = w.Unwrap()
	}
	switch st := s.(type) {
	case *persistent:
		l := Layout{Persistent: true, ChunkSectors: st.chunk, PerArea: st.epa, NextFree: st.nextFree,
			Area: st.currentArea, Committed: st.committed, Valid: st.valid != 0,
			AreaWrites: st.areaWrites, LastArea: st.lastArea, LastEntries: st.lastEntries, HeaderFailed: st.headerFailed}
		if st.chunk != 0 {
			l.COWChunks = st.cowSectors() / uint64(st.chunk)
		}
		return l, true
	case *transient:
		l := Layout{ChunkSectors: st.chunk, Valid: true}
		if st.chunk != 0 {
			l.COWChunks = uint64(st.cow.Size()) / block.SectorSize / uint64(st.chunk)
			l.NextFree = st.nextFree / uint64(st.chunk)
		}
		return l, true
	}
	return Layout{}, false
}

// AreaChunk is the COW chunk holding metadata area k.
func (l Layout) AreaChunk(k uint64) uint64 { return areaLocation(l.PerArea, k) }

// Metadata reports whether COW chunk c holds metadata (the header, chunk
// 0, or an area) and names it; a transient store has none.
func (l Layout) Metadata(c uint64) (string, bool) {
	if !l.Persistent {
		return "", false
	}
	if c < numHeaderChunks {
		return "the header", true
	}
	if l.PerArea != 0 && (c-numHeaderChunks)%(uint64(l.PerArea)+1) == 0 {
		return fmt.Sprintf("metadata area %d", (c-numHeaderChunks)/(uint64(l.PerArea)+1)), true
	}
	return "", false
}

// ReadArea reads entries [from, to) of metadata area k of a persistent
// store with chunk size chunkSectors and E = perArea from cow, reading only
// the sectors that hold them, and decodes them in order (a table ends at
// the first entry whose New is 0). Errors name the device and byte offset.
func ReadArea(cow block.Device, chunkSectors, perArea uint32, k uint64, from, to uint32) ([]Exception, error) {
	if chunkSectors == 0 || perArea == 0 {
		return nil, fmt.Errorf("exstore: %s: area %d: chunk size %d, %d entries per area: layout unknown", cow.Name(), k, chunkSectors, perArea)
	}
	if from > to || to > perArea {
		return nil, fmt.Errorf("exstore: %s: area %d: entries [%d, %d) of an area of %d", cow.Name(), k, from, to, perArea)
	}
	c := areaLocation(perArea, k)
	what := fmt.Sprintf("area %d", k)
	off, _, ok := chunkRange(cow, chunkSectors, c)
	if !ok {
		return nil, chunkIO(cow, "read", nil, chunkSectors, c, what)
	}
	if from == to {
		return nil, nil
	}
	lo := int64(from) * diskExceptionSize / block.SectorSize * block.SectorSize
	hi := (int64(to)*diskExceptionSize + block.SectorSize - 1) / block.SectorSize * block.SectorSize
	buf := make([]byte, hi-lo)
	if _, err := cow.ReadAt(buf, off+lo); err != nil {
		return nil, &MetadataError{Dev: cow.Name(), What: what, Off: off + lo, Errno: block.Errno(err),
			Msg: fmt.Sprintf("read of entries %d to %d failed", from, to-1), Err: err}
	}
	out := make([]Exception, 0, to-from)
	for i := from; i < to; i++ {
		old, nw := getException(buf, uint32(int64(i)-lo/diskExceptionSize))
		out = append(out, Exception{Area: k, Index: i, Old: old, New: nw, Off: off + int64(i)*diskExceptionSize})
	}
	return out, nil
}

// ReadHeader reads and decodes the header in sector 0 of cow.
func ReadHeader(cow block.Device) (Header, error) {
	b := make([]byte, block.SectorSize)
	if _, err := cow.ReadAt(b, 0); err != nil {
		return Header{}, &MetadataError{Dev: cow.Name(), What: "header", Off: 0, Errno: block.Errno(err), Msg: "read failed", Err: err}
	}
	return decodeHeader(b), nil
}
