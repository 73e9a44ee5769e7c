package block_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/pattern"
)

func TestNewMemErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		size int64
		want string // "" for success
	}{
		{"d", 512, ""},
		{"d", 1 << 40, ""},
		{"d", 0, "d: size 0 is not a positive multiple of 512"},
		{"d", -512, "size -512 is not"},
		{"d", 100, "size 100 is not"},
		{"d", 4097, "size 4097 is not"},
		{"", 4096, "empty device name"},
	} {
		m, err := block.NewMem(c.name, c.size)
		if c.want == "" {
			if err != nil || m.Size() != c.size || m.Name() != c.name {
				t.Errorf("NewMem(%q, %d) = %v, %v", c.name, c.size, m, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewMem(%q, %d): error %v, want it to contain %q", c.name, c.size, err, c.want)
		}
	}
}

// op is one step of a cache scenario.
type op struct {
	kind    string // write, fua, discard, flush
	off, n  int64
	patName string
}

func apply(t *testing.T, m *block.Mem, ops []op) {
	t.Helper()
	for _, o := range ops {
		p := make([]byte, o.n)
		pattern.Fill(p, o.patName, o.off)
		var err error
		switch o.kind {
		case "write":
			_, err = m.WriteAt(p, o.off)
		case "fua":
			_, err = m.WriteAtFUA(p, o.off)
		case "discard":
			err = m.Discard(o.off, o.n)
		case "flush":
			err = m.Flush()
		default:
			t.Fatalf("bad op %q", o.kind)
		}
		if err != nil {
			t.Fatalf("%+v: %v", o, err)
		}
	}
}

// image builds expected device content: zeros with pattern ranges on top.
func image(size int64, ranges ...op) []byte {
	b := make([]byte, size)
	for _, r := range ranges {
		pattern.Fill(b[r.off:r.off+r.n], r.patName, r.off)
	}
	return b
}

func readAll(t *testing.T, d block.Device) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if _, err := d.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func sameImage(t *testing.T, what string, got, want []byte) {
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
	t.Helper()
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%s: byte %d (sector %d) is %#02x, want %#02x", what, i, i/512, got[i], want[i])
		}
	}
}

func TestMemCrashClone(t *testing.T) {
	const size = 32 << 10
	none := func(int64) bool { return false }
	all := func(int64) bool { return true }
	odd := func(s int64) bool { return s%2 == 1 }
	w := func(kind string, off, n int64, p string) op { return op{kind, off, n, p} }
	flush := op{kind: "flush"}
	for _, c := range []struct {
		name string
		ops  []op
		keep func(int64) bool
		want []op // crash image, on zeros
		// dirty is the sectors keep must be asked about, in order.
		dirty []int64
	}{
		{"unflushed write is lost", []op{w("write", 0, 8192, "A")}, none, nil, []int64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}},
		{"unflushed write is kept", []op{w("write", 4096, 1024, "A")}, all, []op{w("", 4096, 1024, "A")}, []int64{8, 9}},
		{"flushed write survives", []op{w("write", 0, 8192, "A"), flush}, none, []op{w("", 0, 8192, "A")}, nil},
		{"fua survives", []op{w("fua", 512, 1024, "A")}, none, []op{w("", 512, 1024, "A")}, nil},
		{"overwrite of durable data rolls back",
			[]op{w("write", 0, 8192, "A"), flush, w("write", 0, 8192, "B")}, none, []op{w("", 0, 8192, "A")}, nil},
		{"overwrite of durable data kept per sector",
			[]op{w("write", 0, 4096, "A"), flush, w("write", 0, 4096, "B")}, odd,
			[]op{w("", 0, 512, "A"), w("", 512, 512, "B"), w("", 1024, 512, "A"), w("", 1536, 512, "B"),
				w("", 2048, 512, "A"), w("", 2560, 512, "B"), w("", 3072, 512, "A"), w("", 3584, 512, "B")},
			[]int64{0, 1, 2, 3, 4, 5, 6, 7}},
		{"partial sector write tears at sector granularity",
			[]op{w("write", 0, 1024, "A"), flush, w("write", 100, 10, "B")}, none, []op{w("", 0, 1024, "A")}, []int64{0}},
		{"partial sector write kept",
			[]op{w("write", 0, 1024, "A"), flush, w("write", 100, 10, "B")}, all,
			[]op{w("", 0, 1024, "A"), w("", 100, 10, "B")}, []int64{0}},
		{"fua makes the whole sector durable",
			[]op{w("write", 0, 512, "A"), w("fua", 0, 100, "B")}, none,
			[]op{w("", 0, 512, "A"), w("", 0, 100, "B")}, nil},
		{"fua on a clean sector of a dirty page, then overwritten",
			[]op{w("write", 0, 512, "A"), w("fua", 1024, 512, "F"), w("write", 1024, 512, "B")}, none,
			[]op{w("", 1024, 512, "F")}, []int64{0, 2}},
		{"second write to a dirty sector keeps the first durable copy",
			[]op{w("write", 0, 4096, "A"), flush, w("write", 0, 4096, "B"), w("write", 0, 4096, "C")}, none,
			[]op{w("", 0, 4096, "A")}, nil},
		{"discard is volatile", []op{w("write", 0, 16384, "A"), flush, w("discard", 4096, 8192, "")}, none,
			[]op{w("", 0, 16384, "A")}, nil},
		{"discard kept", []op{w("write", 0, 16384, "A"), flush, w("discard", 4096, 8192, "")}, all,
			[]op{w("", 0, 4096, "A"), w("", 12288, 4096, "A")}, nil},
		{"flushed discard", []op{w("write", 0, 16384, "A"), flush, w("discard", 1024, 8192, ""), flush}, none,
			[]op{w("", 0, 1024, "A"), w("", 9216, 16384-9216, "A")}, nil},
		{"write after discard", []op{w("write", 0, 8192, "A"), flush, w("discard", 0, 8192, ""), w("write", 512, 512, "B")}, odd,
			// Sectors 0..15 dirty; odd ones keep the new content: zeros, except sector 1 holds B.
			[]op{w("", 0, 512, "A"), w("", 512, 512, "B"), w("", 1024, 512, "A"), w("", 2048, 512, "A"), w("", 3072, 512, "A"),
				w("", 4096, 512, "A"), w("", 5120, 512, "A"), w("", 6144, 512, "A"), w("", 7168, 512, "A")}, nil},
		{"nil keep keeps none", []op{w("write", 0, 512, "A")}, nil, nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := newMem(t, size)
			apply(t, m, c.ops)
			before := readAll(t, m)
			var asked []int64
			keep := c.keep
			if keep != nil {
				keep = func(s int64) bool { asked = append(asked, s); return c.keep(s) }
			}
			cl := m.CrashClone(keep)
			sameImage(t, "crash image", readAll(t, cl), image(size, c.want...))
			if c.dirty != nil && fmt.Sprint(asked) != fmt.Sprint(c.dirty) {
				t.Errorf("keep asked about sectors %v, want %v", asked, c.dirty)
			}
			// The original is unchanged, and the clone is durable.
			sameImage(t, "original after clone", readAll(t, m), before)
			if st := cl.Stats(); st.DirtySectors != 0 || st.UndoPages != 0 {
				t.Errorf("clone stats %+v: want no dirty sectors", st)
			}
			if cl.Name() != m.Name() || cl.Size() != m.Size() {
				t.Errorf("clone is %s/%d, want %s/%d", cl.Name(), cl.Size(), m.Name(), m.Size())
			}
			// Flushing the original makes everything survive.
			if err := m.Flush(); err != nil {
				t.Fatal(err)
			}
			sameImage(t, "crash after flush", readAll(t, m.CrashClone(nil)), before)
		})
	}
}

func TestMemStats1TiB(t *testing.T) {
	m := newMem(t, 1<<40)
	check := func(what string, want block.MemStats) {
		t.Helper()
		want.PageSize = 4096
		want.Bytes = (want.DataPages + want.UndoPages) * 4096
		if got := m.Stats(); got != want {
			t.Fatalf("%s: stats %+v, want %+v", what, got, want)
		}
	}
	check("fresh", block.MemStats{})
	const at = 512 << 30
	p := make([]byte, 1<<20)
	pattern.Fill(p, "A", at)
	if _, err := m.WriteAt(p, at); err != nil {
		t.Fatal(err)
	}
	check("after 1 MiB write", block.MemStats{DataPages: 256, DirtyPages: 256, DirtySectors: 2048})
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	check("after flush", block.MemStats{DataPages: 256, DurablePages: 256})
	if _, err := m.WriteAt(p[:4096], at+8192); err != nil {
		t.Fatal(err)
	}
	check("after overwrite", block.MemStats{DataPages: 256, UndoPages: 1, DurablePages: 256, DirtyPages: 1, DirtySectors: 8})
	ext, err := m.Map(0, 1<<40)
	want := []block.Extent{{0, at, true}, {at, 1 << 20, false}, {at + 1<<20, 1<<40 - at - 1<<20, true}}
	if err != nil || fmt.Sprint(ext) != fmt.Sprint(want) {
		t.Fatalf("Map = %v, %v; want %v", ext, err, want)
	}
	if err := m.Discard(at, 1<<20); err != nil {
		t.Fatal(err)
	}
	check("after discard", block.MemStats{UndoPages: 256, DurablePages: 256, DirtyPages: 256, DirtySectors: 2048})
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	check("after discard and flush", block.MemStats{})
	if ext, err := m.Map(0, 1<<40); err != nil || len(ext) != 1 || !ext[0].Hole {
		t.Fatalf("Map after discard = %v, %v; want one hole", ext, err)
	}
}

func TestMemMapPartialPages(t *testing.T) {
	m := newMem(t, 64<<10)
	apply(t, m, []op{{"write", 5000, 10, "A"}, {"write", 20000, 9000, "B"}, {"write", 60000, 100, "C"}, {"discard", 24576, 4096, ""}})
	for _, c := range []struct {
		off, n int64
		want   string
	}{
		{0, 64 << 10, "[{0 4096 true} {4096 4096 false} {8192 8192 true} {16384 8192 false} {24576 4096 true} {28672 4096 false} {32768 24576 true} {57344 4096 false} {61440 4096 true}]"},
		{5000, 1, "[{5000 1 false}]"},
		{100, 5000, "[{100 3996 true} {4096 1004 false}]"},
		{24000, 5000, "[{24000 576 false} {24576 4096 true} {28672 328 false}]"},
		{0, 0, "[]"},
	} {
		ext, err := m.Map(c.off, c.n)
		if err != nil || fmt.Sprint(ext) != c.want {
			t.Errorf("Map(%d, %d) = %v, %v; want %s", c.off, c.n, ext, err, c.want)
		}
	}
}

// model is a byte-level reference for Mem's cache: the current image, the
// durable image, and which sectors are written but not durable.
type model struct {
	cur, dur []byte
	dirty    []bool
}

func (md *model) write(p []byte, off int64, fua bool) {
	copy(md.cur[off:], p)
	for s := off / 512; s < (off+int64(len(p))+511)/512; s++ {
		if fua {
			copy(md.dur[s*512:(s+1)*512], md.cur[s*512:])
			md.dirty[s] = false
		} else {
			md.dirty[s] = true
		}
	}
}

func (md *model) flush() {
	copy(md.dur, md.cur)
	clear(md.dirty)
}

func (md *model) crash(keep func(int64) bool) []byte {
	img := bytes.Clone(md.dur)
	for s, d := range md.dirty {
		if d && keep(int64(s)) {
			copy(img[s*512:(s+1)*512], md.cur[s*512:])
		}
	}
	return img
}

// TestMemAgainstModel runs seeded random operations on Mem with several
// page sizes and checks reads, crash images and maps against the model.
func TestMemAgainstModel(t *testing.T) {
	const size = 256 << 10
	for _, shift := range []uint{9, 12, 16} {
		for seed := range uint64(4) {
			t.Run(fmt.Sprintf("page%d/seed%d", 1<<shift, seed), func(t *testing.T) {
				// Odd seeds run on reused memory full of old bytes.
				if seed%2 == 1 {
					block.PoisonIdleChunks()
				}
				m, err := block.NewMemPageShift("d", size, shift)
				if err != nil {
					t.Fatal(err)
				}
				md := &model{cur: make([]byte, size), dur: make([]byte, size), dirty: make([]bool, size/512)}
				rng := rand.New(rand.NewPCG(seed, 99))
				randRange := func() (int64, int64) {
					var off, n int64
					switch rng.IntN(3) {
					case 0: // aligned 4 KiB multiples
						off = rng.Int64N(size/4096) * 4096
						n = min(size-off, (1+rng.Int64N(8))*4096)
					case 1: // sector aligned
						off = rng.Int64N(size/512) * 512
						n = min(size-off, (1+rng.Int64N(40))*512)
					default: // anything
						off = rng.Int64N(size)
						n = min(size-off, 1+rng.Int64N(20000))
					}
					return off, n
				}
				for i := range 600 {
					switch k := rng.IntN(20); {
					case k < 9 || k == 10:
						off, n := randRange()
						p := make([]byte, n)
						pattern.Fill(p, fmt.Sprintf("p%d", i), off)
						fua := k == 10
						if fua {
							_, err = m.WriteAtFUA(p, off)
						} else {
							_, err = m.WriteAt(p, off)
						}
						if err != nil {
							t.Fatal(err)
						}
						md.write(p, off, fua)
					case k < 12:
						off, n := randRange()
						if err := m.Discard(off, n); err != nil {
							t.Fatal(err)
						}
						md.write(make([]byte, n), off, false)
					case k == 12:
						if err := m.Flush(); err != nil {
							t.Fatal(err)
						}
						md.flush()
					case k < 15:
						off, n := randRange()
						p := make([]byte, n)
						if _, err := m.ReadAt(p, off); err != nil {
							t.Fatal(err)
						}
						sameImage(t, fmt.Sprintf("op %d: read %d+%d", i, off, n), p, md.cur[off:off+n])
					case k == 15:
						// keep is a pure function of the sector, so the
						// model and Mem may differ in which untouched
						// zero sectors they count as dirty.
						salt := rng.Uint64()
						keep := func(s int64) bool { return (uint64(s)*0x9e3779b97f4a7c15^salt)>>63 == 1 }
						sameImage(t, fmt.Sprintf("op %d: crash image", i), readAll(t, m.CrashClone(keep)), md.crash(keep))
					default:
						ext, err := m.Map(0, size)
						if err != nil {
							t.Fatal(err)
						}
						for _, e := range ext {
							if e.Hole && !bytes.Equal(md.cur[e.Off:e.Off+e.Len], make([]byte, e.Len)) {
								t.Fatalf("op %d: hole %+v holds data", i, e)
							}
						}
					}
				}
				sameImage(t, "final", readAll(t, m), md.cur)
				sameImage(t, "final crash, keep none", readAll(t, m.CrashClone(nil)), md.dur)
			})
		}
	}
}

// The same seeded keep gives the same crash image.
func TestMemCrashCloneDeterministic(t *testing.T) {
	img := func() []byte {
		m := newMem(t, 1<<20)
		for i := range 50 {
			off := int64(i) * 19997 % (1<<20 - 8192)
			p := make([]byte, 8192)
			pattern.Fill(p, "D", off)
			if _, err := m.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			if i == 20 {
				if err := m.Flush(); err != nil {
					t.Fatal(err)
				}
			}
		}
		rng := rand.New(rand.NewPCG(7, 7))
		return readAll(t, m.CrashClone(func(int64) bool { return rng.IntN(2) == 0 }))
	}
	if a, b := img(), img(); !bytes.Equal(a, b) {
		t.Fatal("two crash clones with the same seed differ")
	}
}
