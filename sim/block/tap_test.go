package block_test

import (
	"bytes"
	"errors"
	"syscall"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/block/blocktest"
)

func TestTapConformance(t *testing.T) {
	blocktest.TestDevice(t, func(t *testing.T, size int64) block.Device {
		return block.WithTap(newMem(t, size), func(block.Request) {})
	})
}

// A tap sees each write, FUA write, flush and discard once, in order, with
// its data and its outcome; reads pass unseen.
func TestTapSeesRequests(t *testing.T) {
	var got []block.Request
	f := block.WithFaults(newMem(t, 1<<20), nil)
	tp := block.WithTap(f, func(r block.Request) {
		r.Data = bytes.Clone(r.Data)
		got = append(got, r)
	})
	data := bytes.Repeat([]byte{7}, 1024)
	if _, err := tp.WriteAt(data, 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.WriteAtFUA(data[:512], 0); err != nil {
		t.Fatal(err)
	}
	if err := block.FlushAt(tp, 8192); err != nil {
		t.Fatal(err)
	}
	if err := f.Set(block.Rule{Site: "d", Op: block.OpDiscard, Errno: syscall.EIO}); err != nil {
		t.Fatal(err)
	}
	if err := tp.Discard(0, 4096); !errors.Is(err, syscall.EIO) {
		t.Fatalf("discard: %v", err)
	}
	want := []block.Request{
		{Op: block.OpWrite, Off: 4096, Len: 1024, Data: data},
		{Op: block.OpWrite, Off: 0, Len: 512, FUA: true, Data: data[:512]},
		{Op: block.OpFlush, Off: 8192},
		{Op: block.OpDiscard, Off: 0, Len: 4096},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d requests: %+v", len(got), got)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Op != w.Op || g.Off != w.Off || g.Len != w.Len || g.FUA != w.FUA || !bytes.Equal(g.Data, w.Data) {
			t.Errorf("%d: got %+v, want %+v", i, g, w)
		}
		if (g.Err != nil) != (i == 3) {
			t.Errorf("%d: err %v", i, g.Err)
		}
	}
}
