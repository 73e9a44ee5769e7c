package snapshot

import (
	"snaplab/sim/dm"
	"snaplab/sim/exstore"
)

// Seams for the invariant tests (invariant_test.go): each breaks the
// model's state the way a defect in this package would, so that the
// checker can be seen to report it.

// SetStore replaces s's exception store with wrap(store): a test's store
// that plants a defect (an exstore.Wrapper, so checkers see through it).
func SetStore(s *Snapshot, wrap func(exstore.Store) exstore.Store) { s.store = wrap(s.store) }

// OriginWriteNoCOW sends a write of data at sector straight to origin
// device dev, as an origin write that skipped __origin_write would.
func OriginWriteNoCOW(c *dm.Control, dev dm.Node, sector uint64, data []byte, done func(error)) {
	submitOrigin(state(c), dev, dm.NewBio(dm.OpWrite, sector, data, false, done))
}

// CommitBeforeCopy commits every pending exception of s whose copy has
// not finished, now (its copy still runs).
func CommitBeforeCopy(s *Snapshot) int {
	n := 0
	for _, pe := range s.Pending() {
		if !pe.Copied {
			s.completeException(s.pending[pe.Old])
			n++
		}
	}
	return n
}

// RetargetPending points s's pending exception of origin chunk old at COW
// chunk new (one already in use, say).
func RetargetPending(s *Snapshot, old, new uint64) bool {
	pe := s.pending[old]
	if pe == nil {
		return false
	}
	pe.new = new
	return true
}

// SetException maps origin chunk old to COW chunk new in s's completed
// table, behind the store's back.
func SetException(s *Snapshot, old, new uint64) { s.complete.m[old] = new }

// StrandPending gives s a pending exception for origin chunk old that no
// copy will ever finish (a pending exception lost track of), with COW
// chunk new.
func StrandPending(s *Snapshot, old, new uint64) {
	s.pending[old] = &pendingEx{old: old, new: new, seq: s.nextSeq, started: true}
	s.nextSeq++
}
