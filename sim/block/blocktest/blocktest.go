// Package blocktest checks that a block.Device keeps the block package's
// contract, in the style of testing/fstest.
//
// TestDevice runs one subtest per property on fresh devices made by the
// caller, so the same checks apply to an in-process device and to one
// reached over NBD:
//
//   - Size: the device has the size asked for.
//   - FreshZero: a fresh device reads as zeros everywhere.
//   - ReadAfterWrite: aligned, unaligned, page-crossing, overlapping and
//     end-of-device writes read back exactly, and nothing else changes.
//   - OutOfRange: reads, writes (and discards, maps) past either end fail
//     with a *block.Error carrying EINVAL, the device name and the offset,
//     and change nothing.
//   - Flush: flushing keeps the data, with or without pending writes.
//   - FUA, Discard, Map: checked when the device offers block.FUAWriter,
//     block.Discarder and block.Mapper, skipped otherwise.
//   - Concurrent: goroutines doing I/O on disjoint ranges see their own data.
//
// Every check compares the whole device against an in-memory model at the
// end, so a stray write anywhere is caught. Data comes from sim/pattern.
package blocktest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/pattern"
)

// Size is the size of the devices TestDevice asks for: 4 MiB, enough for
// page-crossing and multi-page cases while staying fast over NBD.
const Size = 4 << 20

// TestDevice checks the devices newDev makes. newDev is called once per
// subtest with the subtest's t and a size; it must return a fresh, all-zero
// device of that size and arrange its cleanup with t.Cleanup.
func TestDevice(t *testing.T, newDev func(t *testing.T, size int64) block.Device) {
	t.Helper()
	for _, c := range []struct {
		name string
		run  func(t *testing.T, c *checker)
	}{
		{"Size", testSize},
		{"FreshZero", testFreshZero},
		{"ReadAfterWrite", testReadAfterWrite},
		{"OutOfRange", testOutOfRange},
		{"Flush", testFlush},
		{"FUA", testFUA},
		{"Discard", testDiscard},
		{"Map", testMap},
		{"Concurrent", testConcurrent},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := newDev(t, Size)
			if d == nil {
				t.Fatal("newDev returned a nil device")
			}
			c.run(t, &checker{t: t, d: d, model: make([]byte, Size)})
		})
	}
}

// checker drives one device and keeps a model of its content.
type checker struct {
	t     *testing.T
	d     block.Device
	model []byte
}

func (c *checker) write(name string, off, n int64) {
	c.t.Helper()
	p := make([]byte, n)
	pattern.Fill(p, name, off)
	got, err := c.d.WriteAt(p, off)
	if err != nil || got != len(p) {
		c.t.Fatalf("%s: WriteAt(%d bytes, off %d) = %d, %v", c.d.Name(), n, off, got, err)
	}
	copy(c.model[off:], p)
}

// readVerify reads [off, off+n) and compares it with the model.
func (c *checker) readVerify(off, n int64) {
	c.t.Helper()
	p := make([]byte, n)
	got, err := c.d.ReadAt(p, off)
	if err != nil || got != len(p) {
		c.t.Fatalf("%s: ReadAt(%d bytes, off %d) = %d, %v", c.d.Name(), n, off, got, err)
	}
	if i := firstDiff(p, c.model[off:off+n]); i >= 0 {
		c.t.Fatalf("%s: ReadAt(%d bytes, off %d): byte at offset %d is %#02x, want %#02x",
			c.d.Name(), n, off, off+int64(i), p[i], c.model[off+int64(i)])
	}
}

// verifyAll reads the whole device in 256 KiB pieces and compares it with
// the model.
func (c *checker) verifyAll() {
	c.t.Helper()
	const chunk = 256 << 10
	for off := int64(0); off < Size; off += chunk {
		c.readVerify(off, min(chunk, Size-off))
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

func testSize(t *testing.T, c *checker) {
	if got := c.d.Size(); got != Size {
		t.Fatalf("%s: Size() = %d, want %d", c.d.Name(), got, Size)
	}
	if c.d.Name() == "" {
		t.Fatal("Name() is empty")
	}
}

func testFreshZero(t *testing.T, c *checker) {
	c.verifyAll()
	c.readVerify(Size-1, 1)
	c.readVerify(12345, 0)
}

// writes are the ReadAfterWrite cases: aligned, unaligned, page-crossing,
// overlapping, at the ends of the device.
var writes = []struct{ off, n int64 }{
	{0, 512},
	{512, 4096},
	{8192, 4096},
	{1, 1},
	{511, 2},
	{4095, 4097},
	{65536 - 100, 200},
	{123457, 1<<20 + 3},
	{200000, 7000}, // overwrites part of the previous write
	{Size / 2, 64 << 10},
	{Size/2 + 4096, 512}, // inside the previous write
	{Size - 512, 512},
	{Size - 1, 1},
	{Size - 70000, 69999},
}

func testReadAfterWrite(t *testing.T, c *checker) {
	for i, w := range writes {
		c.write(fmt.Sprintf("raw%d", i), w.off, w.n)
		c.readVerify(w.off, w.n)
		// Around the write, unaligned: neighbours are untouched.
		lo, hi := max(0, w.off-3), min(Size, w.off+w.n+3)
		c.readVerify(lo, hi-lo)
	}
	c.verifyAll()
}

func testOutOfRange(t *testing.T, c *checker) {
	c.write("edge", Size-4096, 4096)
	name := c.d.Name()
	for _, r := range []struct{ off, n int64 }{
		{Size, 1},
		{Size - 512, 1024},
		{Size - 1, 2},
		{-1, 512},
		{-4096, 4096},
		{Size + 4096, 512},
	} {
		p := make([]byte, r.n)
		_, err := c.d.ReadAt(p, r.off)
		checkEINVAL(t, name, "ReadAt", r.off, err)
		pattern.Fill(p, "oob", r.off)
		_, err = c.d.WriteAt(p, r.off)
		checkEINVAL(t, name, "WriteAt", r.off, err)
		if f, ok := c.d.(block.FUAWriter); ok {
			_, err = f.WriteAtFUA(p, r.off)
			checkEINVAL(t, name, "WriteAtFUA", r.off, err)
		}
		if dd, ok := c.d.(block.Discarder); ok {
			checkEINVAL(t, name, "Discard", r.off, dd.Discard(r.off, r.n))
		}
		if m, ok := c.d.(block.Mapper); ok {
			_, err := m.Map(r.off, r.n)
			checkEINVAL(t, name, "Map", r.off, err)
		}
	}
	// Failed writes crossing the end wrote nothing.
	c.verifyAll()
}

func checkEINVAL(t *testing.T, dev, op string, off int64, err error) {
	t.Helper()
	var e *block.Error
	switch {
	case err == nil:
		t.Errorf("%s: %s at offset %d beyond the device succeeded", dev, op, off)
	case !errors.As(err, &e):
		t.Errorf("%s: %s at offset %d: error %v (%T) is not a *block.Error", dev, op, off, err, err)
	case !errors.Is(err, syscall.EINVAL) || e.Errno != syscall.EINVAL:
		t.Errorf("%s: %s at offset %d: %v: errno %s, want EINVAL", dev, op, off, err, block.ErrnoName(e.Errno))
	case e.Dev != dev:
		t.Errorf("%s: %s at offset %d: %v: error names device %q", dev, op, off, err, e.Dev)
	case e.Off != off:
		t.Errorf("%s: %s at offset %d: %v: error names offset %d", dev, op, off, err, e.Off)
	}
}

func testFlush(t *testing.T, c *checker) {
	if err := c.d.Flush(); err != nil {
		t.Fatalf("%s: Flush with nothing written: %v", c.d.Name(), err)
	}
	c.write("f1", 4096, 64<<10)
	c.write("f2", 1000, 5000)
	if err := c.d.Flush(); err != nil {
		t.Fatalf("%s: Flush: %v", c.d.Name(), err)
	}
	c.verifyAll()
	c.write("f3", 8192, 512)
	if err := c.d.Flush(); err != nil {
		t.Fatalf("%s: second Flush: %v", c.d.Name(), err)
	}
	if err := c.d.Flush(); err != nil {
		t.Fatalf("%s: Flush with nothing pending: %v", c.d.Name(), err)
	}
	c.verifyAll()
}

func testFUA(t *testing.T, c *checker) {
	f, ok := c.d.(block.FUAWriter)
	if !ok {
		t.Skipf("%s does not implement block.FUAWriter", c.d.Name())
	}
	c.write("plain", 0, 16<<10)
	for i, w := range []struct{ off, n int64 }{{4096, 4096}, {100, 1000}, {Size - 8192, 8192}, {8000, 20000}} {
		p := make([]byte, w.n)
		name := fmt.Sprintf("fua%d", i)
		pattern.Fill(p, name, w.off)
		if n, err := f.WriteAtFUA(p, w.off); err != nil || n != len(p) {
			t.Fatalf("%s: WriteAtFUA(%d bytes, off %d) = %d, %v", c.d.Name(), w.n, w.off, n, err)
		}
		copy(c.model[w.off:], p)
		c.readVerify(w.off, w.n)
	}
	c.verifyAll()
}

func testDiscard(t *testing.T, c *checker) {
	dd, ok := c.d.(block.Discarder)
	if !ok {
		t.Skipf("%s does not implement block.Discarder", c.d.Name())
	}
	c.write("pre", 0, 1<<20)
	c.write("tail", Size-(64<<10), 64<<10)
	for _, r := range []struct{ off, n int64 }{
		{64 << 10, 128 << 10},      // whole pages
		{3*4096 + 512, 1024},       // sectors inside a page
		{40960 - 512, 4096 + 1024}, // sectors across a page boundary
		{Size - (64 << 10), 64 << 10},
		{2 << 20, 1 << 20}, // never written
		{500000, 0},
	} {
		if err := dd.Discard(r.off, r.n); err != nil {
			t.Fatalf("%s: Discard(off %d, length %d): %v", c.d.Name(), r.off, r.n, err)
		}
		clear(c.model[r.off : r.off+r.n])
		c.readVerify(max(0, r.off-512), min(Size, r.off+r.n+512)-max(0, r.off-512))
	}
	// Written again after a discard.
	c.write("again", 64<<10, 4096)
	c.verifyAll()
}

func testMap(t *testing.T, c *checker) {
	m, ok := c.d.(block.Mapper)
	if !ok {
		t.Skipf("%s does not implement block.Mapper", c.d.Name())
	}
	c.checkMap(m, 0, Size) // fresh
	c.write("m1", 1<<20, 256<<10)
	c.write("m2", 3<<20+100, 1000)
	c.write("m3", Size-512, 512)
	if dd, ok := c.d.(block.Discarder); ok {
		if err := dd.Discard(1<<20+(64<<10), 64<<10); err != nil {
			t.Fatalf("%s: Discard: %v", c.d.Name(), err)
		}
		clear(c.model[1<<20+(64<<10) : 1<<20+(128<<10)])
	}
	for _, r := range []struct{ off, n int64 }{
		{0, Size}, {1<<20 + 1, 300 << 10}, {3 << 20, 4096}, {Size - 1, 1}, {777, 1}, {4096, 0},
	} {
		c.checkMap(m, r.off, r.n)
	}
	c.verifyAll()
}

// checkMap checks that Map(off, n) tiles the range in order with non-empty
// extents, and that every hole reads, and is modelled, as zeros.
func (c *checker) checkMap(m block.Mapper, off, n int64) {
	c.t.Helper()
	ext, err := m.Map(off, n)
	if err != nil {
		c.t.Fatalf("%s: Map(%d, %d): %v", c.d.Name(), off, n, err)
	}
	cur := off
	for i, e := range ext {
		if e.Off != cur || e.Len <= 0 {
			c.t.Fatalf("%s: Map(%d, %d): extent %d is %+v, want one starting at %d with a positive length: %+v",
				c.d.Name(), off, n, i, e, cur, ext)
		}
		cur += e.Len
		if !e.Hole {
			continue
		}
		if i := firstDiff(c.model[e.Off:e.Off+e.Len], make([]byte, e.Len)); i >= 0 {
			c.t.Fatalf("%s: Map(%d, %d): extent %+v is a hole but offset %d holds data",
				c.d.Name(), off, n, e, e.Off+int64(i))
		}
		c.readVerify(e.Off, e.Len)
	}
	if cur != off+n {
		c.t.Fatalf("%s: Map(%d, %d): extents end at %d, want %d: %+v", c.d.Name(), off, n, cur, off+n, ext)
	}
}

func testConcurrent(t *testing.T, c *checker) {
	const workers = 8
	const region = Size / workers
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			base := int64(g) * region
			for i := range 40 {
				n := 1 + rng.Int64N(32<<10)
				off := base + rng.Int64N(region-n+1)
				name := fmt.Sprintf("g%d-%d", g, i)
				p := make([]byte, n)
				pattern.Fill(p, name, off)
				if _, err := c.d.WriteAt(p, off); err != nil {
					t.Errorf("%s: goroutine %d: WriteAt(%d bytes, off %d): %v", c.d.Name(), g, n, off, err)
					return
				}
				if i%8 == 7 {
					if err := c.d.Flush(); err != nil {
						t.Errorf("%s: goroutine %d: Flush: %v", c.d.Name(), g, err)
						return
					}
				}
				q := make([]byte, n)
				if _, err := c.d.ReadAt(q, off); err != nil {
					t.Errorf("%s: goroutine %d: ReadAt(%d bytes, off %d): %v", c.d.Name(), g, n, off, err)
					return
				}
				if err := pattern.Verify(q, name, off); err != nil {
					t.Errorf("%s: goroutine %d: read back %s: %v", c.d.Name(), g, name, err)
					return
				}
				copy(c.model[off:], p) // regions are disjoint
			}
		})
	}
	wg.Wait()
	if !t.Failed() {
		c.verifyAll()
	}
}
