package gen

// The extended op set's steps for three deep states (sim/invariant's
// coverage properties) that random steps alone do not reach:
//
//   - cow-full-at-area-boundary: some persistent slots are sized to end
//     right after a metadata area k >= 1 (boundarySize); the fill step then
//     runs such a store full exactly when its next data chunk would be the
//     first after that area. The model counts KFullAtBoundary wherever a
//     store it models runs full there.
//   - handover-copies-in-flight (seed semantics with Interleave only): a
//     snapshot write's copy-out still in flight on the source when the
//     destination's resume hands over (handoverInFlight).
//   - overflow-during-merge: a PO snapshot, filled beforehand, overflows
//     on a snapshot write issued between a merge's resume and its `run`
//     (mergeOverflow).
//   - suspend-pending-exceptions (Interleave): a snapshot device is
//     suspended and resumed while an asynchronous origin write's
//     copy-outs are in flight (suspendPending).

// Kinds of the steps in this file.
const (
	// KFullAtBoundary: a persistent store ran full exactly when its next
	// allocation would have been the first data chunk after metadata area
	// k >= 1 (counted by the model wherever that happens).
	KFullAtBoundary = "full-at-area-boundary"
	// KHandoverInFlight: seed semantics, a write through a handover source
	// whose copy-out is in flight when the destination's resume hands over.
	KHandoverInFlight = "seed-handover-copy-in-flight"
	// KMergeOverflow: a PO snapshot is filled, then a merge of another
	// store starts and, while it runs, a snapshot write overflows the PO
	// snapshot.
	KMergeOverflow = "merge-overflow"
	// KSuspendPending: a snapshot device suspended and resumed while an
	// asynchronous origin write's copy-outs are in flight.
	KSuspendPending = "suspend-copies-in-flight"
)

// boundaryPercent is how often an extended-set persistent slot of chunk 8
// or 16 is sized to end at a metadata area boundary.
const boundaryPercent = 20

// boundarySize, in the extended op set, sizes some persistent slots to
// hold exactly the header, areas 0..k and the k*E data chunks between
// them (docs/cow-format.md: E = chunk bytes / 16, area k's metadata chunk
// at 1 + k*(E+1)), k >= 1: the store runs full when its next data chunk
// would be 2 + k*(E+1), the first after area k. Only chunk sizes whose
// room stays within what the fill step fills (600 exceptions) are used:
// chunk 8 (k 1 or 2: 256 or 512 data chunks) and chunk 16 (k 1: 512).
// Generate's classic set draws nothing here.
func (g *generator) boundarySize(s *slot) {
	if !g.ext || !s.persistent || s.chunk > 16 || !g.chance(boundaryPercent) {
		return
	}
	k := int64(1)
	if s.chunk == 8 && g.chance(50) {
		k = 2
	}
	s.sectors = (2 + k*(s.perArea()+1)) * s.chunk
}

// ranFull is called where the model finds s full (an allocation that
// fails): it counts KFullAtBoundary when s's next data chunk is the first
// after metadata area k >= 1, the state the simulator's coverage property
// cow-full-at-area-boundary names.
func (g *generator) ranFull(s *slot) {
	if !g.ext || !s.persistent {
		return
	}
	if e := s.perArea(); s.nextFree >= e+3 && (s.nextFree-2)%(e+1) == 0 {
		g.kinds[KFullAtBoundary]++
	}
}

// reachChoices are the steps of this file that may run now, with their
// weights (0: not possible); mergeable are the slots extStep may merge.
func (g *generator) reachChoices(st state, mergeable []*slot) []choice {
	inFlight := g.seedSem() && g.cfg.Interleave && st.pending != nil && g.inFlightOK(st.pending)
	return []choice{
		{KHandoverInFlight, on(inFlight, 5)},
		{KMergeOverflow, on(st.pending == nil && !g.swarm.off[KMerge] && len(mergeable) > 0 && len(g.mergeOverflowPairs(mergeable)) > 0, 4)},
		{KSuspendPending, on(g.cfg.Interleave && st.pending == nil && len(g.copyTargets()) > 0, 3)},
	}
}

// reachStep runs kind, one of this file's steps that reachChoices
// offered.
func (g *generator) reachStep(kind string, st state, mergeable []*slot) {
	switch kind {
	case KHandoverInFlight:
		g.handoverInFlight(st.pending)
	case KMergeOverflow:
		pairs := g.mergeOverflowPairs(mergeable)
		p := pairs[g.rng.IntN(len(pairs))]
		g.mergeOverflow(p[0], p[1])
	case KSuspendPending:
		g.suspendPending()
	}
}

// inFlightOK: a write through p's source makes a new exception (the
// source is valid, not overflowed, has room, and an unmapped chunk in the
// hot first MiB exists).
func (g *generator) inFlightOK(p *slot) bool {
	return p.valid && !p.overflowed && p.room() >= 1 && g.unmappedHot(p)
}

// unmappedHot: s has a chunk without an exception in the hot first MiB
// (the chunks freeChunk picks from).
func (g *generator) unmappedHot(s *slot) bool {
	for c := range min(2048, g.origin) / s.chunk {
		if _, ok := s.exc[c]; !ok {
			return true
		}
	}
	return false
}

// handoverInFlight (seed semantics, Interleave): an asynchronous write
// through the source p.live into one chunk without an exception, then the
// destination's resume, the source still resumed (the seed hands over
// anyway, docs/handover.md §7.3), then the wait.
//
// What the simulator does, and so the model: the write's exception is
// allocated from the source's store when it is mapped, and its copy-out
// (or whole-chunk write) is posted as events. A dmsetup command runs the
// world only to drain something it waits for: the resume's internal
// suspend of the origin device waits for the origin's in-flight bios,
// and none is in flight (the generator waits for every async batch), so
// no event runs before the swap: the handover sees the exception pending
// (coverage handover-copies-in-flight). The store moves to the
// destination with the chunk allocated; the source, now invalid, later
// commits the exception into the store it received (the destination's
// own, never loaded: a transient one accepts it, a persistent one refuses
// it) and, being invalid, fails the write with EIO either way. No
// exception is added anywhere; the destination's store has skipped the
// chunk.
//
// A persistent store counted the allocation as pending and never sees
// its commit, so its later commits would wait for it forever (they batch
// while anything is pending): the destination is removed right away
// (lvm would remove both devices). Its store on the COW is as it was
// before the write (the allocation was never committed), so a reload
// allocates from where the model's cursor stood before it.
func (g *generator) handoverInFlight(p *slot) {
	c, _ := g.freeChunk(p) // inFlightOK found one, and freeChunk scans them all
	g.kinds[KHandoverInFlight]++
	off, n := g.within(c*p.chunk, p.chunk, 1)
	id := g.asyncID("w")
	g.kinds[KWriteSnap]++
	g.line("write %s %s %s pattern=%s%s async=%s", p.live, bytesOf(off), bytesOf(n), g.newPattern(), g.fua(), id)
	before := p.nextFree
	p.allocAt()
	g.seedDestResume(p)
	g.line("wait %s%s", id, g.eio(true))
	if p.persistent {
		g.kinds[KRemoveSnap]++
		g.line("dmsetup remove %s", p.live)
		p.live = ""
		p.nextFree = before
	}
}

// mergeOverflowPairs lists (merged slot, PO slot) pairs for
// mergeOverflow: t is another live, valid, not overflowed PO snapshot
// whose room (at most 128 exceptions) its unmapped chunks exceed.
func (g *generator) mergeOverflowPairs(mergeable []*slot) [][2]*slot {
	var out [][2]*slot
	for _, t := range g.slots {
		if t.live == "" || !t.po || !t.valid || t.overflowed {
			continue
		}
		room := t.room()
		if room > 128 || g.origin/t.chunk-int64(len(t.exc)) <= int64(room) {
			continue
		}
		for _, s := range mergeable {
			// A merge with nothing to merge ends in its resume.
			if s != t && len(s.exc) > 0 && !firstRunNeeds(s, t) {
				out = append(out, [2]*slot{s, t})
			}
		}
	}
	return out
}

// firstRunNeeds reports whether a merge of s, in its first run, which the
// resume itself copies for (start_merge), needs an exception in t: one
// would find t full and invalidate it before a write could overflow it.
func firstRunNeeds(s, t *slot) bool {
	runs := mergeRuns(s)
	if len(runs) == 0 {
		return false
	}
	first, last := t.chunks(runs[0][0], runs[0][1])
	for c := first; c <= last; c++ {
		if _, ok := t.exc[c]; !ok {
			return true
		}
	}
	return false
}

// mergeOverflow fills the PO snapshot t with whole-chunk snapshot writes
// (one write over as many chunks without an exception as t has room
// for), then merges s (lvm's sequence, see merge) and, after the merge
// target's resume and before `run`, writes through t into a chunk without
// an exception: t is full, so the write fails and t overflows while the
// merge runs (coverage overflow-during-merge).
//
// The outcome does not depend on timing: t has no room from before the
// merge starts, so whether the merge's copy-on-write into t for the
// chunks it merges (which invalidates t where it needs an exception
// there) comes before or after the write, the write fails with EIO and t
// ends invalid exactly when the merge needed an exception in it, else
// overflowed; once the merge is done, t's status says which, and the
// step expects it. The merge's first run, whose exceptions the resume
// makes, needs none in t (mergeOverflowPairs), so t is still valid when
// the write overflows it.
func (g *generator) mergeOverflow(s, t *slot) {
	g.kinds[KMergeOverflow]++
	// No fault rule is active between fault windows: the fill succeeds
	// and leaves t valid, not overflowed, without room.
	if room := t.room(); room > 0 {
		a, b := g.unmappedRun(t, room)
		g.kinds[KWriteSnap]++
		off, n := a*t.chunk, (b-a)*t.chunk
		fails := g.snapWriteChunks(t, off, n)
		g.line("write %s %s %s pattern=%s%s%s", t.live, g.size(off*sector), g.size(n*sector), g.newPattern(), g.fua(), g.eio(fails))
	}
	g.merge(s, func() {
		c, ok := g.freeChunk(t)
		if !ok { // none in the hot first MiB: the first one after a random chunk
			_, b := g.unmappedRun(t, 1)
			c = b - 1
		}
		off, n := g.within(c*t.chunk, t.chunk, 1)
		g.ranFull(t)
		t.overflowed = true
		g.kinds[KOverflowed]++
		g.kinds[KWriteSnap]++
		g.line("write %s %s %s pattern=%s%s%s", t.live, bytesOf(off), bytesOf(n), g.newPattern(), g.fua(), g.eio(true))
	})
	state := "Overflow"
	if !t.valid {
		state = "Invalid"
	}
	g.line("dmsetup status %s expect=\"0 %d snapshot %s\"", t.live, g.origin, state)
}

// unmappedRun returns chunks [a, b) of t holding exactly k chunks without
// an exception, b-1 being one, starting from a random chunk (or from 0
// when the chunks after it hold fewer than k). The caller makes sure the
// origin has more than k such chunks.
func (g *generator) unmappedRun(t *slot, k int) (a, b int64) {
	total := g.origin / t.chunk
	scan := func(from int64) (int64, bool) {
		got := 0
		for c := from; c < total; c++ {
			if _, ok := t.exc[c]; !ok {
				if got++; got == k {
					return c + 1, true
				}
			}
		}
		return 0, false
	}
	a = g.rng.Int64N(max(total-int64(k)*2, 1))
	if b, ok := scan(a); ok {
		return a, b
	}
	b, _ = scan(0)
	return 0, b
}

// copyTargets are the live, valid slots an origin write into a chunk of
// theirs without an exception gives a copy-out, with room to spare (an
// asynchronous write never competes for a store's last chunks) and such
// a chunk in the hot first MiB.
func (g *generator) copyTargets() []*slot {
	return g.filter(func(s *slot) bool { return s.live != "" && s.valid && s.room() >= 3 && g.unmappedHot(s) })
}

// suspendPending (Interleave, no handover waiting): an asynchronous origin
// write into a chunk of s without an exception, then a live snapshot
// device is suspended and resumed, then the wait. Suspending a snapshot
// device waits only for its own bios, so the write's copy-outs are still
// in flight when it is suspended (coverage suspend-pending-exceptions);
// they go on regardless (the snapshot stays valid and active), the
// resume's quiescing of the origin (mainline) lets the write finish, and
// the outcome is the origin write's, as the model has it, whenever the
// copies finish. A write that would need an exception in a store with
// too little room to spare is issued synchronously instead, without the
// suspend.
func (g *generator) suspendPending() {
	s := g.one(g.copyTargets())
	c, _ := g.freeChunk(s) // copyTargets found one, and freeChunk scans them all
	off, n := g.within(c*s.chunk, s.chunk, 1)
	b := g.newBatch()
	need := b.needs(off, n, nil)
	if !b.fits(need) {
		g.kinds[KWriteOrigin]++
		g.originWriteLine(off, n)
		return
	}
	g.kinds[KSuspendPending]++
	b.take(off, n)
	b.claim(need)
	b.origin(off, n)
	dev := g.one(g.liveSlots()).live
	g.line("dmsetup suspend %s", dev)
	g.line("dmsetup resume %s", dev)
	b.wait()
}
