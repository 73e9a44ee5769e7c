package exstore

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

// logRec collects kernel log lines as "level prefix: msg".
type logRec struct{ lines []string }

func (l *logRec) log(level, prefix, msg string) {
	l.lines = append(l.lines, level+" "+prefix+": "+msg)
}

func TestNewArgs(t *testing.T) {
	tests := []struct {
		args     []string
		lbs      uint32
		err      string // kernel inner string; "" = success
		table    string // TableArgs on success
		overflow bool
		logged   string
	}{
		{args: nil, err: ErrInsufficientArgs},
		{args: []string{"P"}, err: ErrInsufficientArgs},
		{args: []string{"X", "8"}, err: ErrTypeNotPN},
		{args: []string{"", "8"}, err: ErrTypeNotPN},
		{args: []string{"X", "abc"}, err: ErrTypeNotPN}, // type is checked before the chunk size
		{args: []string{"P", "8"}, table: "P 8"},
		{args: []string{"p", "8"}, table: "P 8"},
		{args: []string{"PO", "8"}, table: "PO 8", overflow: true},
		{args: []string{"po", "16"}, table: "PO 16", overflow: true},
		{args: []string{"POX", "8"}, table: "PO 8", overflow: true}, // only the option's first character counts
		{args: []string{"Px", "8"}, err: ErrTypeCtrFailed, logged: "err persistent snapshot: Unsupported persistent store option: x"},
		{args: []string{"PAO", "8"}, err: ErrTypeCtrFailed, logged: "err persistent snapshot: Unsupported persistent store option: AO"},
		{args: []string{"Px", "7"}, err: ErrNotPowerOf2}, // chunk size is checked before the type's options
		{args: []string{"N", "16"}, table: "N 16"},
		{args: []string{"n", "16"}, table: "N 16"},
		{args: []string{"NX", "16"}, table: "N 16"}, // transient_ctr ignores options
		{args: []string{"P", "0"}, table: "P 0"},
		{args: []string{"N", "0"}, table: "N 0"}, // the snapshot ctr fails later with "Chunk size not set"
		{args: []string{"P", "abc"}, err: ErrInvalidChunk},
		{args: []string{"P", ""}, err: ErrInvalidChunk},
		{args: []string{"P", "-8"}, err: ErrInvalidChunk},
		{args: []string{"P", "0x8"}, err: ErrInvalidChunk},
		{args: []string{"P", " 8"}, err: ErrInvalidChunk},
		{args: []string{"P", "8 "}, err: ErrInvalidChunk},
		{args: []string{"P", "+8"}, table: "P 8"},
		{args: []string{"P", "8\n"}, table: "P 8"},
		{args: []string{"P", "008"}, table: "P 8"},
		{args: []string{"P", "4294967296"}, err: ErrInvalidChunk},
		{args: []string{"P", "4294967295"}, err: ErrNotPowerOf2},
		{args: []string{"P", "65"}, err: ErrNotPowerOf2},     // DMT non_power_of_2_chunk_size_fails
		{args: []string{"P", "4194304"}, err: ErrTooHigh},    // DMT too_large_chunk_size_fails: 2^22
		{args: []string{"N", "2097152"}, table: "N 2097152"}, // DMT largest_chunk_size_succeeds: 2^21
		{args: []string{"P", "2147483648"}, err: ErrTooHigh}, // 2^31
		{args: []string{"P", "4"}, lbs: 4096, err: ErrNotBlockMultiple},
		{args: []string{"P", "8"}, lbs: 4096, table: "P 8"},
		{args: []string{"P", "1"}, lbs: 512, table: "P 1"},
		{args: []string{"P", "abc", "extra"}, err: ErrInvalidChunk},
		{args: []string{"P", "8", "1", "discard_zeroes_cow"}, table: "P 8"}, // feature args belong to the caller
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			var l logRec
			s, err := New(tc.args, newMem("cow", 1<<20), tc.lbs, l.log)
			if tc.err != "" {
				var ce *CtrError
				if !errors.As(err, &ce) || ce.Reason != tc.err || err.Error() != tc.err {
					t.Fatalf("New(%q) = %v, want CtrError %q", tc.args, err, tc.err)
				}
				if !errors.Is(err, syscall.EINVAL) {
					t.Errorf("error %v does not match EINVAL", err)
				}
				if s != nil {
					t.Errorf("store returned with error")
				}
			} else {
				if err != nil {
					t.Fatalf("New(%q): %v", tc.args, err)
				}
				if got := s.TableArgs(); got != tc.table {
					t.Errorf("TableArgs = %q, want %q", got, tc.table)
				}
				if s.Overflow() != tc.overflow {
					t.Errorf("Overflow = %v, want %v", s.Overflow(), tc.overflow)
				}
				if want := tc.table[:1]; s.Type() != want {
					t.Errorf("Type = %q, want %q", s.Type(), want)
				}
				var chunk uint32
				fmt.Sscanf(tc.table[strings.IndexByte(tc.table, ' ')+1:], "%d", &chunk)
				if s.ChunkSize() != chunk {
					t.Errorf("ChunkSize = %d, want %d", s.ChunkSize(), chunk)
				}
			}
			if got := strings.Join(l.lines, "\n"); got != tc.logged {
				t.Errorf("log = %q, want %q", got, tc.logged)
			}
		})
	}
}

func TestHandoverKnobs(t *testing.T) {
	for _, typ := range []string{"P", "PO", "N"} {
		s, err := New([]string{typ, "16"}, newMem("cow", 1<<20), 512, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.SetOverflow(!s.Overflow())
		s.ClearChunkSize()
		want := map[string]string{"P": "PO 0", "PO": "P 0", "N": "N 0"}[typ]
		if got := s.TableArgs(); got != want {
			t.Errorf("%s after SetOverflow(toggle), ClearChunkSize: TableArgs %q, want %q", typ, got, want)
		}
		if s.ChunkSize() != 0 {
			t.Errorf("%s: ChunkSize %d after ClearChunkSize", typ, s.ChunkSize())
		}
		if _, err := s.Prepare(); err == nil {
			t.Errorf("%s: Prepare succeeded on a store without a chunk size", typ)
		}
	}
}

func TestSizeForMatchesDMT(t *testing.T) {
	// Values computed by hand from snapshot_utils.rb max_snapshot_size.
	tests := []struct {
		persistent bool
		chunk      uint32
		n          uint64
		want       uint64
	}{
		{true, 8, 0, 16},            // 1 area: header + area
		{true, 8, 255, 8 * 257},     // ceil(256/256)=1 area
		{true, 8, 256, 8 * 259},     // ceil(257/256)=2 areas: terminator needs area 1
		{true, 1, 32, 1 + 2 + 32},   // E=32
		{true, 1, 100, 1 + 4 + 100}, // ceil(101/32)=4
		{false, 8, 3, 24},
	}
	for _, tc := range tests {
		if got := SizeFor(tc.persistent, tc.chunk, tc.n); got != tc.want {
			t.Errorf("SizeFor(%v, %d, %d) = %d, want %d", tc.persistent, tc.chunk, tc.n, got, tc.want)
		}
	}
}

func TestTransient(t *testing.T) {
	// 100 sectors, chunk 16: chunks 0..5 fit (6*16=96), the 7th needs 112.
	dev := newMem("cow", 100*512)
	s, err := New([]string{"N", "16"}, dev, 512, nil)
	if err != nil {
		t.Fatal(err)
	}
	if inv, err := s.ReadMetadata(func(o, n uint64) error { t.Fatal("add called"); return nil }); inv || err != nil {
		t.Fatalf("ReadMetadata = %v, %v", inv, err)
	}
	for want := uint64(0); want < 6; want++ {
		c, err := s.Prepare()
		if err != nil || c != want {
			t.Fatalf("Prepare #%d = %d, %v; want chunk %d", want, c, err, want)
		}
		calls := 0
		s.Commit(want+40, c, true, func(ok bool) {
			calls++
			if !ok {
				t.Errorf("commit callback ok=false")
			}
		})
		if calls != 1 {
			t.Fatalf("callback ran %d times during Commit", calls)
		}
	}
	if _, err := s.Prepare(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Prepare on a full transient store: %v, want ENOSPC", err)
	}
	if a, b, c := s.Usage(); fmt.Sprintf("%d/%d %d", a, b, c) != "96/100 0" {
		t.Errorf("Usage = %d/%d %d, want 96/100 0", a, b, c)
	}
	// A failed copy is passed through to the callback.
	var got []bool
	s.Commit(1, 2, false, func(ok bool) { got = append(got, ok) })
	if len(got) != 1 || got[0] {
		t.Errorf("Commit(valid=false) callback = %v, want [false]", got)
	}
	s.Drop() // no drop_snapshot: nothing is written
	if len(dev.ops) != 0 {
		t.Errorf("transient store did COW I/O: %v", dev.ops)
	}
	if s.Pending() != 0 {
		t.Errorf("Pending = %d", s.Pending())
	}
}

func TestParseUint32(t *testing.T) {
	for s, want := range map[string]int64{
		"0": 0, "1": 1, "+7": 7, "4294967295": 4294967295, "12\n": 12,
		"": -1, "+": -1, "\n": -1, "1\n\n": -1, "++1": -1, "1a": -1, "99999999999999999999": -1,
	} {
		v, ok := parseUint32(s)
		if ok != (want >= 0) || ok && int64(v) != want {
			t.Errorf("parseUint32(%q) = %d, %v; want %d", s, v, ok, want)
		}
	}
}
