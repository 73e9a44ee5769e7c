package exstore

import (
	"encoding/binary"
	"strings"
	"testing"
)

func TestLayoutOf(t *testing.T) {
	// Chunk 1: E = 32; the COW holds the header, area 0, 32 data chunks,
	// area 1 and 3 more.
	dev := newMem("cow", 38*512)
	s, err := New([]string{"P", "1"}, dev, 512, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadMetadata(nil); err != nil {
		t.Fatal(err)
	}
	for i := range 33 {
		c, err := s.Prepare()
		if err != nil {
			t.Fatal(err)
		}
		s.Commit(uint64(100+i), c, true, func(bool) {})
	}
	l, ok := LayoutOf(s)
	want := Layout{Persistent: true, ChunkSectors: 1, COWChunks: 38, PerArea: 32, NextFree: 36, Area: 1, Committed: 1,
		Valid: true, AreaWrites: 33, LastArea: 1, LastEntries: 1}
	if !ok || l != want {
		t.Fatalf("LayoutOf = %+v, %v\nwant %+v", l, ok, want)
	}
	for _, c := range []struct {
		chunk uint64
		what  string
	}{{0, "the header"}, {1, "metadata area 0"}, {2, ""}, {33, ""}, {34, "metadata area 1"}, {67, "metadata area 2"}, {68, ""}} {
		what, meta := l.Metadata(c.chunk)
		if what != c.what || meta != (c.what != "") {
			t.Errorf("Metadata(%d) = %q, %v; want %q", c.chunk, what, meta, c.what)
		}
	}
	if l.AreaChunk(1) != 34 {
		t.Errorf("AreaChunk(1) = %d, want 34", l.AreaChunk(1))
	}
	// What ReadArea decodes is what Inspect does.
	im, err := Inspect(dev)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadArea(dev, 1, 32, 0, 3, 32)
	if err != nil || len(got) != 29 {
		t.Fatalf("ReadArea(area 0, 3..32) = %d entries, %v", len(got), err)
	}
	for _, x := range got {
		if x != im.Exceptions[x.Index] {
			t.Errorf("ReadArea entry %+v, Inspect's %+v", x, im.Exceptions[x.Index])
		}
	}
	got, err = ReadArea(dev, 1, 32, 1, 0, 2)
	if err != nil || len(got) != 2 || got[0] != im.Exceptions[32] || got[1].New != 0 {
		t.Errorf("ReadArea(area 1, 0..2) = %+v, %v", got, err)
	}
	// A drop whose header write fails is seen.
	dev.failWrite = func(op string, off, n int64) bool { return off == 0 }
	s.Drop()
	if l, _ := LayoutOf(s); !l.HeaderFailed || l.Valid {
		t.Errorf("after a failed drop: %+v", l)
	}
	// The transient store: no metadata, chunks from 0.
	ts, err := New([]string{"N", "8"}, newMem("tcow", 64*512), 512, nil)
	if err != nil {
		t.Fatal(err)
	}
	ts.Prepare()
	if l, ok := LayoutOf(ts); !ok || l != (Layout{ChunkSectors: 8, COWChunks: 8, NextFree: 1, Valid: true}) {
		t.Errorf("transient LayoutOf = %+v, %v", l, ok)
	}
	if _, meta := (Layout{ChunkSectors: 8}).Metadata(0); meta {
		t.Errorf("a transient store's chunk 0 is metadata")
	}
}

func TestReadAreaErrors(t *testing.T) {
	dev := newMem("cow", 8*512)
	for _, c := range []struct {
		chunk, e uint32
		k        uint64
		from, to uint32
		want     string
	}{
		{0, 32, 0, 0, 1, "exstore: cow: area 0: chunk size 0, 32 entries per area: layout unknown"},
		{1, 0, 0, 0, 1, "exstore: cow: area 0: chunk size 1, 0 entries per area: layout unknown"},
		{1, 32, 0, 5, 4, "exstore: cow: area 0: entries [5, 4) of an area of 32"},
		{1, 32, 0, 0, 33, "exstore: cow: area 0: entries [0, 33) of an area of 32"},
		{1, 32, 1, 0, 1, "exstore: cow: area 1 at byte offset 17408: chunk 34 (512 bytes) is beyond the end of the device (4096 bytes)"},
	} {
		if _, err := ReadArea(dev, c.chunk, c.e, c.k, c.from, c.to); err == nil || err.Error() != c.want {
			t.Errorf("ReadArea(%d, %d, %d, %d, %d) = %v, want %s", c.chunk, c.e, c.k, c.from, c.to, err, c.want)
		}
	}
	dev.failRead = func(off, n int64) bool { return off == 512 }
	if _, err := ReadArea(dev, 1, 32, 0, 0, 1); err == nil || !strings.Contains(err.Error(), "exstore: cow: area 0 at byte offset 512: read of entries 0 to 0 failed") {
		t.Errorf("ReadArea of a failing sector: %v", err)
	}
	if _, err := ReadHeader(newMem("tiny", 0)); err == nil || !strings.Contains(err.Error(), "tiny: header at byte offset 0") {
		t.Errorf("ReadHeader of an empty device: %v", err)
	}
}

// FuzzReadArea: any image, layout and range decode without panicking,
// each entry being the bytes at its offset, and errors name the device.
func FuzzReadArea(f *testing.F) {
	f.Add(image(64<<10, 8, Header{Magic, 1, 1, 8}, map[uint64][]pair{0: {{5, 2}, {17, 3}}}), uint8(3), uint8(0), uint16(0), uint16(3))
	f.Add(make([]byte, 1024), uint8(0), uint8(1), uint16(7), uint16(40))
	f.Add([]byte("SnAp"), uint8(5), uint8(9), uint16(1), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, chunkSel, k uint8, from, to uint16) {
		dev := fuzzDev(data)
		chunk := []uint32{0, 1, 2, 8, 16, 32}[int(chunkSel)%6]
		e := chunk * 512 / diskExceptionSize
		xs, err := ReadArea(dev, chunk, e, uint64(k), uint32(from), uint32(to))
		if err != nil {
			if !strings.Contains(err.Error(), "cow") {
				t.Fatalf("error %v does not name the device", err)
			}
			return
		}
		if len(xs) != int(to)-int(from) {
			t.Fatalf("%d entries for [%d, %d)", len(xs), from, to)
		}
		raw := dev.bytes()
		for i, x := range xs {
			if x.Index != uint32(from)+uint32(i) || x.Area != uint64(k) {
				t.Fatalf("entry %d is %+v", i, x)
			}
			if x.Old != binary.LittleEndian.Uint64(raw[x.Off:]) || x.New != binary.LittleEndian.Uint64(raw[x.Off+8:]) {
				t.Fatalf("entry %+v is not the bytes at its offset", x)
			}
		}
		if h, err := ReadHeader(dev); err != nil || h != decodeHeader(raw) {
			t.Fatalf("ReadHeader = %+v, %v", h, err)
		}
	})
}
