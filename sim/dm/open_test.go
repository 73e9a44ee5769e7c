package dm

import (
	"errors"
	"strings"
	"syscall"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/pattern"
)

func openCountLine(t *testing.T, c *Control, name string) string {
	t.Helper()
	r := c.Dmsetup([]string{"info", name})
	for _, l := range strings.Split(r.Stdout, "\n") {
		if strings.HasPrefix(l, "Open count:") {
			return strings.TrimSpace(strings.TrimPrefix(l, "Open count:"))
		}
	}
	t.Fatalf("dmsetup info %s: no open count in %q %q", name, r.Stdout, r.Stderr)
	return ""
}

// submit runs one bio through h to its end and returns its error.
func submit(t *testing.T, c *Control, h *Handle, op Op, off int64, data []byte) error {
	t.Helper()
	done, bioErr := false, error(nil)
	h.Submit(NewBio(op, uint64(off/block.SectorSize), data, false, func(err error) { done, bioErr = true, err }))
	if err := c.W.RunUntil("handle I/O", func() bool { return done }); err != nil {
		t.Fatal(err)
	}
	return bioErr
}

func TestOpenCountsAndBlocksRemove(t *testing.T) {
	c := newCtl(t)
	c.Dmsetup([]string{"create", "a", "--table", "0 2048 linear vda 0"})
	h, err := c.Open("a", true)
	if err != nil {
		t.Fatal(err)
	}
	u, err := c.Open("a", false)
	if err != nil {
		t.Fatal(err)
	}
	if got := openCountLine(t, c, "a"); got != "1" {
		t.Fatalf("open count with one counted and one uncounted handle: %s, want 1", got)
	}
	r := c.Dmsetup([]string{"remove", "a"})
	if r.Exit != 1 || r.Stderr != "device-mapper: remove ioctl on a  failed: Device or resource busy\nCommand failed.\n" {
		t.Fatalf("remove of an open device: %+v", r)
	}
	r = c.Dmsetup([]string{"remove", "--force", "a"})
	if r.Exit != 1 || !strings.Contains(r.Stderr, "Device or resource busy") {
		t.Fatalf("remove --force of an open device must fail EBUSY: %+v", r)
	}
	if got := c.Dmsetup([]string{"table", "a"}).Stdout; got != "0 2048 error \n" {
		t.Fatalf("after remove --force: table %q, want the error table", got)
	}
	if err := submit(t, c, h, OpRead, 0, make([]byte, 4096)); block.Errno(err) != syscall.EIO {
		t.Fatalf("read through the handle on the error table: %v, want EIO", err)
	}
	h.Close()
	h.Close() // harmless
	if got := openCountLine(t, c, "a"); got != "0" {
		t.Fatalf("open count after close: %s, want 0", got)
	}
	if err := submit(t, c, h, OpRead, 0, make([]byte, 4096)); block.Errno(err) != syscall.EBADF {
		t.Fatalf("read through a closed handle: %v, want EBADF", err)
	}
	if r := c.Dmsetup([]string{"remove", "a"}); r.Exit != 0 {
		t.Fatalf("remove after close: %+v", r)
	}
	// The uncounted handle outlived its device: ENXIO, naming it.
	if !u.Gone() {
		t.Fatal("uncounted handle does not know its device is gone")
	}
	err = submit(t, c, u, OpRead, 8192, make([]byte, 4096))
	var be *block.Error
	if block.Errno(err) != syscall.ENXIO || !errors.As(err, &be) || be.Dev != "a" || be.Off != 8192 {
		t.Fatalf("read through a handle of a removed device: %v, want ENXIO naming a at offset 8192", err)
	}
}

// TestHandleBoundToDevice: a handle never reaches a device created later
// under its device's name.
func TestHandleBoundToDevice(t *testing.T) {
	c := newCtl(t)
	m2, _ := block.NewMem("vdb", 1<<20)
	if _, err := c.AddDisk(m2, 512); err != nil {
		t.Fatal(err)
	}
	c.Dmsetup([]string{"create", "a", "--table", "0 2048 linear vda 0"})
	old, err := c.Open("a", false)
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Dmsetup([]string{"remove", "a"}); r.Exit != 0 {
		t.Fatalf("remove with only an uncounted handle: %+v", r)
	}
	c.Dmsetup([]string{"create", "a", "--table", "0 2048 linear vdb 0"})
	buf := make([]byte, 4096)
	pattern.Fill(buf, "X", 0)
	if err := submit(t, c, old, OpWrite, 0, buf); block.Errno(err) != syscall.ENXIO {
		t.Fatalf("write through the old handle: %v, want ENXIO", err)
	}
	got := make([]byte, 4096)
	if _, err := m2.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if pattern.Verify(got, pattern.Zero, 0) != nil {
		t.Fatal("the old handle's write reached the new device of the same name")
	}
	nh, err := c.Open("a", true)
	if err != nil {
		t.Fatal(err)
	}
	if err := submit(t, c, nh, OpWrite, 0, buf); err != nil {
		t.Fatalf("write through a new handle: %v", err)
	}
	if _, err := m2.ReadAt(got, 0); err != nil || pattern.Verify(got, "X", 0) != nil {
		t.Fatalf("a new open must see the new device: %v", err)
	}
}

func TestOpenMissingAndTableless(t *testing.T) {
	c := newCtl(t)
	if _, err := c.Open("nope", true); block.Errno(err) != syscall.ENXIO || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("open of a missing device: %v, want ENXIO naming it", err)
	}
	c.Dmsetup([]string{"create", "bare", "--notable"})
	if _, err := c.Open("bare", true); block.Errno(err) != syscall.ENXIO {
		t.Fatalf("open of a device no table was loaded into: %v, want ENXIO (no gendisk)", err)
	}
	if c.Device("bare").HasNode() {
		t.Fatal("a --notable device has no /dev/mapper node before a resume")
	}
	c.Dmsetup([]string{"resume", "bare"})
	if !c.Device("bare").HasNode() {
		t.Fatal("libdm makes the node at a successful resume")
	}
	c.Dmsetup([]string{"load", "bare", "--table", "0 8 zero"})
	if _, err := c.Open("bare", true); err != nil {
		t.Fatalf("open after a table load: %v", err)
	}
	if got := openCountLine(t, c, "bare"); got != "1" {
		t.Fatalf("open count %s, want 1", got)
	}
	// Disks count nothing.
	d, err := c.Open("vda", true)
	if err != nil {
		t.Fatal(err)
	}
	if err := submit(t, c, d, OpRead, 0, make([]byte, 4096)); err != nil {
		t.Fatalf("read through a disk handle: %v", err)
	}
}
