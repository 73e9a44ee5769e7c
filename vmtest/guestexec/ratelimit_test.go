package guestexec

import (
	"testing"

	"snaplab/vmtest/guest/proto"
)

func TestObserveFollowsRateLimitWindows(t *testing.T) {
	rec := func(sec float64, msg string) proto.KmsgRecord {
		return proto.KmsgRecord{USec: uint64(sec * 1e6), Msg: msg}
	}
	scan := "Buffer I/O error on dev vdc, logical block 0, async page read"
	var e Executor
	var recs []proto.KmsgRecord
	for i := range 10 { // a partition scan of a failing disk: 10 lines in 50 ms
		recs = append(recs, rec(4.63+float64(i)*0.005, scan))
	}
	recs = append(recs, rec(4.7, "device-mapper: snapshots: Snapshot is marked invalid."))
	e.observe(recs)
	if w := e.rl[0]; w.printed != 10 || w.begin != 4630000 {
		t.Fatalf("after the scan: %+v, want 10 lines from 4.63 s", w)
	}
	if e.rl[1].printed != 0 {
		t.Fatalf("the block layer's site counted another site's lines: %+v", e.rl[1])
	}
	// Within the window the count goes on; after it, a line begins anew.
	e.observe([]proto.KmsgRecord{rec(9.0, scan)})
	if w := e.rl[0]; w.printed != 11 {
		t.Fatalf("inside the window: %+v", w)
	}
	e.observe([]proto.KmsgRecord{rec(9.7, "I/O error, dev vdb, sector 16 op 0x1:(WRITE) flags 0x8800 phys_seg 1 prio class 2"), rec(9.7, scan)})
	if w := e.rl[0]; w.printed != 1 || w.begin != 9700000 {
		t.Fatalf("after the window: %+v, want a new one at 9.7 s", w)
	}
	if w := e.rl[1]; w.printed != 1 {
		t.Fatalf("the block layer's site: %+v", w)
	}
}
