package guestexec

import (
	"testing"

	"snaplab/sim/dm"
	"snaplab/sim/script"
	"snaplab/vmtest/live"
)

func TestArrived(t *testing.T) {
	w := &script.Step{Kind: script.KWrite, Off: 4096, Len: 65536}
	r := &script.Step{Kind: script.KRead, Off: 0, Len: 8192}
	f := &script.Step{Kind: script.KFlush}
	d := &script.Step{Kind: script.KDiscard, Off: 8192, Len: 16384}
	a := func(op dm.Op, off, n int64) live.Arrival { return live.Arrival{Op: op, Off: off, Len: n} }
	for _, tc := range []struct {
		name    string
		st      *script.Step
		arrived []live.Arrival
		want    bool
	}{
		{"nothing", w, nil, false},
		{"whole write", w, []live.Arrival{a(dm.OpWrite, 4096, 65536)}, true},
		{"partition scan reads are not the write", w, []live.Arrival{a(dm.OpRead, 0, 4096), a(dm.OpRead, 4096, 65536)}, false},
		{"first half only", w, []live.Arrival{a(dm.OpWrite, 4096, 32768)}, false},
		{"two halves, out of order", w, []live.Arrival{a(dm.OpWrite, 36864, 32768), a(dm.OpWrite, 4096, 32768)}, true},
		{"a gap", w, []live.Arrival{a(dm.OpWrite, 4096, 32768), a(dm.OpWrite, 40960, 32768)}, false},
		{"a larger request", w, []live.Arrival{a(dm.OpWrite, 0, 1<<20)}, true},
		{"read", r, []live.Arrival{a(dm.OpRead, 0, 8192)}, true},
		{"write is not a read", r, []live.Arrival{a(dm.OpWrite, 0, 8192)}, false},
		{"flush", f, []live.Arrival{a(dm.OpWrite, 0, 512), a(dm.OpFlush, 0, 0)}, true},
		{"no flush", f, []live.Arrival{a(dm.OpWrite, 0, 512)}, false},
		{"discard, split in chunks", d, []live.Arrival{a(dm.OpDiscard, 16384, 8192), a(dm.OpDiscard, 8192, 8192)}, true},
		{"a write is not a discard", d, []live.Arrival{a(dm.OpWrite, 8192, 16384)}, false},
		{"part of a discard", d, []live.Arrival{a(dm.OpDiscard, 8192, 8192)}, false},
	} {
		if got := arrived(tc.st, tc.arrived); got != tc.want {
			t.Errorf("%s: Arrived = %v, want %v", tc.name, got, tc.want)
		}
	}
}
