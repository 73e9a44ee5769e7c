// Package oracle is snaplab's reference model of what every read must
// return. It is independent of the simulator's exception tables: it knows
// only what was written where, and the rules
//
//   - a disk holds the latest acknowledged write of each sector;
//   - the origin is what its device holds;
//   - a snapshot is the origin as it was at activation plus its own writes;
//   - after a handover the destination serves exactly the source's view and
//     the source fails every I/O with EIO; an invalid snapshot fails every
//     I/O with EIO.
//
// It follows the dm tables as they are (which target maps which sector) and
// learns of activations, handovers and invalidations through snapshot
// hooks. A write whose content is known updates the model: a scenario's
// pattern, or the bytes of a write from outside (an NBD client, a guest),
// which are a scenario pattern at its offset, zeros, or else arbitrary
// data kept by each sector's 64-bit hash (hashes.go). Patterns depend on
// the offset they are written at, so the model holds a pattern as written
// through the writer's device, and a read through another device (a linear
// target with an offset, a snapshot of an origin on one) is checked
// against what was written. Sectors whose content cannot be known (an
// origin written while its snapshot was detached, a failed write, a
// discard from outside, arbitrary data past HashBudget) accept anything.
//
// Memory and time grow with the number of runs of sectors holding the same
// value, not with the number of sectors: what a disk, a snapshot's own
// writes and its frozen view of the origin hold are step functions over
// sectors (runs.go), and a write or read is followed through the tables a
// target at a time. Random 4 KiB writes of patterns or of unknown content
// cost about 25 bytes each; of arbitrary data about 115 (its hashes, 8
// bytes a sector); a discard of a whole 1 TiB device costs nothing.
package oracle

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"syscall"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/pattern"
	"snaplab/sim/snapshot"
)

const (
	unknown = "?"
	eio     = "EIO"
)

// Values are interned: a runs map holds the index of a val in Oracle.vals;
// 0 is "no value". hashVal is data written from outside that is no
// scenario pattern: each sector's content hash is kept beside the runs
// (hashes.go).
const (
	noVal uint32 = iota
	unknownVal
	eioVal
	zeroVal
	hashVal
	firstPattern // values from here on are patterns
)

// val is what a run of sectors holds: pattern name, positioned. Patterns
// depend on the offset they were written at (pattern.Fill), and a sector
// may be read through another device than the one it was written through
// (a linear target with an offset, a snapshot's view of a disk under a
// linear origin), so a run holds the pattern as written at sector s+delta
// of the writer, for each of its sectors s (in the coordinates of the disk
// or snapshot that holds it).
type val struct {
	name  string
	delta int64
}

// hashData names arbitrary data from outside in messages.
const hashData = "the data written from outside"

type view struct {
	origin  dm.Node
	cow     dm.Node
	frozen  runs // the origin's sectors as the snapshot saw them before they changed
	own     runs // the snapshot's own writes
	invalid bool
	anyBase bool // base unknown (a COW loaded with exceptions the oracle never saw)
	// uncertain: sectors the writes in flight when the view was invalidated
	// had frozen. Their copy-outs may or may not have reached the store
	// before it was dropped; if the drop could not rewrite the header, a
	// later activation of the COW finds them mapped or not, which the
	// model cannot tell (activated makes them unknown).
	uncertain [][2]int64
}

type instance struct {
	v    *view
	dead bool
}

// target is where a sector lives: a disk's sector (node) or a snapshot's
// own one (v); neither for sectors of no device (zero, error targets, no
// table).
type target struct {
	node dm.Node
	v    *view
}

// span is sectors [sec, sec+n) of a target that a write lands on, from
// sector src on of the device the write was submitted to.
type span struct {
	t           target
	sec, n, src int64
}

type write struct {
	spans []span
	froze []frozen // what the write froze in attached snapshots' views
	x     uint32   // what is written: unknownVal, zeroVal, hashVal or a pattern (delta 0)
	hs    []uint64 // hashVal: the hashes of the writer's sectors from first on
	first int64
	idx   int // in Oracle.inflight, -1 when done
}

// frozen is sectors [lo, hi) of view v frozen by an origin write.
type frozen struct {
	v      *view
	lo, hi int64
}

// seg is sectors [lo, hi) of the node being resolved: they live at target
// t from sector tsec on, and hold value x. For a pattern, sector lo holds
// the pattern as written at sector at; for hashVal, sector lo's hash is
// src's at sector at.
type seg struct {
	lo, hi int64
	t      target
	tsec   int64
	x      uint32
	at     int64
	src    *runs
}

// Oracle checks reads against the reference model.
type Oracle struct {
	ctl      *dm.Control
	disks    map[dm.Node]*runs // absent sectors hold zeros
	views    []*view
	inst     map[*snapshot.Snapshot]*instance
	inflight []*write
	vals     []val
	ids      map[val]uint32
	byKey    map[uint64]string // the scenario's patterns by pattern.Key (SetPatterns)
	hscratch []uint64
	// hashBlocks counts the blocks of hashes held (hashes.go), against
	// HashBudget.
	hashBlocks int64
	// HashBudget is how many sectors of arbitrary data from outside the
	// oracle keeps the hashes of (DefaultHashBudget); past it, such
	// writes leave their sectors unknown, counted in Unhashed.
	HashBudget int64
	// Unhashed counts sectors written from outside that were left unknown
	// for want of budget.
	Unhashed int64
	// perSector: some snapshot's origin is (or was) a dm device. A write
	// reaching a disk under it makes that snapshot's frozen view unknown
	// at the disk's sector numbers, which are not the snapshot's, so one
	// sector of a write can change what another finds: writes and merges
	// are then followed a sector at a time, in order, as the rules are
	// stated. With disks as origins every sector's effects stay at its own
	// sector number, and a target's sectors are followed at once.
	perSector bool
	segs      []seg // scratch for BeginRead and CheckRead
	// freezing is the user write being followed down the stack
	// (beginWriteOf), which notes the views it freezes.
	freezing *write
	// Checks counts sectors checked.
	Checks int
}

// DefaultHashBudget is Oracle.HashBudget as New sets it: 16 GiB of
// arbitrary data held at once (the simulator holds that data in memory
// itself), whose hashes cost the oracle about 10 bytes a sector: 320 MiB.
const DefaultHashBudget = 1 << 25

// New attaches an oracle to ctl (it installs the snapshot hooks).
func New(ctl *dm.Control) *Oracle {
	o := &Oracle{ctl: ctl, disks: map[dm.Node]*runs{}, inst: map[*snapshot.Snapshot]*instance{},
		vals: []val{{}, {name: unknown}, {name: eio}, {name: pattern.Zero}, {name: hashData}},
		ids:  map[val]uint32{}, HashBudget: DefaultHashBudget}
	snapshot.SetHooks(ctl, snapshot.Hooks{
		Activated:   o.activated,
		HandedOver:  o.handedOver,
		Invalidated: o.invalidated,
		Merged:      o.merged,
	})
	return o
}

// id interns pattern name as written delta sectors further than where it
// is held (the special names stand for their values, whatever delta).
func (o *Oracle) id(name string, delta int64) uint32 {
	switch name {
	case "", unknown:
		return unknownVal
	case eio:
		return eioVal
	case pattern.Zero:
		return zeroVal
	}
	k := val{name, delta}
	if x, ok := o.ids[k]; ok {
		return x
	}
	x := uint32(len(o.vals))
	o.vals = append(o.vals, k)
	o.ids[k] = x
	return x
}

// SetPatterns names the scenario's patterns: an outside write of one of
// them at its offset is known as that pattern (BeginWriteData).
func (o *Oracle) SetPatterns(names []string) {
	o.byKey = make(map[uint64]string, len(names))
	for _, n := range names {
		if n != pattern.Zero {
			o.byKey[pattern.Key(n)] = n
		}
	}
}

// HasPatterns reports whether SetPatterns was called.
func (o *Oracle) HasPatterns() bool { return o.byKey != nil }

// segOf is a seg of value x, held by r from sector stored on.
func (o *Oracle) segOf(lo, hi int64, t target, tsec int64, x uint32, r *runs, stored int64) seg {
	sg := seg{lo: lo, hi: hi, t: t, tsec: tsec, x: x}
	switch {
	case x == hashVal:
		sg.at, sg.src = stored, r
	case x >= firstPattern:
		sg.at = stored + o.vals[x].delta
	}
	return sg
}

// scratch returns a buffer of n hashes, reused.
func (o *Oracle) scratch(n int64) []uint64 {
	if int64(cap(o.hscratch)) < n {
		o.hscratch = make([]uint64, n)
	}
	return o.hscratch[:n]
}

// putHashes gives r's sectors [lo, lo+len(hs)) the data whose hashes are
// hs, or unknown past the budget.
func (o *Oracle) putHashes(r *runs, lo int64, hs []uint64) {
	n := int64(len(hs))
	if o.hashBlocks+n/hashBlock+2 > o.HashBudget/hashBlock {
		o.Unhashed += n
		r.set(lo, lo+n, unknownVal)
		return
	}
	if r.h == nil {
		r.h = &hashes{used: &o.hashBlocks}
	}
	r.set(lo, lo+n, hashVal)
	r.h.put(lo, hs)
}

// copyIn gives r's sectors [lo, hi) the content of sg's sectors from
// sg.lo on.
func (o *Oracle) copyIn(r *runs, lo, hi int64, sg seg) {
	switch {
	case sg.x == hashVal:
		hs := o.scratch(hi - lo)
		sg.src.h.get(hs, sg.at)
		o.putHashes(r, lo, hs)
	case sg.x >= firstPattern:
		r.set(lo, hi, o.id(o.vals[sg.x].name, sg.at-lo))
	default:
		r.set(lo, hi, sg.x)
	}
}

func (o *Oracle) viewFor(cow dm.Node) *view {
	for _, v := range o.views {
		if v.cow == cow {
			return v
		}
	}
	return nil
}

func (o *Oracle) activated(s *snapshot.Snapshot, fresh bool) {
	if _, ok := o.inst[s]; ok {
		return
	}
	v := o.viewFor(s.COW())
	if fresh || v == nil || v.origin != s.OriginDev() {
		nv := &view{origin: s.OriginDev(), cow: s.COW(), anyBase: !fresh}
		if _, ok := nv.origin.(*dm.MappedDevice); ok {
			o.perSector = true
		}
		if v != nil {
			for i, x := range o.views {
				if x == v {
					o.views[i] = nv
				}
			}
		} else {
			o.views = append(o.views, nv)
		}
		v = nv
	}
	switch {
	case !s.Valid():
		v.invalid = true
	case v.invalid:
		// A view invalidated in memory whose header never said so (the
		// header write failed) comes back valid, with the exceptions
		// committed before the drop (docs/dm-snapshot.md §5.3): the view
		// as it was then. Only the sectors the writes then in flight had
		// frozen are unknown: their copy-outs may or may not have been
		// committed.
		v.invalid = false
		for _, r := range v.uncertain {
			v.frozen.set(r[0], r[1], unknownVal)
		}
		v.uncertain = nil
	}
	o.inst[s] = &instance{v: v}
	o.cowUnknown(s.COW())
}

// cowUnknown makes the disk sectors under a COW device unknown. The
// exception store writes them itself (its header, metadata and copies),
// which is the simulator's business, not the model's; and the same sectors
// can be read later through another mapping (LVM, finishing a merge,
// reloads the snapshot's volume as a linear device over its old COW).
func (o *Oracle) cowUnknown(cow dm.Node) {
	o.diskRanges(cow, 0, cow.Size()/512, func(disk dm.Node, a, b int64) {
		r := o.disks[disk]
		if r == nil {
			r = &runs{}
			o.disks[disk] = r
		}
		r.set(a, b, unknownVal)
	})
}

// diskRanges calls fn for the disk sectors under sectors [lo, hi) of n,
// through linear targets (other targets do not map a COW onto disks).
func (o *Oracle) diskRanges(n dm.Node, lo, hi int64, fn func(disk dm.Node, a, b int64)) {
	md, ok := n.(*dm.MappedDevice)
	if !ok {
		if _, isDisk := n.(*dm.Disk); isDisk {
			fn(n, lo, hi)
		}
		return
	}
	t := md.Live()
	if t == nil {
		return
	}
	for _, ti := range t.Targets {
		a, b := max(lo, int64(ti.Begin)), min(hi, int64(ti.Begin+ti.Len))
		if a >= b || ti.Type.Name != "linear" || len(ti.Deps) == 0 {
			continue
		}
		start, _ := strconv.ParseUint(ti.Args[1], 10, 64)
		d := int64(start) - int64(ti.Begin)
		o.diskRanges(ti.Deps[0], a+d, b+d, fn)
	}
}

func (o *Oracle) handedOver(src, dst *snapshot.Snapshot) {
	si := o.inst[src]
	if si == nil {
		return
	}
	o.inst[dst] = &instance{v: si.v}
	si.dead = true
}

func (o *Oracle) invalidated(s *snapshot.Snapshot, why string) {
	if in := o.inst[s]; in != nil {
		if v := in.v; v != nil && !v.invalid {
			v.invalid = true
			for _, w := range o.inflight {
				for _, f := range w.froze {
					if f.v == v {
						v.uncertain = append(v.uncertain, [2]int64{f.lo, f.hi})
					}
				}
			}
		}
		return
	}
	// Not active yet (a cancelled handover's destination): dead from birth.
	o.inst[s] = &instance{dead: true}
}

// resolve appends to dst where sectors [lo, hi) of node n live and what
// they hold, in order.
func (o *Oracle) resolve(dst []seg, n dm.Node, lo, hi int64) []seg {
	if lo >= hi {
		return dst
	}
	if o.isCOW(n) {
		// Exception stores write COW devices themselves: their content is
		// the simulator's business, not the model's.
		return append(dst, seg{lo: lo, hi: hi, t: target{node: n}, tsec: lo, x: unknownVal})
	}
	md, ok := n.(*dm.MappedDevice)
	if !ok {
		d := o.disks[n]
		if d == nil {
			return append(dst, seg{lo: lo, hi: hi, t: target{node: n}, tsec: lo, x: zeroVal})
		}
		d.each(lo, hi, func(a, b int64, x uint32) {
			if x == noVal {
				x = zeroVal
			}
			dst = append(dst, o.segOf(a, b, target{node: n}, a, x, d, a))
		})
		return dst
	}
	t := md.Live()
	if t == nil {
		return append(dst, seg{lo: lo, hi: hi, x: eioVal})
	}
	for lo < hi {
		ti := t.TargetAt(uint64(lo))
		if ti == nil {
			end := nextTarget(t, lo, hi)
			dst = append(dst, seg{lo: lo, hi: end, x: eioVal})
			lo = end
			continue
		}
		end := min(hi, int64(ti.Begin+ti.Len))
		dst = o.resolveTarget(dst, ti, lo, end)
		lo = end
	}
	return dst
}

// nextTarget returns the first sector in (lo, hi) that a target of t
// maps, or hi.
func nextTarget(t *dm.Table, lo, hi int64) int64 {
	next := hi
	for _, ti := range t.Targets {
		if b := int64(ti.Begin); b > lo && b < next {
			next = b
		}
	}
	return next
}

// resolveTarget is resolve for sectors [lo, hi) of the device, all mapped
// by ti.
func (o *Oracle) resolveTarget(dst []seg, ti *dm.TargetInstance, lo, hi int64) []seg {
	switch ti.Type.Name {
	case "linear":
		start, _ := strconv.ParseUint(ti.Args[1], 10, 64)
		d := int64(start) - int64(ti.Begin) // the dependency's sector minus the device's
		mark := len(dst)
		dst = o.resolve(dst, ti.Deps[0], lo+d, hi+d)
		for i := mark; i < len(dst); i++ {
			dst[i].lo -= d
			dst[i].hi -= d
		}
		return dst
	case "snapshot-origin":
		return o.resolve(dst, ti.Deps[0], lo, hi)
	case "zero":
		return append(dst, seg{lo: lo, hi: hi, x: zeroVal})
	case "snapshot", "snapshot-merge":
		s := ti.Target.(*snapshot.Snapshot)
		in := o.inst[s]
		if s.IsMerge() && (in == nil || in.v == nil || in.v.invalid) {
			// Full merging snapshots are redirected to the origin.
			return o.resolve(dst, s.OriginDev(), lo, hi)
		}
		if in == nil || in.dead || in.v == nil || in.v.invalid {
			return append(dst, seg{lo: lo, hi: hi, x: eioVal})
		}
		v := in.v
		vt := target{v: v}
		// The snapshot's own sectors, else its frozen ones, else the
		// origin's (or unknown); all of them live in the snapshot.
		each2(&v.own, &v.frozen, lo, hi, func(a, b int64, own, fr uint32) {
			switch {
			case own != noVal:
				dst = append(dst, o.segOf(a, b, vt, a, own, &v.own, a))
			case fr != noVal:
				dst = append(dst, o.segOf(a, b, vt, a, fr, &v.frozen, a))
			case v.anyBase:
				dst = append(dst, seg{lo: a, hi: b, t: vt, tsec: a, x: unknownVal})
			default:
				mark := len(dst)
				dst = o.resolve(dst, v.origin, a, b)
				for i := mark; i < len(dst); i++ {
					dst[i].t, dst[i].tsec = vt, dst[i].lo
				}
			}
		})
		return dst
	}
	return append(dst, seg{lo: lo, hi: hi, x: eioVal})
}

// each2 calls fn for pieces of [lo, hi) in order, each holding one value
// in a and one in b.
func each2(a, b *runs, lo, hi int64, fn func(lo, hi int64, va, vb uint32)) {
	if lo >= hi {
		return
	}
	pa, pb := a.after(lo), b.after(lo)
	va, vb := a.before(pa), b.before(pb)
	for lo < hi {
		ka, kb := a.key(pa), b.key(pb)
		k := min(ka, kb, hi)
		fn(lo, k, va, vb)
		if k == ka {
			va = a.leaves[pa.l].vals[pa.i]
			pa = a.next(pa)
		}
		if k == kb {
			vb = b.leaves[pb.l].vals[pb.i]
			pb = b.next(pb)
		}
		lo = k
	}
}

// holes appends to dst the pieces of [lo, hi) where v has neither its own
// nor a frozen value.
func holes(dst [][2]int64, v *view, lo, hi int64) [][2]int64 {
	each2(&v.own, &v.frozen, lo, hi, func(a, b int64, own, fr uint32) {
		if own != noVal || fr != noVal {
			return
		}
		if k := len(dst) - 1; k >= 0 && dst[k][1] == a {
			dst[k][1] = b
			return
		}
		dst = append(dst, [2]int64{a, b})
	})
	return dst
}

// isCOW reports whether n is, or was, the COW device of a snapshot.
func (o *Oracle) isCOW(n dm.Node) bool {
	for _, v := range o.views {
		if v.cow == n {
			return true
		}
	}
	for _, md := range o.ctl.Devices() {
		for _, t := range []*dm.Table{md.Live(), md.Inactive()} {
			if t == nil {
				continue
			}
			for _, ti := range t.Targets {
				if s, ok := ti.Target.(*snapshot.Snapshot); ok && s.COW() == n {
					return true
				}
			}
		}
	}
	return false
}

// attachedSnaps calls fn for each live, active, valid snapshot on origin
// node, with its view.
func (o *Oracle) attachedSnaps(origin dm.Node, fn func(*snapshot.Snapshot, *view)) {
	for _, md := range o.ctl.Devices() {
		t := md.Live()
		if t == nil {
			continue
		}
		for _, ti := range t.Targets {
			s, ok := ti.Target.(*snapshot.Snapshot)
			if !ok || s.IsMerge() || s.OriginDev() != origin || !s.Active() || !s.Valid() {
				continue
			}
			if in := o.inst[s]; in != nil && !in.dead && in.v != nil {
				fn(s, in.v)
			}
		}
	}
}

// appendSpan appends sp to dst, extending the last span if sp continues it.
func appendSpan(dst []span, sp span) []span {
	if sp.n <= 0 {
		return dst
	}
	if k := len(dst) - 1; k >= 0 && dst[k].t == sp.t && dst[k].sec+dst[k].n == sp.sec && dst[k].src+dst[k].n == sp.src {
		dst[k].n += sp.n
		return dst
	}
	return append(dst, sp)
}

// perSectorStart, as a write's first sector, says that every sector
// starts a write of its own (a copy-out: the origin write of one sector).
const perSectorStart = -1

// beginWrite walks sectors [lo, hi) of a write down the stack from node n,
// and appends to dst where they land. wlo is the write's first sector in
// n's coordinates (or perSectorStart), src the sector of the device the
// write was submitted to that lo is. Origin writes freeze the attached
// snapshots' view of the sectors before they change.
//
// A sector's effects (frozen values, in its own coordinates) never reach
// another sector of the same write when every snapshot's origin is a disk
// (else the caller goes a sector at a time: Oracle.perSector), so a target
// is followed for all its sectors at once: one snapshot's view after
// another, then the disk.
func (o *Oracle) beginWrite(dst []span, n dm.Node, lo, hi, wlo, src int64) []span {
	md, ok := n.(*dm.MappedDevice)
	if !ok {
		// Disk sectors change: attached views see them through COW (already
		// frozen when the write came through snapshot-origin); any other
		// view of this disk can no longer know them.
		for _, v := range o.views {
			if v.origin == n || o.underlies(n, v.origin) {
				o.freezeUnknown(v, lo, hi)
			}
		}
		return appendSpan(dst, span{t: target{node: n}, sec: lo, n: hi - lo, src: src})
	}
	t := md.Live()
	if t == nil {
		return dst
	}
	for lo0 := lo; lo < hi; {
		ti := t.TargetAt(uint64(lo))
		if ti == nil {
			lo = nextTarget(t, lo, hi)
			continue
		}
		end := min(hi, int64(ti.Begin+ti.Len))
		dst = o.beginWriteTarget(dst, ti, lo, end, wlo, src+lo-lo0)
		lo = end
	}
	return dst
}

// freezeUnknown makes v's view of the sectors in [lo, hi) it holds
// nothing of unknown.
func (o *Oracle) freezeUnknown(v *view, lo, hi int64) {
	var buf [8][2]int64
	for _, h := range holes(buf[:0], v, lo, hi) {
		v.frozen.set(h[0], h[1], unknownVal)
	}
}

// beginWriteTarget is beginWrite for sectors [lo, hi), all mapped by ti.
func (o *Oracle) beginWriteTarget(dst []span, ti *dm.TargetInstance, lo, hi, wlo, src int64) []span {
	begin := int64(ti.Begin)
	switch ti.Type.Name {
	case "linear":
		start, _ := strconv.ParseUint(ti.Args[1], 10, 64)
		d := int64(start) - begin
		sub := int64(perSectorStart)
		if wlo != perSectorStart {
			sub = int64(start) + max(wlo, begin) - begin
		}
		return o.beginWrite(dst, ti.Deps[0], lo+d, hi+d, sub, src)
	case "snapshot-origin":
		// The dm core splits the write at the target's boundaries and its
		// max_io_len (the origin's split boundary as of its last resume);
		// each piece copies only the chunk of its first sector.
		p := split{first: perSectorStart}
		if wlo != perSectorStart {
			p.first = max(wlo, begin)
			p.begin = begin
			if m, ok := ti.Target.(dm.MaxIOer); ok {
				p.size = int64(m.MaxIO(ti))
			}
		}
		return o.originWrite(dst, ti.Deps[0], lo, hi, p, src)
	case "snapshot":
		s := ti.Target.(*snapshot.Snapshot)
		if in := o.inst[s]; in != nil && in.v != nil && !in.dead {
			return appendSpan(dst, span{t: target{v: in.v}, sec: lo, n: hi - lo, src: src})
		}
	case "snapshot-merge":
		s := ti.Target.(*snapshot.Snapshot)
		in := o.inst[s]
		if in == nil || in.v == nil || in.v.invalid {
			return o.originWrite(dst, s.OriginDev(), lo, hi, split{first: perSectorStart}, src)
		}
		// Sectors the merging snapshot still holds are written there; the
		// others go to the origin.
		type piece struct {
			lo, hi int64
			held   bool
		}
		var buf [8]piece
		pieces := buf[:0]
		each2(&in.v.own, &in.v.frozen, lo, hi, func(a, b int64, own, fr uint32) {
			held := own != noVal || fr != noVal
			if k := len(pieces) - 1; k >= 0 && pieces[k].held == held {
				pieces[k].hi = b
				return
			}
			pieces = append(pieces, piece{a, b, held})
		})
		for _, p := range pieces {
			if p.held {
				dst = appendSpan(dst, span{t: target{v: in.v}, sec: p.lo, n: p.hi - p.lo, src: src + p.lo - lo})
			} else {
				dst = o.originWrite(dst, s.OriginDev(), p.lo, p.hi, split{first: perSectorStart}, src+p.lo-lo)
			}
		}
	}
	return dst
}

// split says how a write to a snapshot-origin is split: the dm core
// splits it at the target's boundaries and at multiples of its max_io_len
// (size, from the target's begin; 0: no limit), and each piece copies only
// the chunk of its first sector. first is the write's first sector on the
// target, or perSectorStart: every sector is a piece of its own (a
// copy-out, a merge), whose chunk is always copied.
type split struct {
	first, begin, size int64
}

// originWrite freezes the attached snapshots' view of sectors [lo, hi)
// of origin before they change, and appends where the write lands. A
// snapshot copies only the chunk holding the first sector of each write
// piece (p), so its other sectors of the piece cannot be known for that
// snapshot. src is the writer's sector that lo is.
func (o *Oracle) originWrite(dst []span, origin dm.Node, lo, hi int64, p split, src int64) []span {
	o.attachedSnaps(origin, func(s *snapshot.Snapshot, v *view) {
		o.freezeOriginWrite(v, int64(s.ChunkSize()), origin, lo, hi, p)
	})
	return o.beginWrite(dst, origin, lo, hi, perSectorStart, src)
}

// freezeOriginWrite freezes v's view of the sectors of [lo, hi) it holds
// nothing of: the origin's content where the snapshot (chunks of cs
// sectors) copies them, unknown elsewhere.
func (o *Oracle) freezeOriginWrite(v *view, cs int64, origin dm.Node, lo, hi int64, p split) {
	type part struct {
		lo, hi int64
		copied bool
	}
	var pbuf [8]part
	parts := pbuf[:0]
	add := func(a, b int64, copied bool) {
		if a >= b {
			return
		}
		if k := len(parts) - 1; k >= 0 && parts[k].hi == a && parts[k].copied == copied {
			parts[k].hi = b
			return
		}
		parts = append(parts, part{a, b, copied})
	}
	var hbuf [8][2]int64
	for _, h := range holes(hbuf[:0], v, lo, hi) {
		if p.first == perSectorStart || cs <= 0 {
			add(h[0], h[1], true)
			continue
		}
		for x := h[0]; x < h[1]; {
			end, first := h[1], p.first
			if p.size > 0 {
				blk := p.begin + (x-p.begin)/p.size*p.size
				end = min(end, blk+p.size)
				first = max(first, blk)
			}
			c0 := first / cs * cs
			c1 := c0 + cs
			add(x, min(end, c0), false)
			add(max(x, c0), min(end, c1), true)
			add(max(x, c1), end, false)
			x = end
		}
	}
	for _, pt := range parts {
		if w := o.freezing; w != nil {
			if k := len(w.froze) - 1; k >= 0 && w.froze[k].v == v && w.froze[k].hi == pt.lo {
				w.froze[k].hi = pt.hi
			} else {
				w.froze = append(w.froze, frozen{v, pt.lo, pt.hi})
			}
		}
		if pt.copied && !v.anyBase {
			o.freezeFromOrigin(v, origin, pt.lo, pt.hi)
		} else {
			// Not copied by this snapshot, or a view whose base is
			// unknown: the chunk may be mapped already, holding data the
			// model never saw.
			v.frozen.set(pt.lo, pt.hi, unknownVal)
		}
	}
}

// freezeFromOrigin sets v's frozen view of [lo, hi) to what origin holds.
func (o *Oracle) freezeFromOrigin(v *view, origin dm.Node, lo, hi int64) {
	var buf [8]seg
	for _, sg := range o.resolve(buf[:0], origin, lo, hi) {
		o.copyIn(&v.frozen, sg.lo, sg.hi, sg)
	}
}

// merged: a merging snapshot copied its view of [sector, sector+count) to
// the origin.
func (o *Oracle) merged(s *snapshot.Snapshot, sector, count uint64) {
	in := o.inst[s]
	if in == nil || in.v == nil {
		return
	}
	lo, hi := int64(sector), int64(sector+count)
	if o.perSector {
		for sec := lo; sec < hi; sec++ {
			o.mergeRange(s, in.v, sec, sec+1)
		}
		return
	}
	o.mergeRange(s, in.v, lo, hi)
}

func (o *Oracle) mergeRange(s *snapshot.Snapshot, v *view, lo, hi int64) {
	type piece struct {
		lo, hi int64
		x      uint32
		from   *runs
	}
	var buf [8]piece
	pieces := buf[:0]
	each2(&v.own, &v.frozen, lo, hi, func(a, b int64, own, fr uint32) {
		x, from := own, &v.own
		if x == noVal {
			x, from = fr, &v.frozen
		}
		if x == noVal && v.anyBase {
			// The merged chunks are mapped; what the COW holds for
			// sectors the model has nothing of is unknown to it.
			x = unknownVal
		}
		if x == noVal {
			return
		}
		if k := len(pieces) - 1; k >= 0 && pieces[k].hi == a && pieces[k].x == x && pieces[k].from == from {
			pieces[k].hi = b
			return
		}
		pieces = append(pieces, piece{a, b, x, from})
	})
	for _, p := range pieces {
		var sbuf [4]span
		for _, sp := range o.originWrite(sbuf[:0], s.OriginDev(), p.lo, p.hi, split{first: perSectorStart}, p.lo) {
			// sp.src is the view's sector.
			var hs []uint64
			at := sp.src
			switch {
			case p.x == hashVal:
				hs = make([]uint64, sp.n)
				p.from.h.get(hs, sp.src)
			case p.x >= firstPattern:
				at += o.vals[p.x].delta
			}
			o.set(sp, p.x, at, hs)
		}
		v.own.set(p.lo, p.hi, noVal)
		v.frozen.set(p.lo, p.hi, noVal)
	}
}

// underlies reports whether disk node n lies under node m (through linear
// targets), for views whose origin is a dm device.
func (o *Oracle) underlies(n, m dm.Node) bool {
	md, ok := m.(*dm.MappedDevice)
	if !ok || md.Live() == nil {
		return false
	}
	for _, ti := range md.Live().Targets {
		for _, d := range ti.Deps {
			if d == n || o.underlies(n, d) {
				return true
			}
		}
	}
	return false
}

// set gives the sectors of sp value x: for a pattern (whose name only
// counts), the pattern as written at sector at for sp's first sector; for
// hashVal, the data whose hashes are hs.
func (o *Oracle) set(sp span, x uint32, at int64, hs []uint64) {
	lo, hi := sp.sec, sp.sec+sp.n
	var r *runs
	switch {
	case sp.t.v != nil:
		r = &sp.t.v.own
	case sp.t.node != nil:
		if x == zeroVal {
			x = noVal // a disk's absent sectors hold zeros
		}
		r = o.disks[sp.t.node]
		if r == nil {
			if x == noVal {
				return
			}
			r = &runs{}
			o.disks[sp.t.node] = r
		}
	default:
		return
	}
	switch {
	case x == hashVal:
		o.putHashes(r, lo, hs)
	case x >= firstPattern:
		r.set(lo, hi, o.id(o.vals[x].name, at-lo))
	default:
		r.set(lo, hi, x)
	}
}

// Write is an in-flight write the oracle follows.
type Write struct{ w *write }

// BeginWrite is called when a user submits a write of pat to node at byte
// offset off, n bytes. Pattern "" is content the model cannot know (a
// discard from outside): its sectors become unknown.
func (o *Oracle) BeginWrite(node dm.Node, off, n int64, pat string) Write {
	return o.beginWriteOf(node, off, n, &write{x: o.id(pat, 0)})
}

// BeginWriteData is BeginWrite for a write whose bytes are known (a
// write from outside): zeros or a scenario pattern at its offset
// (SetPatterns) are known as such, other data by each sector's hash. A
// write of part sectors is unknown.
func (o *Oracle) BeginWriteData(node dm.Node, off int64, data []byte) Write {
	w := &write{x: unknownVal}
	if n := int64(len(data)); off%block.SectorSize == 0 && n%block.SectorSize == 0 && n > 0 {
		if name := o.patternOf(data, off); name != "" {
			w.x = o.id(name, 0)
		} else {
			w.x, w.first = hashVal, off/block.SectorSize
			w.hs = make([]uint64, n/block.SectorSize)
			for i := range w.hs {
				w.hs[i] = hashSector(data[int64(i)*block.SectorSize:][:block.SectorSize])
			}
		}
	}
	return o.beginWriteOf(node, off, int64(len(data)), w)
}

// patternOf returns the name of the scenario pattern (or zeros) that data
// is at device offset off (8-aligned), or "".
func (o *Oracle) patternOf(data []byte, off int64) string {
	word := binary.LittleEndian.Uint64(data)
	if word == 0 && pattern.Verify(data, pattern.Zero, off) == nil {
		return pattern.Zero
	}
	if name := o.byKey[pattern.Identify(word, off)]; name != "" && pattern.Verify(data, name, off) == nil {
		return name
	}
	return ""
}

func (o *Oracle) beginWriteOf(node dm.Node, off, n int64, w *write) Write {
	w.idx = len(o.inflight)
	o.freezing = w
	lo, hi := off/block.SectorSize, (off+n)/block.SectorSize
	if o.perSector {
		for sec := lo; sec < hi; sec++ {
			w.spans = o.beginWrite(w.spans, node, sec, sec+1, lo, sec)
		}
	} else {
		w.spans = o.beginWrite(w.spans, node, lo, hi, lo, lo)
	}
	o.freezing = nil
	o.inflight = append(o.inflight, w)
	return Write{w}
}

// EndWrite records the write's completion.
func (o *Oracle) EndWrite(w Write, err error) {
	if i := w.w.idx; i >= 0 {
		last := len(o.inflight) - 1
		o.inflight[i] = o.inflight[last]
		o.inflight[i].idx = i
		o.inflight[last] = nil
		o.inflight = o.inflight[:last]
		w.w.idx = -1
	}
	x := unknownVal
	if err == nil {
		x = w.w.x
	}
	for _, sp := range w.w.spans {
		var hs []uint64
		if x == hashVal {
			hs = w.w.hs[sp.src-w.w.first:][:sp.n]
		}
		o.set(sp, x, sp.src, hs)
	}
}

// Expectation is what a read may return, sampled when it starts.
type Expectation struct {
	node   dm.Node
	off    int64
	n      int64
	vals   []expRun // the sectors' values, in runs
	hs     []uint64 // the hashes of the sectors holding hashVal, in order
	beyond bool     // the read reached past the device's end when it started
}

// expRun is n sectors holding value x: for a pattern, its first sector
// holds the pattern as written at sector at; for hashVal, its hashes are
// Expectation.hs[at:][:n].
type expRun struct {
	n, at int64
	x     uint32
}

// pastEnd reports whether [off, off+n) reaches outside a device of size
// bytes: the block layer fails such a read whole with EINVAL.
func pastEnd(off, n, size int64) bool { return off < 0 || n < 0 || off > size || n > size-off }

// BeginRead samples the expectation of a read. A read past the device's
// end is expected to fail with EINVAL (nothing is sampled for it).
func (o *Oracle) BeginRead(node dm.Node, off, n int64) Expectation {
	e := Expectation{node: node, off: off, n: n}
	if pastEnd(off, n, node.Size()) {
		e.beyond = true
		return e
	}
	o.sample(&e)
	return e
}

// sample sets e's values to those of its sectors now.
func (o *Oracle) sample(e *Expectation) {
	e.vals, e.hs = nil, nil
	o.segs = o.resolve(o.segs[:0], e.node, e.off/block.SectorSize, (e.off+e.n)/block.SectorSize)
	for _, sg := range o.segs {
		n, at := sg.hi-sg.lo, sg.at
		switch {
		case sg.x == hashVal:
			at = int64(len(e.hs))
			e.hs = append(e.hs, make([]uint64, n)...)
			sg.src.h.get(e.hs[at:], sg.at)
		case sg.x < firstPattern:
			at = 0
		}
		if k := len(e.vals) - 1; k >= 0 && e.vals[k].x == sg.x && (sg.x < hashVal || e.vals[k].at+e.vals[k].n == at) {
			e.vals[k].n += n
			continue
		}
		e.vals = append(e.vals, expRun{n: n, at: at, x: sg.x})
	}
}

// CheckRead checks a completed read against the expectation sampled at its
// start and the model now (either is acceptable, as are writes in flight to
// the same place). faults says injected faults are active, so an EIO is
// acceptable. It returns nil or an error describing the first mismatch.
//
// A read that reaches past the device's end, when it started or now (a
// table reloaded under a queued read), must fail with EINVAL; nothing else
// is checked for it.
func (o *Oracle) CheckRead(e Expectation, data []byte, err error, faults bool) error {
	size := e.node.Size()
	beyondNow := pastEnd(e.off, e.n, size)
	if e.beyond || beyondNow {
		o.Checks++
		switch {
		case block.Errno(err) == syscall.EINVAL:
			return nil
		case err == nil && e.beyond && beyondNow:
			return fmt.Errorf("oracle: %s: read of %d bytes at offset %d succeeded past the end of the device (%d bytes): want EINVAL", e.node.Name(), e.n, e.off, size)
		case err == nil:
			// Inside the device at one end of the read's life: its data is
			// checked against the model now.
			e.beyond = false
			o.sample(&e)
		case block.Errno(err) == syscall.EIO && faults:
			return nil
		default:
			return fmt.Errorf("oracle: %s: read of %d bytes at offset %d failed with %s, but it reaches past the end of the device (%d bytes): want EINVAL", e.node.Name(), e.n, e.off, block.ErrnoName(block.Errno(err)), size)
		}
	}
	first := e.off / block.SectorSize
	var end int64
	for _, r := range e.vals {
		end += r.n
	}
	end += first
	o.segs = o.resolve(o.segs[:0], e.node, first, end)
	c := readCheck{o: o, e: &e, data: data, err: err, faults: faults, first: first}
	// Walk the expectation's runs and the model's segments together.
	ri, rsec := 0, first // expectation run ri starts at sector rsec
	for _, sg := range o.segs {
		for lo := sg.lo; lo < sg.hi; {
			for rsec+e.vals[ri].n <= lo {
				rsec += e.vals[ri].n
				ri++
			}
			hi := min(sg.hi, rsec+e.vals[ri].n)
			if err := c.piece(lo, hi, c.expCand(e.vals[ri], rsec, lo, hi), sg); err != nil {
				return err
			}
			lo = hi
		}
	}
	return nil
}

// cand is a candidate content of read sectors from base on: x, and for a
// pattern its name, sector base holding it as written at sector at; for
// hashVal, sector base+i's hash is hs[i].
type cand struct {
	x        uint32
	name     string
	base, at int64
	hs       []uint64
}

// shift is the offset in bytes of the pattern at read sector sec.
func (c *cand) patOff(sec int64) int64 { return (c.at + sec - c.base) * block.SectorSize }

// same reports whether c and d are the same content.
func (c *cand) same(d *cand) bool {
	switch {
	case c.x != d.x:
		return c.x >= firstPattern && d.x >= firstPattern && c.name == d.name && c.at-c.base == d.at-d.base
	case c.x == hashVal:
		return false
	}
	return true
}

// match reports whether g is the content of read sector sec.
func (c *cand) match(g []byte, sec int64) bool {
	switch {
	case c.x == hashVal:
		return hashSector(g) == c.hs[sec-c.base]
	case c.x == zeroVal:
		return pattern.Is(g, pattern.Zero, 0)
	case c.x >= firstPattern:
		return pattern.Is(g, c.name, c.patOff(sec))
	}
	return false
}

// matchAll reports whether p is the content of the read sectors from sec
// on.
func (c *cand) matchAll(p []byte, sec int64) bool {
	if c.x != hashVal {
		return c.match(p, sec)
	}
	for i := 0; i < len(p); i += block.SectorSize {
		if !c.match(p[i:i+block.SectorSize], sec+int64(i/block.SectorSize)) {
			return false
		}
	}
	return true
}

// describe names c's content at read sector sec for a message.
func (c *cand) describe(sec int64) string {
	switch {
	case c.x == hashVal:
		return hashData
	case c.x >= firstPattern && c.at != c.base:
		return fmt.Sprintf("%q as written at sector %d", c.name, c.at+sec-c.base)
	}
	return fmt.Sprintf("%q", c.name)
}

// readCheck is one CheckRead's state.
type readCheck struct {
	o      *Oracle
	e      *Expectation
	data   []byte
	err    error
	faults bool
	first  int64 // the read's first sector
}

// expCand is the candidate of expectation run r (from read sector rsec)
// for read sectors [lo, hi).
func (c *readCheck) expCand(r expRun, rsec, lo, hi int64) cand {
	k := cand{x: r.x, name: c.o.vals[r.x].name, base: lo}
	switch {
	case r.x == hashVal:
		k.hs = c.e.hs[r.at+lo-rsec:][:hi-lo]
	case r.x >= firstPattern:
		k.at = r.at + lo - rsec
	}
	return k
}

// segCand is the candidate of the model's segment sg for read sectors
// [lo, hi).
func (c *readCheck) segCand(sg seg, lo, hi int64) cand {
	k := cand{x: sg.x, name: c.o.vals[sg.x].name, base: lo}
	switch {
	case sg.x == hashVal:
		k.hs = make([]uint64, hi-lo)
		sg.src.h.get(k.hs, sg.at+lo-sg.lo)
	case sg.x >= firstPattern:
		k.at = sg.at + lo - sg.lo
	}
	return k
}

// piece checks read sectors [lo, hi), expected to hold exp when the read
// started and now.x now. Writes in flight to the same target split it
// further.
func (c *readCheck) piece(lo, hi int64, exp cand, now seg) error {
	nowc := c.segCand(now, lo, hi)
	if now.t == (target{}) {
		return c.check(lo, hi, exp, nowc, nil)
	}
	// Cut [lo, hi) where a write in flight to the same sectors starts or
	// ends; each part has its own candidates.
	type cover struct {
		lo, hi int64 // in read sectors
		k      cand
	}
	var buf [4]cover
	covers := buf[:0]
	tsec := lo - now.lo + now.tsec // the target's sector that lo is
	for _, w := range c.o.inflight {
		for _, sp := range w.spans {
			if sp.t != now.t {
				continue
			}
			a, b := max(sp.sec, tsec), min(sp.sec+sp.n, tsec+hi-lo)
			if a >= b {
				continue
			}
			k := cand{x: w.x, name: c.o.vals[w.x].name, base: a - tsec + lo}
			wsec := sp.src + a - sp.sec // the writer's sector that a is
			switch {
			case w.x == hashVal:
				k.hs = w.hs[wsec-w.first:][:b-a]
			case w.x >= firstPattern:
				k.at = wsec
			}
			covers = append(covers, cover{a - tsec + lo, b - tsec + lo, k})
		}
	}
	if len(covers) == 0 {
		return c.check(lo, hi, exp, nowc, nil)
	}
	var extra []cand
	for a := lo; a < hi; {
		b := hi
		extra = extra[:0]
		for _, cv := range covers {
			switch {
			case cv.lo <= a && a < cv.hi:
				extra = append(extra, cv.k)
				b = min(b, cv.hi)
			case cv.lo > a:
				b = min(b, cv.lo)
			}
		}
		if err := c.check(a, b, exp, nowc, extra); err != nil {
			return err
		}
		a = b
	}
	return nil
}

// check checks read sectors [lo, hi), whose candidates are the value when
// the read started (exp), the value now and those of writes in flight to
// them (extra).
func (c *readCheck) check(lo, hi int64, exp, now cand, extra []cand) error {
	o := c.o
	var cbuf [6]cand
	cands := append(append(cbuf[:0], exp, now), extra...)
	wantEIO, wantData, anyData := false, false, false
	for i := range cands {
		switch cands[i].x {
		case eioVal:
			wantEIO = true
		case unknownVal:
			wantData, anyData = true, true
		default:
			wantData = true
		}
	}
	name := c.e.node.Name()
	if c.err != nil {
		if block.Errno(c.err) == syscall.EIO && (wantEIO || c.faults) {
			o.Checks += int(hi - lo)
			return nil
		}
		o.Checks++
		return fmt.Errorf("oracle: %s sector %d: read failed (%v) but the model expects data %s", name, lo, block.ErrnoName(block.Errno(c.err)), exp.describe(lo))
	}
	if !wantData {
		o.Checks++
		return fmt.Errorf("oracle: %s sector %d: read succeeded but the model expects EIO", name, lo)
	}
	if anyData {
		o.Checks += int(hi - lo)
		return nil
	}
	got := func(sec int64) []byte {
		i := sec - c.first
		return c.data[i*block.SectorSize : (i+1)*block.SectorSize]
	}
	// The candidates with data, told apart.
	var kbuf [4]*cand
	ks := kbuf[:0]
	for i := range cands {
		if cands[i].x == eioVal {
			continue
		}
		dup := false
		for _, k := range ks {
			dup = dup || k.same(&cands[i])
		}
		if !dup {
			ks = append(ks, &cands[i])
		}
	}
	if i1 := (hi - c.first) * block.SectorSize; i1 > int64(len(c.data)) {
		return fmt.Errorf("oracle: %s sector %d: read returned %d bytes of %d", name, lo, len(c.data), c.e.n)
	}
	// Each candidate on the whole piece first (the usual case: one
	// holds it all), then sector by sector.
	i0, i1 := (lo-c.first)*block.SectorSize, (hi-c.first)*block.SectorSize
	for _, k := range ks {
		if k.matchAll(c.data[i0:i1], lo) {
			o.Checks += int(hi - lo)
			return nil
		}
	}
	for sec := lo; sec < hi; sec++ {
		o.Checks++
		g := got(sec)
		ok := false
		for _, k := range ks {
			if k.match(g, sec) {
				ok = true
				break
			}
		}
		if !ok {
			return c.mismatch(sec, g, *ks[0])
		}
	}
	return nil
}

// mismatch describes read sector sec, holding g, which is none of the
// candidates; k is the first (the model's when the read started, or now).
func (c *readCheck) mismatch(sec int64, g []byte, k cand) error {
	off := sec * block.SectorSize
	msg := fmt.Sprintf("oracle: %s sector %d (offset %d): data is not %s (model)", c.e.node.Name(), sec, off, k.describe(sec))
	if k.x == hashVal {
		return fmt.Errorf("%s: its content hash is %016x, want %016x", msg, hashSector(g), k.hs[sec-k.base])
	}
	name := k.name
	if m, ok := pattern.Verify(g, name, k.patOff(sec)).(*pattern.Mismatch); ok {
		return fmt.Errorf("%s, data differs at offset %d: want %#02x, got %#02x (looks like %s)", msg, off+m.Off-k.patOff(sec), m.Want, m.Got, m.Looks)
	}
	return fmt.Errorf("%s", msg)
}
