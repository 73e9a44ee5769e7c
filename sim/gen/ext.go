package gen

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
)

// Config selects what GenerateConfig generates. The zero Config (Ops
// aside) is Generate's classic op set, byte for byte; setting any other
// field, including Semantics "mainline", selects the extended op set
// (FUA writes, discards, merges, cancelled handovers) and the options'
// own steps.
type Config struct {
	Ops int // random steps after the setup; < 0 counts as 0
	// Semantics is "" (classic), "mainline" or "seed": with "seed" the
	// scenario says `semantics seed` and the model follows the 2009 seed
	// patch's handover rules (docs/handover.md §4) where they differ.
	Semantics string
	// Faults adds fault windows: a `fault DISK RULE site=NAME` line, the
	// steps that meet it (their outcome modelled), `fault DISK clear`.
	Faults bool
	// Swarm switches some kinds and fault sites off and boosts others
	// (weights ×3), drawn from the seed (Profile); the scenario names the
	// profile in a `# swarm: off=... boost=...` line.
	Swarm bool
	// Interleave adds a nonzero `seed N` line and asynchronous I/O: several
	// I/Os in flight at once (an origin write racing a snapshot I/O to the
	// same chunk among them) and I/O queued on a suspended device until
	// its resume, all with outcomes that do not depend on completion order.
	Interleave bool
}

func (c Config) extended() bool {
	return c.Semantics != "" || c.Faults || c.Swarm || c.Interleave
}

// Validate reports what is wrong with c, if anything.
func (c Config) Validate() error {
	switch c.Semantics {
	case "", "mainline", "seed":
		return nil
	}
	return fmt.Errorf("semantics %q: want mainline or seed", c.Semantics)
}

// flags are the `snaplab gen` flags that select c, as the header prints
// them after --seed and --ops.
func (c Config) flags() string {
	var b strings.Builder
	if c.Faults {
		b.WriteString(" --faults")
	}
	if c.Semantics != "" {
		b.WriteString(" --semantics " + c.Semantics)
	}
	if c.Swarm {
		b.WriteString(" --swarm")
	}
	if c.Interleave {
		b.WriteString(" --interleave")
	}
	return b.String()
}

// Kinds of the extended op set (GenerateConfig with an option set).
const (
	KFUA              = "write-fua"                 // a write with fua (counted in addition to its write kind)
	KDiscard          = "discard-snapshot"          // whole-chunk discards through a snapshot (EOPNOTSUPP without discard_zeroes_cow)
	KMerge            = "merge"                     // lvm's snapshot-merge sequence, run to its end
	KHandoverCancel   = "handover-source-removed"   // the source removed before the destination's resume
	KSeedNoSuspend    = "seed-handover-unsuspended" // seed: the destination's resume hands over from a resumed source
	KSeedSourceResume = "seed-handover-source-resume"
	KHeaderFailed     = "header-write-failed" // an invalidation could not rewrite the header
	KFaultWindow      = "fault-window"
	KAsync            = "async-batch"     // several I/Os in flight, then waited for
	KAsyncRace        = "async-race"      // an origin write and a snapshot I/O on one chunk in flight together
	KSuspendedIO      = "io-on-suspended" // I/O queued on a suspended device, released by its resume
)

// ClassicKinds lists the kinds Generate produces.
var ClassicKinds = []string{
	KWriteOrigin, KWriteSnap, KReadOrigin, KReadSnap, KFlush, KStatus, KTable, KFill,
	KHandoverBegin, KHandoverFinish, KRefuseDest, KRefuseSource, KRefuseThird, KDeadIO,
	KRemoveDead, KRemoveSnap, KRecreate, KOriginReload, KExpectEIO, KInvalidated,
	KOverflowed, KPersistReload, KTransientReload,
}

// ExtendedKinds lists the kinds only GenerateConfig's options produce
// (besides SiteKind(site) for each fault site).
var ExtendedKinds = []string{
	KFUA, KDiscard, KMerge, KHandoverCancel, KSeedNoSuspend, KSeedSourceResume,
	KHeaderFailed, KFaultWindow, KAsync, KAsyncRace, KSuspendedIO,
	KFullAtBoundary, KHandoverInFlight, KMergeOverflow, KSuspendPending,
	KOverflowPO, KOverflowProbe,
}

// swarmItems are the kinds a swarm profile may switch off or boost, in
// the order they are drawn; fault sites follow (with Faults).
var swarmItems = []string{
	KWriteSnap, KReadOrigin, KReadSnap, KFlush, KStatus, KFill, KHandoverBegin,
	KRefuseThird, KRemoveSnap, KRecreate, KOriginReload, KFUA, KDiscard, KMerge,
	KHandoverCancel,
}

type profile struct {
	off, boost map[string]bool
}

// weight is w as the profile changes it.
func (p profile) weight(item string, w int) int {
	switch {
	case p.off[item]:
		return 0
	case p.boost[item]:
		return 3 * w
	}
	return w
}

func newProfileSource(seed uint64) source { return rand.New(rand.NewPCG(seed, 0x737761726d)) }

// newProfile draws a swarm profile from src (nothing when !cfg.Swarm):
// each item is off with probability 1/4 and boosted with 1/8.
func newProfile(src source, cfg Config) profile {
	p := profile{off: map[string]bool{}, boost: map[string]bool{}}
	if !cfg.Swarm {
		return p
	}
	items := slices.Clone(swarmItems)
	if cfg.Interleave {
		items = append(items, KAsync, KSuspendedIO)
	}
	if cfg.Faults {
		items = append(items, AllSites...)
	}
	for _, it := range items {
		switch src.IntN(8) {
		case 0, 1:
			p.off[it] = true
		case 2:
			p.boost[it] = true
		}
	}
	return p
}

func (p profile) lists() (off, boost []string) {
	// order-free: both lists are sorted below.
	for k := range p.off {
		off = append(off, k)
	}
	// order-free: sorted below.
	for k := range p.boost {
		boost = append(boost, k)
	}
	slices.Sort(off)
	slices.Sort(boost)
	return off, boost
}

// Profile returns the kinds and fault sites GenerateConfig(seed, cfg)
// switches off and boosts (weights ×3), sorted; both are empty unless
// cfg.Swarm. The scenario's `# swarm:` line names the same lists.
func Profile(seed uint64, cfg Config) (off, boost []string) {
	if !cfg.extended() {
		return nil, nil
	}
	return newProfile(newProfileSource(seed), cfg).lists()
}

// GenerateConfig returns a scenario for seed and cfg, and how many steps
// of each kind it holds (AllKinds, and SiteKind(site) per fault window of
// each site). GenerateConfig(seed, Config{Ops: n}) is Generate(seed, n).
// A cfg that does not Validate is taken as Semantics "mainline".
func GenerateConfig(seed uint64, cfg Config) (text string, kinds map[string]int) {
	if cfg.Validate() != nil {
		cfg.Semantics = "mainline"
	}
	cfg.Ops = max(cfg.Ops, 0)
	return generateConfig(seed, cfg)
}

func (g *generator) seedSem() bool { return g.cfg.Semantics == "seed" }

// settings writes the lines between the header and the disks.
func (g *generator) settings() {
	if g.cfg.Swarm {
		off, boost := g.swarm.lists()
		g.line("# swarm: off=%s boost=%s", strings.Join(off, ","), strings.Join(boost, ","))
	}
	if g.seedSem() {
		g.line("semantics seed")
	}
	if g.cfg.Interleave {
		g.line("seed %d", 1+g.rng.Int64N(1<<31))
	}
}

// fua returns " fua" for some writes of the extended op set.
func (g *generator) fua() string {
	// A failed write that carries FUA is logged twice on both executors
	// (fua-write-error.scn), so kernel cases write FUA in fault windows too.
	if !g.ext || g.swarm.off[KFUA] {
		return ""
	}
	p := 15
	if g.swarm.boost[KFUA] {
		p = 45
	}
	if g.chance(p) {
		g.kinds[KFUA]++
		return " fua"
	}
	return ""
}

// extStep is one step of the extended op set.
func (g *generator) extStep() {
	st := g.state()
	choices := g.classicChoices(st)
	discardable := g.filter(func(s *slot) bool { return s.live != "" })
	mergeable := g.filter(func(s *slot) bool {
		return s.live != "" && s.persistent && s.valid && s.diskValid && !s.uncertain && s.dead == "" && s.dest == ""
	})
	choices = append(choices,
		choice{KDiscard, on(len(discardable) > 0, 4)},
		choice{KMerge, on(st.pending == nil && len(mergeable) > 0, 3)},
		choice{KHandoverCancel, on(st.pending != nil, 4)},
		choice{KFaultWindow, on(g.cfg.Faults, 8)},
		choice{KAsync, on(g.cfg.Interleave, 7)},
		choice{KSuspendedIO, on(g.cfg.Interleave && st.pending == nil, 4)},
	)
	choices = append(choices, g.reachChoices(st, mergeable)...)
	choices = append(choices, g.overflowChoices()...)
	weights := make([]int, len(choices))
	for i, c := range choices {
		weights[i] = g.swarm.weight(c.kind, c.weight)
	}
	total := 0
	for _, w := range weights {
		total += w
	}
	if total == 0 { // everything possible is switched off: an origin write
		g.do(KWriteOrigin, st)
		return
	}
	switch kind := choices[g.pick(weights...)].kind; kind {
	case KDiscard:
		g.discard(g.one(discardable))
	case KMerge:
		g.merge(g.one(mergeable), nil)
	case KHandoverCancel:
		g.cancelHandover(st.pending)
	case KFaultWindow:
		g.kinds[KFaultWindow]++
		g.faultWindow()
	case KAsync:
		g.asyncBatch()
	case KSuspendedIO:
		g.suspendedIO()
	case KHandoverInFlight, KMergeOverflow, KSuspendPending:
		g.reachStep(kind, st, mergeable)
	case KOverflowPO, KOverflowProbe:
		g.overflowStep(kind)
	default:
		g.do(kind, st)
	}
}

// discard discards whole chunks through s's snapshot (docs/dm-snapshot.md
// §4.8, discard-support.scn). Without discard_zeroes_cow the device takes
// no discards: EOPNOTSUPP. With it, a chunk without an exception is left
// alone, one with an exception has its COW chunk zeroed; no exception is
// made or dropped. An invalid or overflowed snapshot fails it (a discard
// is a write).
func (g *generator) discard(s *slot) {
	g.kinds[KDiscard]++
	k := int64(1 + g.rng.IntN(4))
	span := min(g.origin, 2048+k*s.chunk) / s.chunk
	off := g.rng.Int64N(span-k+1) * s.chunk
	expect := g.eio(!s.valid || s.overflowed)
	if !s.dzc || s.noDiscard {
		expect = " expect=EOPNOTSUPP"
	}
	g.line("discard %s %s %s%s", s.live, g.size(off*sector), g.size(k*s.chunk*sector), expect)
}

// merge is lvm's merge of s into the origin (docs/dm-snapshot.md §6,
// merge-run-settles.scn): suspend the origin device, remove the snapshot,
// load snapshot-merge on the COW into the origin device, resume, `run`
// until it is done; then the origin device goes back to snapshot-origin.
// The merge copies every exception back, last first, in runs consecutive
// in origin and COW chunk; before each run it makes the exceptions the
// origin's other snapshots need for that range (origin_write_extent).
// Afterwards the store is empty (status allocated = metadata = 2 chunks)
// and the slot is free: a snapshot loaded on it finds no exception.
// during, if not nil, writes its steps after the resume, before `run`
// (the merge is running), and models them.
func (g *generator) merge(s *slot, during func()) {
	g.kinds[KMerge]++
	g.line("dmsetup suspend base")
	g.line("dmsetup remove %s", s.live)
	g.line("dmsetup load base --table \"0 %d snapshot-merge origin %s P %d\"", g.origin, s.name, s.chunk)
	g.line("dmsetup resume base")
	s.live = "" // merging: origin writes make no exceptions in it
	runs := mergeRuns(s)
	if len(runs) > 0 {
		// The resume itself makes the exceptions the first run needs
		// (start_merge calls snapshot_merge_next_chunks).
		g.originWrite(runs[0][0], runs[0][1])
	}
	if during != nil {
		during()
	}
	g.line("run")
	for _, r := range runs[min(1, len(runs)):] {
		g.originWrite(r[0], r[1])
	}
	cs := sortedExc(s)
	g.line("dmsetup status base expect=\"0 %d snapshot-merge %d/%d %d\"", g.origin, 2*s.chunk, s.sectors, 2*s.chunk)
	if len(cs) > 0 {
		c := cs[g.rng.IntN(len(cs))]
		g.line("read base %s %s", g.size(c*s.chunk*sector), g.size(s.chunk*sector))
	}
	g.line("dmsetup suspend base")
	g.line("dmsetup load base --table \"0 %d snapshot-origin origin\"", g.origin)
	g.line("dmsetup resume base")
	s.exc, s.nextFree, s.valid, s.diskValid, s.overflowed = map[int64]int64{}, 2, true, true, false
}

// mergeRuns are the origin ranges (first sector, sectors) a merge of s
// writes, in its order: the last committed exception first, each run as
// many exceptions before it as are consecutive in origin and COW chunk.
func mergeRuns(s *slot) [][2]int64 {
	cs := sortedExc(s)
	slices.SortFunc(cs, func(a, b int64) int { return int(s.exc[b] - s.exc[a]) }) // last committed first
	var runs [][2]int64
	for i := 0; i < len(cs); {
		j := i + 1
		for j < len(cs) && cs[j] == cs[j-1]-1 && s.exc[cs[j]] == s.exc[cs[j-1]]-s.chunk {
			j++
		}
		lo := cs[j-1]
		runs = append(runs, [2]int64{lo * s.chunk, (cs[i] - lo + 1) * s.chunk})
		i = j
	}
	return runs
}

// cancelHandover removes a waiting handover's source before the
// destination is resumed. Mainline cancels (docs/handover.md §3.5): the
// destination goes live invalid, in memory only; the COW keeps the
// source's store, valid. The seed patch hands over at the source's
// destructor instead (§4.2): the destination takes the store and its
// validity, and is resumed at once (origin writes before its resume would
// copy into nothing, §6.4).
func (g *generator) cancelHandover(p *slot) {
	g.kinds[KHandoverCancel]++
	g.line("dmsetup remove %s", p.live)
	g.line("dmsetup resume %s", p.dest)
	// A refused resume already swapped the destination's table in, while
	// the source held the store: its discard limit is the source's chunk
	// size (discard-handover-limits.scn).
	swapped := p.destFailed
	p.live, p.dest, p.destFailed, p.po, p.dzc = p.dest, "", false, p.destPO, p.destDZC
	if !g.seedSem() {
		p.valid, p.overflowed = false, false
		// Its store keeps chunk size 0. Swapped in now, with no source,
		// its queue takes no discards (snapshot_io_hints): EOPNOTSUPP, as
		// without discard_zeroes_cow (discard-cancelled-handover.scn);
		// swapped in before, its limit is the source's chunk size then.
		// A later handover from it hands that store on (chunk0).
		p.noDiscard = !swapped || p.chunk0
		p.chunk0 = true
	}
}

// seedDestResume: under the seed patch a destination's resume hands over
// even while the source is not suspended (H2 under seed, docs/handover.md
// §7.3); the source, still resumed, then fails every I/O.
func (g *generator) seedDestResume(p *slot) {
	g.kinds[KSeedNoSuspend]++
	g.line("dmsetup resume %s", p.dest)
	p.noDiscard = p.chunk0 // swapped in before it took the source's store
	p.dead, p.live, p.dest, p.destFailed, p.po, p.dzc = p.live, p.dest, "", false, p.destPO, p.destDZC
}

// seedSourceResume: under the seed patch the source's resume is a trigger
// (H3 under seed): it hands over and ends invalid; the destination is
// resumed at once.
func (g *generator) seedSourceResume(p *slot) {
	g.kinds[KSeedSourceResume]++
	g.line("dmsetup suspend %s", p.live)
	g.line("dmsetup resume %s", p.live)
	g.line("dmsetup resume %s", p.dest)
	// The destination's table is swapped in after the handover: its
	// source, still loaded, holds the destination's empty store, whose
	// chunk size the seed patch's constructor keeps (mainline's clears
	// it), so its queue takes discards.
	p.noDiscard = false
	p.dead, p.live, p.dest, p.destFailed, p.po, p.dzc = p.live, p.dest, "", false, p.destPO, p.destDZC
}

// asyncOp is one asynchronous I/O of a batch.
type asyncOp struct {
	id    string
	fails bool
}

// batch collects I/Os whose outcomes do not depend on the order they
// complete in: their ranges are apart (64-sector blocks, the largest
// chunk) except for one origin write racing a snapshot I/O in one chunk;
// at most one of them makes exceptions in any store (or both racers, in
// the same single chunk), and only where the store has room to spare.
type batch struct {
	g      *generator
	blocks map[int64]bool // 64-sector blocks in use
	allocs map[*slot]int64
	ops    []asyncOp
}

func (g *generator) newBatch() *batch {
	return &batch{g: g, blocks: map[int64]bool{}, allocs: map[*slot]int64{}}
}

func (b *batch) free(off, n int64) bool {
	for k := off / 64; k <= (off+n-1)/64; k++ {
		if b.blocks[k] {
			return false
		}
	}
	return true
}

func (b *batch) take(off, n int64) {
	for k := off / 64; k <= (off+n-1)/64; k++ {
		b.blocks[k] = true
	}
}

// needs is how many new exceptions each valid active store would make
// for an origin write of [off, off+n) (snap nil) or a write through snap.
func (b *batch) needs(off, n int64, snap *slot) map[*slot]int64 {
	out := map[*slot]int64{}
	for _, s := range b.g.liveSlots() {
		if !s.valid || (snap != nil && s != snap) || (snap != nil && s.overflowed) {
			continue
		}
		first, last := s.chunks(off, n)
		for c := first; c <= last; c++ {
			if _, ok := s.exc[c]; !ok {
				out[s]++
			}
		}
	}
	return out
}

// fits: a write needing these exceptions may join the batch.
func (b *batch) fits(need map[*slot]int64) bool {
	// order-free: an all-match.
	for s, k := range need {
		if _, busy := b.allocs[s]; busy || int64(s.room()) < k+2 {
			return false
		}
	}
	return true
}

func (b *batch) claim(need map[*slot]int64) {
	// order-free: each entry is set independently.
	for s, k := range need {
		b.allocs[s] = k
	}
}

func (g *generator) asyncID(prefix string) string {
	g.async++
	return fmt.Sprintf("%s%d", prefix, g.async)
}

// add issues one random I/O into the batch if one fits; dev restricts it
// to one device ("" any).
func (b *batch) add(dev string) {
	g := b.g
	var live []*slot
	for _, s := range g.liveSlots() {
		if dev == "" || s.live == dev {
			live = append(live, s)
		}
	}
	originOK := dev == "" || dev == "base"
	kind := g.pick(on(originOK, 4), on(originOK, 2), on(len(live) > 0, 4), on(len(live) > 0, 3), on(originOK && len(live) > 0, 3))
	off, n := g.ioRange(8, 8)
	if kind == 4 { // the race: an origin write and a snapshot I/O in one chunk
		s := g.one(live)
		c := off / s.chunk
		lo := c * s.chunk
		if !b.free(lo, s.chunk) {
			return
		}
		woff, wn := g.within(lo, s.chunk, 1)
		need := b.needs(woff, wn, nil)
		if !b.fits(need) {
			return
		}
		soff, sn := g.within(lo, s.chunk, 1)
		snapWrite := s.valid && !s.overflowed && g.chance(50)
		b.take(lo, s.chunk)
		b.claim(need)
		g.kinds[KAsyncRace]++
		b.origin(woff, wn)
		if snapWrite {
			b.snapWrite(s, soff, sn)
		} else {
			b.snapRead(s, soff, sn)
		}
		return
	}
	if !b.free(off, n) {
		return
	}
	switch kind {
	case 0:
		need := b.needs(off, n, nil)
		if !b.fits(need) {
			return
		}
		b.take(off, n)
		b.claim(need)
		b.origin(off, n)
	case 1:
		b.take(off, n)
		id := g.asyncID("r")
		g.line("read base %s %s async=%s", g.size(off*sector), g.size(n*sector), id)
		b.ops = append(b.ops, asyncOp{id: id})
	case 2:
		s := g.one(live)
		if s.valid && !s.overflowed {
			need := b.needs(off, n, s)
			if !b.fits(need) {
				return
			}
			b.claim(need)
		}
		b.take(off, n)
		b.snapWrite(s, off, n)
	case 3:
		s := g.one(live)
		b.take(off, n)
		b.snapRead(s, off, n)
	}
}

func (b *batch) origin(off, n int64) {
	g := b.g
	id := g.asyncID("w")
	offs, ns, p := g.size(off*sector), g.size(n*sector), g.newPattern()
	g.kinds[KWriteOrigin]++
	g.line("write base %s %s pattern=%s%s async=%s", offs, ns, p, g.fua(), id)
	b.ops = append(b.ops, asyncOp{id: id, fails: g.originWrite(off, n)})
}

func (b *batch) snapWrite(s *slot, off, n int64) {
	g := b.g
	id := g.asyncID("w")
	fails := !s.valid || s.overflowed
	if !fails {
		fails = g.snapWriteChunks(s, off, n)
	}
	offs, ns, p := g.size(off*sector), g.size(n*sector), g.newPattern()
	g.kinds[KWriteSnap]++
	g.line("write %s %s %s pattern=%s%s async=%s", s.live, offs, ns, p, g.fua(), id)
	b.ops = append(b.ops, asyncOp{id: id, fails: fails})
}

func (b *batch) snapRead(s *slot, off, n int64) {
	g := b.g
	id := g.asyncID("r")
	g.kinds[KReadSnap]++
	g.line("read %s %s %s async=%s", s.live, g.size(off*sector), g.size(n*sector), id)
	b.ops = append(b.ops, asyncOp{id: id, fails: !s.valid})
}

// wait waits for the batch's I/Os in a random order.
func (b *batch) wait() {
	g := b.g
	g.rng.Shuffle(len(b.ops), func(i, j int) { b.ops[i], b.ops[j] = b.ops[j], b.ops[i] })
	for _, op := range b.ops {
		g.line("wait %s%s", op.id, g.eio(op.fails))
	}
}

// asyncBatch puts two to four I/Os in flight and waits for them.
func (g *generator) asyncBatch() {
	g.kinds[KAsync]++
	b := g.newBatch()
	for range 2 + g.rng.IntN(3) {
		b.add("")
	}
	if len(b.ops) == 0 {
		b.add("")
	}
	b.wait()
}

// suspendedIO suspends the origin device or a live snapshot, issues I/O
// to it (it queues, docs/dm-snapshot.md; suspend-drains-and-queues-io.scn),
// resumes it and waits: the queued I/O runs at the resume.
func (g *generator) suspendedIO() {
	g.kinds[KSuspendedIO]++
	devs := []string{"base"}
	for _, s := range g.liveSlots() {
		devs = append(devs, s.live)
	}
	dev := devs[g.rng.IntN(len(devs))]
	g.line("dmsetup suspend %s", dev)
	b := g.newBatch()
	for range 1 + g.rng.IntN(2) {
		b.add(dev)
	}
	g.line("dmsetup resume %s", dev)
	b.wait()
}
