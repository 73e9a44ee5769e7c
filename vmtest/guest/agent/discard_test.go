package agent

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"snaplab/vmtest/guest/proto"
)

// The discard request's errors on the fake guest: the kernel's errno for
// a target that is no block device (ENOTTY from a regular file), the
// lookup's for a missing disk or path, EINVAL for a malformed request;
// each names the device and the range.
func TestDiscardErrors(t *testing.T) {
	c, dev, _ := fakeGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		req   proto.DiscardReq
		errno syscall.Errno
		msg   string
	}{
		{"regular file", proto.DiscardReq{Serial: "cow", Off: 4096, Len: 4096}, syscall.ENOTTY,
			"discard " + filepath.Join(dev, "vdb") + " at offset 4096 length 4096"},
		{"missing disk", proto.DiscardReq{Serial: "nosuch", Off: 0, Len: 512, WaitMS: 20}, syscall.ENODEV, `serial "nosuch"`},
		{"missing path", proto.DiscardReq{Path: filepath.Join(dev, "mapper", "gone"), Off: 0, Len: 512}, syscall.ENOENT, "mapper/gone"},
		{"negative offset", proto.DiscardReq{Serial: "cow", Off: -512, Len: 512}, syscall.EINVAL, "offset -512 is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Discard(ctx, tc.req)
			var oe *proto.OpError
			if !errors.As(err, &oe) || oe.Errno != tc.errno || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("discard: %v, want %s naming %q", err, proto.ErrnoName(tc.errno), tc.msg)
			}
		})
	}
}

// loopDevice attaches a 1 MiB sparse file as a loop device (root and
// losetup needed: the test is skipped without them) and returns its node.
func loopDevice(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("attaching a loop device needs root")
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Skip("no losetup")
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 1<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(losetup, "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("losetup: %v: %s", err, out)
	}
	node := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		exec.Command(losetup, "-d", node).Run()
		// A discard limit a user set (the EOPNOTSUPP case) outlives the
		// detach and cannot be raised again: a device left so is
		// replaced by a fresh one of the same number.
		q := filepath.Join("/sys/block", filepath.Base(node), "queue")
		limit, _ := os.ReadFile(filepath.Join(q, "discard_max_bytes"))
		hw, _ := os.ReadFile(filepath.Join(q, "discard_max_hw_bytes"))
		if string(limit) == string(hw) {
			return
		}
		idx, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(node), "loop"))
		if err != nil {
			t.Logf("%s: not a loop device number: %v", node, err)
			return
		}
		ctl, err := unix.Open("/dev/loop-control", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Logf("resetting %s: %v", node, err)
			return
		}
		defer unix.Close(ctl)
		if err := unix.IoctlSetInt(ctl, unix.LOOP_CTL_REMOVE, idx); err != nil {
			t.Logf("resetting %s (LOOP_CTL_REMOVE): %v", node, err)
			return
		}
		if err := unix.IoctlSetInt(ctl, unix.LOOP_CTL_ADD, idx); err != nil {
			t.Logf("resetting %s (LOOP_CTL_ADD): %v", node, err)
		}
	})
	return node
}

// BLKDISCARD on a real block device: the discarded range reads back as
// zeros (a loop device punches a hole in its file) and the rest keeps its
// data; the kernel's EINVAL for an unaligned range or one past the end,
// and its EOPNOTSUPP once the device's discard limit is 0, come back as
// the response's errno.
func TestDiscardBlockDevice(t *testing.T) {
	node := loopDevice(t)
	c, _, _ := fakeGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(ctx, proto.WriteReq{Path: node, Off: 0, Len: 16384, Pattern: "A", Direct: true}); err != nil {
		t.Fatal(err)
	}
	r, err := c.Discard(ctx, proto.DiscardReq{Path: node, Off: 4096, Len: 8192})
	if err != nil || r.Device != node || r.N != 8192 {
		t.Fatalf("discard: %+v %v", r, err)
	}
	for _, want := range []struct {
		off, n  int64
		pattern string
	}{{0, 4096, "A"}, {4096, 8192, "zero"}, {12288, 4096, "A"}} {
		rd, err := c.Read(ctx, proto.ReadReq{Path: node, Off: want.off, Len: want.n, Direct: true, Pattern: want.pattern})
		if err != nil || rd.Verify == nil || !rd.Verify.OK {
			t.Errorf("read at %d length %d after the discard, want %s: %+v %v", want.off, want.n, want.pattern, rd.Verify, err)
		}
	}
	for _, tc := range []struct {
		name     string
		off, len int64
		errno    syscall.Errno
	}{
		{"unaligned offset", 100, 512, syscall.EINVAL},
		{"unaligned length", 0, 1000, syscall.EINVAL},
		{"past the end", 1<<20 - 512, 1024, syscall.EINVAL},
	} {
		if _, err := c.Discard(ctx, proto.DiscardReq{Path: node, Off: tc.off, Len: tc.len}); !errors.Is(err, tc.errno) {
			t.Errorf("%s: %v, want %s", tc.name, err, proto.ErrnoName(tc.errno))
		}
	}
	limit := filepath.Join("/sys/block", filepath.Base(node), "queue", "discard_max_bytes")
	if err := os.WriteFile(limit, []byte("0\n"), 0o644); err != nil {
		t.Skipf("cannot switch discards off on %s: %v", node, err)
	}
	_, err = c.Discard(ctx, proto.DiscardReq{Path: node, Off: 0, Len: 4096})
	if !errors.Is(err, syscall.EOPNOTSUPP) || !strings.Contains(err.Error(), node+" at offset 0 length 4096") {
		t.Errorf("discard on a device without discards: %v, want EOPNOTSUPP naming %s and the range", err, node)
	}
}
