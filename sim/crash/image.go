package crash

import (
	"bytes"
	"fmt"
	"slices"

	"snaplab/sim/block"
)

// image is the crash image of one disk at a cut, without copying the
// disk: reads see the disk's memory as it is at the cut (base, frozen
// while the state is checked: the run goes on only once the cut returns),
// except where the cut lost volatile data (lost: those sectors read their
// durable data), and except what was written to the image since (a torn
// write in flight, a planted defect, the reloaded devices' own writes:
// top). Building one costs the sectors the cut lost, not the disk's data;
// block.Mem.CrashClone, which it stands for, copies every page and maps
// fresh memory for the copy, which cost more than all of a state's checks.
//
// An image never writes to base. It is not safe for concurrent use, and
// does not outlive the check of its state.
type image struct {
	name string
	size int64
	base *block.Mem
	// lost lists, by sector, the sectors whose image content is their
	// durable data instead of base's: data nil reads zeros.
	lost []sectorData
	top  map[int64][]byte // sector -> its content written to the image (nil: zeros)
}

type sectorData struct {
	s    int64
	data []byte
}

var (
	_ block.Device    = (*image)(nil)
	_ block.FUAWriter = (*image)(nil)
	_ block.Discarder = (*image)(nil)
	_ block.Mapper    = (*image)(nil)
)

// newImage is an image of base; lost must be sorted by sector.
func newImage(base *block.Mem, lost []sectorData) *image {
	return &image{name: base.Name(), size: base.Size(), base: base, lost: lost}
}

// fork returns an image reading as im does now, whose writes im does not
// see (a reload writes to its own).
func (im *image) fork() *image {
	f := &image{name: im.name, size: im.size, base: im.base, lost: im.lost}
	if len(im.top) > 0 {
		f.top = make(map[int64][]byte, len(im.top))
		for s, b := range im.top { // order-free: copies each entry under its own key
			f.top[s] = b // entries are replaced, never changed in place
		}
	}
	return f
}

func (im *image) Name() string { return im.name }
func (im *image) Size() int64  { return im.size }
func (im *image) Flush() error { return nil }

// ReadAt reads base, then puts the lost sectors' durable data and the
// written sectors over it.
func (im *image) ReadAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange(im.name, "read", im.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	if _, err := im.base.ReadAt(p, off); err != nil {
		return 0, err
	}
	end := off + int64(len(p))
	lo, hi := off/block.SectorSize, (end+block.SectorSize-1)/block.SectorSize
	i, _ := slices.BinarySearchFunc(im.lost, lo, func(x sectorData, s int64) int { return cmpInt(x.s, s) })
	for ; i < len(im.lost) && im.lost[i].s < hi; i++ {
		im.patch(p, off, im.lost[i].s, im.lost[i].data)
	}
	if len(im.top) > 0 {
		for s := lo; s < hi; s++ {
			if b, ok := im.top[s]; ok {
				im.patch(p, off, s, b)
			}
		}
	}
	return len(p), nil
}

// patch puts data (nil: zeros) as sector s's content into p, which holds
// bytes [off, off+len(p)).
func (im *image) patch(p []byte, off, s int64, data []byte) {
	b0, b1 := max(s*block.SectorSize, off), min((s+1)*block.SectorSize, off+int64(len(p)))
	if data == nil {
		clear(p[b0-off : b1-off])
		return
	}
	copy(p[b0-off:b1-off], data[b0-s*block.SectorSize:b1-s*block.SectorSize])
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// WriteAt writes into the image's own sectors (top); the image is durable
// (a crash image does not crash again), so a FUA write is the same.
func (im *image) WriteAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange(im.name, "write", im.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	end := off + int64(len(p))
	if im.top == nil {
		im.top = map[int64][]byte{}
	}
	lo, hi := off/block.SectorSize, (end+block.SectorSize-1)/block.SectorSize
	buf := make([]byte, (hi-lo)*block.SectorSize) // the written sectors' new content, one allocation
	for s := lo; s < hi; s++ {
		sec := buf[(s-lo)*block.SectorSize : (s-lo+1)*block.SectorSize : (s-lo+1)*block.SectorSize]
		b0, b1 := max(s*block.SectorSize, off), min((s+1)*block.SectorSize, end)
		if b1-b0 < block.SectorSize { // a part of the sector: the rest is what the image holds
			if _, err := im.ReadAt(sec, s*block.SectorSize); err != nil {
				return 0, err
			}
		}
		copy(sec[b0-s*block.SectorSize:b1-s*block.SectorSize], p[b0-off:b1-off])
		if bytes.Equal(sec, zeroSector[:]) {
			sec = nil // reads zeros, maps as a hole
		}
		im.top[s] = sec
	}
	return len(p), nil
}

func (im *image) WriteAtFUA(p []byte, off int64) (int, error) { return im.WriteAt(p, off) }

// Discard writes zeros.
func (im *image) Discard(off, length int64) error {
	if err := block.CheckRange(im.name, "discard", im.size, off, length); err != nil {
		return err
	}
	zero := make([]byte, min(length, readBlock))
	for done := int64(0); done < length; done += int64(len(zero)) {
		k := min(length-done, int64(len(zero)))
		if _, err := im.WriteAt(zero[:k], off+done); err != nil {
			return err
		}
	}
	return nil
}

// Map reports as data base's data less the sectors the image reads as
// zeros instead (lost to zeros, written with zeros), and the sectors it
// reads other data from (lost, written).
func (im *image) Map(off, length int64) ([]block.Extent, error) {
	if err := block.CheckRange(im.name, "map", im.size, off, length); err != nil {
		return nil, err
	}
	if length == 0 {
		return nil, nil
	}
	ext, err := im.base.Map(off, length)
	if err != nil {
		return nil, err
	}
	end := off + length
	over := im.overrides(off/block.SectorSize, (end+block.SectorSize-1)/block.SectorSize)
	var data []extent
	i := 0
	for _, e := range ext {
		if e.Hole {
			continue
		}
		cur, eEnd := e.Off, e.Off+e.Len
		for i > 0 && (over[i-1].s+1)*block.SectorSize > e.Off {
			i-- // a sector across the end of the last extent may meet this one
		}
		for ; i < len(over) && over[i].s*block.SectorSize < eEnd; i++ {
			x := over[i]
			lo, hi := max(x.s*block.SectorSize, cur), min((x.s+1)*block.SectorSize, eEnd)
			if x.data != nil || hi <= lo {
				continue
			}
			if lo > cur {
				data = append(data, extent{cur, lo - cur})
			}
			cur = hi
		}
		if cur < eEnd {
			data = append(data, extent{cur, eEnd - cur})
		}
	}
	for _, x := range over {
		if x.data != nil {
			data = append(data, extent{x.s * block.SectorSize, block.SectorSize})
		}
	}
	var out []block.Extent
	cur := off
	for _, e := range coalesce(data, off, end) {
		if e.off > cur {
			out = append(out, block.Extent{Off: cur, Len: e.off - cur, Hole: true})
		}
		out = append(out, block.Extent{Off: e.off, Len: e.n})
		cur = e.off + e.n
	}
	if cur < end {
		out = append(out, block.Extent{Off: cur, Len: end - cur, Hole: true})
	}
	return out, nil
}

// overrides lists, by sector, the sectors in [lo, hi) the image does not
// read from base: written ones with what was written, else lost ones
// with their durable data (data nil: zeros).
func (im *image) overrides(lo, hi int64) []sectorData {
	var out []sectorData
	for s, b := range im.top { // order-free: sorted below
		if s >= lo && s < hi {
			out = append(out, sectorData{s, b})
		}
	}
	i, _ := slices.BinarySearchFunc(im.lost, lo, func(x sectorData, s int64) int { return cmpInt(x.s, s) })
	for ; i < len(im.lost) && im.lost[i].s < hi; i++ {
		if _, ok := im.top[im.lost[i].s]; !ok {
			out = append(out, im.lost[i])
		}
	}
	slices.SortFunc(out, func(a, b sectorData) int { return cmpInt(a.s, b.s) })
	return out
}

// coalesce sorts ex, clips it to [lo, hi) and merges extents that overlap
// or touch.
func coalesce(ex []extent, lo, hi int64) []extent {
	var out []extent
	for _, e := range ex {
		a, b := max(e.off, lo), min(e.off+e.n, hi)
		if a < b {
			out = append(out, extent{a, b - a})
		}
	}
	slices.SortFunc(out, func(a, b extent) int { return cmpInt(a.off, b.off) })
	merged := out[:0]
	for _, e := range out {
		if k := len(merged) - 1; k >= 0 && e.off <= merged[k].off+merged[k].n {
			merged[k].n = max(merged[k].n, e.off+e.n-merged[k].off)
			continue
		}
		merged = append(merged, e)
	}
	return merged
}

// shadow is what a disk's crash image needs besides its memory: the
// durable data of every sector written (or discarded) since the disk's
// last flush, saved before the first such write reached it. A FUA write
// makes the sectors it touches durable with their whole content, a flush
// all of them (block.Mem's cache).
type shadow struct {
	old    map[int64][]byte // sector -> durable data (nil: zeros)
	sorted []int64          // old's sectors in order, when fresh
	fresh  bool
}

// save records the durable data of the sectors of [off, off+n) not yet
// saved, read from m before a volatile write changes them.
func (sh *shadow) save(m *block.Mem, off, n int64) error {
	if n <= 0 {
		return nil
	}
	if sh.old == nil {
		sh.old = map[int64][]byte{}
	}
	lo, hi := off/block.SectorSize, (off+n+block.SectorSize-1)/block.SectorSize
	hi = min(hi, m.Size()/block.SectorSize)
	for s := lo; s < hi; s++ {
		if _, ok := sh.old[s]; ok {
			continue
		}
		sec := make([]byte, block.SectorSize)
		if _, err := m.ReadAt(sec, s*block.SectorSize); err != nil {
			return fmt.Errorf("durable data of %s at sector %d: %w", m.Name(), s, err)
		}
		if bytes.Equal(sec, zeroSector[:]) {
			sec = nil
		}
		sh.old[s] = sec
		sh.fresh = false
	}
	return nil
}

// settle forgets the sectors of [off, off+n): a FUA write made them
// durable.
func (sh *shadow) settle(off, n int64) {
	if len(sh.old) == 0 {
		return
	}
	for s := off / block.SectorSize; s*block.SectorSize < off+n; s++ {
		if _, ok := sh.old[s]; ok {
			delete(sh.old, s)
			sh.fresh = false
		}
	}
}

// flushed forgets every sector.
func (sh *shadow) flushed() {
	clear(sh.old)
	sh.sorted, sh.fresh = sh.sorted[:0], true
}

// lostBy lists, by sector, the saved sectors keep does not keep (nil keeps
// none); keep is called once per saved sector, in increasing order.
func (sh *shadow) lostBy(keep func(int64) bool) []sectorData {
	if !sh.fresh {
		sh.sorted = sh.sorted[:0]
		for s := range sh.old { // order-free: sorted below
			sh.sorted = append(sh.sorted, s)
		}
		slices.Sort(sh.sorted)
		sh.fresh = true
	}
	out := make([]sectorData, 0, len(sh.sorted))
	for _, s := range sh.sorted {
		if keep != nil && keep(s) {
			continue
		}
		out = append(out, sectorData{s, sh.old[s]})
	}
	return out
}
