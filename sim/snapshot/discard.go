package snapshot

import "snaplab/sim/dm"

// SupportsDiscard implements dm.DiscardTarget: only a table with
// discard_zeroes_cow has discard bios (snapshot_ctr), and it takes them
// when its origin and COW devices do (snapshot_iterate_devices). A
// snapshot-merge table is the same; its map ignores them. A
// snapshot-origin target has none (origin_ctr).
func (s *Snapshot) SupportsDiscard(ti *dm.TargetInstance) bool {
	return hasFeature(s.features, "discard_zeroes_cow") && dm.SupportsDiscard(s.originDev) && dm.SupportsDiscard(s.cowDev)
}
