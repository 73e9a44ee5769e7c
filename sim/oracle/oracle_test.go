package oracle_test

import (
	"strings"
	"syscall"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/oracle"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/sim/world"
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
	if rep.Pass() || !strings.Contains(rep.Failures[0].Msg, `oracle: snap sector 0 (offset 0): data is not "zero"`) {
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

// A read past a device's end fails whole with EINVAL, as the block layer
// fails it: the oracle expects that (it once expected data there), the
// result is EINVAL, and the step's message names the device, the offset
// and the device's size.
func TestReadPastTheEnd(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		pass       bool
		want       []string
	}{
		{"disk, expect=EINVAL", "disk a 1MiB\nread a 1MiB 4KiB expect=EINVAL\nread a 1020KiB 8KiB expect=EINVAL\n", true, nil},
		{"disk, no expect=", "disk a 1MiB\nread a 1020KiB 8KiB\n", false,
			[]string{"read failed: a read at offset 1044480 length 8192: EINVAL", "beyond device end 1048576"}},
		{"dm device, expect=EINVAL", base + "read snap 8MiB 4KiB expect=EINVAL\nread base 8188KiB 8KiB expect=EINVAL\n", true, nil},
		{"dm device, no expect=", base + "read snap 8MiB 4KiB\n", false,
			[]string{"read failed: snap read at offset 8388608 length 4096: EINVAL", "beyond device end (16384 sectors)"}},
		{"dm device without a table", "disk a 1MiB\ndmsetup create x --notable\nread x 0 4KiB expect=EINVAL\n", true, nil},
		{"expect=OK past the end", "disk a 1MiB\nread a 1MiB 4KiB expect=OK\n", false, []string{"got EINVAL, want OK"}},
		{"just inside", "disk a 1MiB\nread a 1020KiB 4KiB expect=zero\n", true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := runText(t, tc.text)
			if rep.Pass() != tc.pass {
				t.Fatalf("pass %v, want %v: %v", rep.Pass(), tc.pass, rep.Failures)
			}
			for _, w := range tc.want {
				if !strings.Contains(rep.Failures[0].Msg, w) {
					t.Errorf("failure %q does not say %q", rep.Failures[0].Msg, w)
				}
			}
			for _, f := range rep.Failures {
				if strings.Contains(f.Msg, "oracle") {
					t.Errorf("the oracle complains: %s", f.Msg)
				}
			}
		})
	}
}

// CheckRead on its own: a read past the end that succeeds, or fails with
// another errno, is a mismatch.
func TestCheckReadPastTheEnd(t *testing.T) {
	ctl := dm.NewControl(world.New(0))
	o := oracle.New(ctl)
	m, err := block.NewMem("a", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	node, err := ctl.AddDisk(m, 512)
	if err != nil {
		t.Fatal(err)
	}
	e := o.BeginRead(node, 1<<20, 4096)
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, "oracle: a: read of 4096 bytes at offset 1048576 succeeded past the end of the device (1048576 bytes): want EINVAL"},
		{&block.Error{Dev: "a", Errno: syscall.EIO}, "failed with EIO, but it reaches past the end of the device (1048576 bytes): want EINVAL"},
		{&block.Error{Dev: "a", Errno: syscall.EINVAL}, ""},
	} {
		got := o.CheckRead(e, make([]byte, 4096), tc.err, false)
		if (tc.want == "") != (got == nil) || (got != nil && !strings.Contains(got.Error(), tc.want)) {
			t.Errorf("CheckRead(%v) = %v, want %q", tc.err, got, tc.want)
		}
	}
	if err := o.CheckRead(e, nil, &block.Error{Dev: "a", Errno: syscall.EIO}, true); err != nil {
		t.Errorf("EIO with faults active: %v", err)
	}
}
