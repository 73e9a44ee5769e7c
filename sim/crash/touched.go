package crash

import (
	"bytes"
	"fmt"
	"slices"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/exstore"
	"snaplab/sim/snapshot"
)

// A state's checks read only what a crash could have changed. An origin
// disk's content on reload is its crash image where that holds data, and
// a reloaded snapshot reads a chunk from its COW where its table maps it,
// else from the origin. Everywhere else (the rest of the origin disk: its
// image is a hole there, and no reloaded table maps the chunk) both read
// zeros, which (c) accepts, and which (a) accepts where P, what the
// snapshot saw, is a hole too. So the checks read the data extents of each
// origin's image as reloaded, the chunks the reloaded snapshot targets on
// it map (a snapshot-merge copies those onto the origin as it runs), and
// for (a) the data extents of P; and once every read of a state is done,
// each origin so checked must still be a hole everywhere else (no reloaded
// target wrote outside the chunks it maps): checkUntouched. The cost of a
// state is then what the scenario wrote, not the size of its devices.

// extent is the bytes [off, off+n).
type extent struct{ off, n int64 }

// mergeGap is the largest hole between two extents read as one: one read
// costs more than checking the sectors of a small hole with it.
const mergeGap = 32 << 10

// normalize sorts ex, clips it to [0, size), aligns it to sectors and
// merges extents that overlap or lie less than mergeGap apart.
func normalize(ex []extent, size int64) []extent {
	var out []extent
	for _, e := range ex {
		lo, hi := max(e.off, 0), min(e.off+e.n, size)
		lo -= lo % block.SectorSize
		if r := hi % block.SectorSize; r != 0 {
			hi = min(hi+block.SectorSize-r, size)
		}
		if lo < hi {
			out = append(out, extent{lo, hi - lo})
		}
	}
	slices.SortFunc(out, func(a, b extent) int {
		switch {
		case a.off < b.off:
			return -1
		case a.off > b.off:
			return 1
		}
		return 0
	})
	merged := out[:0]
	for _, e := range out {
		if k := len(merged) - 1; k >= 0 && e.off <= merged[k].off+merged[k].n+mergeGap {
			merged[k].n = max(merged[k].n, e.off+e.n-merged[k].off)
			continue
		}
		merged = append(merged, e)
	}
	return merged
}

// extentSectors is the number of sectors ex covers (ex normalized).
func extentSectors(ex []extent) int64 {
	n := int64(0)
	for _, e := range ex {
		n += e.n / block.SectorSize
	}
	return n
}

// mapped is a device that maps its data (a block.Mem, an image).
type mapped interface {
	Size() int64
	Map(off, length int64) ([]block.Extent, error)
}

// dataExtents lists where m holds data.
func dataExtents(m mapped) []extent {
	ext, err := m.Map(0, m.Size())
	if err != nil { // the whole device is a valid range
		return []extent{{0, m.Size()}}
	}
	var out []extent
	for _, e := range ext {
		if !e.Hole {
			out = append(out, extent{e.Off, e.Len})
		}
	}
	return out
}

// noteTouched records, right after the reload of the first phase and
// before any read, what the reads of each origin disk of the state's
// devices depend on: its data extents as reloaded, and the chunks every
// reloaded snapshot target on it maps to its COW (noteMerges adds those of
// the second phase).
func (st *state) noteTouched(r *reload) {
	st.touched = map[string][]extent{}
	for _, rd := range st.devs {
		o := rd.originOf
		if rd.snap != nil {
			o = rd.snap.OriginDev().Name()
		}
		if m := r.mems[o]; m != nil && st.touched[o] == nil {
			st.touched[o] = normalize(dataExtents(m), m.Size())
		}
	}
	for _, md := range r.ctl.Devices() {
		t := md.Live()
		if t == nil {
			continue
		}
		for _, ti := range t.Targets {
			rs, ok := ti.Target.(*snapshot.Snapshot)
			if !ok || rs.Exceptions() == 0 || rs.ChunkSize() == 0 {
				continue
			}
			o := rs.OriginDev().Name()
			ex, ok := st.touched[o]
			if !ok {
				continue // not a scenario disk: read in full
			}
			st.touched[o] = normalize(append(ex, mappedChunks(r, rs, r.mems[o].Size(), st.c.opts.lookupChunks)...), r.mems[o].Size())
		}
	}
}

// mappedChunks lists the chunks of [0, size) the reloaded snapshot target
// rs maps to its COW: those its COW's exception table lists, when rs maps
// each of them and no other (as many as it holds), else every chunk rs
// maps, looked up one by one (always with lookup).
func mappedChunks(r *reload, rs *snapshot.Snapshot, size int64, lookup bool) []extent {
	cs := int64(rs.ChunkSize()) * block.SectorSize
	var out []extent
	if cow := r.mems[rs.COW().Name()]; cow != nil && !lookup {
		if im, err := exstore.Inspect(cow); err == nil && !im.Fresh {
			seen := map[uint64]bool{}
			for _, x := range im.Exceptions {
				if _, ok := rs.Lookup(x.Old); !ok || seen[x.Old] {
					continue
				}
				seen[x.Old] = true
				if int64(x.Old)*cs < size {
					out = append(out, extent{int64(x.Old) * cs, cs})
				}
			}
			if len(seen) == rs.Exceptions() {
				return out
			}
		}
	}
	out = out[:0]
	for ch := int64(0); ch*cs < size; ch++ {
		if _, ok := rs.Lookup(uint64(ch)); ok {
			out = append(out, extent{ch * cs, cs})
		}
	}
	return out
}

// noteMerges adds to what each origin's reads depend on the chunks the
// snapshot-merge tables of the second phase may copy onto it: every
// exception their COW holds in the reload before they are created (a
// merge only removes them, so that table holds them all; its chunk size
// is the COW's), read from the COW's image, or through the linear device
// it is on. A merge whose COW cannot be read so makes its origin read
// everything.
func (st *state) noteMerges(r *reload, later []*reloadDev) {
	for _, rd := range later {
		if rd.snap == nil || !rd.snap.IsMerge() {
			continue
		}
		o := rd.snap.OriginDev().Name()
		ex, ok := st.touched[o]
		if !ok {
			continue
		}
		var im *exstore.Image
		switch n := r.ctl.Node(rd.snap.COW().Name()).(type) {
		case *dm.Disk:
			im, _ = exstore.Inspect(n.Device)
		case *dm.MappedDevice:
			im, _ = exstore.Inspect(n) // linear: read synchronously
		}
		size := st.c.diskNamed(o).mem.Size()
		if im == nil || im.Fresh {
			st.touched[o] = []extent{{0, size}}
			continue
		}
		cs := int64(im.Header.ChunkSize) * block.SectorSize
		for _, x := range im.Exceptions {
			ex = append(ex, extent{int64(x.Old) * cs, cs})
		}
		st.touched[o] = normalize(ex, size)
	}
}

// readSet is what the reads of origin o depend on (noteTouched); ok is
// false when they must read everything (o is not a scenario disk, or
// Options.fullRead).
func (st *state) readSet(o string) ([]extent, bool) {
	if st.c.opts.fullRead {
		return nil, false
	}
	ex, ok := st.touched[o]
	if ok {
		st.sparse = append(st.sparse, o)
	}
	return ex, ok
}

// checkUntouched is the check of what the reads skipped: every origin
// read in part is, after all the state's reads and once everything the
// reload started has run to its end (a merge), still a hole outside what
// they read (touched), so it read zeros there.
func (st *state) checkUntouched(r *reload) (*Bad, error) {
	r.w.Run()
	names := slices.Clone(st.sparse)
	slices.Sort(names)
	names = slices.Compact(names)
	for _, o := range names {
		m, ex := r.mems[o], st.touched[o]
		for _, e := range dataExtents(m) {
			for x := e.off / block.SectorSize; x < (e.off+e.n)/block.SectorSize; x++ {
				if inExtents(ex, x*block.SectorSize) {
					continue
				}
				sec := make([]byte, block.SectorSize)
				if _, err := m.ReadAt(sec, x*block.SectorSize); err != nil {
					return nil, fmt.Errorf("crash check of %s, %s: read of reloaded disk %s at sector %d: %w", st.c.sc.Name, st.cut, o, x, err)
				}
				if bytes.Equal(sec, zeroSector[:]) {
					continue // an allocated page holding zeros
				}
				return st.bad("written", o, uint64(x/st.originChunk(o)), x, "a hole, as the crash image held: nothing written there, and no reloaded table maps the chunk",
					st.c.describe(sec, x, nil)+", after the reload's reads"), nil
			}
		}
	}
	return nil, nil
}

// originChunk is the chunk size, in sectors, reports on origin o count
// in: that of its first reloaded snapshot, else 8.
func (st *state) originChunk(o string) int64 {
	for _, rd := range st.devs {
		if rd.snap != nil && rd.snap.OriginDev().Name() == o && rd.chunk > 0 {
			return rd.chunk
		}
	}
	return 8
}

// inExtents reports whether byte off lies in ex (normalized).
func inExtents(ex []extent, off int64) bool {
	i, _ := slices.BinarySearchFunc(ex, off, func(e extent, off int64) int {
		switch {
		case e.off+e.n <= off:
			return -1
		case e.off > off:
			return 1
		}
		return 0
	})
	return i < len(ex) && ex[i].off <= off && off < ex[i].off+ex[i].n
}
