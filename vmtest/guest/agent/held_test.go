package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"snaplab/sim/pattern"
	"snaplab/vmtest/guest/proto"
)

// A buffered write goes through the file held under its handle (opened
// read-write on first use, kept until close), fsync with the handle syncs
// that file, sync answers, and the agent refuses a handle where it makes
// no sense.
func TestBufferedWriteThroughHeldFile(t *testing.T) {
	c, dev, _ := fakeGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	held := func() int {
		ents, _ := os.ReadDir("/proc/self/fd")
		n := 0
		for _, e := range ents {
			if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && l == filepath.Join(dev, "vdb") {
				n++
			}
		}
		return n
	}
	before := held()
	w, err := c.Write(ctx, proto.WriteReq{Serial: "cow", Off: 8192, Len: 2048, Pattern: "C", Handle: "run1/cow"})
	if err != nil || w.N != 2048 || w.Device != filepath.Join(dev, "vdb") {
		t.Fatalf("buffered write: %+v %v", w, err)
	}
	if _, err := c.Write(ctx, proto.WriteReq{Serial: "cow", Off: 12288, Len: 512, Pattern: "D", Handle: "run1/cow"}); err != nil {
		t.Fatal(err)
	}
	if n := held(); n != before+1 {
		t.Errorf("after two buffered writes the agent holds %d files on vdb, want %d", n, before+1)
	}
	if _, err := c.FsyncHandle(ctx, "cow", "", "run1/cow"); err != nil {
		t.Fatalf("fsync of the held file: %v", err)
	}
	if _, err := c.Sync(ctx); err != nil {
		t.Fatalf("sync: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(dev, "vdb"))
	if err != nil {
		t.Fatal(err)
	}
	if err := pattern.Verify(data[8192:8192+2048], "C", 8192); err != nil {
		t.Errorf("buffered write's data: %v", err)
	}
	if err := pattern.Verify(data[12288:12288+512], "D", 12288); err != nil {
		t.Errorf("second buffered write's data: %v", err)
	}
	if _, err := c.CloseHandle(ctx, "run1/cow"); err != nil {
		t.Fatalf("close: %v", err)
	}
	if n := held(); n != before {
		t.Errorf("after close the agent holds %d files on vdb, want %d", n, before)
	}
	// A handle opened read-only by an open request: the write fails as
	// the kernel fails it.
	if _, err := c.OpenHandle(ctx, proto.OpenReq{Serial: "cow", Handle: "ro"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(ctx, proto.WriteReq{Serial: "cow", Off: 0, Len: 512, Pattern: "C", Handle: "ro"}); !errors.Is(err, syscall.EBADF) {
		t.Errorf("buffered write through a read-only handle: %v, want EBADF", err)
	}
	for _, req := range []proto.Request{
		{ID: 1, Op: proto.OpWrite, Serial: "cow", Len: 512, Pattern: "C", Handle: "h", Direct: true},
		{ID: 1, Op: proto.OpWrite, Serial: "cow", Len: 512, Pattern: "C", Handle: "h", FUA: true},
		{ID: 1, Op: proto.OpRead, Serial: "cow", Len: 512, Handle: "h"},
		{ID: 1, Op: proto.OpFsync, Serial: "cow", Handle: strings.Repeat("h", proto.MaxHandleLen+1)},
	} {
		if err := req.Validate(); !errors.Is(err, proto.ErrBadRequest) {
			t.Errorf("%+v: %v, want a bad request", req, err)
		}
	}
	if err := (&proto.Request{ID: 1, Op: proto.OpSync}).Validate(); err != nil {
		t.Errorf("sync: %v", err)
	}
}
