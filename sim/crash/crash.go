// Package crash checks a scenario's crash consistency on the simulator, in
// the manner of CrashMonkey and xfstests' log-writes replays: it runs the
// scenario, cuts the power at many points, reloads every persistent
// snapshot that was active from the crash images of the disks, and checks
// what the reloaded devices read.
//
// # Power cuts
//
// Every disk of the scenario is a block.Mem with a volatile write cache:
// a plain write or a discard is volatile until the disk's next flush, a
// FUA write is durable when it completes. A power cut leaves, on each
// disk, its durable data plus whichever volatile sectors the cut keeps
// (block.Mem.CrashClone). Check takes these cuts ("states"), numbered from
// 0 in the order they are taken:
//
//   - boundary: right after every flush or FUA write any disk completes,
//     keeping nothing volatile, and once more after the scenario's end
//     (everything run, nothing volatile kept);
//   - seeded (Options.Seeds K): for seed 1..K, just before the disk
//     operation with an index drawn from the seed (uniform over the run's
//     disk operations, counted in a first run of the same deterministic
//     scenario), keeping each volatile write whole or losing it whole,
//     by a coin drawn from the seed: a sector holds the data of the last
//     write to it if that write is kept, else its durable data (a state in
//     which a later write to a sector is lost but an earlier one survives
//     is not generated). With Options.Torn each volatile sector is kept or
//     lost on its own, and the write in flight at the cut (plain or FUA)
//     lands in part: a coin per sector.
//
// # The promise checked after each cut
//
// On the crash images a fresh control plane (its own world, no faults)
// creates again every device that had a live table at the cut, with that
// table (devices named instead of numbered), except transient snapshots
// and, of several live snapshot tables on one COW (a handover), all but
// the one holding the COW's exception store: the store that read the
// COW's metadata, followed through handovers, which swap stores. A
// snapshot is "valid at the cut" when it was valid and held its COW's
// store: a handover destination that never took the store (mainline
// refused its resume) is valid but never read or wrote the COW, so its
// validity promises nothing about it. Then, for every persistent
// snapshot S so reloaded, on COW C of origin O (tables of one target at
// sector 0):
//
//   - (a) "pre-image": let P be what S saw, the content of O when the
//     first snapshot on C became active (plus, for a COW that came with
//     exceptions, their chunks as that snapshot read them), Pd the part of
//     it that was durable then (the rest of P, unflushed origin writes
//     made before the snapshot, may itself be lost), L what the running
//     snapshot held at the cut (its in-memory exception table over the
//     disks' caches: where the kernel itself does not copy a chunk, as a
//     multi-chunk origin write before the split boundary is set, L is the
//     new data), and W the writes made to snapshots on C. If S was valid
//     at the cut (and no torn write in flight was rewriting C's header,
//     an invalidation, on C's disk or through the linear devices C is
//     on), it must reload valid ("reload"), and every sector
//     x of S must read back as P(x), Pd(x), L(x) or the data of a write in
//     W covering x. So an origin write whose chunk reached O's disk kept
//     its pre-image in S; what may be lost is the data of snapshot writes
//     (S reads P there, an older write, or part of one) and whatever was
//     never flushed. Sectors of O written while no valid snapshot on C was
//     active, or written directly on O's disk, have no known pre-image and
//     are not checked by (a).
//   - (b) "prefix": the exception table the crash image of C holds (the
//     kernel's on-disk format, exstore.Inspect) must be a prefix of a
//     table C's cache held after one of the disk operations on C since the
//     first snapshot on C became active (a commit's area write is seen
//     before the flush that ends it, as the simulator's disks give the
//     exception store no FUA: a FUA write there is a write and a flush),
//     or of the table a torn write in flight on C was writing. An empty or
//     fresh COW is a prefix of anything. COWs that are dm devices are not
//     checked by (b).
//   - (c) "written": no read returns data never written there. Every
//     sector of each origin (through its reloaded snapshot-origin device,
//     else its crash image) and of each reloaded snapshot must be zeros,
//     the origin disk's content after its disk step (an image), a scenario
//     pattern at that offset written to that sector through the origin's
//     disk, a snapshot-origin of it or a snapshot of it, or, for a
//     snapshot, P(x). A snapshot invalid at the cut may fail its reads
//     with EIO; a device that reloads and fails a read otherwise fails
//     "read".
//
// Origins are checked before snapshots, and snapshot-merge tables (with
// the devices stacked on them) are created in the reload only once every
// other device is checked: a resumed merge copies onto the origin at once,
// and the copy-outs its writes cause may fill another snapshot's COW and
// invalidate it in the reload itself. Snapshots whose COW the scenario
// wrote directly, snapshots whose table has more than one target or does
// not start at sector 0, and origins written through a device that maps
// them elsewhere (a linear target at an offset) are reloaded but not read.
//
// The checker's own reads of the running scenario (L, P, the tables a COW
// held) go below the fault layers, to the disks' memory and through the
// live tables' linear mappings: they never fire a fault rule, use up its
// count or draw its randomness, so a cut inside a fault window checks the
// same run as any other.
//
// # Cost
//
// A state costs what the scenario touched, not the size of its devices.
// Its crash images are views of the disks' memory (the run is paused while
// a state is checked) with the durable data of the sectors the cut lost,
// saved when volatile writes first overwrote them since a flush. Its reads
// cover, per origin disk, the extents its image holds data in and the
// chunks any reloaded snapshot on it maps to its COW (a snapshot reads
// them there, a merge copies them onto the origin), and for (a) the
// extents P holds data in. Everywhere else the origin is a hole no
// reloaded table maps: it and its snapshots read zeros, which (c) accepts,
// and which (a) accepts where P is a hole too; after the state's reads,
// each origin so read must still be a hole there (no reloaded target
// wrote outside what it maps), else the state fails "written". Sectors so
// judged are counted apart (Result.Untouched).
//
// # Results
//
// Check counts every state checked, every sector read and every sector
// judged unread, and stops at the first bad state: its cut (index, kind,
// operation, what was kept), the check that failed, the device, chunk and
// sector, and what was expected against what was read. With Options.DumpDir it writes states
// as raw sparse images and a scenario that loads them (Dump).
//
// Everything is deterministic: the same scenario and options give the same
// states in the same order and the same result.
package crash

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/exstore"
	"snaplab/sim/invariant"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/sim/snapshot"
)

// Options change what Check does.
type Options struct {
	// Semantics overrides the scenario's handover semantics ("" keeps it).
	Semantics string
	// Seed overrides the scenario's seed when non-nil.
	Seed *uint64
	// Seeds is the number of seeded cuts (seeds 1..Seeds) besides the
	// boundary cuts.
	Seeds int
	// Torn makes seeded cuts keep each volatile sector on its own and the
	// write in flight in part.
	Torn bool
	// DumpDir, when set, receives states as images and a scenario
	// (DumpDir/cut-N/): the states DumpCuts names, or with none named the
	// first bad state, else the last state checked.
	DumpDir  string
	DumpCuts []int
	// DumpSparse makes a dumped scenario read only the chunks where an
	// origin's image holds data or a COW image has an exception (the
	// others read the origin's zeros), instead of every chunk: a kernel
	// in a guest under TCG reads some 5 MB/s.
	DumpSparse bool
	// AllowImagesOutside is run.Options.AllowImagesOutside for the
	// scenario's own image= disks.
	AllowImagesOutside bool

	// Planted defects, for this package's tests: disks that ignore
	// flushes and FUA, and a function that may change a state's crash
	// images before they are checked.
	dropFlush map[string]bool
	tamper    func(cut int, images []*image)
	// reloadTamper may change the reloaded disks of a state after what
	// its reads depend on is noted and before they run (a reload that
	// writes where nothing was written); fullRead reads every sector of
	// every checked device instead of what the state touched.
	reloadTamper func(cut int, disks map[string]*image)
	fullRead     bool
	// lookupChunks finds the chunks a reloaded snapshot maps by looking
	// up every chunk, not from its COW's table (mappedChunks).
	lookupChunks bool
	// cloneImages builds every crash image with block.Mem.CrashClone
	// instead of over the disk's memory (image); checkImages builds both
	// and fails the check where they differ (checkedImage).
	cloneImages bool
	checkImages bool
}

// Cut is one power cut.
type Cut struct {
	Index int    // states are numbered from 0 in the order they are taken
	Kind  string // "boundary", "seeded" or "end"
	Op    int    // the disk operation it follows (boundary) or precedes (seeded); -1 for end
	What  string // the operation, e.g. "fua write cow 8192+4096"
	Seed  uint64 // seeded: its seed
	Kept  string // what of the volatile data the images kept
}

func (c Cut) String() string {
	switch c.Kind {
	case "boundary":
		return fmt.Sprintf("state %d: boundary after op %d (%s), %s", c.Index, c.Op, c.What, c.Kept)
	case "seeded":
		return fmt.Sprintf("state %d: seed %d before op %d (%s), %s", c.Index, c.Seed, c.Op, c.What, c.Kept)
	}
	return fmt.Sprintf("state %d: end of the scenario, %s", c.Index, c.Kept)
}

// Bad is a state that broke the promise.
type Bad struct {
	Cut    Cut
	Check  string // "pre-image", "prefix", "written", "reload" or "read"
	Device string
	Chunk  uint64
	Sector int64 // on Device
	Expect string
	Got    string
}

func (b *Bad) String() string {
	return fmt.Sprintf("%s\n  check %s failed on %s, chunk %d, sector %d (byte %d): expected %s, got %s",
		b.Cut, b.Check, b.Device, b.Chunk, b.Sector, b.Sector*block.SectorSize, b.Expect, b.Got)
}

// Result is what Check found.
type Result struct {
	Scenario   string
	Ops        int   // disk operations the run made (writes, FUA writes, flushes, discards)
	Boundaries int   // boundary states checked (the end included)
	Seeded     int   // seeded states checked
	States     int   // states checked
	Sectors    int64 // sectors read and checked over all states
	// Untouched counts the sectors of checked devices judged without
	// reading them: holes in every image their content depends on, so
	// zeros, which every check accepts there (see the package comment).
	Untouched int64
	Cuts      []Cut // every state checked, in order
	Bad       *Bad  // the first bad state, or nil
	Run       *run.Report
	Dumped    []string // scenario files Dump wrote
}

// Check runs sc on the simulator with power cuts and checks every crash
// state (see the package comment). err is a problem with the run itself
// (the scenario did not run the same twice, a dump could not be written),
// not a bad state.
func Check(sc *script.Scenario, opts Options) (*Result, error) {
	plan := map[int][]uint64{}
	if opts.Seeds < 0 {
		return nil, fmt.Errorf("crash check of %s: %d seeds: want 0 or more", sc.Name, opts.Seeds)
	}
	for _, st := range sc.Steps {
		if st.DataFile != "" {
			return nil, fmt.Errorf("crash check of %s: line %d: writes with data= are not modelled (the checker knows written data by pattern)", sc.Name, st.Line)
		}
	}
	total := -1
	if opts.Seeds > 0 {
		c := newChecker(sc, opts, nil, true)
		c.drive()
		total = c.ops
		if total > 0 {
			for seed := uint64(1); seed <= uint64(opts.Seeds); seed++ {
				j := seedRand(seed, 0).IntN(total)
				plan[j] = append(plan[j], seed)
			}
		}
	}
	c := newChecker(sc, opts, plan, false)
	c.drive()
	if total >= 0 && c.ops != total {
		return nil, fmt.Errorf("crash check of %s: the scenario made %d disk operations, then %d on the same seed: it does not run deterministically", sc.Name, total, c.ops)
	}
	if c.err != nil {
		return nil, c.err
	}
	c.res.Ops = c.ops
	return c.res, nil
}

// seedRand is the generator of seeded cut number seed; stream 0 picks the
// cut's operation, stream 1 what it keeps.
func seedRand(seed, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, 0x6372617368+stream))
}

// checker follows one run of the scenario.
type checker struct {
	sc    *script.Scenario
	opts  Options
	count bool // counting run: no states
	plan  map[int][]uint64

	s     *run.Session
	ctl   *dm.Control
	disks []*disk
	ops   int
	res   *Result
	err   error
	done  bool // a bad state was found (or an error): no more states

	pats map[uint64]string // pattern key -> name, for every pattern the scenario writes

	// The model: see the package comment.
	pre  map[string]*preImage // by COW name
	seen map[*snapshot.Snapshot]bool
	// holders is, by COW name, the exception store holding the COW: the
	// one that read its metadata (see noteHolders).
	holders  map[string]exstore.Store
	known    map[*snapshot.Snapshot]bool // snapshot targets noteHolders has seen
	stacks   map[string]*stack           // by origin name
	versions map[string][][]pair

	inflight *inflight  // a torn cut's write in flight, while it is checked
	bufs     *[5][]byte // see buffers
}

// inflight is the write a torn cut tears.
type inflight struct {
	d    *disk
	off  int64
	data []byte
}

type pair struct{ old, new uint64 }

// preImage is P and W of a COW: what its snapshot saw.
type preImage struct {
	cow     string
	origin  string
	data    *block.Mem // P: a copy of the origin as the snapshot saw it
	durable *block.Mem // what of it was durable then (nil: all of it)
	writes  []span     // W: writes made to snapshots on the COW
	unknown []span     // sectors of P no longer known
	extents []extent   // where data holds data (P is not changed once taken)
}

// stack is what was written to an origin and the devices on it.
type stack struct {
	writes       []span
	unverifiable bool // written through a device mapping it elsewhere
}

// span is sectors [lo, lo+n) written with a pattern (pattern.Zero for a
// discard).
type span struct {
	lo, n int64
	pat   string
}

func newChecker(sc *script.Scenario, opts Options, plan map[int][]uint64, count bool) *checker {
	c := &checker{sc: sc, opts: opts, count: count, plan: plan,
		res:  &Result{Scenario: sc.Name},
		pats: map[uint64]string{}, pre: map[string]*preImage{}, seen: map[*snapshot.Snapshot]bool{},
		holders: map[string]exstore.Store{}, known: map[*snapshot.Snapshot]bool{},
		stacks: map[string]*stack{}, versions: map[string][][]pair{}}
	for i := range sc.Steps {
		if p := sc.Steps[i].Pattern; p != "" {
			c.pats[patternKey(p)] = p
		}
	}
	return c
}

// drive runs the scenario, every step even after a failed one.
func (c *checker) drive() {
	c.s = run.NewSession(c.sc, run.Options{Semantics: c.opts.Semantics, Seed: c.opts.Seed,
		AllowImagesOutside: c.opts.AllowImagesOutside})
	c.ctl = c.s.Control()
	for i := range c.sc.Steps {
		st := &c.sc.Steps[i]
		c.noteWrite(st)
		c.s.Exec(st)
		if st.Kind == script.KDisk {
			c.attach(st)
		}
		c.scanSnapshots()
	}
	c.res.Run = c.s.Finish()
	if !c.count {
		c.cut("end", -1, "", 0, nil, nil)
	}
}

// attach wraps the disk the step added (if it did).
func (c *checker) attach(st *script.Step) {
	ds := c.ctl.Disks()
	if len(ds) == len(c.disks) {
		return // the step failed
	}
	d := ds[len(ds)-1]
	f, ok := d.Device.(*block.Faulty)
	if !ok {
		c.fail(fmt.Errorf("crash check of %s: disk %s is a %T, not the session's fault wrapper", c.sc.Name, d.Name(), d.Device))
		return
	}
	m, ok := f.Unwrap().(*block.Mem)
	if !ok {
		c.fail(fmt.Errorf("crash check of %s: disk %s holds a %T, not a memory disk", c.sc.Name, d.Name(), f.Unwrap()))
		return
	}
	// The shadow holds what the disk's memory loses from the wrapper on:
	// a disk whose step left volatile data has its images cloned.
	w := &disk{c: c, name: d.Name(), idx: len(c.disks), lbs: d.LogicalBlockSize(), inner: f, mem: m,
		init: m.CrashClone(keepAll), dropFlush: c.opts.dropFlush[d.Name()], exact: m.Stats().DirtySectors == 0}
	d.Device = w
	c.disks = append(c.disks, w)
}

func keepAll(int64) bool { return true }

func (c *checker) fail(err error) {
	if c.err == nil {
		c.err = err
	}
	c.done = true
}

// before is called before each disk operation; it returns the
// operation's index and takes the seeded cuts planned there.
func (c *checker) before(d *disk, k opKind, off int64, data []byte) int {
	i := c.ops
	c.ops++
	if c.count {
		return i
	}
	for _, seed := range c.plan[i] {
		c.seededCut(d, i, k, off, data, seed)
	}
	return i
}

// after is called after each disk operation: a completed one updates the
// volatile writes, and a flush or FUA write is a boundary.
func (c *checker) after(d *disk, i int, k opKind, off, n int64, err error) {
	if err != nil || c.count {
		return
	}
	switch k {
	case opWrite, opDiscard:
		if n > 0 {
			lo := off / block.SectorSize
			d.unflushed = append(d.unflushed, pending{op: i, lo: lo, n: (off+n+block.SectorSize-1)/block.SectorSize - lo, discard: k == opDiscard})
		}
	case opFlush:
		d.unflushed = d.unflushed[:0]
	}
	c.noteCommit(d)
	if k == opFlush || k == opFUA {
		c.cut("boundary", i, opText(d, k, off, n), 0, nil, nil)
	}
}

func opText(d *disk, k opKind, off, n int64) string {
	if k == opFlush {
		return "flush " + d.name
	}
	return fmt.Sprintf("%s %s %d+%d", k, d.name, off, n)
}

// noteCommit records the table of d, if it is a known COW, after each
// operation on it: the tables its store wrote. A commit is a flush and a
// FUA write of the area, and the simulator's disks offer no FUA to the
// exception store (a FUA write there is a write and then a flush), so the
// area's write is seen before its flush: a cut in between may keep it.
func (c *checker) noteCommit(d *disk) {
	if p := c.pre[d.name]; p != nil {
		c.noteTable(d.name, d.mem)
	}
}

// noteTable appends cow's current table to its versions when it changed.
func (c *checker) noteTable(cow string, dev block.Device) {
	im, err := exstore.Inspect(dev)
	if err != nil || im.Fresh {
		return
	}
	t := make([]pair, len(im.Exceptions))
	for i, x := range im.Exceptions {
		t[i] = pair{x.Old, x.New}
	}
	vs := c.versions[cow]
	if len(vs) > 0 && slices.Equal(vs[len(vs)-1], t) {
		return
	}
	c.versions[cow] = append(vs, t)
}

// seededCut takes the state of seeded cut seed before operation i.
func (c *checker) seededCut(d *disk, i int, k opKind, off int64, data []byte, seed uint64) {
	rng := seedRand(seed, 1)
	keeps := make([]func(int64) bool, len(c.disks))
	keptDesc := "kept whole volatile writes by coin"
	for di, dd := range c.disks {
		if c.opts.Torn {
			keeps[di] = func(int64) bool { return rng.IntN(2) == 0 }
			continue
		}
		last := map[int64]bool{} // sector -> is its last volatile write kept
		for _, p := range dd.unflushed {
			kept := rng.IntN(2) == 0
			for s := p.lo; s < p.lo+p.n; s++ {
				last[s] = kept
			}
		}
		keeps[di] = func(s int64) bool { return last[s] }
	}
	var torn func(images []*image) string
	if c.opts.Torn {
		keptDesc = "kept volatile sectors by coin"
		if (k == opWrite || k == opFUA) && len(data) > 0 {
			torn = func(images []*image) string {
				img := images[d.idx]
				lo := off / block.SectorSize
				kept := 0
				n := (int64(len(data)) + block.SectorSize - 1) / block.SectorSize
				for s := int64(0); s < n; s++ {
					if rng.IntN(2) != 0 {
						continue
					}
					b := data[s*block.SectorSize : min(int64(len(data)), (s+1)*block.SectorSize)]
					if _, err := img.WriteAtFUA(b, (lo+s)*block.SectorSize); err != nil {
						c.fail(fmt.Errorf("crash check of %s: torn write on %s at sector %d: %w", c.sc.Name, d.name, lo+s, err))
						return ""
					}
					kept++
				}
				return fmt.Sprintf("; the write in flight kept %d of %d sectors", kept, n)
			}
		}
	}
	if torn != nil {
		c.inflight = &inflight{d: d, off: off, data: data}
		defer func() { c.inflight = nil }()
	}
	c.cut("seeded", i, opText(d, k, off, int64(len(data))), seed, keeps, func(images []*image) string {
		if torn == nil {
			return keptDesc
		}
		return keptDesc + torn(images)
	})
}

// cut takes a state (keeps[i] decides disk i's volatile sectors; nil keeps
// nothing) and checks it.
func (c *checker) cut(kind string, op int, what string, seed uint64, keeps []func(int64) bool, extra func([]*image) string) {
	if c.done {
		return
	}
	images := make([]*image, len(c.disks))
	for i, d := range c.disks {
		var keep func(int64) bool
		if keeps != nil {
			keep = keeps[i]
		}
		switch {
		case !d.exact || c.opts.cloneImages:
			images[i] = newImage(d.mem.CrashClone(keep), nil)
		case c.opts.checkImages:
			images[i] = c.checkedImage(d, keep)
		default:
			images[i] = newImage(d.mem, d.sh.lostBy(keep))
		}
	}
	if c.done {
		return
	}
	cut := Cut{Index: c.res.States, Kind: kind, Op: op, What: what, Seed: seed, Kept: "kept nothing volatile"}
	if extra != nil {
		cut.Kept = extra(images)
	}
	if c.opts.tamper != nil {
		c.opts.tamper(cut.Index, images)
	}
	c.noteHolders() // a cut inside a step sees the targets constructed in it
	c.res.States++
	c.res.Cuts = append(c.res.Cuts, cut)
	if kind == "seeded" {
		c.res.Seeded++
	} else {
		c.res.Boundaries++
	}
	st := c.state(cut, images)
	bad, err := st.check()
	if err != nil {
		c.fail(err)
		return
	}
	c.res.Sectors += st.sectors
	c.res.Untouched += st.untouched
	if st.reloaded {
		c.covered()
	}
	if bad != nil {
		c.res.Bad = bad
		c.done = true
	}
	if c.opts.DumpDir != "" && c.wantDump(cut, bad) {
		path, err := st.dump(c.opts.DumpDir)
		if err != nil {
			c.fail(err)
			return
		}
		c.res.Dumped = append(c.res.Dumped, path)
	}
}

// checkedImage is d's image for keep, compared with the memory disk's own
// crash clone: the clone keeps a sector the image lost keeps (keep's
// answers replayed), no sector the image does not follow is volatile,
// and both read the same everywhere. A difference fails the check.
func (c *checker) checkedImage(d *disk, keep func(int64) bool) *image {
	kept := map[int64]bool{}
	im := newImage(d.mem, d.sh.lostBy(func(s int64) bool {
		k := keep != nil && keep(s)
		kept[s] = k
		return k
	}))
	var stray []int64
	clone := d.mem.CrashClone(func(s int64) bool {
		k, ok := kept[s]
		if !ok {
			stray = append(stray, s)
		}
		return k
	})
	if len(stray) > 0 {
		c.fail(fmt.Errorf("crash check of %s: disk %s: sectors %v are volatile in its memory but the image does not follow them", c.sc.Name, d.name, stray[:min(len(stray), 8)]))
		return im
	}
	a, b := make([]byte, readBlock), make([]byte, readBlock)
	for off := int64(0); off < d.mem.Size(); off += readBlock {
		n := min(readBlock, d.mem.Size()-off)
		if _, err := im.ReadAt(a[:n], off); err != nil {
			c.fail(fmt.Errorf("crash check of %s: image of %s at byte %d: %w", c.sc.Name, d.name, off, err))
			return im
		}
		if _, err := clone.ReadAt(b[:n], off); err != nil {
			c.fail(fmt.Errorf("crash check of %s: crash clone of %s at byte %d: %w", c.sc.Name, d.name, off, err))
			return im
		}
		if !bytes.Equal(a[:n], b[:n]) {
			x := int64(0)
			for a[x] == b[x] {
				x++
			}
			c.fail(fmt.Errorf("crash check of %s: the image of %s differs from its crash clone at byte %d", c.sc.Name, d.name, off+x))
			return im
		}
	}
	for _, e := range dataExtents(clone) { // the image maps every byte the clone holds
		for _, h := range holes(im, e) {
			c.fail(fmt.Errorf("crash check of %s: the image of %s maps bytes %d+%d as a hole, its crash clone holds data there", c.sc.Name, d.name, h.off, h.n))
			return im
		}
	}
	return im
}

// holes lists the holes im maps in e that hold data (nonzero bytes).
func holes(im *image, e extent) []extent {
	ext, err := im.Map(e.off, e.n)
	if err != nil {
		return []extent{e}
	}
	var out []extent
	buf := make([]byte, block.SectorSize)
	for _, x := range ext {
		if !x.Hole {
			continue
		}
		for o := x.Off; o < x.Off+x.Len; o += block.SectorSize {
			k := min(block.SectorSize, x.Off+x.Len-o)
			if _, err := im.ReadAt(buf[:k], o); err != nil || !bytes.Equal(buf[:k], zeroSector[:k]) {
				out = append(out, extent{o, k})
			}
		}
	}
	return out
}

// covered counts the coverage property reload-after-power-cut in the
// run's report: through the session while it runs, in its report for the
// state taken after the scenario's end.
func (c *checker) covered() {
	if c.res.Run == nil {
		if err := c.s.Invariants().Cover(invariant.ReloadAfterPowerCut); err != nil {
			c.fail(fmt.Errorf("crash check of %s: %w", c.sc.Name, err))
		}
		return
	}
	if c.res.Run.Coverage == nil {
		c.res.Run.Coverage = map[string]int{}
	}
	c.res.Run.Coverage[invariant.ReloadAfterPowerCut]++
}

func (c *checker) wantDump(cut Cut, bad *Bad) bool {
	if c.opts.DumpCuts != nil {
		return slices.Contains(c.opts.DumpCuts, cut.Index)
	}
	return bad != nil || cut.Kind == "end"
}

// liveSnapshot describes a snapshot target in a live table.
type liveSnapshot struct {
	md         *dm.MappedDevice
	s          *snapshot.Snapshot
	persistent bool
	simple     bool // one target, at sector 0
}

// liveSnapshots lists the snapshot targets of live tables, in device name
// order.
func (c *checker) liveSnapshots() []liveSnapshot {
	var out []liveSnapshot
	for _, md := range c.ctl.Devices() {
		t := md.Live()
		if t == nil {
			continue
		}
		for _, ti := range t.Targets {
			s, ok := ti.Target.(*snapshot.Snapshot)
			if !ok {
				continue
			}
			out = append(out, liveSnapshot{md: md, s: s, persistent: persistentArgs(ti.Args),
				simple: len(t.Targets) == 1 && ti.Begin == 0})
		}
	}
	return out
}

// persistentArgs reports whether snapshot table arguments (origin, COW,
// store type, chunk size, ...) name a persistent store.
func persistentArgs(args []string) bool {
	return len(args) >= 3 && strings.HasPrefix(strings.ToUpper(args[2]), "P")
}

// noteHolders follows which exception store holds each COW. A snapshot
// target constructed on a COW no other target uses read the COW's
// metadata: its store holds the COW. A handover moves that store to
// another target (the stores are swapped, so the store, not the target,
// is followed); the COW is held by none once no target has that store
// (the last one holding it was removed). A target constructed on a COW
// another target uses (a handover destination, a table refused the
// handover), holding its store or not, never read the COW: its own store
// holds nothing until a handover gives it the holder's. So a COW whose
// holder was removed while a destination that never took the store stays
// (mainline cancels the handover) is held by none until every target on
// it is gone. Snapshot targets are the registered ones (mainline
// registers a destination at its constructor) and those of live tables
// (the seed registers a destination at its handover).
func (c *checker) noteHolders() {
	all := slices.Clone(snapshot.AllSnapshots(c.ctl))
	for _, ls := range c.liveSnapshots() {
		if !slices.Contains(all, ls.s) {
			all = append(all, ls.s)
		}
	}
	held := map[exstore.Store]bool{}
	for _, s := range all {
		held[s.Store()] = true
	}
	for cow, st := range c.holders { // order-free: deletes entries by their own key only
		if !held[st] {
			delete(c.holders, cow)
		}
	}
	for _, s := range all {
		if c.known[s] {
			continue
		}
		c.known[s] = true
		cow := s.COW().Name()
		alone := !slices.ContainsFunc(all, func(x *snapshot.Snapshot) bool { return x != s && x.COW().Name() == cow })
		if alone && c.holders[cow] == nil {
			c.holders[cow] = s.Store()
		}
	}
}

// holds reports whether s holds its COW's store: only its table's
// validity says anything about what the COW holds.
func (c *checker) holds(s *snapshot.Snapshot) bool {
	st := c.holders[s.COW().Name()]
	return st != nil && s.Store() == st
}

// scanSnapshots follows the COWs' holders and records P for the COW of
// every valid persistent snapshot holding its store first seen active.
func (c *checker) scanSnapshots() {
	if c.count {
		return
	}
	c.noteHolders()
	for _, ls := range c.liveSnapshots() {
		s := ls.s
		if c.seen[s] {
			continue
		}
		c.seen[s] = true
		if !ls.persistent || !s.Valid() || !c.holds(s) {
			continue
		}
		cow := s.COW().Name()
		if c.pre[cow] != nil {
			continue
		}
		p, err := c.capture(s)
		if err != nil {
			c.fail(err)
			return
		}
		c.pre[cow] = p
		c.noteTable(cow, c.view(s.COW()))
	}
}

// capture copies what s reads now: its origin, and the chunks its store
// came with from the COW (below the fault layers: see view).
func (c *checker) capture(s *snapshot.Snapshot) (*preImage, error) {
	origin, cow := s.OriginDev(), s.COW()
	p := &preImage{cow: cow.Name(), origin: origin.Name()}
	if d := c.diskNamed(origin.Name()); d != nil {
		p.data, p.durable = d.mem.CrashClone(keepAll), d.mem.CrashClone(nil)
	} else {
		m, err := block.NewMem(origin.Name(), origin.Size())
		if err != nil {
			return nil, fmt.Errorf("crash check of %s: copy of origin %s: %w", c.sc.Name, origin.Name(), err)
		}
		if err := copyDev(m, c.view(origin), 0, origin.Size()); err != nil {
			return nil, fmt.Errorf("crash check of %s: copy of origin %s: %w", c.sc.Name, origin.Name(), err)
		}
		p.data = m
	}
	if s.Exceptions() == 0 {
		p.extents = dataExtents(p.data)
		return p, nil
	}
	defer func() { p.extents = dataExtents(p.data) }()
	cs := int64(s.ChunkSize()) * block.SectorSize
	for ch := int64(0); ch*cs < origin.Size(); ch++ {
		n, ok := s.Lookup(uint64(ch))
		if !ok {
			continue
		}
		for _, m := range []*block.Mem{p.data, p.durable} {
			if m == nil {
				continue
			}
			if err := copyDevTo(m, ch*cs, c.view(cow), int64(n)*cs, min(cs, origin.Size()-ch*cs)); err != nil {
				return nil, fmt.Errorf("crash check of %s: copy of chunk %d of %s from COW %s chunk %d: %w", c.sc.Name, ch, s.Name(), cow.Name(), n, err)
			}
		}
	}
	return p, nil
}

func (c *checker) diskNamed(name string) *disk {
	for _, d := range c.disks {
		if d.name == name {
			return d
		}
	}
	return nil
}

// copyDev copies [off, off+n) of src to dst at the same offset.
func copyDev(dst, src block.Device, off, n int64) error { return copyDevTo(dst, off, src, off, n) }

func copyDevTo(dst block.Device, doff int64, src block.Device, soff, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for done := int64(0); done < n; {
		k := min(n-done, int64(len(buf)))
		if _, err := src.ReadAt(buf[:k], soff+done); err != nil {
			return err
		}
		if _, err := dst.WriteAt(buf[:k], doff+done); err != nil {
			return err
		}
		done += k
	}
	return nil
}

// noteWrite records a write or discard step before it runs: in the stack
// of the origin it lands on, in W of the snapshot it goes to, and as
// unknown in P where it changes an origin no valid snapshot protects.
func (c *checker) noteWrite(st *script.Step) {
	if c.count || (st.Kind != script.KWrite && st.Kind != script.KDiscard) {
		return
	}
	sp := span{lo: st.Off / block.SectorSize, pat: st.Pattern}
	sp.n = (st.Off+st.Len+block.SectorSize-1)/block.SectorSize - sp.lo
	if st.Kind == script.KDiscard {
		sp.pat = "zero"
	}
	switch n := c.ctl.Node(st.Dev).(type) {
	case *dm.Disk:
		c.stackOf(n.Name()).writes = append(c.stackOf(n.Name()).writes, sp)
		for _, cow := range c.cows() {
			p := c.pre[cow]
			if p.origin == n.Name() {
				p.unknown = append(p.unknown, sp)
			}
		}
	case *dm.MappedDevice:
		t := n.Live()
		if t == nil {
			return
		}
		if len(t.Targets) != 1 || t.Targets[0].Begin != 0 {
			c.detach(t)
			return
		}
		ti := t.Targets[0]
		switch s := ti.Target.(type) {
		case *snapshot.Snapshot:
			st := c.stackOf(s.OriginDev().Name())
			st.writes = append(st.writes, sp)
			if p := c.pre[s.COW().Name()]; p != nil {
				p.writes = append(p.writes, sp)
			}
		default:
			if ti.Type.Name != "snapshot-origin" || len(ti.Deps) != 1 {
				c.detach(t)
				return
			}
			origin := ti.Deps[0].Name()
			st := c.stackOf(origin)
			st.writes = append(st.writes, sp)
			protected := map[string]bool{}
			for _, ls := range c.liveSnapshots() {
				if ls.s.Valid() && c.holds(ls.s) {
					protected[ls.s.COW().Name()] = true
				}
			}
			for _, cow := range c.cows() {
				if p := c.pre[cow]; p.origin == origin && !protected[cow] {
					p.unknown = append(p.unknown, sp)
				}
			}
		}
	}
}

// detach marks every disk under t as written through a device the model
// does not follow.
func (c *checker) detach(t *dm.Table) {
	for _, ti := range t.Targets {
		for _, d := range ti.Deps {
			c.stackOf(d.Name()).unverifiable = true
			if md, ok := d.(*dm.MappedDevice); ok && md.Live() != nil {
				c.detach(md.Live())
			}
		}
	}
}

func (c *checker) stackOf(origin string) *stack {
	s := c.stacks[origin]
	if s == nil {
		s = &stack{}
		c.stacks[origin] = s
	}
	return s
}

// cows lists the COWs with a P, sorted.
func (c *checker) cows() []string {
	out := make([]string, 0, len(c.pre))
	for k := range c.pre { // order-free: sorted below
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
