package dm

import (
	"bytes"
	"errors"
	"syscall"
	"testing"

	"snaplab/sim/block"
)

// Peek reads through linear and zero targets down to the disk, and names
// what it cannot read.
func TestPeek(t *testing.T) {
	c := newCtl(t)
	disk := c.Disks()[0]
	data := bytes.Repeat([]byte("snaplab!"), 1<<17)
	if _, err := disk.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	for _, argv := range [][]string{
		{"create", "lin", "--table", "0 8 linear vda 64\n8 8 zero\n16 8 linear vda 0"},
		{"create", "top", "--table", "0 24 linear lin 0"},
		{"create", "empty", "--notable"},
		{"create", "err", "--table", "0 8 error"},
	} {
		if r := c.Dmsetup(argv); r.Exit != 0 {
			t.Fatalf("dmsetup %q: %s", argv, r.Stderr)
		}
	}
	reads := 0
	readDisk := func(d *Disk, p []byte, off int64) error {
		reads++
		_, err := d.ReadAt(p, off)
		return err
	}
	want := append(append(append([]byte(nil), data[64*512:72*512]...), make([]byte, 8*512)...), data[:8*512]...)
	for _, name := range []string{"lin", "top"} {
		got := make([]byte, 24*512-100)
		if err := Peek(c.Node(name), got, 100, readDisk); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(got, want[100:]) {
			t.Fatalf("%s: read the wrong bytes", name)
		}
	}
	if reads != 4 {
		t.Fatalf("%d disk reads, want 4 (two linear segments per device)", reads)
	}
	for _, tc := range []struct {
		dev   string
		off   int64
		errno syscall.Errno
	}{
		{"empty", 0, syscall.EINVAL}, // no live table: no sectors
		{"err", 0, syscall.EIO},      // error has no synchronous mapping
		{"lin", 24 * 512, syscall.EINVAL},
	} {
		err := Peek(c.Node(tc.dev), make([]byte, 512), tc.off, readDisk)
		var be *block.Error
		if !errors.As(err, &be) || be.Errno != tc.errno || be.Dev != tc.dev {
			t.Errorf("%s at %d: %v, want %v naming the device", tc.dev, tc.off, err, tc.errno)
		}
	}
}
