package exstore

import (
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// image builds a COW image by hand, independently of the store code:
// a header and the given areas' entries at 1+(E+1)*k chunks.
func image(size int64, chunk uint32, h Header, areas map[uint64][]pair) []byte {
	b := make([]byte, size)
	binary.LittleEndian.PutUint32(b[0:], h.Magic)
	binary.LittleEndian.PutUint32(b[4:], h.Valid)
	binary.LittleEndian.PutUint32(b[8:], h.Version)
	binary.LittleEndian.PutUint32(b[12:], h.ChunkSize)
	cb := int64(chunk) * 512
	e := uint64(cb / 16)
	for k, ps := range areas {
		base := int64(1+(e+1)*k) * cb
		for i, p := range ps {
			binary.LittleEndian.PutUint64(b[base+int64(i)*16:], p.old)
			binary.LittleEndian.PutUint64(b[base+int64(i)*16+8:], p.new)
		}
	}
	return b
}

func TestReadMetadataCases(t *testing.T) {
	hdr := func(valid, version, chunk uint32) Header { return Header{Magic, valid, version, chunk} }
	fullArea := func(first uint64) []pair { // 32 entries for chunk 1
		var ps []pair
		for i := range uint64(32) {
			ps = append(ps, pair{i, first + i})
		}
		return ps
	}
	tests := []struct {
		name    string
		table   string
		lbs     uint32
		size    int64
		img     []byte // nil: built from h/areas
		h       Header
		areas   map[uint64][]pair
		invalid bool
		errno   syscall.Errno
		errSub  string // substring of the error, naming the offset
		logged  []string
		chunk   uint32 // ChunkSize() afterwards
		adds    int
	}{
		{name: "bad magic", table: "P 8", size: 64 << 10, h: Header{Magic: 0x44434241, Valid: 1, Version: 1, ChunkSize: 8},
			errno: syscall.ENXIO, errSub: "header at byte offset 0: Invalid or corrupt snapshot: magic 0x44434241",
			logged: []string{"warn persistent snapshot: Invalid or corrupt snapshot"}, chunk: 8},
		{name: "version 2", table: "P 8", size: 64 << 10, h: hdr(1, 2, 8),
			errno: syscall.EINVAL, errSub: "header at byte offset 8: unable to handle snapshot disk version 2",
			logged: []string{"warn persistent snapshot: unable to handle snapshot disk version 2"}, chunk: 8},
		{name: "version 0 invalid: version checked first", table: "P 8", size: 64 << 10, h: hdr(0, 0, 8),
			errno: syscall.EINVAL, errSub: "disk version 0",
			logged: []string{"warn persistent snapshot: unable to handle snapshot disk version 0"}, chunk: 8},
		{name: "override", table: "P 8", size: 64 << 10, h: hdr(1, 1, 16), areas: map[uint64][]pair{0: {{7, 2}}},
			logged: []string{"warn persistent snapshot: chunk size 16 in device metadata overrides table chunk size of 8."}, chunk: 16, adds: 1},
		{name: "chunk 0 in table takes the disk's silently", table: "P 0", size: 64 << 10, h: hdr(1, 1, 16), chunk: 16},
		{name: "disk chunk not power of 2", table: "P 8", size: 64 << 10, h: hdr(1, 1, 3),
			errno: syscall.EINVAL, errSub: "byte offset 12: invalid on-disk chunk size 3",
			logged: []string{"warn persistent snapshot: chunk size 3 in device metadata overrides table chunk size of 8.",
				"err persistent snapshot: invalid on-disk chunk size 3: Chunk size is not a power of 2."}, chunk: 8},
		{name: "disk chunk 0", table: "P 8", size: 64 << 10, h: hdr(1, 1, 0), errno: syscall.EINVAL, errSub: "invalid on-disk chunk size 0",
			logged: []string{"warn persistent snapshot: chunk size 0 in device metadata overrides table chunk size of 8.",
				"err persistent snapshot: invalid on-disk chunk size 0: Chunk size is not a power of 2."}, chunk: 8},
		{name: "disk chunk below block size", table: "P 8", lbs: 4096, size: 64 << 10, h: hdr(1, 1, 4), errno: syscall.EINVAL,
			logged: []string{"warn persistent snapshot: chunk size 4 in device metadata overrides table chunk size of 8.",
				"err persistent snapshot: invalid on-disk chunk size 4: Chunk size is not a multiple of device blocksize."}, chunk: 8},
		{name: "disk chunk too high", table: "P 0", size: 64 << 10, h: hdr(1, 1, 1<<22), errno: syscall.EINVAL,
			logged: []string{"err persistent snapshot: invalid on-disk chunk size 4194304: Chunk size is too high."}, chunk: 32},
		{name: "marked invalid", table: "P 8", size: 64 << 10, h: hdr(0, 1, 8), areas: map[uint64][]pair{0: {{7, 2}}},
			invalid: true, chunk: 8},
		{name: "valid 2 counts as valid", table: "P 8", size: 64 << 10, h: hdr(2, 1, 8), areas: map[uint64][]pair{0: {{7, 2}, {9, 3}}},
			chunk: 8, adds: 2},
		{name: "device smaller than a chunk", table: "P 8", size: 2048, h: hdr(1, 1, 8),
			errno: syscall.EIO, errSub: "header at byte offset 0: chunk 0 (4096 bytes) is beyond the end of the device (2048 bytes)", chunk: 8},
		{name: "disk chunk larger than device", table: "P 1", size: 4096, h: hdr(1, 1, 16),
			errno: syscall.EIO, errSub: "area 0 at byte offset 8192",
			logged: []string{"warn persistent snapshot: chunk size 16 in device metadata overrides table chunk size of 1."}, chunk: 16},
		{name: "every area full up to the device end", table: "P 1", size: 66 * 512, h: hdr(1, 1, 1),
			areas: map[uint64][]pair{0: fullArea(2), 1: fullArea(35)},
			errno: syscall.EIO, errSub: "area 2 at byte offset 34304", chunk: 1, adds: 64},
		{name: "garbage after the terminator is ignored", table: "P 1", size: 64 * 512, h: hdr(1, 1, 1),
			areas: map[uint64][]pair{0: {{1, 2}, {2, 3}, {0, 0}, {5, 9}}}, chunk: 1, adds: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dev := newMem("cow", tc.size)
			img := tc.img
			if img == nil {
				c := tc.h.ChunkSize
				if c == 0 || c > 64 || c&(c-1) != 0 {
					c = 8
				}
				img = image(tc.size, c, tc.h, tc.areas)
			}
			dev.load(img)
			var l logRec
			s, err := New(strings.Fields(tc.table), dev, tc.lbs, l.log)
			if err != nil {
				t.Fatal(err)
			}
			adds := 0
			inv, err := s.ReadMetadata(func(o, n uint64) error { adds++; return nil })
			if tc.errno != 0 {
				var me *MetadataError
				if !errors.As(err, &me) || !errors.Is(err, tc.errno) || !strings.Contains(err.Error(), tc.errSub) {
					t.Fatalf("ReadMetadata error %v; want a MetadataError with %v containing %q", err, tc.errno, tc.errSub)
				}
				if !strings.HasPrefix(err.Error(), "exstore: cow: ") {
					t.Errorf("error %q does not name the device", err)
				}
			} else if err != nil {
				t.Fatalf("ReadMetadata: %v", err)
			}
			if inv != tc.invalid || adds != tc.adds {
				t.Errorf("invalid=%v adds=%d; want %v and %d", inv, adds, tc.invalid, tc.adds)
			}
			if !slices.Equal(l.lines, tc.logged) {
				t.Errorf("log\n got %q\nwant %q", l.lines, tc.logged)
			}
			if s.ChunkSize() != tc.chunk {
				t.Errorf("ChunkSize %d, want %d", s.ChunkSize(), tc.chunk)
			}
			if string(dev.bytes()) != string(img) {
				t.Errorf("loading an existing COW modified it")
			}
		})
	}
}

func TestReadMetadataAddError(t *testing.T) {
	dev := newMem("cow", 64<<10)
	dev.load(image(64<<10, 8, Header{Magic, 1, 1, 8}, map[uint64][]pair{0: {{7, 2}, {9, 3}}}))
	s, _ := New([]string{"P", "8"}, dev, 512, nil)
	boom := errors.New("hash table full")
	_, err := s.ReadMetadata(func(o, n uint64) error {
		if o == 9 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "area 0 entry 1 at byte offset 4112") {
		t.Fatalf("error %v, want one wrapping %v at byte offset 4112", err, boom)
	}
	if _, err := s.ReadMetadata(nil); err == nil {
		t.Errorf("second ReadMetadata succeeded")
	}
}

func TestAreaWriteFailureFailsTheBatch(t *testing.T) {
	dev := newMem("cow", 1<<20)
	s, _, _ := open(t, dev, "P 8", nil)
	addOne(t, s, 1)
	a, _ := s.Prepare()
	b, _ := s.Prepare()
	var got []string
	s.Commit(20, a, true, func(ok bool) { got = append(got, "a", map[bool]string{true: "ok", false: "fail"}[ok]) })
	dev.failWrite = func(op string, off, n int64) bool { return op == "fua" }
	s.Commit(21, b, true, func(ok bool) { got = append(got, "b", map[bool]string{true: "ok", false: "fail"}[ok]) })
	if want := []string{"a", "fail", "b", "fail"}; !slices.Equal(got, want) {
		t.Fatalf("callbacks %v, want %v", got, want)
	}
	// Invalid from now on: later commits fail without writing the area.
	dev.failWrite = nil
	dev.ops = nil
	c, err := s.Prepare()
	if err != nil {
		t.Fatal(err)
	}
	okv := true
	s.Commit(22, c, true, func(ok bool) { okv = ok })
	if okv || len(dev.ops) != 0 {
		t.Errorf("commit on an invalid store: ok=%v I/O %v; want false, none", okv, dev.ops)
	}
	// The header on disk is still valid: only Drop rewrites it.
	if im, err := Inspect(dev); err != nil || im.Header.Valid != 1 || len(im.Exceptions) != 1 {
		t.Fatalf("Inspect: %v valid=%d exceptions=%d; want valid 1 with the first exception only", err, im.Header.Valid, len(im.Exceptions))
	}
	s.Drop()
	if im, _ := Inspect(dev); im.Header.Valid != 0 {
		t.Errorf("header valid=%d after Drop", im.Header.Valid)
	}
	if _, _, inv := open(t, dev, "P 8", nil); !inv {
		t.Errorf("reload after Drop is not invalid")
	}
}

func TestPreflushFailureInvalidates(t *testing.T) {
	dev := newMem("cow", 1<<20)
	s, _, _ := open(t, dev, "P 8", nil)
	dev.failWrite = func(op string, off, n int64) bool { return op == "flush" }
	c, _ := s.Prepare()
	okv := true
	s.Commit(5, c, true, func(ok bool) { okv = ok })
	if okv {
		t.Errorf("commit succeeded although the preflush failed")
	}
}

func TestZeroNextAreaFailureInvalidates(t *testing.T) {
	dev := newMem("cow", 64*512)
	s, _, _ := open(t, dev, "P 1", nil)
	for i := range 31 {
		addOne(t, s, uint64(i))
	}
	dev.failWrite = func(op string, off, n int64) bool { return off == 34*512 } // area 1
	dev.ops = nil
	c, _ := s.Prepare()
	okv := true
	s.Commit(31, c, true, func(ok bool) { okv = ok })
	if okv {
		t.Fatal("commit succeeded although zeroing area 1 failed")
	}
	if want := []string{"write 17408 512"}; !slices.Equal(dev.ops, want) {
		t.Errorf("I/O %q, want only the failed zeroing %q (an invalid store does not write the area)", dev.ops, want)
	}
	// The in-memory state still moves to area 1, as the kernel's does.
	if u := usage(s); u != "35/64 3" {
		t.Errorf("Usage %s, want 35/64 3", u)
	}
}

func TestCommitInvalidCopy(t *testing.T) {
	dev := newMem("cow", 1<<20)
	s, _, _ := open(t, dev, "P 8", nil)
	c, _ := s.Prepare()
	dev.ops = nil
	okv := true
	s.Commit(5, c, false, func(ok bool) { okv = ok })
	if okv || len(dev.ops) != 0 {
		t.Errorf("Commit(valid=false): ok=%v I/O %v; want false and no area write", okv, dev.ops)
	}
}

func TestDropWriteFailureLogs(t *testing.T) {
	dev := newMem("cow", 1<<20)
	var l logRec
	s, _, _ := open(t, dev, "P 8", &l)
	dev.failWrite = func(op string, off, n int64) bool { return off == 0 }
	s.Drop()
	if want := []string{"warn persistent snapshot: write header failed"}; !slices.Equal(l.lines, want) {
		t.Errorf("log %q, want %q", l.lines, want)
	}
	// Drop on a store that never read its metadata cannot write a header.
	l.lines = nil
	s2, _ := New([]string{"P", "0"}, dev, 512, l.log)
	s2.Drop()
	if want := []string{"warn persistent snapshot: write header failed"}; !slices.Equal(l.lines, want) {
		t.Errorf("log %q, want %q", l.lines, want)
	}
}

func TestFreshStoreWriteFailures(t *testing.T) {
	for _, tc := range []struct {
		failOff int64
		logged  string
		errSub  string
	}{
		{0, "warn persistent snapshot: write_header failed", "header at byte offset 0: write of chunk 0 failed"},
		{4096, "warn persistent snapshot: zero_disk_area(0) failed", "area 0 at byte offset 4096: write of chunk 1 failed"},
	} {
		dev := newMem("cow", 1<<20)
		dev.failWrite = func(op string, off, n int64) bool { return off == tc.failOff }
		var l logRec
		s, _ := New([]string{"P", "8"}, dev, 512, l.log)
		_, err := s.ReadMetadata(nil)
		if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), tc.errSub) {
			t.Errorf("error %v, want EIO containing %q", err, tc.errSub)
		}
		if !slices.Equal(l.lines, []string{tc.logged}) {
			t.Errorf("log %q, want %q", l.lines, tc.logged)
		}
	}
}

func TestReadFailureNamesOffset(t *testing.T) {
	dev := newMem("cow", 1<<20)
	s, _, _ := open(t, dev, "P 1", nil)
	for i := range 70 { // areas 0, 1 full; area 2 current
		addOne(t, s, uint64(i))
	}
	dev.failRead = func(off, n int64) bool { return off == 67*512 } // area 2
	s2, _ := New([]string{"P", "1"}, dev, 512, nil)
	_, err := s2.ReadMetadata(nil)
	if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "area 2 at byte offset 34304") {
		t.Fatalf("error %v, want EIO naming area 2 at byte offset 34304", err)
	}
}

func TestPrepareBeforeReadMetadata(t *testing.T) {
	s, _ := New([]string{"P", "8"}, newMem("cow", 1<<20), 512, nil)
	if _, err := s.Prepare(); err == nil {
		t.Fatal("Prepare before ReadMetadata succeeded")
	}
	okv := true
	s.Commit(1, 2, true, func(ok bool) { okv = ok })
	if okv {
		t.Error("Commit before ReadMetadata reported success")
	}
}
