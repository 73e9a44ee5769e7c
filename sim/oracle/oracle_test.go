package oracle_test

import (
	"strings"
	"testing"

	"snaplab/sim/run"
	"snaplab/sim/script"
)

func runText(t *testing.T, text string) *run.Report {
	t.Helper()
	sc, err := script.Parse("t.scn", text)
	if err != nil {
		t.Fatal(err)
	}
	return run.Run(sc, run.Options{})
}

const base = `disk origin 8MiB
disk cow 1MiB
dmsetup create snap --table "0 16384 snapshot origin cow P 8"
dmsetup create base --table "0 16384 snapshot-origin origin"
write base 0 8KiB pattern=A
`

// The oracle checks reads without expect=: it must catch wrong data that
// the scenario does not assert.
func TestOracleCatchesCorruptedCOW(t *testing.T) {
	// A healthy run passes with checks.
	rep := runText(t, base+"read snap 0 8KiB\nread base 0 8KiB\n")
	if !rep.Pass() || rep.Checks != 32 {
		t.Fatalf("healthy run: pass %v checks %d %v", rep.Pass(), rep.Checks, rep.Failures)
	}
	// Overwrite the COW's first data chunk behind the snapshot's back (as a
	// buggy copy-out would): the snapshot now returns the wrong data.
	rep = runText(t, base+"write cow 8KiB 4KiB pattern=JUNK\nread snap 0 8KiB\n")
	if rep.Pass() || !strings.Contains(rep.Failures[0].Msg, `oracle: snap sector 0: data is not "zero"`) {
		t.Fatalf("corrupted COW not caught: %v", rep.Failures)
	}
}

func TestOracleExpectsEIOAfterHandover(t *testing.T) {
	rep := runText(t, base+`dmsetup create snap2 --notable
dmsetup load snap2 --table "0 16384 snapshot origin cow P 8"
dmsetup suspend snap
dmsetup resume snap2
dmsetup resume snap
read snap2 0 8KiB
read snap 0 4KiB expect=EIO
`)
	if !rep.Pass() {
		t.Fatal(rep.Failures)
	}
}

func TestOracleFollowsOriginAndSnapshotWrites(t *testing.T) {
	rep := runText(t, base+`write snap 4KiB 4KiB pattern=S
write base 4KiB 4KiB pattern=B
read snap 0 8KiB
read base 0 8KiB
`)
	if !rep.Pass() || rep.Checks != 32 {
		t.Fatalf("%v %d", rep.Failures, rep.Checks)
	}
	// With an injected fault, an EIO is acceptable to the oracle; the
	// scenario's expect= decides.
	rep = runText(t, base+"fault origin read eio\nread base 0 4KiB expect=EIO\nread snap 64KiB 4KiB expect=EIO\nread snap 0 4KiB expect=zero\n")
	if !rep.Pass() {
		t.Fatal(rep.Failures)
	}
}
