// Package gen generates random dm-snapshot scenarios (.scn) from a seed.
//
// Generate(seed, ops) is a pure function: the same seed and ops give the
// same bytes (one PCG stream, no global randomness). A generated scenario
// declares an origin disk and one or two COW disks (each used whole or cut
// into two `linear` slots, as lvm does), creates one to three snapshots
// (P, PO or N, chunk 8 to 64 sectors) and a snapshot-origin, then performs
// ops random steps: reads and writes of varied sizes through every device,
// flushes, status and table listings, origin writes that run a small COW
// full, handovers (and refused handover attempts), removals and persistent
// re-creations.
//
// GenerateConfig(seed, cfg) is the same generator with options; with none
// set it is Generate byte for byte. Any option (Semantics "mainline" or
// "seed", Faults, Swarm, Interleave) selects the extended op set: FUA
// writes, whole-chunk discards through snapshots (EOPNOTSUPP without
// discard_zeroes_cow),
// lvm's merge sequence run to its end, handovers whose source is removed
// first; then each option adds its own: the seed patch's handover rules,
// fault windows at named sites (AllSites), a swarm profile (Profile),
// asynchronous I/O. The scenario's first line is the `snaplab gen`
// command that regenerates it. GenerateBytes draws every choice from a
// byte string instead (for fuzzing).
//
// The contract with the executors: every generated scenario is something
// a real kernel accepts and whose outcome does not depend on timing.
// Without Interleave there is no seed line, no asynchronous I/O and no
// step on a suspended device; fault rules name an operation and a range
// only (no after=, count= or ratio=, which depend on how the kernel
// merges and splits requests), inside a fault window every read and
// write is one aligned chunk, so that no request to the faulty disk is
// merged with another in flight (lone.go), and a case whose outcome the
// kernel does not determine is not generated. With Interleave the
// asynchronous I/Os in flight together keep apart (or race in one chunk in ways whose
// outcome is the same in either order) and never compete for a COW's
// last chunks. Listings carry no expect= (the executors compare their
// outputs), except the status of a finished merge, that of the PO
// snapshot a merge-overflow step overflowed, and the status probes of
// invalid or overflowed snapshots (overflow.go), which the model knows.
// The generator keeps its own model of every exception store (the
// kernel's allocation rules, docs/dm-snapshot.md §4, §5 and
// docs/cow-format.md §2.6, §3; where each exception lives on the COW, what
// the header says, and which requests the active fault rule fails) to
// know which I/O fails, and annotates exactly those steps with expect=EIO
// and refused dmsetup commands with exit=1; running the scenario on the
// simulator therefore cross-checks the simulator against that model.
//
// Deep states (reach.go) that random steps rarely reach get steps of
// their own, aimed at sim/invariant's coverage properties: persistent
// slots sized to end at a metadata area boundary, which the fill step
// runs full there; a merge during which a filled PO snapshot overflows;
// a snapshot device suspended while an asynchronous origin write copies
// (Interleave); a handover while a write through the source still copies
// (seed semantics with Interleave). The simulator runs the world during
// a dmsetup command only to drain what the command waits for, so no copy
// finishes between an asynchronous write and the next command: that is
// what puts the copies in flight. The outcomes do not depend on it,
// except the seed handover's (the write fails with EIO because its copy
// outlives the swap): the seed patch runs only on the simulator.
package gen

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
)

// Step kinds, one per generator action (Kinds counts them).
const (
	KWriteOrigin     = "write-origin"
	KWriteSnap       = "write-snapshot"
	KReadOrigin      = "read-origin"
	KReadSnap        = "read-snapshot"
	KFlush           = "flush"
	KStatus          = "status"
	KTable           = "table"
	KFill            = "fill-cow"
	KHandoverBegin   = "handover-load"
	KHandoverFinish  = "handover"
	KRefuseDest      = "refused-dest-resume"
	KRefuseSource    = "refused-source-resume"
	KRefuseThird     = "refused-third-table"
	KDeadIO          = "io-handover-source"
	KRemoveDead      = "remove-handover-source"
	KRemoveSnap      = "remove-snapshot"
	KRecreate        = "recreate-snapshot"
	KOriginReload    = "reload-origin"
	KExpectEIO       = "expect-eio"      // counted in addition to the I/O kind
	KInvalidated     = "invalidated"     // a step made a snapshot invalid
	KOverflowed      = "overflowed"      // a snapshot write overflowed a PO snapshot
	KPersistReload   = "persistent-load" // a re-creation loaded a used persistent store
	KTransientReload = "transient-load"  // a re-creation of an N snapshot (fresh store)
)

// AllKinds lists every kind Generate and GenerateConfig can produce:
// ClassicKinds, ExtendedKinds, and SiteKind(site) for each of AllSites.
var AllKinds = allKinds()

func allKinds() []string {
	out := append(slices.Clone(ClassicKinds), ExtendedKinds...)
	for _, s := range AllSites {
		out = append(out, SiteKind(s))
	}
	return out
}

const sector = 512

// Generate returns a scenario text for seed with ops random steps after
// the setup. ops < 0 counts as 0.
func Generate(seed uint64, ops int) string {
	text, _ := generate(seed, ops)
	return text
}

// Kinds returns how many steps of each kind Generate(seed, ops) produced.
func Kinds(seed uint64, ops int) map[string]int {
	_, k := generate(seed, ops)
	return k
}

// slot is one COW device (a whole disk or a linear part of one) and the
// model of the exception store on it.
type slot struct {
	name       string // device named in the snapshot table
	disk       string // the COW disk the slot lives on
	start      int64  // the slot's first sector on disk
	sectors    int64
	persistent bool
	chunk      int64 // sectors
	header     bool  // a persistent header has been written
	// exc maps each origin chunk with a completed exception to the
	// exception's data chunk on the COW, in sectors from the slot's start.
	exc      map[int64]int64
	nextFree int64 // persistent: chunks; transient: sectors
	valid    bool
	// diskValid: the persistent header says valid (a reload loads the
	// store, not "Snapshot is marked invalid."). It differs from valid
	// after a cancelled handover and after an invalidation whose header
	// write failed.
	diskValid bool
	// uncertain: the exceptions on disk are not known (an invalidation
	// whose header write failed cut a multi-exception write short at a
	// point that depends on timing): the slot is never reloaded.
	uncertain bool
	dzc       bool // the live table has the discard_zeroes_cow feature
	chunk0    bool // the store's chunk size is 0 (a cancelled handover's destination)
	// noDiscard: the live device's queue takes no discards. Queue limits
	// are computed when a table is swapped in (dm_swap_table) and kept:
	// a snapshot's discard limit is its store's chunk size, or its
	// handover source's while both exist (snapshot_io_hints).
	noDiscard  bool
	destDZC    bool // the waiting destination's table has it
	overflowed bool
	po         bool   // the live snapshot's table said PO
	live       string // the device holding the store ("" none)
	dead       string // a handover source not yet removed
	dest       string // a handover destination waiting ("" none)
	destFailed bool   // the destination's resume was refused (it is suspended)
	destPO     bool   // the destination's table says PO
	linear     bool   // name is a linear dm device (else a whole disk)
}

// alloc models prepare_exception: false is -ENOSPC.
func (s *slot) alloc() bool {
	_, ok := s.allocAt()
	return ok
}

// allocAt is alloc returning where the new exception's data chunk is, in
// sectors from the slot's start.
func (s *slot) allocAt() (int64, bool) {
	if s.persistent {
		if s.sectors < (s.nextFree+1)*s.chunk {
			return 0, false
		}
		at := s.nextFree * s.chunk
		s.nextFree++
		if e := s.perArea(); s.nextFree%(e+1) == 1 { // skip_metadata
			s.nextFree++
		}
		return at, true
	}
	if s.sectors < s.nextFree+s.chunk {
		return 0, false
	}
	at := s.nextFree
	s.nextFree += s.chunk
	return at, true
}

// perArea is the persistent store's exceptions per metadata area.
func (s *slot) perArea() int64 { return s.chunk * sector / 16 }

// room is how many more exceptions fit.
func (s *slot) room() int {
	c := *s
	n := 0
	for c.alloc() {
		n++
	}
	return n
}

// chunks returns the chunks [off, off+n) (sectors) touches.
func (s *slot) chunks(off, n int64) (first, last int64) {
	return off / s.chunk, (off + n - 1) / s.chunk
}

// source is where every choice comes from: a PCG stream (Generate,
// GenerateConfig) or fuzz bytes (GenerateBytes).
type source interface {
	IntN(n int) int
	Int64N(n int64) int64
	Shuffle(n int, swap func(i, j int))
}

type generator struct {
	rng    source
	cfg    Config
	ext    bool // the extended op set (any option of Config set)
	swarm  profile
	faults []faultRule // active fault rules
	async  int         // next async ID number
	b      strings.Builder
	kinds  map[string]int
	slots  []*slot
	origin int64 // sectors
	dev    int   // next snapshot device number
	pat    int   // next pattern number
}

func generate(seed uint64, ops int) (string, map[string]int) {
	return generateConfig(seed, Config{Ops: ops})
}

func newPCG(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x736e61706c616267)) }

func generateConfig(seed uint64, cfg Config) (string, map[string]int) {
	g := newGenerator(newPCG(seed), cfg)
	if g.ext {
		g.swarm = newProfile(newProfileSource(seed), cfg)
	}
	fmt.Fprintf(&g.b, "# generated by snaplab gen --seed %d --ops %d%s\n", seed, cfg.Ops, cfg.flags())
	return g.run()
}

func newGenerator(src source, cfg Config) *generator {
	return &generator{rng: src, cfg: cfg, ext: cfg.extended(), kinds: map[string]int{}}
}

// run writes the settings, the setup and cfg.Ops steps after the header.
func (g *generator) run() (string, map[string]int) {
	if g.ext {
		g.settings()
	}
	g.setup()
	for i := 0; i < g.cfg.Ops; i++ {
		if g.ext {
			g.extStep()
		} else {
			g.step()
		}
	}
	return g.b.String(), g.kinds
}

func (g *generator) line(format string, a ...any) {
	fmt.Fprintf(&g.b, format, a...)
	g.b.WriteByte('\n')
}

func (g *generator) pick(weights ...int) int {
	total := 0
	for _, w := range weights {
		total += w
	}
	n := g.rng.IntN(total)
	for i, w := range weights {
		if n < w {
			return i
		}
		n -= w
	}
	return len(weights) - 1
}

func (g *generator) chance(percent int) bool { return g.rng.IntN(100) < percent }

// size prints a byte count the way a person would write it.
func (g *generator) size(bytes int64) string {
	switch {
	case bytes == 0:
		return "0"
	case bytes%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", bytes>>20)
	case bytes%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", bytes>>10)
	case bytes%sector == 0 && g.chance(50):
		return fmt.Sprintf("%ds", bytes/sector)
	}
	return fmt.Sprint(bytes)
}

func (g *generator) newDev() string {
	g.dev++
	return fmt.Sprintf("snap%d", g.dev)
}

func (g *generator) newPattern() string {
	g.pat++
	return fmt.Sprintf("w%d", g.pat)
}

func (g *generator) setup() {
	g.origin = int64(8+4*g.rng.IntN(15)) << 20 / sector // 8..64 MiB
	nsnap := 1 + g.pick(50, 30, 20)
	nslots := min(nsnap+g.rng.IntN(2), 4)
	ndisks := 1
	if nslots > 2 || (nslots == 2 && g.chance(50)) {
		ndisks = 2
	}
	perDisk := []int{nslots}
	if ndisks == 2 {
		a := nslots / 2
		if nslots == 3 && g.chance(50) {
			a = 2
		}
		perDisk = []int{a, nslots - a}
	}
	g.line("disk origin %s", g.size(g.origin*sector))
	type cowDisk struct {
		name  string
		slots []*slot
	}
	var disks []cowDisk
	for d, n := range perDisk {
		cd := cowDisk{name: fmt.Sprintf("cow%c", 'a'+d)}
		var total int64
		for range n {
			s := g.newSlot()
			total += s.sectors
			cd.slots = append(cd.slots, s)
		}
		g.line("disk %s %s", cd.name, g.size(total*sector))
		disks = append(disks, cd)
	}
	// Content on the origin before any device-mapper device exists.
	for range g.rng.IntN(3) {
		off, n := g.ioRange(8, 4)
		g.line("write origin %s %s pattern=%s", g.size(off*sector), g.size(n*sector), g.newPattern())
	}
	for _, cd := range disks {
		if len(cd.slots) == 1 {
			cd.slots[0].name, cd.slots[0].disk = cd.name, cd.name
			g.slots = append(g.slots, cd.slots[0])
			continue
		}
		var start int64
		for i, s := range cd.slots {
			s.name, s.linear = fmt.Sprintf("%s%d", cd.name, i), true
			s.disk, s.start = cd.name, start
			g.line("dmsetup create %s --table \"0 %d linear %s %d\"", s.name, s.sectors, cd.name, start)
			start += s.sectors
			g.slots = append(g.slots, s)
		}
	}
	g.rng.Shuffle(len(g.slots), func(i, j int) { g.slots[i], g.slots[j] = g.slots[j], g.slots[i] })
	if g.chance(70) { // snapshots first, then the origin (its resume sets the split boundary)
		for _, s := range g.slots[:nsnap] {
			g.createSnap(s, g.newDev(), false)
		}
		g.line("dmsetup create base --table \"0 %d snapshot-origin origin\"", g.origin)
		return
	}
	// lvm's order: the origin first, reloaded after each new snapshot.
	g.line("dmsetup create base --table \"0 %d snapshot-origin origin\"", g.origin)
	for _, s := range g.slots[:nsnap] {
		g.createSnap(s, g.newDev(), true)
	}
}

func (g *generator) newSlot() *slot {
	s := &slot{persistent: g.chance(80), exc: map[int64]int64{}, valid: true, diskValid: true}
	s.chunk = []int64{8, 16, 32, 64}[g.pick(45, 30, 20, 5)]
	kib := []int64{64, 96, 128, 192, 256, 512, 1024, 2048}[g.pick(20, 15, 15, 10, 10, 10, 10, 10)]
	kib = max(kib, 4*s.chunk/2)
	s.sectors = kib * 2
	g.boundarySize(s)
	return s
}

// table is the snapshot table line for slot s; chunk 0 lets a used
// persistent store keep its on-disk chunk size.
func (g *generator) table(s *slot, po bool) string {
	typ := "N"
	if s.persistent {
		typ = "P"
		if po {
			typ = "PO"
		}
	}
	chunk := s.chunk
	if s.persistent && s.header && g.chance(15) {
		chunk = 0
	}
	return fmt.Sprintf("0 %d snapshot origin %s %s %d%s", g.origin, s.name, typ, chunk, features(s.dzc))
}

// features is a snapshot table's feature group.
func features(dzc bool) string {
	if dzc {
		return " 1 discard_zeroes_cow"
	}
	return ""
}

func (g *generator) pickPO(s *slot) bool { return s.persistent && g.chance(30) }

// createSnap activates a snapshot on s (fresh or reloaded store) and, with
// reloadOrigin, suspends and resumes the origin so its split boundary
// covers the new chunk size.
func (g *generator) createSnap(s *slot, name string, reloadOrigin bool) {
	po := g.pickPO(s)
	s.dzc = g.ext && g.chance(30)
	s.chunk0, s.noDiscard = false, false
	g.line("dmsetup create %s --table \"%s\"", name, g.table(s, po))
	switch {
	case !s.persistent:
		if s.header { // header marks "used once" for N too
			g.kinds[KTransientReload]++
		}
		s.exc, s.nextFree, s.valid = map[int64]int64{}, 0, true
	case !s.header:
		s.nextFree, s.valid, s.diskValid = 2, true, true
	default:
		g.kinds[KPersistReload]++
		s.valid = s.diskValid
	}
	s.header = true
	s.overflowed = false
	s.po = po
	s.live = name
	if reloadOrigin {
		g.line("dmsetup suspend base")
		g.line("dmsetup resume base")
	}
}

// ioRange returns a sector range: chunk-aligned multiples of unit or an
// arbitrary 512-byte-granular range of up to maxUnits units, mostly in a
// hot first MiB so that writes meet earlier exceptions.
func (g *generator) ioRange(unit int64, maxUnits int) (off, n int64) {
	span := g.origin
	if g.chance(75) {
		span = min(span, 2048+int64(maxUnits)*unit)
	}
	if g.chance(50) {
		k := int64(1 + g.rng.IntN(maxUnits))
		off = g.rng.Int64N(max(span/unit-k, 0)+1) * unit
		n = k * unit
	} else {
		n = 1 + g.rng.Int64N(int64(maxUnits)*unit)
		off = g.rng.Int64N(max(span-n, 0) + 1)
	}
	if off+n > g.origin {
		n = g.origin - off
	}
	return off, n
}

func (g *generator) anyChunk() int64 {
	return []int64{8, 16, 32}[g.rng.IntN(3)]
}

// liveSlots are the slots whose store is active on a resumed device.
func (g *generator) liveSlots() []*slot {
	var out []*slot
	for _, s := range g.slots {
		if s.live != "" {
			out = append(out, s)
		}
	}
	return out
}

func (g *generator) pendingSlot() *slot {
	for _, s := range g.slots {
		if s.dest != "" {
			return s
		}
	}
	return nil
}

func (g *generator) filter(f func(*slot) bool) []*slot {
	var out []*slot
	for _, s := range g.slots {
		if f(s) {
			out = append(out, s)
		}
	}
	return out
}

func (g *generator) one(ss []*slot) *slot { return ss[g.rng.IntN(len(ss))] }

// preferValid mostly picks a valid snapshot, so that runs do not spend
// most of their steps on EIO once a small COW has filled.
func (g *generator) preferValid(ss []*slot) *slot {
	var ok []*slot
	for _, s := range ss {
		if s.valid && !s.overflowed {
			ok = append(ok, s)
		}
	}
	if len(ok) > 0 && g.chance(80) {
		return g.one(ok)
	}
	return g.one(ss)
}

// originWrite models __origin_write for every valid, active snapshot:
// each chunk the write touches that has no exception gets one, and a
// store with no room invalidates its snapshot (even PO); a copy-out or
// commit that an active fault rule fails invalidates it with EIO
// (docs/dm-snapshot.md §5.3). It reports whether the origin write itself
// fails (an origin write rule): the copies are made before it.
func (g *generator) originWrite(off, n int64) bool {
	for _, s := range g.liveSlots() {
		if !s.valid {
			continue
		}
		first, last := s.chunks(off, n)
		w := g.beginWrite(s)
		for c := first; c <= last; c++ {
			if _, ok := s.exc[c]; ok {
				continue
			}
			at, ok := s.allocAt()
			if !ok {
				g.ranFull(s)
				g.invalidate(s, w)
				break
			}
			w.add(c, g.copyFails(s, c, at, true))
			s.exc[c] = at
		}
		if w.failed > 0 && s.valid {
			g.invalidate(s, w)
		}
	}
	return g.hit(originDisk, opWrite, off, n)
}

// state is what the choice of the next step depends on.
type state struct {
	live, dead, handoverable, removable, free, fillable, third []*slot
	pending                                                    *slot
}

// choice is a step kind and its weight (0: not possible now).
type choice struct {
	kind   string
	weight int
}

func on(ok bool, w int) int {
	if ok {
		return w
	}
	return 0
}

func (g *generator) state() state {
	var st state
	st.live = g.liveSlots()
	st.pending = g.pendingSlot()
	st.dead = g.filter(func(s *slot) bool { return s.dead != "" })
	st.handoverable = g.filter(func(s *slot) bool { return s.live != "" && s.dead == "" && s.dest == "" })
	st.removable = g.filter(func(s *slot) bool { return s.live != "" && s.dest == "" })
	// A slot whose exceptions on disk are not known is never reloaded.
	st.free = g.filter(func(s *slot) bool {
		return s.live == "" && s.dead == "" && s.dest == "" && !(s.uncertain && s.persistent)
	})
	st.fillable = g.filter(func(s *slot) bool { return s.live != "" && s.valid && s.room() <= 600 })
	// A third table on a COW is refused while two snapshots are registered on
	// it: a source and its waiting destination, or both sides of a done
	// handover (H5, H6). The seed patch refuses only while the source is
	// linked to a waiting destination (docs/handover.md §6.7).
	st.third = g.filter(func(s *slot) bool { return s.dest != "" || (s.dead != "" && s.live != "" && !g.seedSem()) })
	return st
}

func (g *generator) step() {
	st := g.state()
	choices := g.classicChoices(st)
	weights := make([]int, len(choices))
	for i, c := range choices {
		weights[i] = c.weight
	}
	g.do(choices[g.pick(weights...)].kind, st)
}

// classicChoices are Generate's step kinds and weights.
func (g *generator) classicChoices(st state) []choice {
	live, pending, dead, handoverable, removable, free, fillable, third :=
		st.live, st.pending, st.dead, st.handoverable, st.removable, st.free, st.fillable, st.third
	return []choice{
		{KWriteOrigin, 20},
		{KWriteSnap, on(len(live) > 0, 16)},
		{KReadOrigin, 8},
		{KReadSnap, on(len(live) > 0, 12)},
		{KFlush, 5},
		{KStatus, 10}, // status or table
		{KFill, on(len(fillable) > 0, 4)},
		{KHandoverBegin, on(pending == nil && len(handoverable) > 0, 5)},
		{KHandoverFinish, on(pending != nil, 6)},
		{KRefuseDest, on(pending != nil && !pending.destFailed, 3)},
		{KRefuseSource, on(pending != nil, 3)},
		{KRefuseThird, on(len(third) > 0, 3)},
		{KDeadIO, on(len(dead) > 0, 3)},
		{KRemoveDead, on(len(dead) > 0, 3)},
		{KRemoveSnap, on(len(removable) > 0, 3)},
		{KRecreate, on(pending == nil && len(free) > 0, 5)},
		{KOriginReload, on(pending == nil, 2)},
	}
}

// do performs one step of kind.
func (g *generator) do(kind string, st state) {
	live, pending, dead, fillable, third := st.live, st.pending, st.dead, st.fillable, st.third
	switch kind {
	case KWriteOrigin:
		g.kinds[KWriteOrigin]++
		off, n := g.ioRange(g.anyChunk(), 4)
		g.originWriteLine(off, n)
	case KWriteSnap:
		g.kinds[KWriteSnap]++
		g.snapWrite(g.preferValid(live))
	case KReadOrigin:
		g.kinds[KReadOrigin]++
		off, n := g.ioRange(g.anyChunk(), 6)
		g.line("read base %s %s%s", g.size(off*sector), g.size(n*sector), g.eio(g.hit(originDisk, opRead, off, n)))
	case KReadSnap:
		g.kinds[KReadSnap]++
		s := g.preferValid(live)
		off, n := g.ioRange(s.chunk, 6)
		g.line("read %s %s %s%s", s.live, g.size(off*sector), g.size(n*sector), g.eio(!s.valid || g.snapReadFails(s, off, n)))
	case KFlush:
		g.kinds[KFlush]++
		// An empty flush is remapped to the COW before the validity
		// check: it succeeds on invalid snapshots too (docs/dm-snapshot.md §4.7).
		devs := []string{"base"}
		for _, s := range g.slots {
			for _, d := range []string{s.live, s.dead} {
				if d != "" {
					devs = append(devs, d)
				}
			}
		}
		d := devs[g.rng.IntN(len(devs))]
		g.line("flush %s%s", d, g.eio(g.flushFails(d)))
	case KStatus:
		verb := "status"
		g.kinds[KStatus]++
		if g.pick(6, 4) == 1 {
			verb = "table"
			g.kinds[KStatus]--
			g.kinds[KTable]++
		}
		devs := []string{"", "base"}
		for _, s := range g.slots {
			for _, d := range []string{s.live, s.dead} {
				if d != "" {
					devs = append(devs, d)
				}
			}
			if s.linear {
				devs = append(devs, s.name)
			}
		}
		if d := devs[g.rng.IntN(len(devs))]; d == "" {
			g.line("dmsetup %s", verb)
		} else {
			g.line("dmsetup %s %s", verb, d)
		}
	case KFill:
		g.kinds[KFill]++
		g.fill(g.one(fillable))
	case KHandoverBegin:
		g.kinds[KHandoverBegin]++
		s := g.one(st.handoverable)
		s.dest = g.newDev()
		s.destFailed = false
		po := g.pickPO(s)
		g.line("dmsetup create %s --notable", s.dest)
		g.line("dmsetup load %s --table \"%s\"", s.dest, g.tableHandover(s, po))
	case KHandoverFinish:
		g.kinds[KHandoverFinish]++
		g.line("dmsetup suspend %s", pending.live)
		g.finishHandover(pending)
	case KRefuseDest:
		if g.seedSem() {
			g.seedDestResume(pending)
			break
		}
		g.kinds[KRefuseDest]++
		// The source is not suspended: the destination's preresume refuses,
		// and the destination stays suspended with a live table (H2).
		g.line("dmsetup resume %s exit=1", pending.dest)
		pending.destFailed = true
	case KRefuseSource:
		if g.seedSem() {
			g.seedSourceResume(pending)
			break
		}
		g.kinds[KRefuseSource]++
		// The source may not resume while its destination waits (H3);
		// resuming the destination then hands over.
		g.line("dmsetup suspend %s", pending.live)
		g.line("dmsetup resume %s exit=1", pending.live)
		g.finishHandover(pending)
	case KRefuseThird:
		g.kinds[KRefuseThird]++
		s := g.one(third)
		name := g.newDev()
		tbl := fmt.Sprintf("0 %d snapshot origin %s %s %d", g.origin, s.name, map[bool]string{true: "P", false: "N"}[s.persistent], s.chunk)
		if g.chance(50) {
			g.line("dmsetup create %s --table \"%s\" exit=1", name, tbl)
		} else {
			g.line("dmsetup create %s --notable", name)
			g.line("dmsetup load %s --table \"%s\" exit=1", name, tbl)
			g.line("dmsetup remove %s", name)
		}
	case KDeadIO:
		g.kinds[KDeadIO]++
		g.kinds[KExpectEIO]++
		s := g.one(dead)
		off, n := g.ioRange(s.chunk, 2)
		if g.chance(50) {
			g.line("read %s %s %s expect=EIO", s.dead, g.size(off*sector), g.size(n*sector))
		} else {
			offs, ns, p := g.size(off*sector), g.size(n*sector), g.newPattern()
			g.line("write %s %s %s pattern=%s%s expect=EIO", s.dead, offs, ns, p, g.fua())
		}
	case KRemoveDead:
		g.kinds[KRemoveDead]++
		s := g.one(dead)
		g.line("dmsetup remove %s", s.dead)
		s.dead = ""
	case KRemoveSnap:
		g.kinds[KRemoveSnap]++
		s := g.one(st.removable)
		g.line("dmsetup remove %s", s.live)
		s.live = ""
	case KRecreate:
		g.kinds[KRecreate]++
		g.createSnap(g.one(st.free), g.newDev(), true)
	case KOriginReload:
		g.kinds[KOriginReload]++
		g.line("dmsetup suspend base")
		g.line("dmsetup resume base")
	}
}

// tableHandover is the destination's table: same origin and COW, the
// store type of the slot (P or PO for a persistent one: the destination
// keeps its own PO flag) and the slot's chunk size.
func (g *generator) tableHandover(s *slot, po bool) string {
	typ := "N"
	if s.persistent {
		typ = "P"
		if po {
			typ = "PO"
		}
	}
	s.destPO = po // applies from the handover on; the source keeps its flag until then
	s.destDZC = g.ext && g.chance(30)
	return fmt.Sprintf("0 %d snapshot origin %s %s %d%s", g.origin, s.name, typ, s.chunk, features(s.destDZC))
}

// finishHandover resumes the destination (the source is suspended): the
// destination takes the store, validity and overflow state; the source,
// resumed, is invalid and waits for its removal.
func (g *generator) finishHandover(s *slot) {
	g.line("dmsetup resume %s", s.dest)
	g.line("dmsetup resume %s", s.live)
	// Its table went live with the source holding the store: the
	// source's chunk size is its discard limit.
	s.noDiscard = s.chunk0
	s.dead, s.live, s.dest, s.destFailed, s.po, s.dzc = s.live, s.dest, "", false, s.destPO, s.destDZC
}

func (g *generator) eio(fail bool) string {
	if fail {
		g.kinds[KExpectEIO]++
		return " expect=EIO"
	}
	return ""
}

// snapWrite writes through the snapshot on s. A write that needs more
// exceptions than the store has room for is narrowed to one chunk, so it
// fails as a whole (EIO) and never lands in part.
func (g *generator) snapWrite(s *slot) {
	off, n := g.ioRange(s.chunk, 4)
	fails := !s.valid || s.overflowed
	if !fails {
		first, last := s.chunks(off, n)
		var need []int64
		for c := first; c <= last; c++ {
			if _, ok := s.exc[c]; !ok {
				need = append(need, c)
			}
		}
		if room := s.room(); len(need) > room {
			c := need[0]
			off, n = c*s.chunk, s.chunk
			if g.chance(50) {
				n = 1 + g.rng.Int64N(s.chunk)
				off += g.rng.Int64N(s.chunk - n + 1)
			}
			fails = room == 0
		}
		if fails {
			g.ranFull(s)
			if s.po {
				s.overflowed = true
				g.kinds[KOverflowed]++
			} else {
				g.invalidate(s, nil)
			}
		} else {
			fails = g.snapWriteChunks(s, off, n)
		}
	}
	g.line("write %s %s %s pattern=%s%s%s", s.live, g.size(off*sector), g.size(n*sector), g.newPattern(), g.fua(), g.eio(fails))
}

// snapWriteChunks models a snapshot write that fits in the store, chunk
// by chunk: a chunk with an exception is written to its COW chunk (a
// failure fails the write only); a new chunk is allocated and either
// written whole to the COW (start_full) or copied from the origin first,
// then committed; a failure there invalidates the snapshot. It reports
// whether the write fails.
func (g *generator) snapWriteChunks(s *slot, off, n int64) bool {
	first, last := s.chunks(off, n)
	w := g.beginWrite(s)
	fails := false
	for c := first; c <= last; c++ {
		lo, hi := max(off, c*s.chunk), min(off+n, (c+1)*s.chunk)
		if at, ok := s.exc[c]; ok {
			if g.hit(s.disk, opWrite, s.start+at+lo-c*s.chunk, hi-lo) {
				fails = true
			}
			continue
		}
		at, _ := s.allocAt()
		full := lo == c*s.chunk && hi == (c+1)*s.chunk
		w.add(c, g.copyFails(s, c, at, !full))
		s.exc[c] = at
	}
	if w.failed > 0 {
		g.invalidate(s, w)
		fails = true
	}
	return fails
}

// fill writes through the origin over as many chunks without an exception
// as s has room for, plus one: s runs full and is invalidated.
func (g *generator) fill(s *slot) {
	want := s.room() + 1
	total := g.origin / s.chunk
	start := g.rng.Int64N(max(total-int64(want)*2, 1))
	c, got := start, 0
	for c < total && got < want {
		if _, ok := s.exc[c]; !ok {
			got++
		}
		c++
	}
	off, n := start*s.chunk, (c-start)*s.chunk
	g.originWriteLine(off, n)
}

// originWriteLine writes [off, off+n) through the origin device and
// models it.
func (g *generator) originWriteLine(off, n int64) {
	offs, ns, p := g.size(off*sector), g.size(n*sector), g.newPattern()
	fua := g.fua()
	g.line("write base %s %s pattern=%s%s%s", offs, ns, p, fua, g.eio(g.originWrite(off, n)))
}
