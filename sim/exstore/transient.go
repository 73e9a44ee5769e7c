package exstore

import (
	"fmt"

	"snaplab/sim/block"
)

// transient is the "N" store (dm-snap-transient.c): nothing on disk; chunks
// are handed out upward from COW chunk 0 and next_free counts sectors.
type transient struct {
	cow      block.Device
	chunk    uint32 // sectors; 0 = not given (the snapshot ctr then fails)
	overflow bool   // only settable through handover; echoed nowhere
	nextFree uint64 // sectors
}

func (t *transient) Type() string       { return "N" }
func (t *transient) Overflow() bool     { return t.overflow }
func (t *transient) SetOverflow(o bool) { t.overflow = o }
func (t *transient) ChunkSize() uint32  { return t.chunk }
func (t *transient) ClearChunkSize()    { t.chunk = 0 }
func (t *transient) TableArgs() string  { return fmt.Sprintf("N %d", t.chunk) }
func (t *transient) Pending() int       { return 0 }
func (t *transient) Drop()              {} // no drop_snapshot

// ReadMetadata is transient_read_metadata: nothing to read.
func (t *transient) ReadMetadata(func(old, new uint64) error) (bool, error) { return false, nil }

// Prepare is transient_prepare_exception. The kernel returns -1 (EPERM)
// when full; dm-snap.c only tests for non-zero, so ENOSPC is used here for
// both store types.
func (t *transient) Prepare() (uint64, error) {
	if t.chunk == 0 {
		return 0, fmt.Errorf("exstore: %s: prepare on a transient store without a chunk size", t.cow.Name())
	}
	size := uint64(t.cow.Size()) / block.SectorSize
	c := uint64(t.chunk)
	if size < t.nextFree+c {
		return 0, enospc(t.cow.Name(), int64(t.nextFree)*block.SectorSize, int64(c)*block.SectorSize, t.nextFree+c, size)
	}
	newChunk := t.nextFree / c // sector_to_chunk: next_free >> chunk_shift
	t.nextFree += c
	return newChunk, nil
}

// Commit is transient_commit_exception: the callback gets valid at once.
func (t *transient) Commit(old, new uint64, valid bool, done func(ok bool)) {
	if done != nil {
		done(valid)
	}
}

// Usage is transient_usage: next_free sectors, the COW size, no metadata.
func (t *transient) Usage() (allocated, total, metadata uint64) {
	return t.nextFree, uint64(t.cow.Size()) / block.SectorSize, 0
}
