package snapshot

import (
	"strings"
	"syscall"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/pattern"
	"snaplab/sim/world"
)

type rig struct {
	t   *testing.T
	w   *world.World
	ctl *dm.Control
}

func newRig(t *testing.T, sem Semantics, disks map[string]int64, order ...string) *rig {
	w := world.New(0)
	ctl := dm.NewControl(w)
	Register(ctl)
	SetSemantics(ctl, sem)
	for _, name := range order {
		m, err := block.NewMem(name, disks[name])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ctl.AddDisk(m, 512); err != nil {
			t.Fatal(err)
		}
	}
	return &rig{t, w, ctl}
}

func (r *rig) dmsetup(line string, wantExit int) string {
	r.t.Helper()
	res := r.ctl.Dmsetup(splitQuoted(line))
	if res.Exit != wantExit {
		r.t.Fatalf("dmsetup %s: exit %d, want %d\nstdout: %s\nstderr: %s\nlog: %s", line, res.Exit, wantExit, res.Stdout, res.Stderr, strings.Join(r.ctl.Log.Lines(), "\n"))
	}
	return res.Stdout + res.Stderr
}

func splitQuoted(s string) []string {
	var out []string
	var cur strings.Builder
	inq, have := false, false
	for _, c := range s {
		switch {
		case c == '"':
			inq = !inq
			have = true
		case c == ' ' && !inq:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(c)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

func (r *rig) io(op dm.Op, dev string, off, n int64, pat string) ([]byte, error) {
	r.t.Helper()
	md := r.ctl.Device(dev)
	buf := make([]byte, n)
	if op == dm.OpWrite {
		pattern.Fill(buf, pat, off)
	}
	var res error
	done := false
	md.SubmitUser(dm.NewBio(op, uint64(off/512), buf, false, func(err error) { res, done = err, true }))
	if err := r.w.RunUntil("io", func() bool { return done }); err != nil {
		r.t.Fatal(err)
	}
	return buf, res
}

func TestTranscriptHandover(t *testing.T) {
	r := newRig(t, Mainline, map[string]int64{"vda": 64 << 20, "vdb": 16 << 20}, "vda", "vdb")
	r.dmsetup(`create origin --table "0 131072 snapshot-origin /dev/vda"`, 0)
	r.dmsetup(`create snap1 --table "0 131072 snapshot /dev/vda /dev/vdb P 8"`, 0)
	if got := r.dmsetup("status", 0); got != "origin: 0 131072 snapshot-origin \nsnap1: 0 131072 snapshot 16/32768 16\n" {
		t.Fatalf("status:\n%q", got)
	}
	if _, err := r.io(dm.OpWrite, "snap1", 10*4096, 4096, "S"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.io(dm.OpWrite, "origin", 20*4096, 4096, "O"); err != nil {
		t.Fatal(err)
	}
	if got := r.dmsetup("status snap1", 0); got != "0 131072 snapshot 32/32768 16\n" {
		t.Fatalf("status snap1: %q", got)
	}
	r.dmsetup("create snap2 --notable", 0)
	r.dmsetup(`load snap2 --table "0 131072 snapshot /dev/vda /dev/vdb P 8"`, 0)
	if got := r.dmsetup("table --inactive snap2", 0); got != "0 131072 snapshot 254:0 254:16 P 0\n" {
		t.Fatalf("table --inactive: %q", got)
	}
	// H2: refused until the source is suspended.
	got := r.dmsetup("resume snap2", 1)
	if !strings.Contains(got, "device-mapper: resume ioctl on snap2  failed: Invalid argument") {
		t.Fatalf("resume snap2: %q", got)
	}
	log := strings.Join(r.ctl.Log.Lines(), "\n")
	if !strings.Contains(log, "device-mapper: snapshots: Unable to perform snapshot handover until source is suspended.") {
		t.Fatalf("log: %s", log)
	}
	r.dmsetup("suspend snap1", 0)
	r.dmsetup("resume snap2", 0)
	if got := r.dmsetup("status", 0); got != "origin: 0 131072 snapshot-origin \nsnap1: 0 131072 snapshot Invalid\nsnap2: 0 131072 snapshot 32/32768 16\n" {
		t.Fatalf("status after handover:\n%s", got)
	}
	b, err := r.io(dm.OpRead, "snap2", 10*4096, 4096, "")
	if err != nil || pattern.Verify(b, "S", 10*4096) != nil {
		t.Fatalf("snap2 block 10: %v %v", err, pattern.Verify(b, "S", 10*4096))
	}
	b, err = r.io(dm.OpRead, "snap2", 20*4096, 4096, "")
	if err != nil || pattern.Verify(b, pattern.Zero, 20*4096) != nil {
		t.Fatalf("snap2 block 20 should be the old origin (zero): %v", err)
	}
	r.dmsetup("resume snap1", 0)
	if _, err := r.io(dm.OpRead, "snap1", 10*4096, 4096, ""); block.Errno(err) != syscall.EIO {
		t.Fatalf("snap1 read after handover: %v, want EIO", err)
	}
	if _, err := r.io(dm.OpWrite, "snap1", 5*4096, 4096, "X"); block.Errno(err) != syscall.EIO {
		t.Fatalf("snap1 write after handover: %v, want EIO", err)
	}
	r.dmsetup("remove snap1", 0)
	if strings.Contains(strings.Join(r.ctl.Log.Lines(), "\n"), "Cancelling") {
		t.Fatal("clean removal logged a cancel")
	}
}

func TestCtrErrors(t *testing.T) {
	for _, tc := range []struct{ table, log string }{
		{"0 8 snapshot vda vdb P", "device-mapper: table: 253:0: snapshot: requires 4 or more arguments (-EINVAL)"},
		{"0 8 snapshot vda vdb P 7", "device-mapper: table: 253:0: snapshot: Couldn't create exception store (-EINVAL)"},
		{"0 8 snapshot vda vdb X 8", "device-mapper: table: 253:0: snapshot: Couldn't create exception store (-EINVAL)"},
		{"0 8 snapshot vda vda P 8", "device-mapper: table: 253:0: snapshot: COW device cannot be the same as origin device (-EINVAL)"},
		{"0 8 snapshot nope vdb P 8", "device-mapper: table: 253:0: snapshot: Cannot get origin device (-ENODEV)"},
		{"0 8 snapshot vda nope P 8", "device-mapper: table: 253:0: snapshot: Cannot get COW device (-ENODEV)"},
		{"0 8 snapshot vda vdb P 8 3 a b c", "device-mapper: table: 253:0: snapshot: Invalid number of feature arguments (-EINVAL)"},
		{"0 8 snapshot vda vdb P 8 1 bogus", "device-mapper: table: 253:0: snapshot: Unrecognised feature requested (-EINVAL)"},
		{"0 8 snapshot vda vdb P 8 1 discard_passdown_origin", "device-mapper: table: 253:0: snapshot: discard_passdown_origin feature depends on discard_zeroes_cow (-EINVAL)"},
		{"0 8 snapshot vda vdb N 0", "device-mapper: table: 253:0: snapshot: Chunk size not set (-EINVAL)"},
		{"0 8 snapshot-origin", "device-mapper: table: 253:0: snapshot-origin: origin: incorrect number of arguments (-EINVAL)"},
	} {
		r := newRig(t, Mainline, map[string]int64{"vda": 1 << 20, "vdb": 1 << 20}, "vda", "vdb")
		res := r.ctl.Dmsetup([]string{"create", "s", "--table", tc.table})
		if res.Exit != 1 {
			t.Errorf("%q: exit %d", tc.table, res.Exit)
		}
		if log := strings.Join(r.ctl.Log.Lines(), "\n"); !strings.Contains(log, tc.log) {
			t.Errorf("%q: log\n%s\nwant %q", tc.table, log, tc.log)
		}
		if r.ctl.Device("s") != nil {
			t.Errorf("%q: failed create left the device behind", tc.table)
		}
	}
}

func FuzzSnapshotCtr(f *testing.F) {
	f.Add("vda vdb P 8")
	f.Add("vda vdb PO 16 2 discard_zeroes_cow discard_passdown_origin")
	f.Add("vda vdb N 0")
	f.Fuzz(func(t *testing.T, args string) {
		r := newRig(t, Mainline, map[string]int64{"vda": 1 << 20, "vdb": 1 << 20}, "vda", "vdb")
		res := r.ctl.Dmsetup([]string{"create", "s", "--table", "0 2048 snapshot " + args})
		if res.Exit != 0 && !strings.Contains(res.Stderr, "Command failed.") {
			t.Fatalf("failure without dmsetup's error: %+v", res)
		}
	})
}

func TestMergeBackIntoOrigin(t *testing.T) {
	r := newRig(t, Mainline, map[string]int64{"origin": 8 << 20, "cow": 4 << 20}, "origin", "cow")
	r.dmsetup(`create snap --table "0 16384 snapshot origin cow P 8"`, 0)
	r.dmsetup(`create base --table "0 16384 snapshot-origin origin"`, 0)
	if _, err := r.io(dm.OpWrite, "snap", 0, 8192, "S"); err != nil { // two chunks written via the snapshot
		t.Fatal(err)
	}
	if _, err := r.io(dm.OpWrite, "base", 4*4096, 4096, "O"); err != nil { // origin write: pre-image copied
		t.Fatal(err)
	}
	if got := r.dmsetup("status snap", 0); got != "0 16384 snapshot 40/8192 16\n" {
		t.Fatalf("status before merge %q", got)
	}
	r.dmsetup("suspend base", 0)
	r.dmsetup("suspend snap", 0)
	r.dmsetup(`load base --table "0 16384 snapshot-merge origin cow P 8"`, 0)
	r.dmsetup("resume base", 0)
	r.dmsetup("remove snap", 0)
	r.w.Run()
	if got := r.dmsetup("status base", 0); got != "0 16384 snapshot-merge 16/8192 16\n" {
		t.Fatalf("status after merge %q (merge finished means allocated == metadata)", got)
	}
	b, err := r.io(dm.OpRead, "base", 0, 8192, "")
	if err != nil || pattern.Verify(b, "S", 0) != nil {
		t.Fatalf("merged chunk 0-1: %v %v", err, pattern.Verify(b, "S", 0))
	}
	b, err = r.io(dm.OpRead, "base", 4*4096, 4096, "")
	if err != nil || pattern.Verify(b, pattern.Zero, 4*4096) != nil {
		t.Fatal("origin write was not rolled back by the merge")
	}
	// The origin disk itself now holds the merged data.
	raw := make([]byte, 4096)
	if _, err := r.ctl.Node("origin").ReadAt(raw, 0); err != nil || pattern.Verify(raw, "S", 0) != nil {
		t.Fatal("origin disk does not hold the merged data")
	}
}

func TestMergeRefusals(t *testing.T) {
	r := newRig(t, Mainline, map[string]int64{"origin": 8 << 20, "cowa": 4 << 20, "cowb": 4 << 20}, "origin", "cowa", "cowb")
	r.dmsetup(`create a --table "0 16384 snapshot origin cowa N 8"`, 0)
	r.dmsetup(`create m --notable`, 0)
	r.dmsetup(`load m --table "0 16384 snapshot-merge origin cowa P 8"`, 1)
	if log := strings.Join(r.ctl.Log.Lines(), "\n"); !strings.Contains(log, "snapshot-merge: Snapshot exception store does not support snapshot-merge. (-EINVAL)") {
		t.Fatalf("H9 log:\n%s", log)
	}
	r.dmsetup(`create b --table "0 16384 snapshot origin cowb P 8"`, 0)
	r.dmsetup(`create c --table "0 16384 snapshot origin cowa P 8"`, 1) // pairing: a is live, so c is a dest... and cow differs in type: still pairs
	r.dmsetup(`load m --table "0 16384 snapshot-merge origin cowb P 8"`, 0)
	r.dmsetup(`create m2 --notable`, 0)
	r.dmsetup(`remove a`, 0)
	r.dmsetup(`create a2 --table "0 16384 snapshot origin cowa P 8"`, 0)
	r.dmsetup(`load m2 --table "0 16384 snapshot-merge origin cowa P 8"`, 1)
	if log := strings.Join(r.ctl.Log.Lines(), "\n"); !strings.Contains(log, "snapshot-merge: A snapshot is already merging. (-EINVAL)") {
		t.Fatalf("H10 log:\n%s", log)
	}
}

// TestDtrStuckFailsRemove: a snapshot's destructor waits for its pending
// exceptions; when one can never finish (here one planted with no copy
// behind it) the world goes quiet, and the remove fails naming that wait,
// flagged as the simulator's failure (Result.Stuck), instead of succeeding.
func TestDtrStuckFailsRemove(t *testing.T) {
	r := newRig(t, Mainline, map[string]int64{"vda": 64 << 20, "vdb": 16 << 20}, "vda", "vdb")
	r.dmsetup(`create snap1 --table "0 131072 snapshot /dev/vda /dev/vdb N 8"`, 0)
	if res := r.ctl.Dmsetup([]string{"status", "snap1"}); res.Stuck != nil {
		t.Fatalf("status: Stuck %v", res.Stuck)
	}
	s := r.ctl.Device("snap1").Live().Targets[0].Target.(*Snapshot)
	s.pending[0] = &pendingEx{}
	res := r.ctl.Dmsetup([]string{"remove", "snap1"})
	if res.Exit != 1 || !strings.Contains(res.Stderr, "pending exceptions of snap1 to complete") {
		t.Fatalf("remove snap1 with a pending exception that never completes: exit %d, %q, want the stuck wait named", res.Exit, res.Stderr)
	}
	if res.Stuck == nil || res.Stuck.What != "pending exceptions of snap1 to complete" {
		t.Fatalf("remove snap1: Stuck %v, want the wait", res.Stuck)
	}
}
