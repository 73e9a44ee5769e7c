package exstore

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"snaplab/sim/block"
)

// TestCrashKeepsExactlyAcknowledged drives the persistent store on
// block.Mem (a disk with a volatile write cache) and, between calls, takes
// crash images that keep a random subset of the unflushed sectors. The
// kernel's write order (zero the next area with a plain write, then write
// the current area with PREFLUSH|FUA, then call back) means every crash
// image holds exactly the exceptions whose callbacks reported success: no
// more (a batch is written only when its callbacks run) and no fewer. The
// COW holds garbage beyond area 0, so an area that was not zeroed before
// the one before it was written would show up as extra exceptions.
func TestCrashKeepsExactlyAcknowledged(t *testing.T) {
	const chunks = 300 // chunk 1: E = 32, areas at 1, 34, 67, ...
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			m, err := block.NewMem("cow", chunks*512)
			if err != nil {
				t.Fatal(err)
			}
			// lvcreate zeroes the start of the COW; the rest is old data.
			junk := bytes.Repeat([]byte{0xa5}, (chunks-2)*512)
			if _, err := m.WriteAt(junk, 2*512); err != nil {
				t.Fatal(err)
			}
			if err := m.Flush(); err != nil {
				t.Fatal(err)
			}
			s, err := New([]string{"P", "1"}, m, 512, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.ReadMetadata(nil); err != nil {
				t.Fatal(err)
			}
			var acked []pair
			var inflight []pair
			firstWritten := false
			check := func(step int) {
				keep := func(int64) bool { return rng.IntN(2) == 0 }
				clone := m.CrashClone(keep)
				im, err := Inspect(clone)
				if err != nil {
					t.Fatalf("step %d: crash image does not decode: %v", step, err)
				}
				if im.Fresh {
					if firstWritten {
						t.Fatalf("step %d: header lost after an area write with PREFLUSH", step)
					}
					return
				}
				var got []pair
				for _, x := range im.Exceptions {
					got = append(got, pair{x.Old, x.New})
				}
				if !slices.Equal(got, acked) {
					t.Fatalf("step %d: crash image has %d exceptions, %d acknowledged\n got %v\nwant %v", step, len(got), len(acked), got, acked)
				}
				// The kernel reloads the image to the same table.
				s2, _ := New([]string{"P", "1"}, clone, 512, nil)
				var loaded []pair
				if _, err := s2.ReadMetadata(func(o, n uint64) error { loaded = append(loaded, pair{o, n}); return nil }); err != nil || !slices.Equal(loaded, acked) {
					t.Fatalf("step %d: reload of crash image: %v, %d exceptions, want %d", step, err, len(loaded), len(acked))
				}
			}
			check(-1)
			for step := 0; step < 400; step++ {
				if len(inflight) < 5 && rng.IntN(3) != 0 {
					c, err := s.Prepare()
					if err != nil {
						break // full
					}
					inflight = append(inflight, pair{uint64(10000 + step), c})
				} else if len(inflight) > 0 {
					p := inflight[0]
					inflight = inflight[1:]
					s.Commit(p.old, p.new, true, func(ok bool) {
						if !ok {
							t.Fatalf("commit failed")
						}
						acked = append(acked, p)
						firstWritten = true
					})
				}
				check(step)
			}
			if len(acked) < 2*32 {
				t.Fatalf("only %d exceptions acknowledged: the run did not cross areas", len(acked))
			}
			// Drop rewrites the header with a plain write: invalidation is
			// durable only after a later flush, as in the kernel.
			s.Drop()
			if im, _ := Inspect(m.CrashClone(nil)); im.Header.Valid != 1 {
				t.Errorf("unflushed Drop survived a crash that kept nothing")
			}
			if im, _ := Inspect(m.CrashClone(func(int64) bool { return true })); im.Header.Valid != 0 {
				t.Errorf("Drop's header is not in the cache")
			}
		})
	}
}
