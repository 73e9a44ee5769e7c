package crash

import (
	"fmt"
	"strings"
	"testing"

	"snaplab/sim/gen"
	"snaplab/sim/script"
)

// campaignCases are generated scenarios as snaplab explore makes them
// (60 ops, faults, swarm, interleave), both semantics: fault windows,
// handovers refused and merges.
func campaignCases(t testing.TB, n int) []*script.Scenario {
	t.Helper()
	var out []*script.Scenario
	for i := 0; i < n; i++ {
		sem := []string{"mainline", "seed"}[i%2]
		text, _ := gen.GenerateConfig(uint64(1+i), gen.Config{Ops: 60, Semantics: sem, Faults: true, Swarm: true, Interleave: true})
		sc, err := script.Parse(fmt.Sprintf("campaign-%s-%d.scn", sem, 1+i), text)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, sc)
	}
	return out
}

// TestRegressions: scenarios campaigns found, each of which the checker
// got wrong before (see each file's comment), keep the promise.
func TestRegressions(t *testing.T) {
	for _, tc := range []struct {
		file  string
		seeds int
	}{
		// The checker's reads of the live view went through the fault
		// layers: "the live view of snap at byte 0: ... EIO: fault site
		// cow-read".
		{"fault-window.scn", 4},
		// A valid handover destination that never took the store was
		// taken for the one holding it: "reload failed on snap2".
		{"handover-refused-source-invalid.scn", 4},
		{"handover-refused-overflowed.scn", 4},
		// A torn write of a COW's header through a linear device was not
		// seen as an invalidation (seed 130 tears it keeping sector 0).
		{"linear-cow-invalidated.scn", 130},
		// A destination loaded on a COW whose only other target never
		// held its store was taken for the holder.
		{"handover-cancelled-then-refused.scn", 4},
		// A reloaded merge invalidated another snapshot of its origin
		// before that one was checked: "reload failed on snap4".
		{"merge-invalidates-snapshot.scn", 4},
		// Not found by a campaign: a reloaded merge copies onto an origin
		// hole, which only its COW's chunks account for (noteMerges).
		{"merge-onto-hole.scn", 4},
	} {
		for _, torn := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/torn=%v", tc.file, torn), func(t *testing.T) {
				sc := parse(t, "testdata/"+tc.file)
				res, err := Check(sc, Options{Seeds: tc.seeds, Torn: torn})
				if err != nil {
					t.Fatal(err)
				}
				if res.Bad != nil {
					t.Fatalf("bad state:\n%s", res.Bad)
				}
				if !res.Run.Pass() {
					t.Fatalf("the scenario fails under the checker: %v", res.Run.Failures)
				}
			})
		}
	}
}

// TestImagesAreCrashClones: every crash image the checker builds over a
// disk's memory reads as block.Mem.CrashClone would have made it, and
// maps all its data, on the library and on campaign cases (whole and torn
// cuts, fault windows, discards, merges).
func TestImagesAreCrashClones(t *testing.T) {
	var scs []*script.Scenario
	for _, f := range library(t, "persistent-*.scn", "cow-*.scn", "handover-*.scn", "merge-*.scn") {
		scs = append(scs, parse(t, f))
	}
	scs = append(scs, parse(t, "testdata/discard-volatile.scn"))
	scs = append(scs, campaignCases(t, 8)...)
	for _, sc := range scs {
		for _, torn := range []bool{false, true} {
			res, err := Check(sc, Options{Seeds: 6, Torn: torn, checkImages: true})
			if err != nil {
				t.Fatalf("%s torn=%v: %v", sc.Name, torn, err)
			}
			if res.Bad != nil {
				t.Fatalf("%s torn=%v: bad state:\n%s", sc.Name, torn, res.Bad)
			}
		}
	}
}

// TestSparseChecksAsFull: reading only what a state touched finds what
// reading every sector finds, state by state, while reading less.
func TestSparseChecksAsFull(t *testing.T) {
	var scs []*script.Scenario
	for _, f := range library(t, "persistent-*.scn", "handover-*.scn", "merge-*.scn") {
		scs = append(scs, parse(t, f))
	}
	scs = append(scs, parse(t, "testdata/discard-volatile.scn"))
	scs = append(scs, campaignCases(t, 6)...)
	for _, sc := range scs {
		full, err := Check(sc, Options{Seeds: 4, Torn: true, fullRead: true})
		if err != nil {
			t.Fatal(err)
		}
		sparse, err := Check(sc, Options{Seeds: 4, Torn: true})
		if err != nil {
			t.Fatal(err)
		}
		if (full.Bad == nil) != (sparse.Bad == nil) || full.States != sparse.States {
			t.Fatalf("%s: full reads: %d states, bad %v; sparse: %d states, bad %v", sc.Name, full.States, full.Bad, sparse.States, sparse.Bad)
		}
		if full.Untouched != 0 || sparse.Sectors > full.Sectors {
			t.Fatalf("%s: full reads %d sectors (%d untouched), sparse %d", sc.Name, full.Sectors, full.Untouched, sparse.Sectors)
		}
		if full.Sectors > 0 && sparse.Untouched == 0 {
			t.Fatalf("%s: sparse reads judged no sector untouched (%d read)", sc.Name, sparse.Sectors)
		}
	}
}

// TestUntouchedIsChecked: data where the crash images hold none and no
// reloaded table maps a chunk is found, whether it was in an image (it is
// read) or written by the reload after its reads were planned.
func TestUntouchedIsChecked(t *testing.T) {
	junk := []byte("not written by the scenario")
	sc := parse(t, "../../scenarios/library/persistent-reload-keeps-exceptions.scn")
	for _, tc := range []struct {
		name   string
		opts   Options
		device string
		got    string
	}{
		{"junk in an origin image hole", Options{tamper: func(_ int, images []*image) {
			for _, m := range images {
				if m.Name() == "origin" {
					if _, err := m.WriteAtFUA(junk, 3<<20+100); err != nil {
						panic(err)
					}
				}
			}
		}}, "base", "data"},
		{"the reload writes an origin hole", Options{reloadTamper: func(_ int, disks map[string]*image) {
			if _, err := disks["origin"].WriteAtFUA(junk, 3<<20+100); err != nil {
				panic(err)
			}
		}}, "origin", "after the reload's reads"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Check(sc, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if res.Bad == nil {
				t.Fatalf("no bad state in %d states", res.States)
			}
			if res.Bad.Check != "written" || res.Bad.Device != tc.device || res.Bad.Sector != (3<<20)/512 || !strings.Contains(res.Bad.Got, tc.got) {
				t.Fatalf("reported %s on %s sector %d (%s), want written on %s sector %d:\n%s", res.Bad.Check, res.Bad.Device, res.Bad.Sector, res.Bad.Got, tc.device, (3<<20)/512, res.Bad)
			}
		})
	}
}

// TestSparsePlanted: defects that only what reading less must still read
// shows: data of an exception on a chunk where the origin is a hole (the
// reloaded table's chunks are read), and origin data the snapshot saw
// lost where nothing copied it (P's data is read).
func TestSparsePlanted(t *testing.T) {
	sc := parse(t, "testdata/sparse-planted.scn")
	for _, tc := range []struct {
		name   string
		tamper func(int, []*image)
		sector int64
	}{
		// COW chunk 2 holds the snapshot's write S (origin chunk 1024).
		{"flipped data of an exception over an origin hole", func(_ int, images []*image) {
			for _, m := range images {
				if m.Name() == "cow" {
					b := make([]byte, 1)
					if _, err := m.ReadAt(b, 2*4096+100); err != nil {
						panic(err)
					}
					b[0] ^= 0x5a
					if _, err := m.WriteAtFUA(b, 2*4096+100); err != nil {
						panic(err)
					}
				}
			}
		}, 4 << 20 / 512},
		// Origin chunks 1-15 (O, which the snapshot reads from the
		// origin) become a hole, wider than reads bridge (mergeGap).
		{"origin data the snapshot reads lost", func(_ int, images []*image) {
			for _, m := range images {
				if m.Name() == "origin" {
					if err := m.Discard(4096, 60<<10); err != nil {
						panic(err)
					}
				}
			}
		}, 4096 / 512},
	} {
		for _, lookup := range []bool{false, true} { // the chunks a snapshot maps from its COW's table, or looked up
			t.Run(fmt.Sprintf("%s/lookup=%v", tc.name, lookup), func(t *testing.T) {
				res, err := Check(sc, Options{tamper: tc.tamper, lookupChunks: lookup})
				if err != nil {
					t.Fatal(err)
				}
				if res.Bad == nil {
					t.Fatalf("no bad state in %d states (%d sectors read)", res.States, res.Sectors)
				}
				if res.Bad.Check != "pre-image" || res.Bad.Device != "snap" || res.Bad.Sector != tc.sector {
					t.Fatalf("reported %s on %s sector %d, want pre-image on snap sector %d:\n%s", res.Bad.Check, res.Bad.Device, res.Bad.Sector, tc.sector, res.Bad)
				}
			})
		}
	}
}
