package snapshot

import (
	"syscall"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/exstore"
	"snaplab/sim/plant"
)

// Kernel strings of snapshot-merge.
const (
	msgAlreadyMerging = "A snapshot is already merging."
	msgNoMergeSupport = "Snapshot exception store does not support snapshot-merge."
)

// merging is the state of a snapshot-merge target's merge.
type merging struct {
	running  bool // RUNNING_MERGE
	stopping bool // SHUTDOWN_MERGE requested
	inFlight bool // a merge step is queued or copying
	failed   bool // merge_failed: status "Merge failed"
	first    uint64
	num      uint64
	queued   []*dm.Bio // bios_queued_during_merge
}

func mergeCtr(ti *dm.TargetInstance, args []string) (dm.Target, error) {
	return snapshotCtrType(ti, args, true)
}

// validateMerge is the snapshot-merge part of __validate_exception_handover
// for a destination s whose source is src.
func validateMerge(s, src, merge *Snapshot) error {
	if !s.merge {
		return nil
	}
	if merge != nil {
		return dm.Errf(msgAlreadyMerging)
	}
	if _, ok := src.store.(exstore.Merger); !ok {
		return dm.Errf(msgNoMergeSupport)
	}
	return nil
}

// mergeMap is snapshot_merge_map.
func (s *Snapshot) mergeMap(ti *dm.TargetInstance, b *dm.Bio) {
	if b.Op == dm.OpFlush {
		ti.Remap(b, s.originDev, 0)
		return
	}
	if b.Op == dm.OpDiscard {
		// Once merging, discards no longer effect change.
		b.End(nil)
		return
	}
	sector := ti.Begin + b.Sector
	if s.valid {
		chunk, off := s.chunkOf(sector)
		if nc, ok := s.complete.m[chunk]; ok {
			if b.Op == dm.OpWrite && chunk >= s.mg.first && chunk < s.mg.first+s.mg.num {
				s.mg.queued = append(s.mg.queued, b.Child(sector))
				return
			}
			ti.Remap(b, s.cowDev, s.cowSector(nc, off))
			return
		}
	}
	// Full merging snapshots are redirected to the origin.
	lb := b.Child(sector)
	if b.Op == dm.OpWrite {
		if og := s.st.lookup(s.originDev); og != nil && originWrite(s.st, og, sector, lb) {
			return
		}
	}
	submitOrigin(s.st, s.originDev, lb)
}

// startMerge is start_merge, after the handover of snapshot_merge_resume.
func (s *Snapshot) startMerge() {
	if s.mg.running {
		return
	}
	s.mg.running, s.mg.stopping = true, false
	// start_merge calls snapshot_merge_next_chunks itself, in the resume:
	// the first step's copy-on-write into the origin's other snapshots
	// (and an invalidation it causes) happens before the resume returns.
	s.mg.inFlight = true
	s.mergeStep()
}

// stopMerge is stop_merge: ask the merge to stop and wait for it.
func (s *Snapshot) stopMerge() error {
	if !s.mg.running {
		return nil
	}
	s.mg.stopping = true
	if err := s.ctl.W.RunUntil("merge of "+s.Name()+" to stop", func() bool { return !s.mg.inFlight }); err != nil {
		return err
	}
	s.mg.running = false
	return nil
}

func (s *Snapshot) mergeShutdown() {
	s.mg.running = false
	s.mg.inFlight = false
}

// mergeNext is snapshot_merge_next_chunks, as an event.
func (s *Snapshot) mergeNext() {
	s.mg.inFlight = true
	s.ctl.W.After(dm.KcopyLatency, "merge.next", s.mergeStep)
}

// mergeStep is one step of the merge loop: prepare the next run of
// chunks, make the exceptions other snapshots need for it, copy it.
func (s *Snapshot) mergeStep() {
	if s.mg.stopping {
		s.mergeShutdown()
		return
	}
	if !s.valid {
		s.logf("Snapshot is invalid: can't merge")
		s.mergeShutdown()
		return
	}
	m := s.store.(exstore.Merger)
	lastOld, lastNew, n, err := m.PrepareMerge()
	if err != nil {
		s.logf("Read error in exception store: shutting down merge")
		s.mg.failed = true
		s.mergeShutdown()
		return
	}
	if n == 0 {
		s.mergeShutdown()
		return
	}
	old := lastOld + 1 - uint64(n)
	nw := lastNew + 1 - uint64(n)
	cs := uint64(s.store.ChunkSize())
	ioSize := uint64(n) * cs
	// Reallocate exceptions needed in other snapshots, then wait for them.
	if s.originWriteExtent(old*cs, ioSize) {
		s.ctl.W.After(dm.KcopyLatency, "merge.wait", func() { s.mergeNext() })
		return
	}
	s.mg.first, s.mg.num = old, uint64(n)
	s.ctl.W.After(dm.KcopyLatency, "merge.copy", func() { s.mergeCopy(old, nw, n) })
}

// originWriteExtent is origin_write_extent: copy-on-write in the origin's
// other snapshots for the extent about to be overwritten, in steps of the
// origin's minimum chunk size (the merging target's max_io_len); true if
// any exception must be waited for.
func (s *Snapshot) originWriteExtent(sector, size uint64) bool {
	og := s.st.lookup(s.originDev)
	if og == nil {
		return false
	}
	step := og.minimumChunkSize()
	if step == 0 {
		step = size
	}
	wait := false
	for n := uint64(0); n < size; n += step {
		if originWrite(s.st, og, sector+n, nil) {
			wait = true
		}
	}
	return wait
}

// originStep is the step originWriteExtent takes over an extent of size
// sectors: the origin's smallest chunk size.
func (s *Snapshot) originStep(size uint64) uint64 {
	if og := s.st.lookup(s.originDev); og != nil {
		if step := og.minimumChunkSize(); step != 0 {
			return step
		}
	}
	return max(size, 1)
}

// mergeCopy copies the chunks from the COW to the origin, commits the merge
// and removes the exceptions (merge_callback).
func (s *Snapshot) mergeCopy(old, nw uint64, n int) {
	cs := uint64(s.store.ChunkSize())
	originSectors := uint64(s.originDev.Size()) / block.SectorSize
	count := min(uint64(n)*cs, originSectors-min(old*cs, originSectors))
	if plant.Is(plant.MergeSkipsChunk) {
		count -= min(count, cs)
	}
	buf := make([]byte, count*block.SectorSize)
	fail := func(msg string) {
		s.logf("%s", msg)
		s.mg.failed = true
		q := s.mg.queued
		s.mg.queued = nil
		for _, b := range q {
			b.End(&block.Error{Dev: s.Name(), Op: "write", Off: int64(b.Sector) * block.SectorSize, Len: int64(b.Bytes()), Errno: syscall.EIO})
		}
		s.mergeShutdown()
	}
	if _, err := s.cowDev.ReadAt(buf, int64(nw*cs)*block.SectorSize); err != nil {
		fail("Read error: shutting down merge.")
		return
	}
	if s.st.probe != nil {
		s.st.probe.OriginWrite(s.originDev, old*cs, count, s.originStep(count))
	}
	if _, err := s.originDev.WriteAt(buf, int64(old*cs)*block.SectorSize); err != nil {
		fail("Write error: shutting down merge.")
		return
	}
	if err := s.originDev.Flush(); err != nil {
		fail("Flush after merge failed: shutting down merge")
		return
	}
	if err := s.store.(exstore.Merger).CommitMerge(n); err != nil {
		fail("Write error in exception store: shutting down merge")
		return
	}
	for i := uint64(0); i < uint64(n); i++ {
		delete(s.complete.m, old+i)
	}
	if s.st.probe != nil {
		s.st.probe.MergeCommitted(s, old, nw, n)
	}
	s.mg.first, s.mg.num = 0, 0
	q := s.mg.queued
	s.mg.queued = nil
	for _, b := range q {
		submitOrigin(s.st, s.originDev, b)
	}
	if s.st.hooks.Merged != nil {
		s.st.hooks.Merged(s, old*cs, count)
	}
	s.mergeNext()
}
