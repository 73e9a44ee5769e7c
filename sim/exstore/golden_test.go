package exstore

import (
	"encoding/binary"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the store's output")

// The golden files are `hexdump -C` dumps of whole COW images produced by
// driving the store API, so they can be compared with `hexdump -C` of a COW
// that a real kernel wrote for the same operations. How the bytes follow
// from the format (dm-snap-persistent.c, all fields little-endian):
//
//   - Chunk 0, bytes 0..15: struct disk_header {magic, valid, version,
//     chunk_size} = 53 6e 41 70 | 01 00 00 00 | 01 00 00 00 | chunk as le32.
//     The rest of chunk 0 is zero (write_header clears the chunk).
//   - Area k is the chunk 1 + (E+1)*k with E = chunk*512/16; entry i is
//     at byte 16*i of it: old_chunk le64, then new_chunk le64.
//   - The first entry with new_chunk 0 ends the table; the area after a
//     full one is zeroed before the full one is written.
//   - Data chunks are not written by the store, so they stay zero here.
//
// Each case also asserts those bytes explicitly, so a golden file rewritten
// by a broken store would still fail.
func checkGolden(t *testing.T, name string, img []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	got := hexdump(img)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the image:\n got:\n%s\nwant:\n%s", path, got, want)
	}
}

func le32(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }
func le64(b []byte, off int) uint64 { return binary.LittleEndian.Uint64(b[off:]) }

func assertHeader(t *testing.T, b []byte, valid, chunk uint32) {
	t.Helper()
	if b[0] != 0x53 || b[1] != 0x6e || b[2] != 0x41 || b[3] != 0x70 { // "SnAp"
		t.Errorf("magic bytes % x, want 53 6e 41 70", b[0:4])
	}
	if le32(b, 4) != valid || le32(b, 8) != 1 || le32(b, 12) != chunk {
		t.Errorf("header valid=%d version=%d chunk=%d, want %d 1 %d", le32(b, 4), le32(b, 8), le32(b, 12), valid, chunk)
	}
	for i := 16; i < int(chunk)*512; i++ {
		if b[i] != 0 {
			t.Fatalf("header chunk byte %d = %#x, want 0", i, b[i])
		}
	}
}

// assertArea checks area bytes at off: the entries, then a zero terminator
// and zeros to the end of the chunk.
func assertArea(t *testing.T, b []byte, off, chunkBytes int, entries []pair) {
	t.Helper()
	for i, p := range entries {
		if o, n := le64(b, off+16*i), le64(b, off+16*i+8); o != p.old || n != p.new {
			t.Errorf("entry at byte %d = {%d, %d}, want {%d, %d}", off+16*i, o, n, p.old, p.new)
		}
	}
	for i := off + 16*len(entries); i < off+chunkBytes; i++ {
		if b[i] != 0 {
			t.Fatalf("byte %d after the last entry = %#x, want 0", i, b[i])
		}
	}
}

func TestGoldenChunk8ThreeExceptions(t *testing.T) {
	// 64 KiB COW, chunk 8 (4 KiB): E = 256. Three exceptions prepared
	// together (new chunks 2, 3, 4) and committed as one batch.
	dev := newMem("cow", 64<<10)
	s, _, _ := open(t, dev, "P 8", nil)
	var cs []uint64
	for range 3 {
		c, _ := s.Prepare()
		cs = append(cs, c)
	}
	for i, old := range []uint64{5, 17, 0x0102030405060708} {
		s.Commit(old, cs[i], true, func(bool) {})
	}
	b := dev.bytes()
	assertHeader(t, b, 1, 8)
	// Area 0 = chunk 1 = byte 4096. The third old chunk shows the byte
	// order: 08 07 06 05 04 03 02 01.
	assertArea(t, b, 4096, 4096, []pair{{5, 2}, {17, 3}, {0x0102030405060708, 4}})
	if string(b[4096+32:4096+40]) != "\x08\x07\x06\x05\x04\x03\x02\x01" {
		t.Errorf("old_chunk bytes % x, want little-endian 08 07 .. 01", b[4096+32:4096+40])
	}
	for i := 2 * 4096; i < len(b); i++ {
		if b[i] != 0 {
			t.Fatalf("data byte %d written", i)
		}
	}
	if u := usage(s); u != "40/128 16" {
		t.Errorf("Usage %s, want 40/128 16", u)
	}
	checkGolden(t, "chunk8-3ex", b)
}

func TestGoldenChunk1Rollover(t *testing.T) {
	// chunk 1 (512 B): E = 32. 33 exceptions, one at a time: area 0
	// (chunk 1, byte 512) fills with new chunks 2..33; area 1 is chunk
	// 1+33 = 34 (byte 17408), so the 33rd exception gets chunk 35.
	dev := newMem("cow", 40*512)
	s, _, _ := open(t, dev, "P 1", nil)
	var area0 []pair
	for i := range uint64(32) {
		area0 = append(area0, addOne(t, s, 100+i))
	}
	last := addOne(t, s, 132)
	b := dev.bytes()
	assertHeader(t, b, 1, 1)
	for i, p := range area0 {
		if p.new != uint64(2+i) {
			t.Fatalf("exception %d got chunk %d, want %d", i, p.new, 2+i)
		}
	}
	assertArea(t, b, 512, 512, area0) // full: no terminator inside
	if last.new != 35 {
		t.Errorf("33rd exception got chunk %d, want 35", last.new)
	}
	assertArea(t, b, 34*512, 512, []pair{{132, 35}})
	if u := usage(s); u != "36/40 3" {
		t.Errorf("Usage %s, want 36/40 3 (next_free 36; header + 2 areas)", u)
	}
	checkGolden(t, "chunk1-rollover", b)
}

func TestGoldenInvalidated(t *testing.T) {
	// 32 KiB COW, chunk 8; one exception 7 -> 2, then Drop: only the
	// header changes (valid = 00 00 00 00); the table stays.
	dev := newMem("cow", 32<<10)
	s, _, _ := open(t, dev, "P 8", nil)
	addOne(t, s, 7)
	s.Drop()
	b := dev.bytes()
	assertHeader(t, b, 0, 8)
	assertArea(t, b, 4096, 4096, []pair{{7, 2}})
	checkGolden(t, "invalidated", b)
	// The kernel loads it as invalid without reading the table.
	_, got, inv := open(t, dev, "P 8", nil)
	if !inv || len(got) != 0 {
		t.Errorf("reload: invalid=%v exceptions=%v; want invalid, none", inv, got)
	}
}
