package gen

// Fault windows of kernel-differential cases (Config.Interleave false).
//
// Those cases also run on the real kernel, and the executors compare every
// step's results, the kernel's log lines among them. The kernel's block
// layer merges adjacent requests in flight to one disk into one request: a
// 12 KiB origin write that dm splits at 4 KiB chunk boundaries reaches the
// disk as one request and logs one "I/O error, dev origin, sector N" line
// where the simulator, which does not merge, logs three; copy-outs of
// adjacent chunks to one COW merge the same way; and a merged request only
// partly in a fault range fails as a whole. So, while a fault rule is
// active and Interleave is off, every I/O step keeps each request to the
// faulty disk alone (scenarios/README.md, "Faults and the kernel log"):
//
//   - I/O through the origin device is one unit of the smallest chunk
//     size of the tables loaded so far, aligned to it. No table had a
//     smaller chunk, so the origin's split boundary (the smallest chunk
//     among its snapshots when it was last resumed) is a multiple of the
//     unit and the I/O is one request; it lies in one chunk of every
//     snapshot, so an origin write copies at most one chunk per snapshot,
//     and the copy-out reads of the origin all contain the written unit
//     (they overlap, never merely touch).
//   - I/O through a snapshot is one whole chunk of it, aligned: one request
//     to the COW or the origin (a whole-chunk write to a chunk without an
//     exception goes straight to the COW, with no copy-out).
//   - An origin write is made only where at most one snapshot on each
//     faulty COW disk needs an exception for it: it copies the chunk or,
//     with no room, rewrites its header (two slots of one disk copying at
//     once could touch across the slots' boundary). Where no such unit is
//     found the step reads instead.
//
// Later requests of one step (a commit after its copy-out, the header
// rewrite of an invalidation) wait for the earlier ones, so they never
// merge with them. With Interleave the cases run on the simulator only and
// keep their full variety of ranges.

// lone reports whether the I/O steps made now must keep each request to a
// faulty disk alone: a fault rule is active in a kernel-differential case.
func (g *generator) lone() bool { return !g.cfg.Interleave && len(g.faults) > 0 }

// faulty reports whether an active fault rule names disk.
func (g *generator) faulty(disk string) bool {
	for _, r := range g.faults {
		if r.disk == disk {
			return true
		}
	}
	return false
}

// failsReads reports whether an active fault rule fails reads of disk.
func (g *generator) failsReads(disk string) bool {
	for _, r := range g.faults {
		if r.disk == disk && (r.op == opRead || r.op == opAny) {
			return true
		}
	}
	return false
}

// minChunk is the smallest chunk size (sectors) of the slots that have had
// a snapshot table (a header), and so of every table loaded so far.
func (g *generator) minChunk() int64 {
	m := int64(0)
	for _, s := range g.slots {
		if s.header && (m == 0 || s.chunk < m) {
			m = s.chunk
		}
	}
	return m
}

// windowRange picks the range of a fault window's step inside [off,
// off+n): whole units of unit (within), or, when lone, one aligned unit of
// lone sectors (off and n are multiples of lone).
func (g *generator) windowRange(off, n, unit, lone int64) (int64, int64) {
	if !g.lone() {
		return g.within(off, n, unit)
	}
	return off + g.rng.Int64N(n/lone)*lone, lone
}

// loneSpot picks a u-aligned unit of u sectors on the origin, mostly in
// the hot first MiB.
func (g *generator) loneSpot(u int64) int64 {
	span := g.origin
	if g.chance(75) {
		span = min(span, 2048)
	}
	return g.rng.Int64N(span/u) * u
}

// copiesAlone reports whether an origin write of the minChunk unit at off
// makes at most one request at a time to each faulty COW disk: a valid
// active snapshot on it without an exception for the unit's chunk copies
// the chunk or, with no room, is invalidated (a persistent store rewrites
// its header; a transient one, which writes nothing, counts too).
//
// When a rule fails reads of the origin's disk, every copy-out reads it, so
// at most one snapshot in all may copy: two copy-outs reading a failing
// origin log their errors and invalidations in an order that depends on
// kcopyd's timing on the kernel.
func (g *generator) copiesAlone(off int64) bool {
	busy := map[string]bool{}
	originFaulty, copies := g.failsReads(originDisk), 0
	for _, s := range g.liveSlots() {
		if !s.valid {
			continue
		}
		if _, ok := s.exc[off/s.chunk]; ok {
			continue
		}
		if copies++; originFaulty && copies > 1 {
			return false
		}
		if !g.faulty(s.disk) {
			continue
		}
		if busy[s.disk] {
			return false
		}
		busy[s.disk] = true
	}
	return true
}

// loneOriginWrite writes one minChunk unit through the origin device: at
// off if copiesAlone allows it, else at up to three other random units;
// failing that it reads the origin at off instead. It reports whether it
// wrote.
func (g *generator) loneOriginWrite(off int64) bool {
	u := g.minChunk()
	for try := 0; try < 4; try++ {
		if try > 0 {
			off = g.loneSpot(u)
		}
		if g.copiesAlone(off) {
			g.kinds[KWriteOrigin]++
			g.originWriteLine(off, u)
			return true
		}
	}
	g.loneOriginRead(off)
	return false
}

func (g *generator) loneOriginRead(off int64) {
	u := g.minChunk()
	g.kinds[KReadOrigin]++
	g.line("read base %s %s%s", bytesOf(off), bytesOf(u), g.eio(g.hit(originDisk, opRead, off, u)))
}

// loneOp is windowOp's step of kind when lone: I/O of one chunk as the
// file comment says (a flush is one request anyway).
func (g *generator) loneOp(kind string, st state) {
	switch kind {
	case KWriteOrigin:
		g.loneOriginWrite(g.loneSpot(g.minChunk()))
	case KReadOrigin:
		g.loneOriginRead(g.loneSpot(g.minChunk()))
	case KWriteSnap:
		s := g.preferValid(st.live)
		g.snapWriteAt(s, g.loneSpot(s.chunk), s.chunk)
	case KReadSnap:
		s := g.preferValid(st.live)
		off := g.loneSpot(s.chunk)
		g.kinds[KReadSnap]++
		g.line("read %s %s %s%s", s.live, bytesOf(off), bytesOf(s.chunk), g.eio(!s.valid || g.snapReadFails(s, off, s.chunk)))
	default:
		g.do(kind, st)
	}
}

// loneCopyTrigger is the kcopyd-write and metadata-write windows' step
// when lone: an origin write into chunk c of s (which has no exception
// there), one minChunk unit of it that copiesAlone allows; if none does
// (another slot on s's disk would copy too), a whole-chunk write through
// s into c, which writes the new exception's chunk and commits it the
// same way.
func (g *generator) loneCopyTrigger(s *slot, c int64) {
	u := g.minChunk()
	units := s.chunk / u
	first := g.rng.Int64N(units)
	for i := range units {
		off := c*s.chunk + (first+i)%units*u
		if g.copiesAlone(off) {
			g.kinds[KWriteOrigin]++
			g.originWriteLine(off, u)
			return
		}
	}
	g.snapWriteAt(s, c*s.chunk, s.chunk)
}
