package gen

import (
	"fmt"
	"slices"
)

// Fault sites: the site= names of the rules Config.Faults generates (and
// cow-full, a store run full by origin writes, which needs no rule).
const (
	SiteOriginRead    = "origin-read"    // origin reads fail in a range: reads through the origin and of unchanged snapshot chunks
	SiteOriginWrite   = "origin-write"   // origin writes fail in a range, after their copy-outs
	SiteCOWRead       = "cow-read"       // a COW chunk holding an exception cannot be read
	SiteCOWWrite      = "cow-write"      // a COW chunk holding an exception cannot be written
	SiteKcopydRead    = "kcopyd-read"    // a copy-out's read of the origin fails
	SiteKcopydWrite   = "kcopyd-write"   // a copy-out's write to the COW fails
	SiteMetadataWrite = "metadata-write" // the commit's metadata area write (and maybe the header's) fails
	SiteCOWFull       = "cow-full"       // a store runs full (origin writes)
	SiteDiskGone      = "disk-gone"      // every request to a COW disk fails
)

// AllSites lists every fault site, in the order Profile considers them.
var AllSites = []string{
	SiteOriginRead, SiteOriginWrite, SiteCOWRead, SiteCOWWrite, SiteKcopydRead,
	SiteKcopydWrite, SiteMetadataWrite, SiteCOWFull, SiteDiskGone,
}

// SiteKind is the kinds key counting the fault windows of site.
func SiteKind(site string) string { return "fault-" + site }

const (
	originDisk = "origin"
	opRead     = "read"
	opWrite    = "write"
	opAny      = "any"
)

// faultRule is an active `fault DISK OP eio [off= len=]` rule, in sectors
// (n 0: the whole disk). Only rules whose effect does not depend on
// request counts or timing are generated: an operation and a range.
type faultRule struct {
	disk   string
	op     string
	off, n int64
}

// hit reports whether a request of op to [off, off+n) on disk fails.
func (g *generator) hit(disk, op string, off, n int64) bool {
	for _, r := range g.faults {
		if r.disk != disk || (r.op != op && r.op != opAny) {
			continue
		}
		if r.n == 0 || (off < r.off+r.n && r.off < off+n) {
			return true
		}
	}
	return false
}

// flushFails: an empty flush through dev reaches one disk (the origin's
// for the origin device, the COW's for a snapshot, docs/dm-snapshot.md
// §4.8); only a whole-disk rule matches a flush.
func (g *generator) flushFails(dev string) bool {
	disk := originDisk
	for _, s := range g.slots {
		if dev == s.live || dev == s.dead {
			disk = s.disk
		}
	}
	for _, r := range g.faults {
		if r.disk == disk && r.n == 0 && r.op == opAny {
			return true
		}
	}
	return false
}

// copyFails reports whether the exception for origin chunk c, allocated
// at COW sector at of s, fails: the copy-out's origin read (copyRead: not
// for a whole-chunk snapshot write, which is written straight to the
// COW), its COW write, or its commit.
func (g *generator) copyFails(s *slot, c, at int64, copyRead bool) bool {
	if len(g.faults) == 0 {
		return false
	}
	if copyRead && g.hit(originDisk, opRead, c*s.chunk, min(s.chunk, g.origin-c*s.chunk)) {
		return true
	}
	return g.hit(s.disk, opWrite, s.start+at, s.chunk) || g.commitFails(s, at)
}

// commitFails: committing the exception whose data chunk is at writes
// its metadata area (persistent_commit_exception), after zeroing the
// next area when this exception fills the current one
// (docs/cow-format.md §2.7).
func (g *generator) commitFails(s *slot, at int64) bool {
	if !s.persistent {
		return false
	}
	e, n := s.perArea(), at/s.chunk
	a := (n - 2) / (e + 1)
	area := 1 + (e+1)*a
	if g.hit(s.disk, opWrite, s.start+area*s.chunk, s.chunk) {
		return true
	}
	return n == (e+1)*(a+1) && g.hit(s.disk, opWrite, s.start+(n+1)*s.chunk, s.chunk)
}

// writeRec records the exceptions one write allocated in one store.
type writeRec struct {
	nextFree int64
	added    []int64
	failed   int
	track    bool
}

func (g *generator) beginWrite(s *slot) *writeRec {
	return &writeRec{nextFree: s.nextFree, track: len(g.faults) > 0}
}

func (w *writeRec) add(c int64, failed bool) {
	if w.track {
		w.added = append(w.added, c)
	}
	if failed {
		w.failed++
	}
}

// invalidate is __invalidate_snapshot: the snapshot goes invalid and a
// persistent store rewrites its header with valid = 0, unless a rule fails
// that write ("write header failed"): the COW then still says valid, and
// holds what was committed before w (the write that failed), if that is
// known: when w allocated nothing or every exception it allocated failed.
// Otherwise which of them the kernel committed first depends on timing,
// and the slot is marked uncertain.
func (g *generator) invalidate(s *slot, w *writeRec) {
	s.valid = false
	g.kinds[KInvalidated]++
	if !s.persistent {
		return
	}
	if !g.hit(s.disk, opWrite, s.start, s.chunk) {
		s.diskValid = false
		return
	}
	g.kinds[KHeaderFailed]++
	if w == nil || w.failed == len(w.added) {
		if w != nil {
			for _, c := range w.added {
				delete(s.exc, c)
			}
			s.nextFree = w.nextFree
		}
		return
	}
	s.uncertain = true
}

// snapReadFails: a snapshot read goes to the COW for chunks with an
// exception and to the origin for the others; a failed request fails the
// read and invalidates nothing (docs/dm-snapshot.md §5.3).
func (g *generator) snapReadFails(s *slot, off, n int64) bool {
	if len(g.faults) == 0 {
		return false
	}
	first, last := s.chunks(off, n)
	for c := first; c <= last; c++ {
		lo, hi := max(off, c*s.chunk), min(off+n, (c+1)*s.chunk)
		if at, ok := s.exc[c]; ok {
			if g.hit(s.disk, opRead, s.start+at+lo-c*s.chunk, hi-lo) {
				return true
			}
		} else if g.hit(originDisk, opRead, lo, hi-lo) {
			return true
		}
	}
	return false
}

// bytesOf prints a sector count as bytes without drawing a choice.
func bytesOf(sectors int64) string {
	if sectors%2 == 0 {
		return fmt.Sprintf("%dKiB", sectors/2)
	}
	return fmt.Sprintf("%ds", sectors)
}

// sortedExc returns s's exceptions' origin chunks in order.
func sortedExc(s *slot) []int64 {
	cs := make([]int64, 0, len(s.exc))
	// order-free: the keys are sorted below.
	for c := range s.exc {
		cs = append(cs, c)
	}
	slices.Sort(cs)
	return cs
}

// faultWindow opens a fault rule at one site, runs the step that meets
// it and up to two more I/O steps, and clears it. Each step's outcome
// comes from the model with the rule in force.
func (g *generator) faultWindow() {
	var sites []choice
	validLive := g.filter(func(s *slot) bool { return s.live != "" && s.valid })
	withExc := g.filter(func(s *slot) bool { return s.live != "" && len(s.exc) > 0 })
	roomy := g.filter(func(s *slot) bool { return s.live != "" && s.valid && s.room() > 0 })
	meta := g.filter(func(s *slot) bool { return s.live != "" && s.valid && s.persistent && s.room() > 0 })
	fillable := g.state().fillable
	for _, c := range []choice{
		{SiteOriginRead, 4},
		{SiteOriginWrite, 4},
		{SiteCOWRead, on(len(withExc) > 0, 4)},
		{SiteCOWWrite, on(len(withExc) > 0, 4)},
		{SiteKcopydRead, on(len(validLive) > 0, 4)},
		{SiteKcopydWrite, on(len(roomy) > 0, 4)},
		// The commit's area write is PREFLUSH|FUA: failed, its line is
		// logged twice (see fua). It waits for its copy-out, so it is
		// alone on its disk in kernel cases too.
		{SiteMetadataWrite, on(len(meta) > 0, 4)},
		{SiteCOWFull, on(len(fillable) > 0, 2)},
		{SiteDiskGone, on(len(g.liveSlots()) > 0, 3)},
	} {
		sites = append(sites, choice{c.kind, g.swarm.weight(c.kind, c.weight)})
	}
	weights := make([]int, len(sites))
	total := 0
	for i, c := range sites {
		weights[i] = c.weight
		total += c.weight
	}
	if total == 0 {
		g.do(KReadOrigin, g.state())
		return
	}
	site := sites[g.pick(weights...)].kind
	g.kinds[SiteKind(site)]++
	if site == SiteCOWFull {
		g.kinds[KFill]++
		g.fill(g.one(fillable))
		return
	}
	var r faultRule
	var trigger func()
	hot := func(blocks int) (off, n int64) { // 64-sector blocks in the hot first MiB
		k := int64(1 + g.rng.IntN(blocks))
		return g.rng.Int64N(2048/64-k+1) * 64, k * 64
	}
	switch site {
	case SiteOriginRead:
		off, n := hot(4)
		r = faultRule{originDisk, opRead, off, n}
		trigger = func() {
			if live := g.liveSlots(); len(live) > 0 && g.chance(50) {
				s := g.one(live)
				roff, rn := g.windowRange(off, n, s.chunk, s.chunk)
				g.line("read %s %s %s%s", s.live, bytesOf(roff), bytesOf(rn), g.eio(!s.valid || g.snapReadFails(s, roff, rn)))
				return
			}
			roff, rn := g.windowRange(off, n, 8, g.minChunk())
			g.line("read base %s %s%s", bytesOf(roff), bytesOf(rn), g.eio(g.hit(originDisk, opRead, roff, rn)))
		}
	case SiteOriginWrite:
		off, n := hot(4)
		r = faultRule{originDisk, opWrite, off, n}
		trigger = func() {
			woff, wn := g.windowRange(off, n, 8, g.minChunk())
			g.originWriteLine(woff, wn)
		}
	case SiteKcopydRead:
		off, n := hot(4)
		r = faultRule{originDisk, opRead, off, n}
		trigger = func() {
			// Kernel cases: a write whose copy-outs (each reading the
			// failing origin) are more than one would log in kcopyd's
			// timing order (copiesAlone); a read of the range instead.
			var woff, wn int64
			for try := 0; try < 4; try++ {
				woff, wn = g.windowRange(off, n, 8, g.minChunk())
				if !g.lone() || g.copiesAlone(woff) {
					g.originWriteLine(woff, wn)
					return
				}
			}
			g.kinds[KReadOrigin]++
			g.line("read base %s %s%s", bytesOf(woff), bytesOf(wn), g.eio(g.hit(originDisk, opRead, woff, wn)))
		}
	case SiteCOWRead, SiteCOWWrite:
		s := g.one(withExc)
		cs := sortedExc(s)
		c := cs[g.rng.IntN(len(cs))]
		op := opRead
		if site == SiteCOWWrite {
			op = opWrite
		}
		r = faultRule{s.disk, op, s.start + s.exc[c], s.chunk}
		trigger = func() {
			off, n := g.windowRange(c*s.chunk, s.chunk, 1, s.chunk)
			if op == opRead {
				g.line("read %s %s %s%s", s.live, bytesOf(off), bytesOf(n), g.eio(!s.valid || g.snapReadFails(s, off, n)))
				return
			}
			g.snapWriteAt(s, off, n)
		}
	case SiteKcopydWrite, SiteMetadataWrite:
		pool := roomy
		if site == SiteMetadataWrite {
			pool = meta
		}
		s := g.one(pool)
		probe := *s
		at, _ := probe.allocAt()
		r = faultRule{s.disk, opWrite, s.start + at, s.chunk}
		if site == SiteMetadataWrite {
			e := s.perArea()
			area := 1 + (e+1)*((at/s.chunk-2)/(e+1))
			r.off, r.n = s.start+area*s.chunk, s.chunk
			if area == 1 && g.chance(50) { // the header too: its rewrite fails as well
				r.off, r.n = s.start, 2*s.chunk
			}
		}
		c, ok := g.freeChunk(s)
		trigger = func() {
			switch {
			case !ok && g.lone():
				g.loneOp(KWriteOrigin, g.state())
				return
			case !ok:
				g.do(KWriteOrigin, g.state())
				return
			case g.lone():
				g.loneCopyTrigger(s, c)
				return
			}
			woff, wn := g.within(c*s.chunk, s.chunk, 1)
			g.originWriteLine(woff, wn)
		}
	case SiteDiskGone:
		s := g.one(g.liveSlots())
		r = faultRule{s.disk, opAny, 0, 0}
		trigger = func() { g.windowOp() }
	}
	text := fmt.Sprintf("%s eio", r.op)
	if r.n > 0 {
		text += fmt.Sprintf(" off=%s len=%s", bytesOf(r.off), bytesOf(r.n))
	}
	g.line("fault %s %s site=%s", r.disk, text, site)
	g.faults = []faultRule{r}
	trigger()
	for range g.rng.IntN(3) {
		g.windowOp()
	}
	g.line("fault %s clear", r.disk)
	g.faults = nil
}

// within picks a range of whole units inside [off, off+n).
func (g *generator) within(off, n, unit int64) (int64, int64) {
	units := n / unit
	k := 1 + g.rng.Int64N(units)
	return off + g.rng.Int64N(units-k+1)*unit, k * unit
}

// freeChunk picks an origin chunk of s in the hot first MiB without an
// exception.
func (g *generator) freeChunk(s *slot) (int64, bool) {
	n := min(2048, g.origin) / s.chunk
	start := g.rng.Int64N(n)
	for i := range n {
		c := (start + i) % n
		if _, ok := s.exc[c]; !ok {
			return c, true
		}
	}
	return 0, false
}

// windowOp is one I/O step inside a fault window, as the swarm profile
// weighs it.
func (g *generator) windowOp() {
	st := g.state()
	live := len(st.live) > 0
	// A failed empty flush through a linear COW slot is logged at the
	// slot's start on both executors (flush-through-linear.scn).
	kinds := []choice{
		{KWriteOrigin, 4}, {KReadOrigin, 2}, {KWriteSnap, on(live, 4)}, {KReadSnap, on(live, 4)}, {KFlush, 2},
	}
	weights := make([]int, len(kinds))
	for i, c := range kinds {
		weights[i] = g.swarm.weight(c.kind, c.weight)
	}
	if weights[0] == 0 && slices.Max(weights) == 0 {
		weights[0] = 1 // (write-origin is never off)
	}
	if kind := kinds[g.pick(weights...)].kind; g.lone() {
		g.loneOp(kind, st)
	} else {
		g.do(kind, st)
	}
}

// snapWriteAt writes [off, off+n) through s's snapshot (a range that
// needs at most one new exception, or one the store has room for).
func (g *generator) snapWriteAt(s *slot, off, n int64) {
	g.kinds[KWriteSnap]++
	fails := !s.valid || s.overflowed
	if !fails {
		first, last := s.chunks(off, n)
		need := 0
		for c := first; c <= last; c++ {
			if _, ok := s.exc[c]; !ok {
				need++
			}
		}
		switch {
		case need > 0 && s.room() < need:
			g.ranFull(s)
			fails = true
			if s.po {
				s.overflowed = true
				g.kinds[KOverflowed]++
			} else {
				g.invalidate(s, nil)
			}
		default:
			fails = g.snapWriteChunks(s, off, n)
		}
	}
	g.line("write %s %s %s pattern=%s%s%s", s.live, bytesOf(off), bytesOf(n), g.newPattern(), g.fua(), g.eio(fails))
}
