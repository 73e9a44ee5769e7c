package oracle

import (
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/pattern"
	"snaplab/sim/world"
)

// The hash store against a plain per-sector model: puts and clears of
// random ranges, and a block goes once none of its sectors is held.
func TestHashesModel(t *testing.T) {
	var used int64
	h := &hashes{used: &used}
	const n = 4096
	model := make([]uint64, n)
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range 5000 {
		lo := rng.Int64N(n)
		hi := min(n, lo+1+rng.Int64N(40))
		if rng.IntN(3) == 0 {
			h.clear(lo, hi)
			for s := lo; s < hi; s++ {
				model[s] = 0
			}
		} else {
			hs := make([]uint64, hi-lo)
			for j := range hs {
				hs[j] = rng.Uint64() | 1
				model[lo+int64(j)] = hs[j]
			}
			h.put(lo, hs)
		}
		if i%97 == 0 || i == 4999 {
			want := 0
			for b := 0; b < n; b += hashBlock {
				held := false
				for s := b; s < b+hashBlock; s++ {
					if h.at(int64(s)) != model[s] {
						t.Fatalf("step %d: sector %d hash %x, want %x", i, s, h.at(int64(s)), model[s])
					}
					held = held || model[s] != 0
				}
				if held {
					want++
				}
			}
			if h.blocks() != want || used != int64(want) {
				t.Fatalf("step %d: %d blocks held (%d counted), want %d", i, h.blocks(), used, want)
			}
		}
	}
	h.clear(0, n)
	if h.blocks() != 0 || used != 0 || !h.idx.empty() {
		t.Fatalf("after clearing all: %d blocks, %d counted", h.blocks(), used)
	}
}

// diskOracle is an oracle on a 1 MiB disk a.
func diskOracle(t *testing.T) (*Oracle, dm.Node) {
	t.Helper()
	ctl := dm.NewControl(world.New(0))
	o := New(ctl)
	m, err := block.NewMem("a", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	node, err := ctl.AddDisk(m, 512)
	if err != nil {
		t.Fatal(err)
	}
	return o, node
}

func randomData(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	return p
}

// Outside writes are known: arbitrary data by hash, patterns and zeros by
// name; a read of other data fails naming the device, sector and offset.
// Failed writes and discards leave their sectors unknown.
func TestOutsideWritesAreChecked(t *testing.T) {
	o, d := diskOracle(t)
	o.SetPatterns([]string{"A"})
	data := randomData(1, 8192)
	o.EndWrite(o.BeginWriteData(d, 4096, data), nil)
	pat := make([]byte, 4096)
	pattern.Fill(pat, "A", 64<<10)
	w := o.BeginWriteData(d, 64<<10, pat)
	if w.w.x < firstPattern || w.w.hs != nil {
		t.Fatalf("pattern A at its offset not known as A: value %d", w.w.x)
	}
	o.EndWrite(w, nil)
	if z := o.BeginWriteData(d, 128<<10, make([]byte, 4096)); z.w.x != zeroVal {
		t.Fatalf("zeros not known as zeros: value %d", z.w.x)
	} else {
		o.EndWrite(z, nil)
	}
	check := func(off int64, p []byte) error { return o.CheckRead(o.BeginRead(d, off, int64(len(p))), p, nil, false) }
	if err := check(4096, data); err != nil {
		t.Fatalf("the data written: %v", err)
	}
	if err := check(4096+1024, data[1024:3072]); err != nil {
		t.Fatalf("part of it: %v", err)
	}
	if err := check(64<<10, pat); err != nil {
		t.Fatalf("pattern: %v", err)
	}
	bad := append([]byte(nil), data...)
	bad[5000] ^= 1
	err := check(4096, bad)
	if err == nil || !strings.Contains(err.Error(), "oracle: a sector 17 (offset 8704): data is not the data written from outside") {
		t.Fatalf("a wrong byte: %v", err)
	}
	bad = append([]byte(nil), pat...)
	bad[100] ^= 1
	if err := check(64<<10, bad); err == nil || !strings.Contains(err.Error(), `oracle: a sector 128 (offset 65536): data is not "A" (model), data differs at offset 65636`) {
		t.Fatalf("a wrong byte in a pattern: %v", err)
	}
	// Pattern A at another offset is not A here.
	pattern.Fill(bad, "A", 0)
	if err := check(64<<10, bad); err == nil {
		t.Fatal("pattern A as written at offset 0 passes at offset 64 KiB")
	}

	// A failed write: its sectors hold the old data or the new, unknown.
	o.EndWrite(o.BeginWriteData(d, 4096, randomData(2, 4096)), &block.Error{Dev: "a", Errno: syscall.EIO})
	if err := check(4096, randomData(3, 4096)); err != nil {
		t.Fatalf("after a failed write: %v", err)
	}
	if err := check(8192, randomData(3, 4096)); err == nil {
		t.Fatal("the sectors after the failed write's are no longer checked")
	}
	// A discard from outside: unknown.
	o.EndWrite(o.BeginWrite(d, 8192, 4096, ""), nil)
	if err := check(8192, randomData(3, 4096)); err != nil {
		t.Fatalf("after a discard: %v", err)
	}
	// Sectors overwritten by a pattern drop their hashes.
	if o.hashBlocks != 0 {
		t.Fatalf("%d hash blocks held after every hashed sector was overwritten", o.hashBlocks)
	}
}

// A read racing an outside write may see the old data or the new.
func TestOutsideWriteInFlight(t *testing.T) {
	o, d := diskOracle(t)
	old, neu := randomData(1, 4096), randomData(2, 4096)
	o.EndWrite(o.BeginWriteData(d, 0, old), nil)
	e := o.BeginRead(d, 0, 4096)
	w := o.BeginWriteData(d, 0, neu)
	for _, p := range [][]byte{old, neu} {
		if err := o.CheckRead(e, p, nil, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.CheckRead(e, randomData(3, 4096), nil, false); err == nil {
		t.Fatal("other data passes")
	}
	o.EndWrite(w, nil)
	// The read sampled before: the old data still passes for it, the new
	// too (the model now); a fresh read wants the new.
	if err := o.CheckRead(e, old, nil, false); err != nil {
		t.Fatal(err)
	}
	if err := o.CheckRead(o.BeginRead(d, 0, 4096), old, nil, false); err == nil {
		t.Fatal("old data passes after the write")
	}
}

// Past the budget, outside writes of arbitrary data leave their sectors
// unknown (counted in Unhashed) instead of growing: the blocks held stay
// within it.
func TestHashBudget(t *testing.T) {
	o, d := diskOracle(t)
	o.HashBudget = 64 // sectors: 8 blocks
	for i := range int64(16) {
		o.EndWrite(o.BeginWriteData(d, i*4096, randomData(uint64(i), 4096)), nil)
		if o.hashBlocks*hashBlock > o.HashBudget {
			t.Fatalf("write %d: %d blocks held, budget %d sectors", i, o.hashBlocks, o.HashBudget)
		}
	}
	if o.Unhashed == 0 {
		t.Fatal("nothing left unknown past the budget")
	}
	// The first writes are checked, the last ones accept anything.
	if err := o.CheckRead(o.BeginRead(d, 0, 4096), randomData(99, 4096), nil, false); err == nil {
		t.Error("a write within the budget is not checked")
	}
	if err := o.CheckRead(o.BeginRead(d, 15*4096, 4096), randomData(99, 4096), nil, false); err != nil {
		t.Errorf("a write past the budget is checked: %v", err)
	}
	// Overwriting hashed sectors with a pattern frees their blocks: the
	// budget serves new writes again.
	o.EndWrite(o.BeginWrite(d, 0, 16*4096, "A"), nil)
	if o.hashBlocks != 0 {
		t.Fatalf("%d blocks held", o.hashBlocks)
	}
	o.EndWrite(o.BeginWriteData(d, 0, randomData(7, 4096)), nil)
	if err := o.CheckRead(o.BeginRead(d, 0, 4096), randomData(99, 4096), nil, false); err == nil {
		t.Error("a write after freeing the budget is not checked")
	}
}
