package oracle

import (
	"math/rand/v2"
	"testing"
)

// checkRuns compares r with a plain array model of sectors [0, n) and
// checks r's invariants.
func checkRuns(t *testing.T, r *runs, model []uint32) {
	t.Helper()
	var prevKey int64 = -1
	var prevVal uint32
	for li, lf := range r.leaves {
		if len(lf.offs) == 0 || len(lf.offs) != len(lf.vals) || len(lf.offs) > maxLeaf {
			t.Fatalf("leaf %d: %d keys, %d vals", li, len(lf.offs), len(lf.vals))
		}
		if r.firsts[li] != lf.key(0) {
			t.Fatalf("leaf %d: first %d, keys start %d", li, r.firsts[li], lf.key(0))
		}
		for i := range lf.offs {
			k := lf.key(i)
			if k <= prevKey {
				t.Fatalf("keys out of order: %d after %d", k, prevKey)
			}
			if lf.vals[i] == prevVal {
				t.Fatalf("boundary %d repeats value %d", k, prevVal)
			}
			prevKey, prevVal = k, lf.vals[i]
		}
	}
	if prevVal != 0 {
		t.Fatalf("last run has value %d, want 0", prevVal)
	}
	if model == nil {
		return
	}
	for x, want := range model {
		if got := r.at(int64(x)); got != want {
			t.Fatalf("sector %d: %d, want %d", x, got, want)
		}
	}
	// each covers a range exactly, with maximal runs.
	lo, hi := int64(len(model)/3), int64(len(model))
	next := lo
	var last uint32 = 1 << 31
	r.each(lo, hi, func(a, b int64, v uint32) {
		if a != next || b <= a || v == last {
			t.Fatalf("each: run [%d,%d)=%d after %d (value %d)", a, b, v, next, last)
		}
		for x := a; x < b; x++ {
			if model[x] != v {
				t.Fatalf("each: sector %d in run [%d,%d)=%d holds %d", x, a, b, v, model[x])
			}
		}
		next, last = b, v
	})
	if next != hi {
		t.Fatalf("each ended at %d, want %d", next, hi)
	}
}

func TestRunsAgainstArray(t *testing.T) {
	for _, n := range []int{50, 3000, 40000} {
		rng := rand.New(rand.NewPCG(uint64(n), 1))
		r := &runs{}
		model := make([]uint32, n)
		for step := range 4000 {
			lo := rng.IntN(n)
			hi := lo + 1 + rng.IntN(min(n-lo, 1+rng.IntN(64)))
			if rng.IntN(50) == 0 {
				hi = lo + rng.IntN(n-lo) + 1
			}
			v := uint32(rng.IntN(4))
			r.set(int64(lo), int64(hi), v)
			for x := lo; x < hi; x++ {
				model[x] = v
			}
			if step%97 == 0 || n < 100 {
				checkRuns(t, r, model)
			}
		}
		checkRuns(t, r, model)
		r.set(0, int64(n), 0)
		if !r.empty() {
			t.Fatalf("cleared: %d boundaries left", r.count())
		}
	}
}

// Runs written in increasing order fill their leaves.
func TestRunsSequentialFill(t *testing.T) {
	r := &runs{}
	for i := range int64(100000) {
		r.set(2*i, 2*i+1, 1)
	}
	if n, want := len(r.leaves), 200000/maxLeaf+1; n > want {
		t.Fatalf("%d leaves for 200000 boundaries, want at most %d", n, want)
	}
	if r.at(199998) != 1 || r.at(199999) != 0 || r.at(-5) != 0 {
		t.Fatal("wrong values")
	}
}

// stepModel is a plain step function: sorted boundaries, for keys too
// sparse for an array.
type stepModel struct {
	keys []int64
	vals []uint32
}

func (m *stepModel) at(x int64) uint32 {
	v := uint32(0)
	for i, k := range m.keys {
		if k > x {
			break
		}
		v = m.vals[i]
	}
	return v
}

func (m *stepModel) set(lo, hi int64, v uint32) {
	vhi := m.at(hi)
	var keys []int64
	var vals []uint32
	last := uint32(0)
	add := func(k int64, x uint32) {
		if x != last {
			keys, vals, last = append(keys, k), append(vals, x), x
		}
	}
	done := false
	for i, k := range m.keys {
		if k >= lo && !done {
			add(lo, v)
			add(hi, vhi)
			done = true
		}
		if k < lo || k > hi {
			add(k, m.vals[i])
		}
	}
	if !done {
		add(lo, v)
		add(hi, vhi)
	}
	m.keys, m.vals = keys, vals
}

// Keys farther apart than a leaf's 32-bit offsets reach (disks past
// 2 TiB) get leaves of their own; everything still agrees with the model.
func TestRunsSparseKeys(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 3))
		r, m := &runs{}, &stepModel{}
		spread := int64(1) << (30 + rng.IntN(24))
		for step := range 600 {
			lo := rng.Int64N(spread)
			n := 1 + rng.Int64N(64)
			if rng.IntN(8) == 0 {
				n = 1 + rng.Int64N(spread)
			}
			v := uint32(rng.IntN(3))
			r.set(lo, lo+n, v)
			m.set(lo, lo+n, v)
			checkRuns(t, r, nil)
			if len(r.leaves) > 0 && r.count() != len(m.keys) {
				t.Fatalf("seed %d step %d: %d boundaries, model %d", seed, step, r.count(), len(m.keys))
			}
			for i, k := range m.keys {
				for _, x := range []int64{k - 1, k, k + 1} {
					if got, want := r.at(x), m.at(x); got != want {
						t.Fatalf("seed %d step %d: sector %d holds %d, want %d (boundary %d)", seed, step, x, got, want, i)
					}
				}
			}
		}
	}
}

func BenchmarkRunsRandomSet(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	r := &runs{}
	for b.Loop() {
		x := rng.Int64N(1 << 31)
		r.set(x, x+8, 1)
	}
}
