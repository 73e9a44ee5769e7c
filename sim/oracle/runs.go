package oracle

import (
	"math"
	"slices"
)

// runs maps sectors to values (small integers, 0 meaning "no value") as a
// step function: sorted boundaries, each the first sector of a run of
// sectors holding the same value up to the next boundary. Neighbouring runs
// of the same value are one run, and sectors before the first boundary hold
// 0, so memory grows with the number of runs, not sectors: a whole 1 TiB
// device set to one value is two boundaries.
//
// The boundaries are kept in leaves of at most maxLeaf, in order; firsts
// holds each leaf's first key, for a binary search. Inserting into a leaf
// moves at most maxLeaf entries, and splitting one moves the leaf index
// (one word a leaf), so a run set of a million runs stays fast without a
// deeper tree. A leaf holds its keys as 32-bit offsets from a base of its
// own, so a boundary costs 8 bytes: 1 GiB of random 4 KiB writes on a 1 TiB
// disk (two boundaries each) is held in about 6 MiB.
//
// Sectors holding hashVal (arbitrary data from outside) have their content
// hashes in h (hashes.go); setting any other value forgets them.
type runs struct {
	firsts []int64
	leaves []*leaf
	h      *hashes
}

// leaf holds boundaries base+offs[i] with values vals[i]. Every key of a
// leaf lies in [base, base+maxOff].
type leaf struct {
	base int64
	offs []uint32
	vals []uint32
}

const (
	maxLeaf = 256
	maxOff  = math.MaxUint32
)

func (lf *leaf) key(i int) int64 { return lf.base + int64(lf.offs[i]) }

func (lf *leaf) last() int64 { return lf.key(len(lf.offs) - 1) }

// search returns the index of the first key > x.
func (lf *leaf) search(x int64) int {
	if x < lf.base {
		return 0
	}
	if x-lf.base >= maxOff {
		return len(lf.offs)
	}
	// The first offset > x-base.
	i, _ := slices.BinarySearch(lf.offs, uint32(x-lf.base)+1)
	return i
}

// fits reports whether k can be a key of lf, moving its base down if need
// be.
func (lf *leaf) fits(k int64) bool {
	if k >= lf.base {
		return k-lf.base <= maxOff
	}
	return len(lf.offs) == 0 || lf.last()-k <= maxOff
}

// put inserts (k, v) at index i; k fits.
func (lf *leaf) put(i int, k int64, v uint32) {
	if k < lf.base {
		d := uint32(lf.base - k)
		for j := range lf.offs {
			lf.offs[j] += d
		}
		lf.base = k
	}
	if len(lf.offs) == cap(lf.offs) || len(lf.vals) == cap(lf.vals) {
		// Grow by doubling up to the size that splits, not beyond.
		c := min(max(2*len(lf.offs), 4), maxLeaf+1)
		lf.offs = append(make([]uint32, 0, c), lf.offs...)
		lf.vals = append(make([]uint32, 0, c), lf.vals...)
	}
	lf.offs = slices.Insert(lf.offs, i, uint32(k-lf.base))
	lf.vals = slices.Insert(lf.vals, i, v)
}

// pos addresses one boundary: leaf l, index i.
type pos struct{ l, i int }

// empty reports whether every sector holds 0.
func (r *runs) empty() bool { return len(r.leaves) == 0 }

// after returns the position of the first boundary with key > x (possibly
// one past the last: l == len(r.leaves)).
func (r *runs) after(x int64) pos {
	// The last leaf whose first key is <= x.
	l, _ := slices.BinarySearch(r.firsts, x+1)
	l--
	if l < 0 {
		return pos{0, 0}
	}
	lf := r.leaves[l]
	i := lf.search(x)
	if i == len(lf.offs) {
		return pos{l + 1, 0}
	}
	return pos{l, i}
}

// before returns the value of the boundary just before p (0 if none).
func (r *runs) before(p pos) uint32 {
	if p.i > 0 {
		return r.leaves[p.l].vals[p.i-1]
	}
	if p.l > 0 {
		lf := r.leaves[p.l-1]
		return lf.vals[len(lf.vals)-1]
	}
	return 0
}

// key returns the key at p, or MaxInt64 past the end.
func (r *runs) key(p pos) int64 {
	if p.l >= len(r.leaves) {
		return math.MaxInt64
	}
	return r.leaves[p.l].key(p.i)
}

// val returns the value at p (not past the end).
func (r *runs) val(p pos) uint32 { return r.leaves[p.l].vals[p.i] }

func (r *runs) next(p pos) pos {
	p.i++
	if p.i == len(r.leaves[p.l].offs) {
		return pos{p.l + 1, 0}
	}
	return p
}

// at returns the value of sector x.
func (r *runs) at(x int64) uint32 { return r.before(r.after(x)) }

// each calls fn for the runs covering [lo, hi) in order, clipped to it;
// fn may not change r.
func (r *runs) each(lo, hi int64, fn func(lo, hi int64, v uint32)) {
	if lo >= hi {
		return
	}
	p := r.after(lo)
	v := r.before(p)
	for lo < hi {
		k := min(r.key(p), hi)
		fn(lo, k, v)
		if k == hi {
			return
		}
		v = r.val(p)
		lo = k
		p = r.next(p)
	}
}

// set gives sectors [lo, hi) value v (0 clears them).
func (r *runs) set(lo, hi int64, v uint32) {
	if lo >= hi {
		return
	}
	if r.h != nil && v != hashVal {
		r.h.clear(lo, hi)
	}
	if len(r.leaves) == 0 {
		if v == 0 {
			return
		}
		lf := &leaf{base: lo}
		lf.put(0, lo, v)
		if !lf.fits(hi) {
			r.firsts = append(r.firsts, lo)
			r.leaves = append(r.leaves, lf)
			r.insert(pos{1, 0}, hi, 0)
			return
		}
		lf.put(1, hi, 0)
		r.firsts = append(r.firsts, lo)
		r.leaves = append(r.leaves, lf)
		return
	}
	pl := r.after(lo - 1) // first boundary >= lo
	vlo := r.before(pl)   // the value just before lo
	// ph is the first boundary > hi: usually a few steps from pl.
	ph, vhi := pl, vlo
	for n := 0; r.key(ph) <= hi; n++ {
		if n == 8 {
			ph = r.after(hi)
			vhi = r.before(ph)
			break
		}
		vhi = r.val(ph)
		ph = r.next(ph)
	}
	r.cut(pl, ph)
	// No boundary is left in [lo, hi]: pl is where one at lo or hi goes.
	if vlo != v {
		p := r.insert(pl, lo, v)
		if vhi != v {
			p.i++
			r.insert(p, hi, vhi)
		}
	} else if vhi != v {
		r.insert(pl, hi, vhi)
	}
}

// cut removes the boundaries in [a, b).
func (r *runs) cut(a, b pos) {
	if a == b {
		return
	}
	if a.l == b.l {
		lf := r.leaves[a.l]
		// b is inside the leaf (or it would be the next one's start):
		// the leaf keeps an entry.
		lf.offs = slices.Delete(lf.offs, a.i, b.i)
		lf.vals = slices.Delete(lf.vals, a.i, b.i)
		r.firsts[a.l] = lf.key(0)
		return
	}
	// Leaves a.l+1 .. b.l-1 go whole; a.l keeps its head, b.l its tail.
	first := a.l + 1
	if a.i == 0 {
		first = a.l
	} else {
		lf := r.leaves[a.l]
		lf.offs, lf.vals = lf.offs[:a.i], lf.vals[:a.i]
	}
	if b.l < len(r.leaves) && b.i > 0 {
		lf := r.leaves[b.l]
		lf.offs = slices.Delete(lf.offs, 0, b.i)
		lf.vals = slices.Delete(lf.vals, 0, b.i)
		r.firsts[b.l] = lf.key(0)
	}
	r.firsts = slices.Delete(r.firsts, first, b.l)
	r.leaves = slices.Delete(r.leaves, first, b.l)
}

// insert adds boundary (k, v) at p, the position of the first key > k
// (with no boundary at k), or the end of the leaf before it. It returns
// where k is now.
func (r *runs) insert(p pos, k int64, v uint32) pos {
	if len(r.leaves) == 0 {
		lf := &leaf{base: k}
		lf.put(0, k, v)
		r.firsts = append(r.firsts, k)
		r.leaves = append(r.leaves, lf)
		return pos{0, 0}
	}
	if p.i == len(r.leaves[min(p.l, len(r.leaves)-1)].offs) && p.l < len(r.leaves) {
		p = pos{p.l + 1, 0} // the end of a leaf is the start of the next
	}
	if p.i == 0 && p.l > 0 {
		// Between two leaves: append to the previous one rather than
		// prepend to the next, unless it is full or k is out of its reach.
		if prev := r.leaves[p.l-1]; len(prev.offs) < maxLeaf && prev.fits(k) || p.l == len(r.leaves) || !r.leaves[p.l].fits(k) {
			p = pos{p.l - 1, len(prev.offs)}
		}
	}
	lf := r.leaves[p.l]
	if !lf.fits(k) {
		// k is more than 2^32 sectors from the leaf's other keys: a leaf
		// of its own.
		nl := &leaf{base: k}
		nl.put(0, k, v)
		at := p.l
		if p.i > 0 {
			at = p.l + 1
		}
		r.leaves = slices.Insert(r.leaves, at, nl)
		r.firsts = slices.Insert(r.firsts, at, k)
		return pos{at, 0}
	}
	lf.put(p.i, k, v)
	r.firsts[p.l] = lf.key(0)
	if len(lf.offs) > maxLeaf {
		if m := r.split(p.l, p.i); p.i >= m {
			p = pos{p.l + 1, p.i - m}
		}
	}
	return p
}

// split cuts the full leaf l in two, before the entry just inserted at i
// when that was its end (runs written in increasing order then fill their
// leaves), else in the middle. It returns the length of the left part.
func (r *runs) split(l, i int) int {
	lf := r.leaves[l]
	n := len(lf.offs)
	m := n / 2
	if i == n-1 {
		m = n - 1
	}
	first := lf.key(m)
	right := &leaf{base: first, offs: make([]uint32, n-m, n-m+n/4), vals: make([]uint32, n-m, n-m+n/4)}
	d := lf.offs[m]
	for j := m; j < n; j++ {
		right.offs[j-m] = lf.offs[j] - d
	}
	copy(right.vals, lf.vals[m:])
	lf.offs, lf.vals = lf.offs[:m], lf.vals[:m]
	r.leaves = slices.Insert(r.leaves, l+1, right)
	r.firsts = slices.Insert(r.firsts, l+1, first)
	return m
}

// count returns the number of boundaries (for tests and sizes).
func (r *runs) count() int {
	n := 0
	for _, lf := range r.leaves {
		n += len(lf.offs)
	}
	return n
}
