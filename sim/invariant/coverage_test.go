package invariant_test

import (
	"slices"
	"strings"
	"testing"

	"snaplab/sim/invariant"
	"snaplab/sim/run"
	"snaplab/sim/script"
)

// Each coverage property is reached by a small scenario, and counted in
// the run's report; the scenarios pass (no invariant breaks on the way).
func TestCoveragePropertiesReached(t *testing.T) {
	for _, c := range []struct {
		prop string
		scn  string
		want int
	}{{
		prop: invariant.HandoverCopiesInFlight,
		// The seed hands over when the destination resumes, while the
		// source's own partial-chunk write still copies its chunk.
		scn: `semantics seed
disk origin 1MiB
disk cow 1MiB
dmsetup create snap1 --table "0 2048 snapshot origin cow P 8"
dmsetup create base --table "0 2048 snapshot-origin origin"
write snap1 40KiB 2KiB pattern=S async=w
dmsetup create snap2 --notable
dmsetup load snap2 --table "0 2048 snapshot origin cow P 8"
dmsetup resume snap2
wait w expect=EIO
`,
		want: 1,
	}, {
		prop: invariant.OverflowDuringMerge,
		// snapb (PO) is full when a merge of snapa starts; a write to it
		// overflows it while the merge runs. The merge's first run (its
		// exceptions made in the resume) lies beyond snapb's end, so it
		// needs none there.
		scn: `disk origin 1MiB
disk cowa 1MiB
disk cowb 12KiB
dmsetup create snapa --table "0 2048 snapshot origin cowa P 8"
dmsetup create base --table "0 2048 snapshot-origin origin"
write base 768KiB 64KiB pattern=A
dmsetup create snapb --table "0 1024 snapshot origin cowb PO 8"
write snapb 0 4KiB pattern=B
dmsetup suspend snapa
dmsetup load snapa --table "0 2048 snapshot-merge origin cowa P 8"
dmsetup resume snapa
write snapb 256KiB 4KiB pattern=B expect=EIO
`,
		want: 1,
	}, {
		prop: invariant.COWFullAtAreaBoundary,
		// Chunk 8: E = 256. The COW holds the header, area 0, 256 data
		// chunks and area 1: the 257th exception finds it full.
		scn: `disk origin 2MiB
disk cow 1036KiB
dmsetup create snap --table "0 4096 snapshot origin cow P 8"
dmsetup create base --table "0 4096 snapshot-origin origin"
write base 0 1028KiB pattern=A
dmsetup status snap expect="0 4096 snapshot Invalid"
`,
		want: 1,
	}, {
		prop: invariant.InvalidSourceHandover,
		scn: `disk origin 1MiB
disk cow 12KiB
dmsetup create snap1 --table "0 2048 snapshot origin cow P 8"
dmsetup create base --table "0 2048 snapshot-origin origin"
write base 0 8KiB pattern=A
dmsetup create snap2 --notable
dmsetup load snap2 --table "0 2048 snapshot origin cow P 8"
dmsetup suspend snap1
dmsetup resume snap2
dmsetup status snap2 expect="0 2048 snapshot Invalid"
`,
		want: 1,
	}, {
		prop: invariant.SuspendPendingExceptions,
		// The origin write's copy is in flight when snap is suspended.
		scn: `disk origin 1MiB
disk cow 1MiB
dmsetup create snap --table "0 2048 snapshot origin cow P 8"
dmsetup create base --table "0 2048 snapshot-origin origin"
write base 0 4KiB pattern=A async=w
dmsetup suspend snap
dmsetup resume snap
wait w
`,
		want: 1,
	}, {
		prop: invariant.RefusedThirdTable,
		scn: `disk origin 1MiB
disk cow 1MiB
dmsetup create snap1 --table "0 2048 snapshot origin cow P 8"
dmsetup create snap2 --notable
dmsetup load snap2 --table "0 2048 snapshot origin cow P 8"
dmsetup create snap3 --table "0 2048 snapshot origin cow P 8" exit=1 stderr="device-mapper: reload ioctl on snap3 (253:2) failed: Invalid argument"
`,
		want: 1,
	}} {
		t.Run(c.prop, func(t *testing.T) {
			sc, err := script.Parse(c.prop+".scn", c.scn)
			if err != nil {
				t.Fatal(err)
			}
			rep := run.Run(sc, run.Options{})
			if !rep.Pass() {
				t.Fatalf("%v", rep.Failures)
			}
			for _, p := range invariant.Properties {
				want := 0
				if p == c.prop {
					want = c.want
				}
				if got, ok := rep.Coverage[p]; !ok || got != want {
					t.Errorf("coverage %s: %d (present: %t), want %d", p, got, ok, want)
				}
			}
		})
	}
}

// The crash checker counts reload-after-power-cut through Cover; a name
// that is no property is an error naming the known ones.
func TestCover(t *testing.T) {
	sc, err := script.Parse("cover.scn", "disk d 1MiB\n")
	if err != nil {
		t.Fatal(err)
	}
	s := run.NewSession(sc, run.Options{})
	for range 2 {
		if err := s.Invariants().Cover(invariant.ReloadAfterPowerCut); err != nil {
			t.Fatal(err)
		}
	}
	err = s.Invariants().Cover("reload-after-power-failure")
	if err == nil || !strings.Contains(err.Error(), `no coverage property "reload-after-power-failure"`) || !strings.Contains(err.Error(), invariant.ReloadAfterPowerCut) {
		t.Errorf("Cover of an unknown name: %v", err)
	}
	rep := s.Finish()
	if rep.Coverage[invariant.ReloadAfterPowerCut] != 2 {
		t.Errorf("coverage %v, want reload-after-power-cut 2", rep.Coverage)
	}
}

func TestPropertiesSortedAndUnique(t *testing.T) {
	if !slices.IsSorted(invariant.Properties) || len(slices.Compact(slices.Clone(invariant.Properties))) != len(invariant.Properties) {
		t.Errorf("Properties %v: want sorted, without duplicates", invariant.Properties)
	}
	if len(invariant.Properties) != 7 {
		t.Errorf("%d properties, want the 7 of issue 12", len(invariant.Properties))
	}
}
