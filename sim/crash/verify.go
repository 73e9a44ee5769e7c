package crash

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/exstore"
	"snaplab/sim/pattern"
	"snaplab/sim/snapshot"
	"snaplab/sim/world"
)

// readBlock is how much of a device one read of a check covers.
const readBlock = 256 << 10

// state is one crash state: the images a cut left and what was live.
type state struct {
	c       *checker
	cut     Cut
	images  []*image // as the cut left them (Dump writes these)
	devs    []*reloadDev
	sectors int64
	// untouched counts the sectors judged without reading them: holes in
	// every image their content depends on (see touched).
	untouched int64
	// touched is, by origin disk, what its reads depend on (noteTouched);
	// sparse lists the origins some check read only there.
	touched map[string][]extent
	sparse  []string
	// extra is, per COW, the table a torn write in flight on it was
	// writing: a prefix of it is a prefix of what was committed.
	extra map[string][]pair
	// reloaded: a persistent snapshot was loaded again from the images.
	reloaded bool
}

// reloadDev is a device that had a live table at the cut.
type reloadDev struct {
	name     string
	table    string // lines joined by "\n", devices named
	deps     []string
	snap     *snapshot.Snapshot // its snapshot target, if any (in the run)
	simple   bool               // one target at sector 0
	holds    bool               // the snapshot held its COW's store at the cut (noteHolders)
	valid    bool               // the snapshot held the store and was valid at the cut
	originOf string             // a simple snapshot-origin: the origin's name
	chunk    int64              // snapshot: chunk size in sectors
}

// reload is the state's devices created again on copies of the images.
type reload struct {
	w      *world.World
	ctl    *dm.Control
	failed map[string]string // device -> why its create failed
	mems   map[string]*image // the disks, by name
}

func (c *checker) state(cut Cut, images []*image) *state {
	st := &state{c: c, cut: cut, images: images}
	byCOW := map[string]*reloadDev{}
	lookup := func(major, minor uint32) (string, bool) {
		num := dm.DevNum{Major: major, Minor: minor}
		for _, d := range c.ctl.Disks() {
			if d.Dev() == num {
				return d.Name(), true
			}
		}
		for _, md := range c.ctl.Devices() {
			if md.Dev() == num {
				return md.Name(), true
			}
		}
		return "", false
	}
	for _, md := range c.ctl.Devices() {
		t := md.Live()
		if t == nil {
			continue
		}
		lines := md.TableLines(false)
		for i, l := range lines {
			lines[i] = namedTable(l, lookup)
		}
		rd := &reloadDev{name: md.Name(), table: strings.Join(lines, "\n")}
		transient := false
		for _, ti := range t.Targets {
			for _, d := range ti.Deps {
				if _, ok := d.(*dm.MappedDevice); ok && !slices.Contains(rd.deps, d.Name()) {
					rd.deps = append(rd.deps, d.Name())
				}
			}
			if s, ok := ti.Target.(*snapshot.Snapshot); ok {
				if !persistentArgs(ti.Args) {
					transient = true
				}
				// Only the target holding the COW's store promises
				// anything about it: a handover destination that never
				// took the store (mainline refused its resume) is valid
				// but never read or wrote the COW.
				rd.snap, rd.valid, rd.holds, rd.chunk = s, s.Valid() && c.holds(s), c.holds(s), int64(s.ChunkSize())
				rd.simple = len(t.Targets) == 1 && ti.Begin == 0
			}
			if ti.Type.Name == "snapshot-origin" && len(t.Targets) == 1 && ti.Begin == 0 && len(ti.Deps) == 1 {
				rd.originOf = ti.Deps[0].Name()
			}
		}
		if transient {
			continue
		}
		if rd.snap != nil {
			cow := rd.snap.COW().Name()
			if prev := byCOW[cow]; prev != nil {
				if prev.holds || !rd.holds {
					continue // the one holding the store is already in, or neither holds it
				}
				st.devs = slices.DeleteFunc(st.devs, func(x *reloadDev) bool { return x == prev })
			}
			byCOW[cow] = rd
		}
		st.devs = append(st.devs, rd)
	}
	if f := c.inflight; f != nil {
		st.tearing(f)
	}
	return st
}

// tearing accounts for the write in flight of a torn cut: the table it
// was writing on a COW is one the store committed, and a snapshot whose
// COW header it was writing was being invalidated (Drop).
func (st *state) tearing(f *inflight) {
	c := st.c
	if c.pre[f.d.name] != nil {
		img := newImage(f.d.mem, nil) // the cache as the write would leave it
		if _, err := img.WriteAt(f.data, f.off); err == nil {
			if im, err := exstore.Inspect(img); err == nil && !im.Fresh {
				t := make([]pair, len(im.Exceptions))
				for i, x := range im.Exceptions {
					t[i] = pair{x.Old, x.New}
				}
				st.extra = map[string][]pair{f.d.name: t}
			}
		}
	}
	for _, rd := range st.devs {
		if rd.snap == nil {
			continue
		}
		// The COW's header: byte 0 of the COW, on the disk under it.
		if name, off, ok := c.diskOffset(rd.snap.COW(), 0); ok && name == f.d.name && off >= f.off && off < f.off+int64(len(f.data)) {
			rd.valid = false
		}
	}
}

// diskOffset follows byte off of node n down the live tables' synchronous
// mappings (linear) to the scenario disk holding it; ok is false where no
// disk holds it (a zero target, a target with no synchronous mapping).
func (c *checker) diskOffset(n dm.Node, off int64) (string, int64, bool) {
	for depth := 0; depth < dm.MaxStack; depth++ {
		md, ok := n.(*dm.MappedDevice)
		if !ok {
			return n.Name(), off, c.diskNamed(n.Name()) != nil
		}
		t := md.Live()
		if t == nil {
			return "", 0, false
		}
		sector := uint64(off) / block.SectorSize
		ti := t.TargetAt(sector)
		if ti == nil {
			return "", 0, false
		}
		sm, ok := ti.Target.(dm.SyncMapper)
		if !ok {
			return "", 0, false
		}
		lower, lsec, err := sm.SyncMap(ti, sector-ti.Begin)
		if err != nil || lower == nil {
			return "", 0, false
		}
		n, off = lower, int64(lsec)*block.SectorSize+off%block.SectorSize
	}
	return "", 0, false
}

// load attaches fresh copies of the state's images to a new control
// plane and creates the devices of the first phase (see phases).
func (st *state) load(first []*reloadDev) (*reload, error) {
	c := st.c
	r := &reload{w: world.New(0), failed: map[string]string{}, mems: map[string]*image{}}
	r.ctl = dm.NewControl(r.w)
	snapshot.Register(r.ctl)
	snapshot.SetSemantics(r.ctl, snapshot.SemanticsOf(c.ctl))
	for i, img := range st.images {
		m := img.fork() // Dump writes the images as the cut left them
		if _, err := r.ctl.AddDisk(m, c.disks[i].lbs); err != nil {
			return nil, fmt.Errorf("crash check of %s, %s: attach %s: %w", c.sc.Name, st.cut, img.Name(), err)
		}
		r.mems[m.Name()] = m
	}
	r.create(first)
	return r, nil
}

// create creates devs: devices whose dm dependencies exist first, in name
// order.
func (r *reload) create(devs []*reloadDev) {
	made := map[string]bool{}
	left := slices.Clone(devs)
	for len(left) > 0 {
		progress := false
		for i := 0; i < len(left); i++ {
			rd := left[i]
			ready := true
			for _, d := range rd.deps {
				if !made[d] && slices.ContainsFunc(left, func(x *reloadDev) bool { return x.name == d }) {
					ready = false
				}
			}
			if !ready {
				continue
			}
			out := r.ctl.Dmsetup([]string{"create", rd.name, "--table", rd.table})
			if out.Exit != 0 {
				r.failed[rd.name] = strings.TrimSpace(out.Stderr)
			}
			made[rd.name] = true
			left = slices.Delete(left, i, i+1)
			i--
			progress = true
		}
		if !progress { // a dependency cycle cannot happen; create the rest as they are
			for _, rd := range left {
				out := r.ctl.Dmsetup([]string{"create", rd.name, "--table", rd.table})
				if out.Exit != 0 {
					r.failed[rd.name] = strings.TrimSpace(out.Stderr)
				}
			}
			break
		}
	}
}

// phases splits the state's devices in two: snapshot-merge tables and the
// devices stacked on them come second. A reloaded merge resumes copying
// onto the origin at once, and its origin writes copy out to the other
// snapshots of the origin, which may fill their COWs and invalidate them
// in the reload: what they read must be checked as the crash left them,
// before any merge runs.
func (st *state) phases() (first, later []*reloadDev) {
	in := map[string]bool{}
	for changed := true; changed; {
		changed = false
		for _, rd := range st.devs {
			if in[rd.name] {
				continue
			}
			if rd.snap != nil && rd.snap.IsMerge() || slices.ContainsFunc(rd.deps, func(d string) bool { return in[d] }) {
				in[rd.name], changed = true, true
			}
		}
	}
	for _, rd := range st.devs {
		if in[rd.name] {
			later = append(later, rd)
		} else {
			first = append(first, rd)
		}
	}
	return first, later
}

// read reads [off, off+len(p)) of the reloaded device or disk name.
func (r *reload) read(name string, p []byte, off int64) error {
	n := r.ctl.Node(name)
	if n == nil {
		return fmt.Errorf("%s: no such device", name)
	}
	done := false
	var rerr error
	b := dm.NewBio(dm.OpRead, uint64(off/block.SectorSize), p, false, func(err error) { done, rerr = true, err })
	if md, ok := n.(*dm.MappedDevice); ok {
		md.SubmitUser(b)
	} else {
		n.Submit(b)
	}
	if err := r.w.RunUntil("read of "+name, func() bool { return done }); err != nil {
		return err
	}
	return rerr
}

func (r *reload) status(name string) string {
	return strings.TrimSuffix(r.ctl.Dmsetup([]string{"status", name}).Stdout, "\n")
}

// check checks the state: (b) on the images, then on a reload (c) on the
// origins and (a) and (c) on the snapshots, snapshot-merge tables last
// (phases).
func (st *state) check() (*Bad, error) {
	for _, rd := range st.devs {
		if bad := st.checkPrefix(rd); bad != nil {
			return bad, nil
		}
	}
	first, later := st.phases()
	r, err := st.load(first)
	if err != nil {
		return nil, err
	}
	st.noteTouched(r)
	if st.c.opts.reloadTamper != nil {
		st.c.opts.reloadTamper(st.cut.Index, r.mems)
	}
	if bad, err := st.checkOrigins(r); bad != nil || err != nil {
		return bad, err
	}
	for _, rd := range first {
		if bad, err := st.checkReloaded(r, rd); bad != nil || err != nil {
			return bad, err
		}
	}
	if len(later) > 0 {
		st.noteMerges(r, later)
		r.create(later)
		for _, rd := range later {
			if bad, err := st.checkReloaded(r, rd); bad != nil || err != nil {
				return bad, err
			}
		}
	}
	return st.checkUntouched(r)
}

// checkReloaded is "reload", then (a) and (c), on reloaded device rd if
// it has a snapshot target.
func (st *state) checkReloaded(r *reload, rd *reloadDev) (*Bad, error) {
	if rd.snap == nil {
		return nil, nil
	}
	if msg, ok := r.failed[rd.name]; ok {
		if rd.valid {
			return st.bad("reload", rd.name, 0, 0, "the table to load", "dmsetup create failed: "+msg), nil
		}
		return nil, nil
	}
	if rd.valid && strings.Contains(r.status(rd.name), snapshot.StatusInvalid) {
		return st.bad("reload", rd.name, 0, 0, "a valid snapshot (it was valid at the cut)", "status "+r.status(rd.name)), nil
	}
	st.reloaded = true
	return st.checkSnapshot(r, rd)
}

// checkOrigins is (c) on every origin of a reloaded snapshot or
// snapshot-origin.
func (st *state) checkOrigins(r *reload) (*Bad, error) {
	c := st.c
	var origins []string
	for _, rd := range st.devs {
		if _, failed := r.failed[rd.name]; rd.snap != nil && !failed && !slices.Contains(origins, rd.snap.OriginDev().Name()) {
			origins = append(origins, rd.snap.OriginDev().Name())
		}
	}
	for _, rd := range st.devs {
		if rd.originOf != "" && !slices.Contains(origins, rd.originOf) {
			origins = append(origins, rd.originOf)
		}
	}
	slices.Sort(origins)
	for _, o := range origins {
		via := o
		for _, rd := range st.devs {
			if _, failed := r.failed[rd.name]; rd.originOf == o && !failed {
				via = rd.name
				break
			}
		}
		if c.diskNamed(o) == nil && via == o {
			continue // an origin on a dm device is read through its snapshots only
		}
		if bad, err := st.checkOrigin(r, o, via); bad != nil || err != nil {
			return bad, err
		}
	}
	return nil, nil
}

func (st *state) bad(check, dev string, chunk uint64, sector int64, expect, got string) *Bad {
	return &Bad{Cut: st.cut, Check: check, Device: dev, Chunk: chunk, Sector: sector, Expect: expect, Got: got}
}

// checkPrefix is (b) for rd's COW.
func (st *state) checkPrefix(rd *reloadDev) *Bad {
	c := st.c
	if rd.snap == nil {
		return nil
	}
	cow := rd.snap.COW().Name()
	d := c.diskNamed(cow)
	if d == nil || c.pre[cow] == nil {
		return nil
	}
	im, err := exstore.Inspect(st.images[d.idx])
	if err != nil {
		if rd.valid {
			return st.bad("prefix", cow, 0, 0, "a COW that decodes", err.Error())
		}
		return nil
	}
	if im.Fresh || len(im.Exceptions) == 0 {
		return nil
	}
	vs := c.versions[cow]
	if t, ok := st.extra[cow]; ok {
		vs = append(slices.Clip(vs), t)
	}
	best, bestLen := -1, -1
	for i, v := range vs {
		n := 0
		for n < len(v) && n < len(im.Exceptions) && v[n] == (pair{im.Exceptions[n].Old, im.Exceptions[n].New}) {
			n++
		}
		if n == len(im.Exceptions) {
			return nil
		}
		if n > bestLen {
			best, bestLen = i, n
		}
	}
	x := im.Exceptions[max(bestLen, 0)]
	expect := "no exception table committed before the cut"
	if best >= 0 {
		v := vs[best]
		if bestLen < len(v) {
			expect = fmt.Sprintf("entry %d of committed table %d of %d: chunk %d -> COW chunk %d", bestLen, best+1, len(vs), v[bestLen].old, v[bestLen].new)
		} else {
			expect = fmt.Sprintf("the end of committed table %d of %d after %d entries", best+1, len(vs), len(v))
		}
	}
	return st.bad("prefix", cow, x.Old, x.Off/block.SectorSize, expect,
		fmt.Sprintf("entry %d (area %d index %d): chunk %d -> COW chunk %d", max(bestLen, 0), x.Area, x.Index, x.Old, x.New))
}

// spansIn returns the spans meeting [lo, hi), sorted by lo.
func spansIn(all []span, lo, hi int64) []span {
	var out []span
	for _, s := range all {
		if s.lo < hi && lo < s.lo+s.n {
			out = append(out, s)
		}
	}
	return out
}

func covers(spans []span, x int64) bool {
	for _, s := range spans {
		if x >= s.lo && x < s.lo+s.n {
			return true
		}
	}
	return false
}

// checkSnapshot is (a) and (c) on the reloaded snapshot rd, over the
// sectors its reads depend on (see touched).
func (st *state) checkSnapshot(r *reload, rd *reloadDev) (*Bad, error) {
	c := st.c
	s := rd.snap
	cow, origin := s.COW().Name(), s.OriginDev().Name()
	stk := c.stacks[origin]
	if !rd.simple || (stk != nil && stk.unverifiable) || (c.stacks[cow] != nil && len(c.stacks[cow].writes) > 0) {
		return nil, nil
	}
	p := c.pre[cow]
	aOn := rd.valid && p != nil
	size := s.OriginDev().Size()
	chunk := rd.chunk
	if md := r.ctl.Device(rd.name); md != nil {
		size = md.Size()
		if t := md.Live(); t != nil && len(t.Targets) == 1 {
			if rs, ok := t.Targets[0].Target.(*snapshot.Snapshot); ok && rs.ChunkSize() > 0 {
				chunk = int64(rs.ChunkSize()) // a destination's own store learns it in a handover
			}
		}
	}
	chunk = max(chunk, 1)
	// Where the origin is a hole, no reloaded exception maps the chunk
	// and P is a hole, S reads zeros, which (a) and (c) accept.
	ranges, ok := st.readSet(origin)
	if !ok {
		ranges = []extent{{0, size}}
	} else if aOn {
		ranges = normalize(append(slices.Clone(ranges), p.extents...), size)
	} else {
		ranges = normalize(ranges, size)
	}
	st.untouched += size/block.SectorSize - extentSectors(ranges)
	bufs := c.buffers()
	buf := bufs[0][:min(size, readBlock)]
	pbuf, dbuf, lbuf, ibuf := bufs[1], bufs[2], bufs[3], bufs[4]
	init := st.initOf(origin)
	for _, e := range ranges {
		for off := e.off; off < e.off+e.n; off += int64(len(buf)) {
			b := buf[:min(int64(len(buf)), e.off+e.n-off)]
			if err := r.read(rd.name, b, off); err != nil {
				if !rd.valid {
					return nil, nil // an invalid snapshot may fail its reads
				}
				return st.bad("read", rd.name, uint64(off/block.SectorSize/chunk), off/block.SectorSize, "data", err.Error()), nil
			}
			var pb, db []byte
			if p != nil {
				var err error
				if pb, err = fill(p.data, pbuf[:len(b)], off); err != nil {
					return nil, fmt.Errorf("crash check of %s: pre-image of %s at byte %d: %w", c.sc.Name, cow, off, err)
				}
				db = pb
				if p.durable != nil {
					if db, err = fill(p.durable, dbuf[:len(b)], off); err != nil {
						return nil, fmt.Errorf("crash check of %s: durable pre-image of %s at byte %d: %w", c.sc.Name, cow, off, err)
					}
				}
			}
			var lb []byte
			if aOn {
				var err error
				if lb, err = c.liveView(s, lbuf[:len(b)], off); err != nil {
					return nil, fmt.Errorf("crash check of %s, %s: the live view of %s at byte %d: %w", c.sc.Name, st.cut, rd.name, off, err)
				}
			}
			ib := st.initRead(init, ibuf[:len(b)], off)
			lo, hi := off/block.SectorSize, (off+int64(len(b)))/block.SectorSize
			var writes, unknown, stw []span
			if p != nil {
				writes, unknown = spansIn(p.writes, lo, hi), spansIn(p.unknown, lo, hi)
			}
			if stk != nil {
				stw = spansIn(stk.writes, lo, hi)
			}
			for x := lo; x < hi; x++ {
				i := (x - lo) * block.SectorSize
				sec := b[i : i+block.SectorSize]
				var psec, dsec, lsec, isec []byte
				if pb != nil {
					psec, dsec = pb[i:i+block.SectorSize], db[i:i+block.SectorSize]
				}
				if lb != nil {
					lsec = lb[i : i+block.SectorSize]
				}
				if ib != nil {
					isec = ib[i : i+block.SectorSize]
				}
				st.sectors++
				if aOn && !covers(unknown, x) && !bytes.Equal(sec, psec) && !bytes.Equal(sec, dsec) && !bytes.Equal(sec, lsec) && !c.matchesWrite(writes, x, sec) {
					return st.bad("pre-image", rd.name, uint64(x/chunk), x,
						"the pre-image ("+c.describe(psec, x, isec)+") or data written to the snapshot", c.describe(sec, x, isec)), nil
				}
				if !c.written(stw, x, sec, isec, psec) {
					return st.bad("written", rd.name, uint64(x/chunk), x,
						"data written there ("+c.writtenNames(stw, x)+")", c.describe(sec, x, isec)), nil
				}
			}
		}
	}
	return nil, nil
}

// checkOrigin is (c) on origin o, read through via (its reloaded
// snapshot-origin device, or the disk itself), over the sectors its
// reads depend on (see touched): a hole reads zeros, which (c) accepts.
func (st *state) checkOrigin(r *reload, o, via string) (*Bad, error) {
	c := st.c
	stk := c.stacks[o]
	if stk != nil && stk.unverifiable {
		return nil, nil
	}
	n := r.ctl.Node(via)
	if n == nil {
		return nil, nil
	}
	size := n.Size()
	ranges, ok := st.readSet(o)
	if !ok {
		ranges = []extent{{0, size}}
	}
	ranges = normalize(ranges, size)
	st.untouched += size/block.SectorSize - extentSectors(ranges)
	bufs := c.buffers()
	buf, ibuf := bufs[0][:min(size, readBlock)], bufs[4]
	init := st.initOf(o)
	chunk := st.originChunk(o)
	for _, e := range ranges {
		for off := e.off; off < e.off+e.n; off += int64(len(buf)) {
			b := buf[:min(int64(len(buf)), e.off+e.n-off)]
			if err := r.read(via, b, off); err != nil {
				return st.bad("read", via, uint64(off/block.SectorSize/chunk), off/block.SectorSize, "data", err.Error()), nil
			}
			ib := st.initRead(init, ibuf[:len(b)], off)
			lo, hi := off/block.SectorSize, (off+int64(len(b)))/block.SectorSize
			var stw []span
			if stk != nil {
				stw = spansIn(stk.writes, lo, hi)
			}
			for x := lo; x < hi; x++ {
				i := (x - lo) * block.SectorSize
				sec := b[i : i+block.SectorSize]
				var isec []byte
				if ib != nil {
					isec = ib[i : i+block.SectorSize]
				}
				st.sectors++
				if !c.written(stw, x, sec, isec, nil) {
					return st.bad("written", via, uint64(x/chunk), x, "data written there ("+c.writtenNames(stw, x)+")", c.describe(sec, x, isec)), nil
				}
			}
		}
	}
	return nil, nil
}

// initOf is the initial content of origin o when it is a disk.
func (st *state) initOf(o string) *block.Mem {
	if d := st.c.diskNamed(o); d != nil {
		return d.init
	}
	return nil
}

func (st *state) initRead(init *block.Mem, p []byte, off int64) []byte {
	if init == nil || off+int64(len(p)) > init.Size() {
		return nil
	}
	b, err := fill(init, p, off)
	if err != nil {
		return nil
	}
	return b
}

// buffers are the checker's read buffers, readBlock bytes each: a read,
// P, Pd, the live view and the initial content. A state's checks run one
// after another, so they share them.
func (c *checker) buffers() *[5][]byte {
	if c.bufs == nil {
		c.bufs = &[5][]byte{}
		for i := range c.bufs {
			c.bufs[i] = make([]byte, readBlock)
		}
	}
	return c.bufs
}

// zeroBlock stands for a hole: never written.
var zeroBlock [readBlock]byte

// fill returns the content of [off, off+len(p)) of dev: p, read, or zeros
// without reading when dev maps the range as one hole.
func fill(dev block.Device, p []byte, off int64) ([]byte, error) {
	if m, ok := dev.(block.Mapper); ok && len(p) <= readBlock {
		ext, err := m.Map(off, int64(len(p)))
		if err != nil {
			return nil, err
		}
		if len(ext) == 1 && ext[0].Hole {
			return zeroBlock[:len(p)], nil
		}
	}
	if _, err := dev.ReadAt(p, off); err != nil {
		return nil, err
	}
	return p, nil
}

var zeroSector [block.SectorSize]byte

func patternKey(name string) uint64 { return pattern.Key(name) }

// patternAt names the scenario pattern sector x holds, or "".
func (c *checker) patternAt(sec []byte, x int64) string {
	if len(sec) < 8 {
		return ""
	}
	off := x * block.SectorSize
	name := c.pats[pattern.Identify(binary.LittleEndian.Uint64(sec), off)]
	if name == "" || !pattern.Is(sec, name, off) {
		return ""
	}
	return name
}

// matchesWrite reports whether sec is the data of a write among spans
// covering sector x.
func (c *checker) matchesWrite(spans []span, x int64, sec []byte) bool {
	for _, s := range spans {
		if x < s.lo || x >= s.lo+s.n {
			continue
		}
		if s.pat == pattern.Zero {
			if bytes.Equal(sec, zeroSector[:]) {
				return true
			}
		} else if pattern.Is(sec, s.pat, x*block.SectorSize) {
			return true
		}
	}
	return false
}

// written is (c) for one sector: zeros, the initial content, the
// pre-image, or a pattern written over sector x in the stack.
func (c *checker) written(stw []span, x int64, sec, isec, psec []byte) bool {
	if bytes.Equal(sec, zeroSector[:]) || (isec != nil && bytes.Equal(sec, isec)) || (psec != nil && bytes.Equal(sec, psec)) {
		return true
	}
	name := c.patternAt(sec, x)
	if name == "" {
		return false
	}
	for _, s := range stw {
		if s.pat == name && x >= s.lo && x < s.lo+s.n {
			return true
		}
	}
	return false
}

// writtenNames lists the patterns written over sector x.
func (c *checker) writtenNames(stw []span, x int64) string {
	var names []string
	for _, s := range stw {
		if x >= s.lo && x < s.lo+s.n && !slices.Contains(names, s.pat) {
			names = append(names, s.pat)
		}
	}
	if len(names) == 0 {
		return "zeros or the disk's initial data; no pattern was written to this sector"
	}
	return "zeros, the disk's initial data or pattern " + strings.Join(names, ", ")
}

// describe names what a sector holds.
func (c *checker) describe(sec []byte, x int64, isec []byte) string {
	switch {
	case sec == nil:
		return "nothing known"
	case bytes.Equal(sec, zeroSector[:]):
		return "zeros"
	}
	if name := c.patternAt(sec, x); name != "" {
		return "pattern " + name
	}
	if isec != nil && bytes.Equal(sec, isec) {
		return "the disk's initial data"
	}
	for _, name := range c.patNames() {
		for d := int64(-64); d <= 64; d++ {
			if d != 0 && x+d >= 0 && pattern.Is(sec, name, (x+d)*block.SectorSize) {
				return fmt.Sprintf("pattern %s as written %d sectors away (sector %d)", name, d, x+d)
			}
		}
	}
	return fmt.Sprintf("data %x... (no pattern at this offset)", sec[:16])
}

func (c *checker) patNames() []string {
	out := make([]string, 0, len(c.pats))
	for _, n := range c.pats { // order-free: sorted below
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// liveView reads what the running snapshot s holds at [off, off+len(p))
// at the cut, from its in-memory exception table and the disks' caches:
// its COW's chunk where it has an exception, else its origin. It reads
// below the fault layers (view): reading the devices this way changes
// nothing in the run, and a fault rule active at the cut does not fail it.
func (c *checker) liveView(s *snapshot.Snapshot, p []byte, off int64) ([]byte, error) {
	cs := int64(s.ChunkSize()) * block.SectorSize
	cow, origin := c.view(s.COW()), c.view(s.OriginDev())
	if s.Exceptions() == 0 {
		return fill(origin, p, off)
	}
	for done := int64(0); done < int64(len(p)); {
		o := off + done
		ch, in := o/cs, o%cs
		n := min(int64(len(p))-done, cs-in)
		var err error
		if nc, ok := s.Lookup(uint64(ch)); ok {
			_, err = cow.ReadAt(p[done:done+n], int64(nc)*cs+in)
		} else {
			_, err = origin.ReadAt(p[done:done+n], o)
		}
		if err != nil {
			return nil, err
		}
		done += n
	}
	return p, nil
}
