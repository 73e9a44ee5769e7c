package snapshot

import (
	"cmp"
	"slices"

	"snaplab/sim/dm"
	"snaplab/sim/exstore"
)

// Probe observes the snapshot targets' internal transitions, for invariant
// checkers and coverage counters (sim/invariant). Each method runs
// synchronously at the point its comment names, inside the event that makes
// the transition. A Probe must not change the simulation: no I/O through
// the simulated devices' fault layers, no events, no kernel log lines.
// Without a Probe (the default) the targets pay one nil test per point.
type Probe interface {
	// Loading: the store's ReadMetadata found exception old -> new on s's
	// COW; it enters s's completed table next.
	Loading(s *Snapshot, old, new uint64)
	// Loaded: s's metadata was read (its completed table is what the COW
	// held).
	Loaded(s *Snapshot)
	// Allocated: s's store handed out COW chunk new for a pending exception
	// of origin chunk old (prepare_exception).
	Allocated(s *Snapshot, old, new uint64)
	// Full: s's store had no room for an exception of origin chunk old;
	// overflowed is true when s overflowed (PO, a snapshot write) rather
	// than being invalidated.
	Full(s *Snapshot, old uint64, overflowed bool)
	// Committing: exception old -> new is handed to store's Commit; store
	// is the one the commit goes to (s's store when the commit was
	// queued), copied whether its copy-out (or whole-chunk write) had
	// finished.
	Committing(s *Snapshot, store exstore.Store, old, new uint64, copied bool)
	// Committed: store's Commit of old -> new returned (its callbacks have
	// run if it wrote its area).
	Committed(s *Snapshot, store exstore.Store, old, new uint64)
	// Completing: old -> new enters s's completed table next
	// (pending_complete).
	Completing(s *Snapshot, old, new uint64)
	// MergeCommitted: a merge copied origin chunks [old, old+n) back from
	// COW chunks [new, new+n), committed that in the store and removed
	// them from s's completed table.
	MergeCommitted(s *Snapshot, old, new uint64, n int)
	// OriginWrite: a write of sectors [sector, sector+n) of origin device
	// dev is about to reach it (from a snapshot-origin target, a retried
	// origin bio, a snapshot-merge target or a merge's copy). The chunks
	// __origin_write looked at are those of sector, sector+step, ... below
	// sector+n; step 0 means the chunk of sector alone (a bio).
	OriginWrite(dev dm.Node, sector, n, step uint64)
	// Invalidated: s was invalidated (__invalidate_snapshot) and its store
	// dropped.
	Invalidated(s *Snapshot)
	// HandedOver: src's completed table and store moved to dst; srcValid
	// and srcPending are src's valid flag and pending exceptions before
	// the swap. The seed's handover from an invalid source reports
	// srcValid false and moves nothing: dst is made invalid instead.
	HandedOver(src, dst *Snapshot, srcValid bool, srcPending int)
	// Refused: a snapshot table on a COW already paired for a handover was
	// refused (a third table).
	Refused(s *Snapshot)
	// Suspended: a snapshot or snapshot-origin target of origin device dev
	// was suspended (postsuspend); pending is the number of pending
	// exceptions of dev's snapshots then.
	Suspended(dev dm.Node, pending int)
	// Destroyed: s's target is gone (dtr, or a failed ctr after its
	// metadata was read), and with it the store s holds.
	Destroyed(s *Snapshot)
}

// SetProbe installs p as c's snapshot probe (nil removes it). Install it
// before the first snapshot table is loaded.
func SetProbe(c *dm.Control, p Probe) { state(c).probe = p }

// Store is the exception store s holds now (a handover swaps stores).
func (s *Snapshot) Store() exstore.Store { return s.store }

// MergeRunning reports whether s is a snapshot-merge target whose merge is
// running.
func (s *Snapshot) MergeRunning() bool { return s.merge && s.mg.running }

// Snapshots lists the snapshot targets registered on origin device dev, in
// the kernel's order (largest chunk size first). The slice is the
// control's own: read it, do not keep or change it.
func Snapshots(c *dm.Control, dev dm.Node) []*Snapshot {
	if og := state(c).lookup(dev); og != nil {
		return og.snaps
	}
	return nil
}

// AllSnapshots lists every registered snapshot target of c, origin by
// origin in registration order, each origin's in the kernel's order.
func AllSnapshots(c *dm.Control) []*Snapshot {
	var out []*Snapshot
	for _, og := range state(c).list {
		out = append(out, og.snaps...)
	}
	return out
}

// PendingException is a pending exception as a checker sees it.
type PendingException struct {
	Old, New uint64 // origin chunk, COW chunk
	Copied   bool   // its copy-out (or whole-chunk write) finished
}

// Pending lists s's pending exceptions by origin chunk.
func (s *Snapshot) Pending() []PendingException {
	out := make([]PendingException, 0, len(s.pending))
	for _, pe := range s.pending { // order-free: sorted below
		out = append(out, PendingException{Old: pe.old, New: pe.new, Copied: pe.copied})
	}
	slices.SortFunc(out, func(a, b PendingException) int { return cmp.Compare(a.Old, b.Old) })
	return out
}

// pendingOn counts the pending exceptions of og's snapshots.
func (og *origin) pendingOn() int {
	n := 0
	for _, s := range og.snaps {
		n += len(s.pending)
	}
	return n
}

// submitOrigin sends write b, at sector of origin device dev, to it.
func submitOrigin(st *origins, dev dm.Node, b *dm.Bio) {
	if st.probe != nil && b.Op == dm.OpWrite {
		st.probe.OriginWrite(dev, b.Sector, b.Sectors(), 0)
	}
	dev.Submit(b)
}
