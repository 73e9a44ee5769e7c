package exstore

import (
	"fmt"
	"syscall"
)

// Merger is implemented by stores that support snapshot-merge (the
// persistent store; the transient one has no prepare_merge/commit_merge,
// which is what "Snapshot exception store does not support snapshot-merge."
// tests for). Use a type assertion: m, ok := store.(exstore.Merger).
type Merger interface {
	// PrepareMerge is prepare_merge: it returns the last committed
	// exception and how many exceptions before it, in the same area, are
	// consecutive in both old and new chunk (n >= 1), or n = 0 when nothing
	// is left. When the current area is empty it steps back one area and
	// reads it from the COW.
	PrepareMerge() (lastOld, lastNew uint64, n int, err error)
	// CommitMerge is commit_merge: it clears the last n entries, writes the
	// area with PREFLUSH|FUA and sets next_free to the value in-order
	// commits would have left.
	CommitMerge(n int) error
}

// PrepareMerge implements Merger.
func (p *persistent) PrepareMerge() (uint64, uint64, int, error) {
	if !p.loaded || p.area == nil {
		return 0, 0, 0, fmt.Errorf("exstore: %s: merge before the persistent store's metadata was read", p.cow.Name())
	}
	if p.committed == 0 {
		if p.currentArea == 0 {
			return 0, 0, 0, nil
		}
		p.currentArea--
		if err := chunkIO(p.cow, "read", p.area, p.chunk, areaLocation(p.epa, p.currentArea), p.areaWhat(p.currentArea)); err != nil {
			return 0, 0, 0, err
		}
		p.committed = p.epa
	}
	lastOld, lastNew := getException(p.area, p.committed-1)
	n := uint32(1)
	for ; n < p.committed; n++ {
		o, nw := getException(p.area, p.committed-1-n)
		if o != lastOld-uint64(n) || nw != lastNew-uint64(n) {
			break
		}
	}
	return lastOld, lastNew, int(n), nil
}

// CommitMerge implements Merger.
func (p *persistent) CommitMerge(n int) error {
	if !p.loaded || p.area == nil {
		return fmt.Errorf("exstore: %s: merge before the persistent store's metadata was read", p.cow.Name())
	}
	if n < 0 || n > int(p.committed) {
		// The kernel BUG()s here.
		return &MetadataError{Dev: p.cow.Name(), What: p.areaWhat(p.currentArea), Errno: syscall.EINVAL,
			Off: int64(areaLocation(p.epa, p.currentArea)) * int64(p.chunkBytes()),
			Msg: fmt.Sprintf("commit_merge of %d exceptions with %d committed in the area", n, p.committed)}
	}
	for i := 0; i < n; i++ {
		putException(p.area, p.committed-1-uint32(i), 0, 0)
	}
	if err := chunkIO(p.cow, "write+fua", p.area, p.chunk, areaLocation(p.epa, p.currentArea), p.areaWhat(p.currentArea)); err != nil {
		return err
	}
	p.committed -= uint32(n)
	p.wroteArea(p.currentArea, p.committed)
	p.nextFree = areaLocation(p.epa, p.currentArea) + uint64(p.committed) + 1
	return nil
}
