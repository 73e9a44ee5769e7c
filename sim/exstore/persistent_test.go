package exstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"syscall"
	"testing"
)

type pair struct{ old, new uint64 }

// open makes a store from a table ("P 8") on dev and reads its metadata.
func open(t *testing.T, dev *memDev, table string, l *logRec) (Store, []pair, bool) {
	t.Helper()
	var lf Logger
	if l != nil {
		lf = l.log
	}
	s, err := New(strings.Fields(table), dev, 512, lf)
	if err != nil {
		t.Fatalf("New(%q): %v", table, err)
	}
	var got []pair
	inv, err := s.ReadMetadata(func(o, n uint64) error { got = append(got, pair{o, n}); return nil })
	if err != nil {
		t.Fatalf("ReadMetadata: %v", err)
	}
	return s, got, inv
}

// addOne prepares and commits one exception with nothing else in flight.
func addOne(t *testing.T, s Store, old uint64) pair {
	t.Helper()
	c, err := s.Prepare()
	if err != nil {
		t.Fatalf("Prepare for old chunk %d: %v", old, err)
	}
	ran := false
	s.Commit(old, c, true, func(ok bool) {
		ran = true
		if !ok {
			t.Fatalf("commit of %d->%d failed", old, c)
		}
	})
	if !ran {
		t.Fatalf("commit of %d->%d with nothing in flight did not call back", old, c)
	}
	return pair{old, c}
}

func usage(s interface {
	Usage() (uint64, uint64, uint64)
}) string {
	a, b, c := s.Usage()
	return fmt.Sprintf("%d/%d %d", a, b, c)
}

func TestFreshStoreWritesHeaderAndZeroesArea0(t *testing.T) {
	dev := newMem("cow", 64<<10)
	// Garbage after the (zero) magic must be overwritten or zeroed.
	junk := make([]byte, 16<<10)
	for i := range junk {
		junk[i] = 0xa5
	}
	clear(junk[:4])
	dev.load(junk)
	s, got, inv := open(t, dev, "P 8", nil)
	if inv || len(got) != 0 {
		t.Fatalf("fresh store: invalid=%v exceptions=%v", inv, got)
	}
	// read_header reads chunk 0; write_header writes it (plain write);
	// zero_disk_area(0) writes chunk 1 (plain write).
	if want := []string{"read 0 4096", "write 0 4096", "write 4096 4096"}; !slices.Equal(dev.ops, want) {
		t.Errorf("I/O = %q, want %q", dev.ops, want)
	}
	b := dev.bytes()
	if want := []byte{0x53, 0x6e, 0x41, 0x70, 1, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0}; string(b[:16]) != string(want) {
		t.Errorf("header = % x, want % x", b[:16], want)
	}
	for i, c := range b[16 : 2*4096] {
		if c != 0 {
			t.Fatalf("byte %d = %#x after init, want 0 (rest of header chunk and area 0)", 16+i, c)
		}
	}
	if b[2*4096] != 0xa5 {
		t.Errorf("data chunk 2 was touched")
	}
	if u := usage(s); u != "16/128 16" {
		t.Errorf("Usage = %s, want 16/128 16", u)
	}
	// Chunk size 0 takes the default, 32 sectors.
	dev2 := newMem("cow2", 64<<10)
	s2, _, _ := open(t, dev2, "P 0", nil)
	if s2.ChunkSize() != DefaultChunkSize || s2.TableArgs() != "P 32" {
		t.Errorf("P 0 on a fresh COW: chunk %d table %q, want 32 and \"P 32\"", s2.ChunkSize(), s2.TableArgs())
	}
	if got := binary.LittleEndian.Uint32(dev2.bytes()[12:]); got != 32 {
		t.Errorf("on-disk chunk size %d, want 32", got)
	}
}

func TestBatching(t *testing.T) {
	dev := newMem("cow", 1<<20)
	s, _, _ := open(t, dev, "P 8", nil)
	var order []string
	cb := func(name string) func(bool) {
		return func(ok bool) { order = append(order, fmt.Sprintf("%s:%v", name, ok)) }
	}
	a, _ := s.Prepare()
	b, _ := s.Prepare()
	c, _ := s.Prepare()
	if a != 2 || b != 3 || c != 4 || s.Pending() != 3 {
		t.Fatalf("prepared %d %d %d pending %d; want 2 3 4 pending 3", a, b, c, s.Pending())
	}
	dev.ops = nil
	s.Commit(10, a, true, cb("a"))
	s.Commit(11, b, true, cb("b"))
	if len(order) != 0 || len(dev.ops) != 0 || s.Pending() != 1 {
		t.Fatalf("with one exception in flight: callbacks %v, I/O %v, pending %d; want none, none, 1", order, dev.ops, s.Pending())
	}
	s.Commit(12, c, true, cb("c"))
	if want := []string{"a:true", "b:true", "c:true"}; !slices.Equal(order, want) {
		t.Errorf("callbacks %v, want %v", order, want)
	}
	// REQ_PREFLUSH|REQ_FUA write of area 0 (chunk 1).
	if want := []string{"flush", "fua 4096 4096"}; !slices.Equal(dev.ops, want) {
		t.Errorf("I/O %q, want %q", dev.ops, want)
	}
}

func TestAreaFullFlushesDespiteInFlight(t *testing.T) {
	// chunk 1: E = 512/16 = 32, area 0 at chunk 1, area 1 at chunk 34.
	dev := newMem("cow", 64*512)
	s, _, _ := open(t, dev, "P 1", nil)
	var chunks []uint64
	for range 33 {
		c, err := s.Prepare()
		if err != nil {
			t.Fatal(err)
		}
		chunks = append(chunks, c)
	}
	if chunks[31] != 33 || chunks[32] != 35 {
		t.Fatalf("32nd and 33rd chunks %d %d, want 33 and 35 (chunk 34 is area 1)", chunks[31], chunks[32])
	}
	dev.ops = nil
	n := 0
	for i := range 32 {
		s.Commit(uint64(100+i), chunks[i], true, func(ok bool) { n++ })
	}
	if n != 32 || s.Pending() != 1 {
		t.Fatalf("after filling area 0 with one in flight: %d callbacks, pending %d; want 32, 1", n, s.Pending())
	}
	// Area 1 is zeroed before area 0 is written, so the table always ends.
	if want := []string{"write 17408 512", "flush", "fua 512 512"}; !slices.Equal(dev.ops, want) {
		t.Errorf("I/O %q, want %q", dev.ops, want)
	}
	if u := usage(s); u != "36/64 3" {
		t.Errorf("Usage %s, want 36/64 3 (next_free 36, current_area 1)", u)
	}
	dev.ops = nil
	s.Commit(132, chunks[32], true, func(ok bool) { n++ })
	if want := []string{"flush", "fua 17408 512"}; !slices.Equal(dev.ops, want) || n != 33 {
		t.Errorf("I/O %q callbacks %d, want %q and 33", dev.ops, n, want)
	}
}

func TestRoundTrip(t *testing.T) {
	const n = 100 // E=32 with chunk 1: spans areas 0..3
	size := SizeFor(true, 1, n)
	dev := newMem("cow", int64(size)*512)
	s, _, _ := open(t, dev, "P 1", nil)
	rng := rand.New(rand.NewPCG(1, 2))
	var want []pair
	for len(want) < n {
		// Prepare a batch, then commit it in a shuffled order: the store
		// records commit order (the Dec 2009 kernel committed copies in
		// completion order).
		k := min(1+rng.IntN(7), n-len(want))
		var batch []pair
		for range k {
			c, err := s.Prepare()
			if err != nil {
				t.Fatalf("Prepare after %d: %v", len(want), err)
			}
			batch = append(batch, pair{uint64(1000 + rng.IntN(1<<20)*2 + len(want)%2), c})
		}
		rng.Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })
		for _, p := range batch {
			s.Commit(p.old, p.new, true, func(ok bool) {
				if !ok {
					t.Fatalf("commit failed")
				}
			})
			want = append(want, p)
		}
		if s.Pending() != 0 {
			t.Fatalf("pending %d after a full batch", s.Pending())
		}
	}
	if _, err := s.Prepare(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("COW of SizeFor(%d) took more than %d exceptions: %v", n, n, err)
	}
	u := usage(s)
	s2, got, inv := open(t, dev, "P 1", nil)
	if inv || !slices.Equal(got, want) {
		t.Fatalf("reload: invalid=%v\n got %v\nwant %v", inv, got, want)
	}
	if u2 := usage(s2); u2 != u {
		t.Errorf("reload Usage %s, want %s", u2, u)
	}
	if u != fmt.Sprintf("%d/%d %d", size, size, (3+2)*1) {
		t.Errorf("Usage %s, want next_free*chunk = size (%d), metadata 5", u, size)
	}
	im, err := Inspect(dev)
	if err != nil {
		t.Fatal(err)
	}
	var fromImage []pair
	for _, x := range im.Exceptions {
		fromImage = append(fromImage, pair{x.Old, x.New})
	}
	if !slices.Equal(fromImage, want) || im.CurrentArea != 3 || im.CurrentCommitted != n-3*32 {
		t.Errorf("Inspect: area %d committed %d exceptions %v", im.CurrentArea, im.CurrentCommitted, fromImage)
	}
	if p := im.Problems(); len(p) != 0 {
		t.Errorf("Problems: %v", p)
	}
	// The reloaded store continues where the first stopped: still full.
	if _, err := s2.Prepare(); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("reloaded store Prepare: %v, want ENOSPC", err)
	}
}

func TestReloadMidAreaContinuesAppending(t *testing.T) {
	dev := newMem("cow", 1<<20)
	s, _, _ := open(t, dev, "P 1", nil)
	var want []pair
	for i := range 40 { // area 0 full, 8 in area 1
		want = append(want, addOne(t, s, uint64(i)))
	}
	s2, got, _ := open(t, dev, "P 1", nil)
	if !slices.Equal(got, want) {
		t.Fatalf("reload got %v", got)
	}
	for i := range 30 { // fills area 1 (24 more), 6 into area 2
		want = append(want, addOne(t, s2, uint64(500+i)))
	}
	_, got, _ = open(t, dev, "P 1", nil)
	if !slices.Equal(got, want) {
		t.Fatalf("second reload got %v\nwant %v", got, want)
	}
	if want[64].new != areaLocation(32, 2)+1 {
		t.Errorf("65th exception at chunk %d, want the first data chunk of area 2 (%d)", want[64].new, areaLocation(32, 2)+1)
	}
}

func TestUsageReferenceNumbers(t *testing.T) {
	tests := []struct {
		name      string
		cowSector int64
		chunk     int
		n         int
		want      string
	}{
		// dm snapshot.rst: chunk 8, 1 GiB COW, current_area 193, next_free 49737.
		{"snapshot.rst", 2097152, 8, 193*256 + 134, "397896/2097152 1560"},
		// lvm2 snapshot-usage.sh: 100 KiB snapshot, 4 KiB chunk, one origin write.
		{"lvm snapshot-usage 12%", 200, 8, 1, "24/200 16"},
		// lvm2 lvextend-snapshot-dmeventd.sh: 4 MiB, 1000 KiB then 1700 KiB more.
		{"lvm dmeventd 24%", 8192, 8, 250, "2016/8192 16"},
		{"lvm dmeventd 66%", 8192, 8, 250 + 425, "5432/8192 32"},
		// seed-call-sequence.scn: 16 exceptions on an 8 MiB COW.
		{"seed-call-sequence", 16384, 8, 16, "144/16384 16"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dev := newMem("cow", tc.cowSector*512)
			s, _, _ := open(t, dev, fmt.Sprintf("P %d", tc.chunk), nil)
			// Batches of up to 100 in flight keep the metadata writes few.
			for done := 0; done < tc.n; {
				k := min(100, tc.n-done)
				var cs []uint64
				for range k {
					c, err := s.Prepare()
					if err != nil {
						t.Fatalf("Prepare #%d: %v", done, err)
					}
					cs = append(cs, c)
				}
				for i, c := range cs {
					s.Commit(uint64(done+i), c, true, func(ok bool) {
						if !ok {
							t.Fatal("commit failed")
						}
					})
				}
				done += k
			}
			if u := usage(s); u != tc.want {
				t.Errorf("Usage %s, want %s", u, tc.want)
			}
			dev.ops = nil
			s2, got, _ := open(t, dev, fmt.Sprintf("P %d", tc.chunk), nil)
			if u := usage(s2); u != tc.want || len(got) != tc.n {
				t.Errorf("after reload: Usage %s with %d exceptions, want %s with %d", u, len(got), tc.want, tc.n)
			}
		})
	}
}

func TestLvextendHandoverUsage(t *testing.T) {
	// lvm2 snapshot-usage.sh: a 12 KiB (24 sector) snapshot with 4 KiB
	// chunks holds header + area + one data chunk: 100% after one write.
	dev := newMem("cow", 24*512)
	s, _, _ := open(t, dev, "P 8", nil)
	addOne(t, s, 0)
	if u := usage(s); u != "24/24 16" {
		t.Errorf("Usage %s, want 24/24 16", u)
	}
	if _, err := s.Prepare(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Prepare on a full COW: %v, want ENOSPC", err)
	}
	// lvextend to 15 KiB: the store (handed over to the new table) sees the
	// larger COW; 80.00%. One more chunk still needs 32 sectors.
	dev.size = 30 * 512
	if u := usage(s); u != "24/30 16" {
		t.Errorf("after extend: Usage %s, want 24/30 16", u)
	}
	if _, err := s.Prepare(); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("Prepare on 30 sectors: %v, want ENOSPC (needs (3+1)*8)", err)
	}
	dev.size = 32 * 512
	if c, err := s.Prepare(); err != nil || c != 3 {
		t.Errorf("Prepare on 32 sectors = %d, %v; want chunk 3", c, err)
	}
}

func TestENOSPCFormula(t *testing.T) {
	// chunk 8: E=256, so no area is skipped here and next_free runs 2,3,...
	// Prepare succeeds while size >= (next_free+1)*8, so a COW of s
	// sectors takes floor(s/8)-2 exceptions, whatever the remainder.
	for size := int64(16); size <= 80; size++ {
		dev := newMem("cow", size*512)
		s, _, _ := open(t, dev, "P 8", nil)
		n := 0
		var last error
		for n < 100 {
			if _, last = s.Prepare(); last != nil {
				break
			}
			n++
		}
		if want := int(size/8) - 2; n != want || !errors.Is(last, syscall.ENOSPC) {
			t.Errorf("COW of %d sectors: %d exceptions then %v; want %d then ENOSPC", size, n, last, want)
		}
	}
}

func TestCapacityMatchesDMT(t *testing.T) {
	for _, chunk := range []uint32{1, 2} {
		e := uint64(chunk) * 512 / 16
		for _, n := range []uint64{0, 1, e - 2, e - 1, e, e + 1, 2*e - 1, 2 * e, 2*e + 1, 3 * e} {
			t.Run(fmt.Sprintf("chunk%d_n%d", chunk, n), func(t *testing.T) {
				size := SizeFor(true, chunk, n)
				dev := newMem("cow", int64(size)*512)
				s, _, _ := open(t, dev, fmt.Sprintf("P %d", chunk), nil)
				for i := range n {
					addOne(t, s, i)
				}
				if _, err := s.Prepare(); !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("after %d exceptions: %v, want ENOSPC", n, err)
				}
				if _, got, inv := open(t, dev, fmt.Sprintf("P %d", chunk), nil); inv || uint64(len(got)) != n {
					t.Fatalf("reload: invalid=%v, %d exceptions; want %d", inv, len(got), n)
				}
				if n == 0 {
					return
				}
				// One chunk less cannot hold n valid exceptions: either ENOSPC
				// comes earlier, or filling an area leaves no room to zero the
				// next one (zero_disk_area fails beyond the device end) and the
				// store goes invalid.
				dev2 := newMem("cow", int64(size-uint64(chunk))*512)
				s2, _, _ := open(t, dev2, fmt.Sprintf("P %d", chunk), nil)
				okCommits := uint64(0)
				for i := range n {
					c, err := s2.Prepare()
					if err != nil {
						break
					}
					s2.Commit(i, c, true, func(ok bool) {
						if ok {
							okCommits++
						}
					})
				}
				if okCommits >= n {
					t.Errorf("COW one chunk below SizeFor took all %d exceptions validly", n)
				}
			})
		}
	}
}

func TestFullLastAreaWithoutRoomToTerminateInvalidates(t *testing.T) {
	// chunk 1, E=32: 34 chunks = header + area 0 + 32 data chunks. All 32
	// prepares pass the ENOSPC test, but committing the 32nd must zero area
	// 1 at chunk 34, beyond the end: the kernel's bio fails and ps->valid=0.
	dev := newMem("cow", 34*512)
	s, _, _ := open(t, dev, "P 1", nil)
	for i := range 31 {
		addOne(t, s, uint64(i))
	}
	c, err := s.Prepare()
	if err != nil || c != 33 {
		t.Fatalf("32nd Prepare = %d, %v", c, err)
	}
	var ok []bool
	s.Commit(31, c, true, func(v bool) { ok = append(ok, v) })
	if !slices.Equal(ok, []bool{false}) {
		t.Fatalf("callback %v, want [false]", ok)
	}
	im, err := Inspect(dev)
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Exceptions) != 31 {
		t.Errorf("on disk %d exceptions, want 31 (the failing batch is not written)", len(im.Exceptions))
	}
}
