package logwrites

import (
	"bytes"
	"encoding/binary"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.log")

func fill(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

// sample is a log with one entry of each kind the kernel writes.
func sample(ss uint32) *Log {
	s := int(ss)
	return &Log{SectorSize: ss, Entries: []Entry{
		{Sector: 0, NrSectors: 2, Data: fill(2*s, 'a')},
		{Sector: 16, NrSectors: 1, Flags: FlagMetadata, Data: fill(s, 'b')},
		{Sector: 0, NrSectors: 0, Flags: FlagFlush},
		{Sector: 8, NrSectors: 1, Flags: FlagFUA, Data: fill(s, 'c')},
		{Flags: FlagMark, Mark: "one"},
		{Sector: 32, NrSectors: 64, Flags: FlagDiscard},
		{Sector: 4, NrSectors: 1, Flags: FlagFlush | FlagFUA, Data: fill(s, 'd')},
		{Flags: FlagMark, Mark: EndMark},
	}}
}

// The layout, spelled out byte by byte from dm-log-writes.c, not from
// Encode: the goldens are checked against it.
func TestLayout(t *testing.T) {
	b, err := Encode(sample(512))
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if got := le.Uint64(b[0:]); got != 0x6a736677736872 {
		t.Errorf("magic %#x", got)
	}
	if le.Uint64(b[8:]) != 1 || le.Uint64(b[16:]) != 8 || le.Uint32(b[24:]) != 512 {
		t.Errorf("super %x", b[:32])
	}
	if !bytes.Equal(b[28:512], make([]byte, 512-28)) {
		t.Error("super block not zero-padded")
	}
	// entry 0 at sector 1, its 2 data sectors at 2-3; entry 1 at 4, data at 5;
	// flush at 6; FUA at 7, data 8; mark at 9; discard at 10 (no data);
	// flush+FUA at 11, data 12; end mark at 13.
	at := func(sec int) []byte { return b[sec*512 : sec*512+512] }
	want := []struct {
		sec                     int
		sector, nr, flags, dlen uint64
	}{{1, 0, 2, 0, 0}, {4, 16, 1, FlagMetadata, 0}, {6, 0, 0, FlagFlush, 0}, {7, 8, 1, FlagFUA, 0},
		{9, 0, 0, FlagMark, 3}, {10, 32, 64, FlagDiscard, 0}, {11, 4, 1, FlagFlush | FlagFUA, 0}, {13, 0, 0, FlagMark, uint64(len(EndMark))}}
	for _, w := range want {
		e := at(w.sec)
		if le.Uint64(e[0:]) != w.sector || le.Uint64(e[8:]) != w.nr || le.Uint64(e[16:]) != w.flags || le.Uint64(e[24:]) != w.dlen {
			t.Errorf("sector %d: entry %x, want %+v", w.sec, e[:32], w)
		}
	}
	if string(at(9)[32:36]) != "one\x00" || string(at(13)[32:32+len(EndMark)]) != EndMark {
		t.Error("mark names not after the entry")
	}
	if !bytes.Equal(at(2), fill(512, 'a')) || !bytes.Equal(at(3), fill(512, 'a')) || !bytes.Equal(at(12), fill(512, 'd')) {
		t.Error("data not after its entry")
	}
	if got, want := Offsets(sample(512)), []int64{512, 2048, 3072, 3584, 4608, 5120, 5632, 6656}; !reflect.DeepEqual(got, want) {
		t.Errorf("offsets %v, want %v", got, want)
	}
	if len(b) != 14*512 {
		t.Errorf("log is %d bytes, want %d", len(b), 14*512)
	}
}

func TestGoldens(t *testing.T) {
	for _, ss := range []uint32{512, 4096} {
		name := filepath.Join("testdata", "sample-"+map[uint32]string{512: "512", 4096: "4096"}[ss]+".log")
		b, err := Encode(sample(ss))
		if err != nil {
			t.Fatal(err)
		}
		if *update {
			if err := os.WriteFile(name, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, want) {
			t.Errorf("%s: Encode differs from the golden (go test -update to rewrite)", name)
		}
		l, err := Read(bytes.NewReader(want), int64(len(want)))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(l, sample(ss)) {
			t.Errorf("%s: read back %+v", name, l)
		}
	}
}

// A log longer than its entries (a log device's stale tail) reads the
// same: nr_entries says where it ends.
func TestStaleTail(t *testing.T) {
	b, _ := Encode(sample(512))
	b = append(b, fill(4096, 0xee)...)
	l, err := Read(bytes.NewReader(b), int64(len(b)))
	if err != nil || len(l.Entries) != 8 {
		t.Fatalf("%v %v", l, err)
	}
}

func TestReadErrors(t *testing.T) {
	good, _ := Encode(sample(512))
	le := binary.LittleEndian
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name string
		log  []byte
		want string
	}{
		{"empty", nil, "super block at byte 0: the log is 0 bytes"},
		{"magic", mod(func(b []byte) []byte { b[0]++; return b }), "bad magic"},
		{"version", mod(func(b []byte) []byte { le.PutUint64(b[8:], 2); return b }), "byte 8: version 2"},
		{"sectorsize", mod(func(b []byte) []byte { le.PutUint32(b[24:], 1000); return b }), "sectorsize 1000"},
		{"too many", mod(func(b []byte) []byte { le.PutUint64(b[16:], 1<<40); return b }), "nr_entries 1099511627776"},
		{"past end", mod(func(b []byte) []byte { le.PutUint64(b[16:], 9); return b }), "entry 8 at byte 7168: entry past the end"},
		{"truncated data", mod(func(b []byte) []byte { le.PutUint64(b[16:], 1); return b[:3*512] }), "entry 0 at byte 512: data of 2 sectors"},
		{"data_len", mod(func(b []byte) []byte { le.PutUint64(b[512+24:], 5); return b }), "entry 0 at byte 536: data_len 5 mismatch"},
		{"mark data_len", mod(func(b []byte) []byte { le.PutUint64(b[9*512+24:], 7); return b }), "entry 4 at byte 4643: data_len 7 mismatch"},
		{"mark too long", mod(func(b []byte) []byte { le.PutUint64(b[9*512+24:], 480); return b }), "data_len 480: a mark name is at most 479"},
		{"flags", mod(func(b []byte) []byte { le.PutUint64(b[512+16:], 64); return b }), "unknown flags 0x40"},
		{"mark flags", mod(func(b []byte) []byte { le.PutUint64(b[9*512+16:], FlagMark|FlagFUA); return b }), "a mark with other flags (FUA|MARK)"},
		{"zero entry", mod(func(b []byte) []byte { clear(b[512:544]); return b }), "entry 0 at byte 512: empty entry"},
		{"padding", mod(func(b []byte) []byte { b[512+100] = 1; return b }), "entry 0 at byte 612: non-zero byte"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Read(bytes.NewReader(c.log), int64(len(c.log)))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error with %q", err, c.want)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	bad := []Entry{
		{Flags: 1 << 7},
		{Flags: FlagMark, Mark: strings.Repeat("x", 480)},
		{Flags: FlagMark, Mark: "a\x00b"},
		{Flags: FlagMark | FlagFUA, Mark: "m"},
		{Mark: "m", NrSectors: 1, Data: fill(512, 1)},
		{},
		{Flags: FlagDiscard, NrSectors: 1, Data: fill(512, 1)},
		{NrSectors: 2, Data: fill(512, 1)},
	}
	for i, e := range bad {
		if Check(e, 512) == nil {
			t.Errorf("%d: %+v accepted", i, e)
		}
	}
	if err := Check(Entry{Flags: FlagMark, Mark: strings.Repeat("x", 479)}, 512); err != nil {
		t.Error(err)
	}
}

// The target model orders entries as dm-log-writes does.
func TestTargetOrder(t *testing.T) {
	tg := NewTarget(512)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(tg.Write(0, fill(1024, 'a'), false, false))
	tg.Mark("m1") // ahead of the unflushed write
	must(tg.Write(4096, fill(512, 'b'), false, true))
	must(tg.Discard(8192, 4096))
	must(tg.Flush(0))
	must(tg.Write(512, fill(512, 'c'), false, false))
	must(tg.Write(512, nil, false, false)) // not logged
	tg.Mark(strings.Repeat("n", 600))
	tg.End()
	var got []string
	for _, e := range tg.Log().Entries {
		got = append(got, e.String())
	}
	want := []string{`mark "m1"`, "write 8+1 FUA", "write 0+2 NONE", "discard 16+8 DISCARD", "flush 0+0 FLUSH",
		`mark "` + strings.Repeat("n", 479) + `"`, "write 1+1 NONE", `mark "dm-log-writes-end"`}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if tg.Write(100, fill(512, 1), false, false) == nil {
		t.Error("unaligned write accepted")
	}
	if _, err := Encode(tg.Log()); err != nil {
		t.Error(err)
	}
}

func FuzzRead(f *testing.F) {
	// Small seeds: the engine minimizes every new input, which takes long
	// on tens of kilobytes.
	b, _ := Encode(sample(512))
	f.Add(b)
	b, _ = Encode(&Log{SectorSize: 4096, Entries: []Entry{{Flags: FlagMark, Mark: "m"}}})
	f.Add(b)
	b, _ = Encode(&Log{SectorSize: 512})
	f.Add(b)
	f.Add([]byte("jsfwshr"))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := Read(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		// What reads must encode, and encode to a log that reads the same.
		enc, err := Encode(l)
		if err != nil {
			t.Fatalf("read %+v but cannot encode it: %v", l, err)
		}
		l2, err := Read(bytes.NewReader(enc), int64(len(enc)))
		if err != nil || !reflect.DeepEqual(l, l2) {
			t.Fatalf("round trip: %v\n%+v\n%+v", err, l, l2)
		}
	})
}
