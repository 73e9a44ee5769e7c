package record

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"

	"snaplab/sim/pattern"
)

// FuzzAppendLine: the hand-written encoders write exactly what
// encoding/json writes for the same line, whatever the strings hold.
func FuzzAppendLine(f *testing.F) {
	f.Add("arrival", int64(5), uint64(3), "base", "write", int64(4096), int64(512), true, []byte{1, 2}, "A", "xxh3:00", uint64(1), "OK", 2, 1)
	f.Add("completion", int64(0), uint64(0), "<&>", "\u2028", int64(-1), int64(0), false, []byte(nil), "", "", uint64(0), "sha256:\x00\"\\", 0, -3)
	f.Add("é\xff", int64(-9), uint64(1<<63), "dev\n", "", int64(1<<62), int64(-5), false, []byte{}, "\t", "x", uint64(7), "", 1<<40, 0)
	f.Fuzz(func(t *testing.T, kind string, tm int64, handle uint64, dev, op string, off, n int64, fua bool, data []byte, pat, blob string, open uint64, errno string, i, j int) {
		for _, v := range []any{
			Arrival{Kind: kind, T: tm, Handle: handle, Dev: dev, Op: op, Off: off, Len: n, FUA: fua, Data: data, Pattern: pat, Blob: blob, Open: open},
			Completion{Kind: kind, T: tm, Handle: handle, Errno: errno, Data: pat, Check: dev},
			Settle{Kind: kind, T: tm},
			Event{Kind: kind, T: tm, Site: dev},
			Choice{Kind: kind, T: tm, Site: op, N: i, Pick: j},
			Op{Kind: kind, I: i, T: tm, Line: j, Text: dev, Guest: fua},
			Result{Kind: kind, I: i, T: tm, Line: j, Exit: exitOf(i, fua), Stdout: dev, Stderr: op, Log: logOf(pat, blob), Errno: errno, Data: pat, Check: blob, Guest: !fua},
			Result{Kind: kind, Check: dev, Log: []string{}},
		} {
			want, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			got, ok := appendLine(nil, v)
			if !ok {
				t.Fatalf("%T: not encoded by appendLine", v)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%T:\n got %s\nwant %s", v, got, want)
			}
		}
	})
}

// A write's data is recorded as a pattern when it is one of the
// scenario's patterns at the write's offset, and only then.
func TestPayloadPatterns(t *testing.T) {
	w := NewWriter(io.Discard)
	w.SetPatterns([]string{"A", "B", "zero"})
	a := make([]byte, 4096+512)
	pattern.Fill(a, "A", 8192)
	for _, tc := range []struct {
		name string
		data []byte
		off  int64
		want string
	}{
		{"A at its offset", a, 8192, "A"},
		{"A elsewhere", a, 8192 + 512, ""},
		{"zeros", make([]byte, 1024), 0, "zero"},
		{"A with its last byte changed", append(append([]byte(nil), a[:len(a)-1]...), a[len(a)-1]^1), 8192, ""},
		{"zeros with a byte set late", append(make([]byte, 5000), 1), 0, ""},
		{"an unnamed pattern", func() []byte { p := make([]byte, 512); pattern.Fill(p, "C", 0); return p }(), 0, ""},
		{"B at an unaligned offset", func() []byte { p := make([]byte, 100); pattern.Fill(p, "B", 8195); return p }(), 8195, "B"},
		{"B at an aligned offset, shorter than a word", func() []byte { p := make([]byte, 5); pattern.Fill(p, "B", 8); return p }(), 8, "B"},
	} {
		var arr Arrival
		arr.Off = tc.off
		w.Payload(&arr, tc.data)
		if arr.Pattern != tc.want {
			t.Errorf("%s: pattern %q, want %q", tc.name, arr.Pattern, tc.want)
		}
		if tc.want == "" && !bytes.Equal(arr.Data, tc.data) {
			t.Errorf("%s: not recorded inline", tc.name)
		}
		if tc.want != "" && arr.Data != nil {
			t.Errorf("%s: recorded inline as well", tc.name)
		}
	}
	// Version 1 recordings know no patterns.
	w.SetLegacy()
	var arr Arrival
	arr.Off = 8192
	w.Payload(&arr, a)
	if arr.Pattern != "" || !bytes.Equal(arr.Data, a) {
		t.Errorf("legacy: pattern %q, %d bytes inline", arr.Pattern, len(arr.Data))
	}
}

func BenchmarkWriteArrival(b *testing.B) {
	w := NewWriter(io.Discard)
	a := Arrival{Kind: "arrival", T: 123456789, Handle: 77, Dev: "base", Op: "write", Off: 1 << 30, Len: 4096, Blob: "xxh3:00112233445566778899aabbccddeeff", Open: 3}
	for b.Loop() {
		w.Write(a)
	}
}

func exitOf(i int, set bool) *int {
	if !set {
		return nil
	}
	return &i
}

func logOf(a, b string) []string {
	switch {
	case a == "" && b == "":
		return nil
	case b == "":
		return []string{a}
	}
	return []string{a, b, a + b}
}

// A writer on nil records nothing: no line is encoded or hashed, and the
// run has no trace hash.
func TestWriterOff(t *testing.T) {
	w := NewWriter(nil)
	w.Write(Op{Kind: "op", Text: "x"})
	w.WriteArrival(&Arrival{Kind: "arrival"})
	Observer{W: w}.Event(5, "disk.io")
	var a Arrival
	w.Payload(&a, []byte{1, 2, 3})
	if w.Hash() != "" || w.Err() != nil || a.Data != nil || w.ReadHash([]byte{1}) != "" {
		t.Errorf("off: hash %q, err %v, data %v", w.Hash(), w.Err(), a.Data)
	}
	on := NewWriter(io.Discard)
	on.Write(Op{Kind: "op", Text: "x"})
	if on.Hash() == "" {
		t.Error("a writer on io.Discard does not hash")
	}
}
