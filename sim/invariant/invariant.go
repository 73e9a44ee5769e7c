// Package invariant checks the simulator's dm-snapshot state after every
// step and counts the deep states a run reaches (coverage properties).
//
// Contract:
//
//   - New(ctl) installs a Checker as ctl's snapshot probe (snapshot.Probe).
//     It is always on in the simulator: run.NewSession makes one, and a
//     step during which an invariant broke fails with the first violation,
//     "invariant NAME: ..." naming the device, chunk and sector.
//   - Checks are incremental: each runs at the transition it is about
//     (an allocation, a commit, an origin write), costs O(what changed),
//     never O(exception table), and reads the simulated devices only below
//     their fault layers, so a checked run and an unchecked one make the
//     same choices, events and recordings.
//   - Nothing here draws randomness, reads the clock or ranges over a map:
//     the Checker is as deterministic as the world it watches.
//
// The invariants (names are the constants below):
//
//   - exception-table-injective: no two origin chunks of a store map to
//     the same COW chunk, and no origin chunk gets a second exception.
//     The checker keeps each store's reverse table (COW chunk to origin
//     chunk), moved with the store at a handover.
//   - cow-alloc: a COW chunk handed out for a pending exception is in
//     bounds, is neither the header nor a metadata area of a persistent
//     store, is not in use, and is above every chunk the store handed out
//     or loaded before. A merge commit moves the store's next free chunk
//     back (commit_merge): the floor restarts below it.
//   - copy-before-write: an origin write reaches the origin device only
//     once the chunk __origin_write looks at (the chunk of the bio's first
//     sector; a merge's copy: each step of the origin's smallest chunk
//     size) has a completed exception in every valid, active, non-merging
//     snapshot of that origin that covers the sector.
//   - commit-after-copy: an exception is handed to its store's commit only
//     after its copy-out (or whole-chunk write) finished.
//   - disk-table: at each commit point (a successful area write of a
//     persistent store: a commit batch or a merge commit) the entries the
//     write added, read back from the COW and decoded, are the in-memory
//     table's, the entry after them ends the table, a full area's successor
//     was zeroed, and the COW holds as many entries as the in-memory table.
//     After an invalidation the header on the COW says invalid (unless
//     the store's header write failed).
//   - liveness: CheckLiveness, called by the session when the world is
//     quiescent and no fault rule is active: every I/O a user submitted has
//     completed unless it waits on a suspended device, and no snapshot has
//     a pending exception unless its COW device is suspended.
//
// The coverage properties (Properties) are counted when the simulator
// reaches them; Coverage reports each one's count, and a campaign fails
// when one stays 0. ReloadAfterPowerCut is counted by the crash checker,
// which calls Cover.
package invariant

import (
	"fmt"
	"slices"
	"strings"

	"snaplab/sim/dm"
	"snaplab/sim/exstore"
	"snaplab/sim/snapshot"
)

// Invariant names: a violation's message starts "invariant NAME: ".
const (
	ExceptionTableInjective = "exception-table-injective"
	COWAlloc                = "cow-alloc"
	CopyBeforeWrite         = "copy-before-write"
	CommitAfterCopy         = "commit-after-copy"
	DiskTable               = "disk-table"
	Liveness                = "liveness"
)

// Invariants lists the invariant names in the order the package comment
// describes them.
var Invariants = []string{ExceptionTableInjective, COWAlloc, CopyBeforeWrite, CommitAfterCopy, DiskTable, Liveness}

// Coverage property names.
const (
	// HandoverCopiesInFlight: a handover while the source had pending
	// exceptions.
	HandoverCopiesInFlight = "handover-copies-in-flight"
	// OverflowDuringMerge: a PO snapshot overflowed while a merge was
	// running on its origin.
	OverflowDuringMerge = "overflow-during-merge"
	// COWFullAtAreaBoundary: a persistent COW ran full exactly when the
	// next allocation would have been the first data chunk after a new
	// metadata area (not area 0's).
	COWFullAtAreaBoundary = "cow-full-at-area-boundary"
	// InvalidSourceHandover: a handover from an invalid source (the
	// destination inherits Invalid; the seed refuses and invalidates it).
	InvalidSourceHandover = "invalid-source-handover"
	// SuspendPendingExceptions: a snapshot or snapshot-origin device was
	// suspended while snapshots of its origin had pending exceptions.
	SuspendPendingExceptions = "suspend-pending-exceptions"
	// RefusedThirdTable: a third snapshot table on one COW was refused
	// (mainline's pairing error, the seed's "two devices at once").
	RefusedThirdTable = "refused-third-table"
	// ReloadAfterPowerCut: a persistent store was loaded from a power-cut
	// image. The crash checker counts it (Checker.Cover).
	ReloadAfterPowerCut = "reload-after-power-cut"
)

// Properties lists every coverage property, sorted.
var Properties = []string{
	COWFullAtAreaBoundary,
	HandoverCopiesInFlight,
	InvalidSourceHandover,
	OverflowDuringMerge,
	RefusedThirdTable,
	ReloadAfterPowerCut,
	SuspendPendingExceptions,
}

// Violation is one broken invariant.
type Violation struct {
	Invariant string // one of Invariants
	Msg       string // what is wrong, naming the device, chunk and sector
}

func (v Violation) String() string { return "invariant " + v.Invariant + ": " + v.Msg }

// storeState is what the checker keeps per exception store (a handover
// moves a store and its table together, so the state follows the store).
type storeState struct {
	rev      map[uint64]uint64 // COW chunk -> origin chunk of each completed exception
	floor    uint64            // highest chunk allocated or loaded
	hasFloor bool
	// Commit points seen (exstore.Layout.AreaWrites) and how far the
	// on-disk table has been verified: entries [0, checkedEntries) of
	// area checkedArea, and every area before it.
	areaWrites     uint64
	checkedArea    uint64
	checkedEntries uint32
	// dup is how many more entries the COW held than the table loaded
	// from it (an image mapping an origin chunk twice); lax turns the
	// entry-by-entry comparison off for such a store.
	dup int
	lax bool
	// stray holds exceptions committed into this store by a snapshot
	// that no longer held it (the seed's handover while a commit was
	// queued): on the COW, in no in-memory table.
	stray map[uint64]uint64
}

// Checker checks the invariants of one control plane and counts its
// coverage properties. It is not safe for concurrent use (nor is the
// simulator it watches).
type Checker struct {
	ctl      *dm.Control
	stores   map[exstore.Store]*storeState
	found    []Violation // not yet taken
	total    int         // violations found in the run
	coverage [7]int      // by index in Properties
}

var _ snapshot.Probe = (*Checker)(nil)

// New returns a Checker installed as ctl's snapshot probe.
func New(ctl *dm.Control) *Checker {
	c := &Checker{ctl: ctl, stores: map[exstore.Store]*storeState{}}
	snapshot.SetProbe(ctl, c)
	return c
}

// Take returns the violations found since the last Take, in the order
// they were found, and forgets them.
func (c *Checker) Take() []Violation {
	v := c.found
	c.found = nil
	return v
}

// Message is the failure text of the violations Take returned: the first
// one's, then how many more there were and the invariants they broke
// ("" for none).
func Message(vs []Violation) string {
	if len(vs) == 0 {
		return ""
	}
	if len(vs) == 1 {
		return vs[0].String()
	}
	var names []string
	for _, v := range vs[1:] {
		if !slices.Contains(names, v.Invariant) {
			names = append(names, v.Invariant)
		}
	}
	return fmt.Sprintf("%s (and %d more: %s)", vs[0], len(vs)-1, strings.Join(names, ", "))
}

// Total is the number of violations found in the run.
func (c *Checker) Total() int { return c.total }

// Cover counts one hit of coverage property name; a name not in
// Properties is an error.
func (c *Checker) Cover(name string) error {
	for i, p := range Properties {
		if p == name {
			c.coverage[i]++
			return nil
		}
	}
	return fmt.Errorf("invariant: no coverage property %q (want one of %s)", name, strings.Join(Properties, ", "))
}

func (c *Checker) cover(name string) {
	if err := c.Cover(name); err != nil {
		panic(err) // the names this package passes are its own constants
	}
}

// Coverage returns every property's count, 0 for those never reached.
func (c *Checker) Coverage() map[string]int {
	out := make(map[string]int, len(Properties))
	for i, p := range Properties {
		out[p] = c.coverage[i]
	}
	return out
}

func (c *Checker) violate(name, format string, a ...any) {
	c.found = append(c.found, Violation{Invariant: name, Msg: fmt.Sprintf(format, a...)})
	c.total++
}

// state is the checker's state of store st (of the store a Wrapper wraps).
func (c *Checker) state(st exstore.Store) *storeState {
	st = unwrapped(st)
	s := c.stores[st]
	if s == nil {
		s = &storeState{rev: map[uint64]uint64{}}
		c.stores[st] = s
	}
	return s
}

// chunkSectors is s's chunk size, never 0 (for messages and arithmetic).
func chunkSectors(s *snapshot.Snapshot) uint64 { return max(uint64(s.ChunkSize()), 1) }

// where names snapshot s's origin chunk and its first sector.
func where(s *snapshot.Snapshot, old uint64) string {
	return fmt.Sprintf("origin chunk %d (origin sector %d)", old, old*chunkSectors(s))
}

// cowAt names COW chunk n of s and its first sector on the COW device.
func cowAt(s *snapshot.Snapshot, n uint64) string {
	return fmt.Sprintf("COW chunk %d (sector %d of %s)", n, n*chunkSectors(s), s.COW().Name())
}

// Loading implements snapshot.Probe.
func (c *Checker) Loading(s *snapshot.Snapshot, old, new uint64) {
	st := c.state(s.Store())
	st.rev[new] = old
	if !st.hasFloor || new > st.floor {
		st.floor, st.hasFloor = new, true
	}
}

// Loaded implements snapshot.Probe: the table loaded is the one on the
// COW, read back and compared entry by entry (disk-table at the load,
// O(what the load read)); the on-disk position is where verification
// starts; any surplus of on-disk entries over the table (an image mapping
// an origin chunk twice, where the later entry wins) is remembered.
func (c *Checker) Loaded(s *snapshot.Snapshot) {
	l, ok := exstore.LayoutOf(s.Store())
	if !ok || !l.Persistent || !s.Valid() || l.PerArea == 0 {
		return
	}
	st := c.state(s.Store())
	st.areaWrites = l.AreaWrites
	st.checkedArea, st.checkedEntries = l.Area, l.Committed
	disk := int(l.Area*uint64(l.PerArea) + uint64(l.Committed))
	st.dup = disk - s.Exceptions()
	st.lax = st.dup != 0
	if st.lax {
		return
	}
	cow := quiet{s.COW()}
	for k := uint64(0); k <= l.Area; k++ {
		n := l.PerArea
		if k == l.Area {
			n = l.Committed
		}
		entries, err := exstore.ReadArea(cow, l.ChunkSectors, l.PerArea, k, 0, n)
		if err != nil {
			return // the COW cannot be read without side effects
		}
		for _, x := range entries {
			if cur, ok := s.Lookup(x.Old); !ok || cur != x.New {
				mem := "no exception"
				if ok {
					mem = cowAt(s, cur)
				}
				c.violate(DiskTable, "snapshot %s: entry %d of area %d of %s (byte offset %d) maps %s to %s, but the table loaded from it has %s",
					s.Name(), x.Index, k, s.COW().Name(), x.Off, where(s, x.Old), cowAt(s, x.New), mem)
				return
			}
		}
	}
}

// Allocated implements snapshot.Probe: cow-alloc and injectivity of the
// chunk handed out.
func (c *Checker) Allocated(s *snapshot.Snapshot, old, new uint64) {
	st := c.state(s.Store())
	l, _ := exstore.LayoutOf(s.Store())
	switch what, meta := l.Metadata(new); {
	case new >= l.COWChunks:
		c.violate(COWAlloc, "snapshot %s: %s allocated for %s is beyond the COW's end (%d chunks of %d sectors)",
			s.Name(), cowAt(s, new), where(s, old), l.COWChunks, l.ChunkSectors)
	case meta:
		c.violate(COWAlloc, "snapshot %s: %s allocated for %s is %s", s.Name(), cowAt(s, new), where(s, old), what)
	case st.hasFloor && new <= st.floor:
		c.violate(COWAlloc, "snapshot %s: %s allocated for %s is not above COW chunk %d, allocated or loaded before (allocation must increase)",
			s.Name(), cowAt(s, new), where(s, old), st.floor)
	}
	if o, ok := st.rev[new]; ok {
		c.violate(ExceptionTableInjective, "snapshot %s: %s allocated for %s already holds %s",
			s.Name(), cowAt(s, new), where(s, old), where(s, o))
	}
	if !st.hasFloor || new > st.floor {
		st.floor, st.hasFloor = new, true
	}
}

// Full implements snapshot.Probe: coverage of a full COW.
func (c *Checker) Full(s *snapshot.Snapshot, old uint64, overflowed bool) {
	if overflowed {
		for _, x := range snapshot.Snapshots(c.ctl, s.OriginDev()) {
			if x.MergeRunning() {
				c.cover(OverflowDuringMerge)
				break
			}
		}
	}
	l, ok := exstore.LayoutOf(s.Store())
	if ok && l.Persistent && l.PerArea != 0 {
		e := uint64(l.PerArea)
		if first := l.NextFree; first >= e+3 && (first-2)%(e+1) == 0 {
			c.cover(COWFullAtAreaBoundary)
		}
	}
}

// Committing implements snapshot.Probe: commit-after-copy, and strays.
func (c *Checker) Committing(s *snapshot.Snapshot, store exstore.Store, old, new uint64, copied bool) {
	if !copied {
		c.violate(CommitAfterCopy, "snapshot %s: the exception of %s to %s is committed before its copy finished",
			s.Name(), where(s, old), cowAt(s, new))
	}
	if unwrapped(store) != unwrapped(s.Store()) {
		st := c.state(store)
		if st.stray == nil {
			st.stray = map[uint64]uint64{}
		}
		st.stray[old] = new
	}
}

// Committed implements snapshot.Probe: a commit point of a persistent
// store is checked against the table of the snapshot holding it.
func (c *Checker) Committed(s *snapshot.Snapshot, store exstore.Store, old, new uint64) {
	if unwrapped(store) != unwrapped(s.Store()) {
		return // a stray: the store's holder checks it at its next commit
	}
	c.checkDisk(s)
}

// Completing implements snapshot.Probe: injectivity of the table.
func (c *Checker) Completing(s *snapshot.Snapshot, old, new uint64) {
	st := c.state(s.Store())
	if cur, ok := s.Lookup(old); ok {
		c.violate(ExceptionTableInjective, "snapshot %s: %s already maps to %s, and gets a second exception to %s",
			s.Name(), where(s, old), cowAt(s, cur), cowAt(s, new))
	}
	if o, ok := st.rev[new]; ok && o != old {
		c.violate(ExceptionTableInjective, "snapshot %s: %s and %s both map to %s",
			s.Name(), where(s, o), where(s, old), cowAt(s, new))
	}
	st.rev[new] = old
}

// MergeCommitted implements snapshot.Probe.
func (c *Checker) MergeCommitted(s *snapshot.Snapshot, old, new uint64, n int) {
	st := c.state(s.Store())
	for i := uint64(0); i < uint64(n); i++ {
		if o, ok := st.rev[new+i]; ok && o != old+i {
			c.violate(ExceptionTableInjective, "snapshot %s: the merge of %s from %s removed the exception of %s",
				s.Name(), where(s, old+i), cowAt(s, new+i), where(s, o))
		}
		delete(st.rev, new+i)
		if st.stray != nil {
			if _, ok := st.stray[old+i]; ok {
				delete(st.stray, old+i)
				st.dup++ // counted on the COW until now, in no table
			}
		}
	}
	if l, ok := exstore.LayoutOf(s.Store()); ok && l.NextFree > 0 {
		st.floor, st.hasFloor = l.NextFree-1, true
	}
	c.checkDisk(s)
}

// OriginWrite implements snapshot.Probe: copy-before-write.
func (c *Checker) OriginWrite(dev dm.Node, sector, n, step uint64) {
	for _, s := range snapshot.Snapshots(c.ctl, dev) {
		if s.IsMerge() || !s.Valid() || !s.Active() || s.ChunkSize() == 0 {
			continue
		}
		cs := uint64(s.ChunkSize())
		size := s.Target().Table.Size()
		for sec := sector; sec < sector+max(n, 1); sec += step {
			if sec >= size {
				break
			}
			chunk := sec / cs
			if _, ok := s.Lookup(chunk); !ok {
				c.violate(CopyBeforeWrite, "a write of %s at sector %d reaches it before chunk %d (origin sector %d) is copied into snapshot %s",
					dev.Name(), sec, chunk, chunk*cs, s.Name())
			}
			if step == 0 {
				break
			}
		}
	}
}

// Invalidated implements snapshot.Probe: the header must say invalid.
func (c *Checker) Invalidated(s *snapshot.Snapshot) {
	l, ok := exstore.LayoutOf(s.Store())
	if !ok || !l.Persistent || l.HeaderFailed || l.ChunkSectors == 0 {
		return
	}
	h, err := exstore.ReadHeader(quiet{s.COW()})
	if err != nil {
		return // the COW cannot be read without side effects
	}
	if h.Magic == exstore.Magic && h.Valid != 0 {
		c.violate(DiskTable, "snapshot %s is invalid, but the header of %s (chunk 0, sector 0) still says valid=%d",
			s.Name(), s.COW().Name(), h.Valid)
	}
}

// HandedOver implements snapshot.Probe: coverage.
func (c *Checker) HandedOver(src, dst *snapshot.Snapshot, srcValid bool, srcPending int) {
	if srcPending > 0 {
		c.cover(HandoverCopiesInFlight)
	}
	if !srcValid {
		c.cover(InvalidSourceHandover)
	}
}

// Refused implements snapshot.Probe: coverage.
func (c *Checker) Refused(s *snapshot.Snapshot) { c.cover(RefusedThirdTable) }

// Suspended implements snapshot.Probe: coverage.
func (c *Checker) Suspended(dev dm.Node, pending int) {
	if pending > 0 {
		c.cover(SuspendPendingExceptions)
	}
}

// Destroyed implements snapshot.Probe: the store s holds goes with it.
func (c *Checker) Destroyed(s *snapshot.Snapshot) { delete(c.stores, unwrapped(s.Store())) }

// unwrapped is the store under any Wrappers.
func unwrapped(st exstore.Store) exstore.Store {
	for i := 0; i < 16; i++ {
		w, ok := st.(exstore.Wrapper)
		if !ok {
			break
		}
		st = w.Unwrap()
	}
	return st
}

// checkDisk runs disk-table at a commit point of s's store, if its last
// operation wrote an area.
func (c *Checker) checkDisk(s *snapshot.Snapshot) {
	l, ok := exstore.LayoutOf(s.Store())
	if !ok || !l.Persistent || l.PerArea == 0 {
		return
	}
	st := c.state(s.Store())
	if l.AreaWrites == st.areaWrites {
		return
	}
	st.areaWrites = l.AreaWrites
	if !l.Valid || !s.Valid() {
		return
	}
	cow := quiet{s.COW()}
	e := l.PerArea
	k, n := l.LastArea, l.LastEntries
	from := uint32(0)
	if k == st.checkedArea {
		from = min(st.checkedEntries, n)
	}
	to := min(n+1, e) // the entries written, and the one that ends the table
	entries, err := exstore.ReadArea(cow, l.ChunkSectors, e, k, from, to)
	if err != nil {
		return // the COW cannot be read without side effects
	}
	for _, x := range entries {
		if x.Index == n {
			if x.New != 0 {
				c.violate(DiskTable, "snapshot %s: entry %d of area %d of %s (byte offset %d) should end the table after %d entries, but holds %s for %s",
					s.Name(), x.Index, k, s.COW().Name(), x.Off, n, cowAt(s, x.New), where(s, x.Old))
			}
			continue
		}
		if x.New == 0 {
			c.violate(DiskTable, "snapshot %s: entry %d of area %d of %s (byte offset %d) is empty, but the store committed %d entries there",
				s.Name(), x.Index, k, s.COW().Name(), x.Off, n)
			continue
		}
		if st.lax {
			continue
		}
		if cur, ok := s.Lookup(x.Old); ok && cur == x.New {
			continue
		}
		if nw, ok := st.stray[x.Old]; ok && nw == x.New {
			continue
		}
		mem := "no exception"
		if cur, ok := s.Lookup(x.Old); ok {
			mem = cowAt(s, cur)
		}
		c.violate(DiskTable, "snapshot %s: entry %d of area %d of %s (byte offset %d) maps %s to %s; the in-memory table has %s",
			s.Name(), x.Index, k, s.COW().Name(), x.Off, where(s, x.Old), cowAt(s, x.New), mem)
	}
	st.checkedArea, st.checkedEntries = k, n
	if n == e {
		next, err := exstore.ReadArea(cow, l.ChunkSectors, e, k+1, 0, 1)
		if err == nil && next[0].New != 0 {
			c.violate(DiskTable, "snapshot %s: area %d is full, but area %d of %s (COW chunk %d, byte offset %d) was not zeroed: its entry 0 maps %s to %s",
				s.Name(), k, k+1, s.COW().Name(), l.AreaChunk(k+1), next[0].Off, where(s, next[0].Old), cowAt(s, next[0].New))
		}
		st.checkedArea, st.checkedEntries = k+1, 0
	}
	disk := int(k*uint64(e) + uint64(n))
	if mem := s.Exceptions() + len(st.stray) + st.dup; disk != mem {
		c.violate(DiskTable, "snapshot %s: %s holds %d exceptions (area %d, COW chunk %d, holds %d), the in-memory table %d",
			s.Name(), s.COW().Name(), disk, k, l.AreaChunk(k), n, mem-len(st.stray)-st.dup)
	}
}

// Waiting is an I/O a user submitted that has not completed, for
// CheckLiveness.
type Waiting struct {
	What   string  // how the session names it ("write snap 4096 8192 (line 12, async w1)")
	Node   dm.Node // the device it was submitted to
	Sector uint64  // its first sector on Node
}

// CheckLiveness checks liveness; the caller calls it only when the world
// is quiescent (no event left to run) and no fault rule is active.
// waiting lists the user I/O not yet completed, in the caller's order.
func (c *Checker) CheckLiveness(waiting []Waiting) {
	for _, w := range waiting {
		if blocked(w.Node, 0) {
			continue
		}
		c.violate(Liveness, "%s: sector %d of %s never completed: nothing is left to run, no fault rule is active, and neither %s nor a device below it is suspended",
			w.What, w.Sector, w.Node.Name(), w.Node.Name())
	}
	for _, s := range snapshot.AllSnapshots(c.ctl) {
		if s.PendingExceptions() == 0 || blocked(s.COW(), 0) {
			continue
		}
		for _, p := range s.Pending() {
			c.violate(Liveness, "snapshot %s: the pending exception of %s to %s never completed (copy finished: %t): nothing is left to run and no fault rule is active",
				s.Name(), where(s, p.Old), cowAt(s, p.New), p.Copied)
		}
	}
}

// blocked reports whether I/O to n can wait on a suspended device: n or a
// device its live table maps to is suspended (or internally suspended).
func blocked(n dm.Node, depth int) bool {
	md, ok := n.(*dm.MappedDevice)
	if !ok || depth > dm.MaxStack {
		return false
	}
	if md.IsSuspended() {
		return true
	}
	if t := md.Live(); t != nil {
		for _, ti := range t.Targets {
			for _, d := range ti.Deps {
				if blocked(d, depth+1) {
					return true
				}
			}
		}
	}
	return false
}
