package snapshot

import "snaplab/sim/dm"

// SupportsDiscard implements dm.DiscardTarget: only a table with
// discard_zeroes_cow has discard bios (snapshot_ctr), and it takes them
// when its origin and COW devices do (snapshot_iterate_devices). A
// snapshot-merge table is the same; its map ignores them. A
// snapshot-origin target has none (origin_ctr).
//
// Its queue's max_discard_sectors is the store's chunk size
// (snapshot_io_hints, computed when the table goes live; a handover
// destination's own store has chunk size 0 and uses its source's while
// both exist). So a handover destination whose source was removed before
// its resume (a cancelled handover, mainline) keeps chunk size 0 and takes
// no discards: BLKDISCARD fails with EOPNOTSUPP before any bio is made.
func (s *Snapshot) SupportsDiscard(ti *dm.TargetInstance) bool {
	if !hasFeature(s.features, "discard_zeroes_cow") {
		return false
	}
	cs := s.store.ChunkSize()
	if _, src, dest, _ := s.st.sharing(s); src != nil && dest != nil {
		cs = src.store.ChunkSize()
	}
	return cs > 0 && dm.SupportsDiscard(s.originDev) && dm.SupportsDiscard(s.cowDev)
}
