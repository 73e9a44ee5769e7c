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
// hooks. Sectors whose content cannot be known (an origin written while its
// snapshot was detached, a failed write) accept anything.
package oracle

import (
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

type view struct {
	origin  dm.Node
	cow     dm.Node
	frozen  map[int64]string
	own     map[int64]string
	invalid bool
	anyBase bool // base unknown (a COW loaded with exceptions the oracle never saw)
}

type instance struct {
	v    *view
	dead bool
}

type loc struct {
	node dm.Node
	v    *view
	sec  int64
}

type write struct {
	locs    []loc
	pattern string
	start   int64
}

// Oracle checks reads against the reference model.
type Oracle struct {
	ctl      *dm.Control
	disks    map[dm.Node]map[int64]string
	views    []*view
	inst     map[*snapshot.Snapshot]*instance
	inflight map[*write]bool
	// Checks counts sectors checked.
	Checks int
}

// New attaches an oracle to ctl (it installs the snapshot hooks).
func New(ctl *dm.Control) *Oracle {
	o := &Oracle{ctl: ctl, disks: map[dm.Node]map[int64]string{}, inst: map[*snapshot.Snapshot]*instance{}, inflight: map[*write]bool{}}
	snapshot.SetHooks(ctl, snapshot.Hooks{
		Activated:   o.activated,
		HandedOver:  o.handedOver,
		Invalidated: o.invalidated,
		Merged:      o.merged,
	})
	return o
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
		nv := &view{origin: s.OriginDev(), cow: s.COW(), frozen: map[int64]string{}, own: map[int64]string{}, anyBase: !fresh}
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
		// header write failed) comes back valid: which exceptions reached
		// the COW before the failure is the store's business.
		v.invalid = false
		v.anyBase = true
		clear(v.frozen)
	}
	o.inst[s] = &instance{v: v}
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
		if in.v != nil {
			in.v.invalid = true
		}
		return
	}
	// Not active yet (a cancelled handover's destination): dead from birth.
	o.inst[s] = &instance{dead: true}
}

func (o *Oracle) diskVal(n dm.Node, sec int64) string {
	if m := o.disks[n]; m != nil {
		if v, ok := m[sec]; ok {
			return v
		}
	}
	return pattern.Zero
}

// resolve returns where sector sec of node lives and what it holds.
func (o *Oracle) resolve(n dm.Node, sec int64) (loc, string) {
	if o.isCOW(n) {
		// Exception stores write COW devices themselves: their content is
		// the simulator's business, not the model's.
		return loc{node: n, sec: sec}, unknown
	}
	md, ok := n.(*dm.MappedDevice)
	if !ok {
		return loc{node: n, sec: sec}, o.diskVal(n, sec)
	}
	t := md.Live()
	if t == nil {
		return loc{}, eio
	}
	ti := t.TargetAt(uint64(sec))
	if ti == nil {
		return loc{}, eio
	}
	rel := uint64(sec) - ti.Begin
	switch ti.Type.Name {
	case "linear":
		start, _ := strconv.ParseUint(ti.Args[1], 10, 64)
		return o.resolve(ti.Deps[0], int64(start+rel))
	case "snapshot-origin":
		return o.resolve(ti.Deps[0], sec)
	case "zero":
		return loc{}, pattern.Zero
	case "snapshot", "snapshot-merge":
		s := ti.Target.(*snapshot.Snapshot)
		in := o.inst[s]
		if s.IsMerge() && (in == nil || in.v == nil || in.v.invalid) {
			// Full merging snapshots are redirected to the origin.
			return o.resolve(s.OriginDev(), sec)
		}
		if in == nil || in.dead || in.v == nil || in.v.invalid {
			return loc{}, eio
		}
		v := in.v
		l := loc{v: v, sec: sec}
		if x, ok := v.own[sec]; ok {
			return l, x
		}
		if x, ok := v.frozen[sec]; ok {
			return l, x
		}
		if v.anyBase {
			return l, unknown
		}
		_, x := o.resolve(v.origin, sec)
		return l, x
	}
	return loc{}, eio
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

// attached calls fn for each live, active, valid snapshot on origin node.
func (o *Oracle) attached(origin dm.Node, fn func(*view)) {
	o.attachedSnaps(origin, func(_ *snapshot.Snapshot, v *view) { fn(v) })
}

// attachedSnaps is attached with the snapshot too.
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

// beginWrite walks a write of one sector down the stack: origin writes
// freeze the attached snapshots' view of the sector before it changes.
func (o *Oracle) beginWrite(n dm.Node, sec int64) loc { return o.beginWriteFrom(n, sec, sec) }

// beginWriteFrom is beginWrite for sector sec of a write whose first
// sector, in n's coordinates, is lo.
func (o *Oracle) beginWriteFrom(n dm.Node, sec, lo int64) loc {
	md, ok := n.(*dm.MappedDevice)
	if !ok {
		// A disk sector changes: attached views see it through COW (already
		// frozen when the write came through snapshot-origin); any other
		// view of this disk can no longer be known for this sector.
		for _, v := range o.views {
			if v.origin == n || o.underlies(n, v.origin) {
				if _, own := v.own[sec]; !own {
					if _, fr := v.frozen[sec]; !fr {
						v.frozen[sec] = unknown
					}
				}
			}
		}
		return loc{node: n, sec: sec}
	}
	t := md.Live()
	if t == nil {
		return loc{}
	}
	ti := t.TargetAt(uint64(sec))
	if ti == nil {
		return loc{}
	}
	rel := uint64(sec) - ti.Begin
	switch ti.Type.Name {
	case "linear":
		start, _ := strconv.ParseUint(ti.Args[1], 10, 64)
		first := max(lo, int64(ti.Begin)) - int64(ti.Begin)
		return o.beginWriteFrom(ti.Deps[0], int64(start+rel), int64(start)+first)
	case "snapshot-origin":
		// The dm core splits the write at the target's boundaries and its
		// max_io_len (the origin's split boundary as of its last resume);
		// each piece copies only the chunk of its first sector.
		piece := max(lo, int64(ti.Begin))
		if m, ok := ti.Target.(dm.MaxIOer); ok {
			if b := int64(m.MaxIO(ti)); b > 0 {
				piece = max(piece, int64(ti.Begin)+(sec-int64(ti.Begin))/b*b)
			}
		}
		return o.originWritePiece(ti.Deps[0], sec, piece)
	case "snapshot":
		s := ti.Target.(*snapshot.Snapshot)
		if in := o.inst[s]; in != nil && in.v != nil && !in.dead {
			return loc{v: in.v, sec: sec}
		}
	case "snapshot-merge":
		s := ti.Target.(*snapshot.Snapshot)
		if in := o.inst[s]; in != nil && in.v != nil && !in.v.invalid {
			_, own := in.v.own[sec]
			_, fr := in.v.frozen[sec]
			if own || fr {
				return loc{v: in.v, sec: sec}
			}
		}
		return o.originWrite(s.OriginDev(), sec)
	}
	return loc{}
}

// originWrite freezes the attached snapshots' view of sec before the
// origin changes, and returns where the write lands.
func (o *Oracle) originWrite(origin dm.Node, sec int64) loc {
	return o.originWritePiece(origin, sec, sec)
}

// originWritePiece is originWrite for sector sec of a write piece starting
// at sector piece: a snapshot copies only the chunk holding the piece's
// first sector, so its other sectors cannot be known for that snapshot.
func (o *Oracle) originWritePiece(origin dm.Node, sec, piece int64) loc {
	o.attachedSnaps(origin, func(s *snapshot.Snapshot, v *view) {
		if _, own := v.own[sec]; own {
			return
		}
		if _, fr := v.frozen[sec]; fr {
			return
		}
		if cs := int64(s.ChunkSize()); cs > 0 && sec/cs != piece/cs {
			v.frozen[sec] = unknown
			return
		}
		_, x := o.resolve(origin, sec)
		v.frozen[sec] = x
	})
	return o.beginWrite(origin, sec)
}

// merged: a merging snapshot copied its view of [sector, sector+count) to
// the origin.
func (o *Oracle) merged(s *snapshot.Snapshot, sector, count uint64) {
	in := o.inst[s]
	if in == nil || in.v == nil {
		return
	}
	v := in.v
	for sec := int64(sector); sec < int64(sector+count); sec++ {
		val, own := v.own[sec]
		if !own {
			var fr bool
			if val, fr = v.frozen[sec]; !fr {
				continue
			}
		}
		l := o.originWrite(s.OriginDev(), sec)
		o.set(l, val)
		delete(v.own, sec)
		delete(v.frozen, sec)
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

func (o *Oracle) set(l loc, val string) {
	switch {
	case l.v != nil:
		l.v.own[l.sec] = val
	case l.node != nil:
		m := o.disks[l.node]
		if m == nil {
			m = map[int64]string{}
			o.disks[l.node] = m
		}
		m[l.sec] = val
	}
}

// Write is an in-flight write the oracle follows.
type Write struct{ w *write }

// BeginWrite is called when a user submits a write of pat to node at byte
// offset off, n bytes.
func (o *Oracle) BeginWrite(node dm.Node, off, n int64, pat string) Write {
	w := &write{pattern: pat, start: off / block.SectorSize}
	for sec := off / block.SectorSize; sec < (off+n)/block.SectorSize; sec++ {
		w.locs = append(w.locs, o.beginWriteFrom(node, sec, off/block.SectorSize))
	}
	o.inflight[w] = true
	return Write{w}
}

// EndWrite records the write's completion.
func (o *Oracle) EndWrite(w Write, err error) {
	delete(o.inflight, w.w)
	val := w.w.pattern
	if err != nil {
		val = unknown
	}
	for _, l := range w.w.locs {
		o.set(l, val)
	}
}

// Expectation is what a read may return, sampled when it starts.
type Expectation struct {
	node   dm.Node
	off    int64
	n      int64
	vals   []string
	beyond bool // the read reached past the device's end when it started
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
	for sec := off / block.SectorSize; sec < (off+n)/block.SectorSize; sec++ {
		_, v := o.resolve(node, sec)
		e.vals = append(e.vals, v)
	}
	return e
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
			e.vals = nil
			for sec := e.off / block.SectorSize; sec < (e.off+e.n)/block.SectorSize; sec++ {
				_, v := o.resolve(e.node, sec)
				e.vals = append(e.vals, v)
			}
		case block.Errno(err) == syscall.EIO && faults:
			return nil
		default:
			return fmt.Errorf("oracle: %s: read of %d bytes at offset %d failed with %s, but it reaches past the end of the device (%d bytes): want EINVAL", e.node.Name(), e.n, e.off, block.ErrnoName(block.Errno(err)), size)
		}
	}
	nsec := len(e.vals)
	for i := 0; i < nsec; i++ {
		sec := e.off/block.SectorSize + int64(i)
		l, now := o.resolve(e.node, sec)
		cands := []string{e.vals[i], now}
		for w := range o.inflight {
			for _, wl := range w.locs {
				if wl == l && (l.v != nil || l.node != nil) {
					cands = append(cands, w.pattern)
				}
			}
		}
		o.Checks++
		wantEIO, wantData := false, false
		for _, c := range cands {
			if c == eio {
				wantEIO = true
			} else {
				wantData = true
			}
		}
		if err != nil {
			if block.Errno(err) == 5 && (wantEIO || faults) {
				continue
			}
			return fmt.Errorf("oracle: %s sector %d: read failed (%v) but the model expects data %q", e.node.Name(), sec, block.ErrnoName(block.Errno(err)), cands[0])
		}
		if !wantData {
			return fmt.Errorf("oracle: %s sector %d: read succeeded but the model expects EIO", e.node.Name(), sec)
		}
		got := data[i*block.SectorSize : (i+1)*block.SectorSize]
		ok := false
		for _, c := range cands {
			if c == unknown || (c != eio && pattern.Verify(got, c, sec*block.SectorSize) == nil) {
				ok = true
				break
			}
		}
		if !ok {
			return fmt.Errorf("oracle: %s sector %d: data is not %q (model), %v", e.node.Name(), sec, cands[0], pattern.Verify(got, cands[0], sec*block.SectorSize))
		}
	}
	return nil
}
