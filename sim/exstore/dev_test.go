package exstore

import (
	"bytes"
	"fmt"
	"strings"
	"syscall"

	"snaplab/sim/block"
)

// memDev is a sparse in-memory block.Device for these tests: 4 KiB pages
// allocated on first write, an op log, optional write failures and a size
// that a test may change (lvextend).
type memDev struct {
	name  string
	size  int64
	pages map[int64][]byte
	ops   []string // "read off len", "write off len", "fua off len", "flush"
	// failWrite, when set, fails a write with EIO; op is "write", "fua"
	// or "flush" (off -1, n 0).
	failWrite func(op string, off, n int64) bool
	// failRead, when set, fails a read with EIO.
	failRead func(off, n int64) bool
}

const pageSize = 4096

func newMem(name string, size int64) *memDev {
	return &memDev{name: name, size: size, pages: map[int64][]byte{}}
}

func (d *memDev) Name() string { return d.name }
func (d *memDev) Size() int64  { return d.size }

func (d *memDev) ReadAt(p []byte, off int64) (int, error) {
	d.ops = append(d.ops, fmt.Sprintf("read %d %d", off, len(p)))
	if err := block.CheckRange(d.name, "read", d.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	if d.failRead != nil && d.failRead(off, int64(len(p))) {
		return 0, &block.Error{Dev: d.name, Op: "read", Off: off, Len: int64(len(p)), Errno: syscall.EIO}
	}
	for i := 0; i < len(p); {
		pg, po := (off+int64(i))/pageSize, (off+int64(i))%pageSize
		n := min(len(p)-i, pageSize-int(po))
		if b, ok := d.pages[pg]; ok {
			copy(p[i:i+n], b[po:])
		} else {
			clear(p[i : i+n])
		}
		i += n
	}
	return len(p), nil
}

func (d *memDev) write(op string, p []byte, off int64) (int, error) {
	d.ops = append(d.ops, fmt.Sprintf("%s %d %d", op, off, len(p)))
	if err := block.CheckRange(d.name, "write", d.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	if d.failWrite != nil && d.failWrite(op, off, int64(len(p))) {
		return 0, &block.Error{Dev: d.name, Op: "write", Off: off, Len: int64(len(p)), Errno: syscall.EIO}
	}
	for i := 0; i < len(p); {
		pg, po := (off+int64(i))/pageSize, (off+int64(i))%pageSize
		n := min(len(p)-i, pageSize-int(po))
		b, ok := d.pages[pg]
		if !ok {
			b = make([]byte, pageSize)
			d.pages[pg] = b
		}
		copy(b[po:], p[i:i+n])
		i += n
	}
	return len(p), nil
}

func (d *memDev) WriteAt(p []byte, off int64) (int, error)    { return d.write("write", p, off) }
func (d *memDev) WriteAtFUA(p []byte, off int64) (int, error) { return d.write("fua", p, off) }

func (d *memDev) Flush() error {
	d.ops = append(d.ops, "flush")
	if d.failWrite != nil && d.failWrite("flush", -1, 0) {
		return &block.Error{Dev: d.name, Op: "flush", Errno: syscall.EIO}
	}
	return nil
}

// bytes returns the whole device content.
func (d *memDev) bytes() []byte {
	b := make([]byte, d.size)
	for pg, p := range d.pages {
		if o := pg * pageSize; o < d.size {
			copy(b[o:], p)
		}
	}
	return b
}

// load replaces the device content with b (zero-padded to the size).
func (d *memDev) load(b []byte) {
	d.pages = map[int64][]byte{}
	if _, err := d.write("load", b, 0); err != nil {
		panic(err)
	}
	d.ops = nil
}

// hexdump formats b as `hexdump -C` does: offset, 16 bytes, ASCII, with
// runs of identical lines collapsed to "*", and the end offset last.
func hexdump(b []byte) string {
	var sb strings.Builder
	var prev []byte
	star := false
	for o := 0; o < len(b); o += 16 {
		line := b[o:min(o+16, len(b))]
		if prev != nil && bytes.Equal(line, prev) {
			if !star {
				sb.WriteString("*\n")
				star = true
			}
			continue
		}
		star = false
		prev = line
		fmt.Fprintf(&sb, "%08x ", o)
		for i := 0; i < 16; i++ {
			if i == 8 {
				sb.WriteByte(' ')
			}
			if i < len(line) {
				fmt.Fprintf(&sb, " %02x", line[i])
			} else {
				sb.WriteString("   ")
			}
		}
		sb.WriteString("  |")
		for _, c := range line {
			if c < 0x20 || c > 0x7e {
				c = '.'
			}
			sb.WriteByte(c)
		}
		sb.WriteString("|\n")
	}
	fmt.Fprintf(&sb, "%08x\n", len(b))
	return sb.String()
}
