package gen

import "fmt"

// Overflowed and invalid snapshots, made observable (extended op set).
//
// A PO snapshot overflows only when a snapshot write finds its store
// full, which random writes rarely arrange; and what sets an overflowed
// snapshot apart from a full but healthy one shows only in a write to a
// chunk that already has an exception (EIO: an overflowed snapshot fails
// every write, docs/dm-snapshot.md §4.7, §5.1; a healthy one writes it to
// the COW) and in its status (`Overflow`, §3.1). Two steps of their own:
//
//   - overflowPO fills a live, valid PO snapshot with one snapshot write
//     over as many chunks without an exception as its store has room for
//     (whole chunks, each written straight to the COW), then writes into
//     one more chunk without an exception: the store is full, the write
//     fails with EIO and the snapshot overflows (the header stays valid).
//     A fill by one write and an overflow by the next is deterministic on
//     the kernel too (§5.1). One or two probes follow at once (an origin
//     write that needs a new exception in it soon invalidates it).
//   - probeOverflow checks a state the model knows exactly: a write into a
//     chunk of an overflowed snapshot that has an exception (EIO), a read
//     of one (served from the COW), or the status of an invalid or
//     overflowed snapshot with expect= (`Invalid` beats `Overflow`).
//
// Neither runs inside a fault window, so no request fails and the kernel
// logs only the overflow line.

// Kinds of the steps in this file.
const (
	// KOverflowPO: a PO snapshot filled by a snapshot write, then
	// overflowed by the next one.
	KOverflowPO = "overflow-po"
	// KOverflowProbe: I/O to a chunk with an exception of an overflowed
	// snapshot, or the status of an invalid or overflowed snapshot with
	// its expected text.
	KOverflowProbe = "probe-overflowed"
)

// maxOverflowFill bounds the chunks overflowPO's fill writes at once (a
// 2 MiB slot of 4 KiB chunks has room for 510).
const maxOverflowFill = 512

// overflowable are the live, valid, not overflowed PO snapshots, with no
// handover waiting, whose room is at most maxOverflowFill and less than
// their chunks without an exception.
func (g *generator) overflowable() []*slot {
	return g.filter(func(t *slot) bool {
		if t.live == "" || !t.po || !t.valid || t.overflowed || t.dest != "" {
			return false
		}
		room := t.room()
		return room <= maxOverflowFill && g.origin/t.chunk-int64(len(t.exc)) > int64(room)
	})
}

// probeable are the live snapshots probeOverflow may look at: invalid or
// overflowed ones, for the status (unless the swarm profile switched
// status listings off), or overflowed ones with an exception, for I/O.
func (g *generator) probeable() []*slot {
	return g.filter(func(s *slot) bool {
		return s.live != "" && (!s.valid || s.overflowed) && (!g.swarm.off[KStatus] || g.probeIO(s))
	})
}

// probeIO: probeOverflow may write or read a chunk of s with an exception.
func (g *generator) probeIO(s *slot) bool { return s.valid && s.overflowed && len(s.exc) > 0 }

// overflowChoices are this file's steps with their weights (0: not
// possible now). A probe is likelier while an overflowed snapshot is
// live (a rare state) than while only invalid ones are (a common one).
func (g *generator) overflowChoices() []choice {
	probe := 0
	for _, s := range g.probeable() {
		w := 1
		if s.overflowed {
			w = 6
		}
		probe = max(probe, w)
	}
	return []choice{
		{KOverflowPO, on(!g.swarm.off[KWriteSnap] && len(g.overflowable()) > 0, 6)},
		{KOverflowProbe, probe},
	}
}

// overflowStep runs kind, one of this file's steps.
func (g *generator) overflowStep(kind string) {
	if kind == KOverflowPO {
		g.overflowPO(g.one(g.overflowable()))
		return
	}
	ss := g.probeable()
	var over []*slot
	for _, s := range ss {
		if s.overflowed {
			over = append(over, s)
		}
	}
	if len(over) > 0 {
		ss = over
	}
	g.probeOverflow(g.one(ss))
}

// overflowPO fills t and overflows it (see the file comment).
func (g *generator) overflowPO(t *slot) {
	g.kinds[KOverflowPO]++
	if room := t.room(); room > 0 {
		a, b := g.spanOfUnmapped(t, room)
		off, n := a*t.chunk, (b-a)*t.chunk
		g.kinds[KWriteSnap]++
		fails := g.snapWriteChunks(t, off, n)
		g.line("write %s %s %s pattern=%s%s%s", t.live, bytesOf(off), bytesOf(n), g.newPattern(), g.fua(), g.eio(fails))
	}
	if !t.valid {
		return
	}
	c, ok := g.freeChunk(t)
	if !ok { // none in the hot first MiB
		_, b := g.spanOfUnmapped(t, 1)
		c = b - 1
	}
	off, n := g.within(c*t.chunk, t.chunk, 1)
	g.snapWriteAt(t, off, n) // t is full: EIO, and t overflows
	for range 1 + g.rng.IntN(2) {
		if g.probeIO(t) || !g.swarm.off[KStatus] {
			g.probeOverflow(t)
		}
	}
}

// spanOfUnmapped returns chunks [a, b) of t holding exactly k chunks
// without an exception, b-1 being one: from a random chunk on, or from
// chunk 0 when the chunks after it hold fewer than k. t has more than k
// such chunks on the origin.
func (g *generator) spanOfUnmapped(t *slot, k int) (a, b int64) {
	total := g.origin / t.chunk
	end := func(from int64) (int64, bool) {
		got := 0
		for c := from; c < total; c++ {
			if _, ok := t.exc[c]; ok {
				continue
			}
			if got++; got == k {
				return c + 1, true
			}
		}
		return 0, false
	}
	a = g.rng.Int64N(total)
	if b, ok := end(a); ok {
		return a, b
	}
	b, _ = end(0)
	return 0, b
}

// probeOverflow checks s, invalid or overflowed (see the file comment).
func (g *generator) probeOverflow(s *slot) {
	g.kinds[KOverflowProbe]++
	if g.probeIO(s) && (g.swarm.off[KStatus] || g.chance(70)) {
		cs := sortedExc(s)
		c := cs[g.rng.IntN(len(cs))]
		off, n := g.within(c*s.chunk, s.chunk, 1)
		if g.chance(60) {
			g.snapWriteAt(s, off, n) // overflowed: EIO
			return
		}
		g.kinds[KReadSnap]++
		g.line("read %s %s %s%s", s.live, bytesOf(off), bytesOf(n), g.eio(g.snapReadFails(s, off, n)))
		return
	}
	g.kinds[KStatus]++
	g.line("dmsetup status %s expect=\"%s\"", s.live, g.statusText(s))
}

// statusText is the status line of s's live snapshot when it is invalid
// or overflowed (docs/dm-snapshot.md §3.1).
func (g *generator) statusText(s *slot) string {
	state := "Overflow"
	if !s.valid {
		state = "Invalid"
	}
	return fmt.Sprintf("0 %d snapshot %s", g.origin, state)
}
