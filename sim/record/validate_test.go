package record

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

// full is a recording with a line of every kind, as sessions write them.
func full() []string {
	var b bytes.Buffer
	w := NewWriter(&b)
	w.Write(Header{Kind: "header", Format: Format, FormatVersion: FormatVersion, Scenario: "s", Executor: "vm", Semantics: "seed", Seed: 7, Text: "disk a 1MiB\nread a 0 4KiB"})
	w.Write(Op{Kind: "op", I: 0, T: 0, Line: 1, Text: "disk a 1MiB"})
	w.Write(Result{Kind: "result", I: 0, T: 0, Line: 1, Check: "ok"})
	w.Write(Open{Kind: "open", T: 5, ID: 1, Dev: "a", Errno: "OK"})
	w.Write(Arrival{Kind: "arrival", T: 5, Handle: 1, Dev: "a", Op: "write", Off: 512, Len: 512, FUA: true, Data: bytes.Repeat([]byte{1}, 512), Open: 1})
	w.Write(Settle{Kind: "settle", T: 5})
	w.Write(Event{Kind: "event", T: 10, Site: "disk.io"})
	w.Write(Completion{Kind: "completion", T: 10, Handle: 1, Errno: "OK", Check: "ok"})
	w.Write(Arrival{Kind: "arrival", T: 10, Handle: 2, Dev: "a", Op: "read", Off: 0, Len: 4096})
	w.Write(Choice{Kind: "choice", T: 10, Site: "sched.next", N: 2, Pick: 1})
	w.Write(Completion{Kind: "completion", T: 30, Handle: 2, Errno: "EIO", Data: "xxh3:0123456789abcdef", Check: "oracle: no"})
	w.Write(Arrival{Kind: "arrival", T: 30, Handle: 3, Dev: "a", Op: "flush"})
	w.Write(Arrival{Kind: "arrival", T: 30, Handle: 4, Dev: "a", Op: "discard", Off: 4096, Len: 8192})
	w.Write(Close{Kind: "close", T: 30, ID: 1})
	w.Write(Op{Kind: "op", I: 1, T: 30, Line: 2, Text: "read a 0 4KiB", Guest: true})
	w.Write(Result{Kind: "result", I: 1, T: 40, Line: 2, Errno: "errno108", Data: "sparse-sha256:" + strings.Repeat("ab", 32), Check: "ok", Guest: true})
	exit := 1
	w.Write(Result{Kind: "result", I: 1, T: 40, Line: 2, Exit: &exit, Check: "ok"})
	w.Write(Arrival{Kind: "arrival", T: 40, Handle: 5, Op: "flush", Open: 1}) // through the closed open: no device
	h := w.Hash()
	w.Write(Footer{Kind: "footer", Steps: 3, VirtualNS: 40, Pass: true, TraceHash: h})
	return SplitLines(b.Bytes())
}

func TestValidRecordingReads(t *testing.T) {
	lines := full()
	rec, err := Read(strings.NewReader(strings.Join(lines, "\n") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Lines) != len(lines) || len(rec.Choices) != 1 || rec.Footer.VirtualNS != 40 {
		t.Fatalf("%+v", rec)
	}
}

// Every field of every kind is checked; the error names the line, the
// field and its value.
func TestReadRejectsBadFields(t *testing.T) {
	data512 := base64.StdEncoding.EncodeToString(make([]byte, 512))
	ones512 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 512))
	for _, tc := range []struct {
		line       int // 1-based line of full() to change
		old, new   string
		want       string
		wantAtLine int // the line the error names (default: line)
	}{
		// header
		{1, `"semantics":"seed"`, `"semantics":"weird"`, `recording line 1: semantics "weird": want mainline or seed`, 0},
		{1, `"executor":"vm"`, `"executor":"qemu"`, `recording line 1: executor "qemu": want sim, vm, kernel`, 0},
		{1, `"seed":7`, `"seed":-7`, `recording line 1: field seed: number -7 is not a valid uint64`, 0},
		{1, `"seed":7`, `"seed":"7"`, `field seed: string is not a valid uint64`, 0},
		{1, `"text":"disk a 1MiB\nread a 0 4KiB"`, `"text":"disk a 1MiB\nfrobnicate"`, `recording line 1: text: the scenario does not parse: s:2: unknown step "frobnicate"`, 0},
		{1, `"scenario":"s"`, `"scenario":"s\n"`, `recording line 1: scenario "s\n": a scenario name is one line`, 0},
		{1, `"format_version":2`, `"format_version":3`, "recording line 1: format_version 3: this snaplab reads versions 1 to 2 (a newer snaplab wrote it?)", 0},
		{1, `"format_version":2`, `"format_version":0`, "recording line 1: format_version 0: this snaplab reads versions 1 to 2", 0},
		{1, `"format_version":2`, `"format_version":2,"blobs":"../x.blobs"`, `recording line 1: blobs "../x.blobs": not a file name in the recording's directory`, 0},
		{1, `"text"`, `"dir":"rel/dir","text"`, `recording line 1: dir "rel/dir": not a clean absolute directory path`, 0},
		// op
		{2, `"i":0`, `"i":-1`, `recording line 2: i -1: want 0 (ops are numbered in order from 0)`, 0},
		{2, `"i":0`, `"i":3`, `i 3: want 0`, 0},
		{2, `"line":1`, `"line":0`, `recording line 2: line 0: not a line number`, 0},
		{2, `"text":"disk a 1MiB"`, `"text":""`, `recording line 2: text "": empty`, 0},
		{2, `"text":"disk a 1MiB"`, `"text":"disk a 1MiB\nrun"`, `text "disk a 1MiB\nrun": a step is one line`, 0},
		{2, `"t":0`, `"t":-5`, `recording line 2: t -5: negative time`, 0},
		// result
		{3, `"i":0`, `"i":1`, `recording line 3: i 1: no earlier op has this index (1 ops so far)`, 0},
		{3, `"i":0`, `"i":-1`, `i -1: no earlier op`, 0},
		{3, `"check":"ok"`, `"check":""`, `recording line 3: check "": empty`, 0},
		{17, `"exit":1`, `"exit":1000`, `recording line 17: exit 1000: not an exit status`, 0},
		{16, `"errno":"errno108"`, `"errno":"EWHAT"`, `recording line 16: errno "EWHAT": not an errno name`, 0},
		{16, `"errno":"errno108"`, `"errno":"errno0"`, `errno "errno0": not an errno name`, 0},
		{16, `"data":"sparse-sha256:`, `"data":"sparse-sha256:zz`, `data "sparse-sha256:zz`, 0},
		// open, close
		{4, `"id":1`, `"id":2`, `recording line 4: id 2: want 1 (opens are numbered in order from 1)`, 0},
		{4, `"dev":"a"`, `"dev":""`, `recording line 4: dev "": not a device name`, 0},
		{4, `"errno":"OK"`, `"errno":"nope"`, `errno "nope": not an errno name`, 0},
		{14, `"id":1`, `"id":9`, `recording line 14: id 9: no earlier open has this id`, 0},
		// arrival
		{5, `"handle":1`, `"handle":0`, `recording line 5: handle 0: not after the previous arrival's handle 0`, 0},
		{9, `"dev":"a"`, `"dev":""`, `recording line 9: dev "": not a device name`, 0},
		{5, `"op":"write"`, `"op":"trim"`, `recording line 5: op "trim": want read, write, flush or discard`, 0},
		{5, `"off":512`, `"off":-512`, `recording line 5: off -512: not a byte offset that is a multiple of 512`, 0},
		{5, `"off":512`, `"off":513`, `off 513: not a byte offset`, 0},
		{5, `"len":512`, `"len":-1`, `recording line 5: len -1: not a length that is a multiple of 512`, 0},
		{5, `"len":512`, `"len":1024`, `recording line 5: data "512 bytes": a write of len 1024 carries exactly that many bytes`, 0},
		{5, `"open":1`, `"open":2`, `recording line 5: open 2: no earlier successful open has this id`, 0},
		{9, `"len":4096`, `"len":1099511627776`, `recording line 9: len 1099511627776: a read of more than 67108864 bytes`, 0},
		{9, `"len":4096`, `"len":4096,"data":"` + data512 + `"`, `recording line 9: a read carries no data (data, pattern or blob)`, 0},
		{5, `"data":"` + ones512 + `"`, `"pattern":"A B"`, `recording line 5: pattern "A B": pattern name "A B": invalid character ' '`, 0},
		{5, `"data":"` + ones512 + `"`, `"blob":"sha1:00"`, `recording line 5: blob "sha1:00": want "xxh3:" and 32 hex digits`, 0},
		{5, `"data":"` + ones512 + `"`, `"data":"` + data512 + `","pattern":"A"`, `recording line 5: a write carries one of data, pattern and blob, not 2`, 0},
		{5, `,"data":"` + ones512 + `"`, ``, `recording line 5: data "0 bytes": a write of len 512 carries data, a pattern or a blob`, 0},
		{9, `"len":4096`, `"len":4096,"fua":true`, `recording line 9: fua true: only a write has FUA`, 0},
		{12, `"len":0`, `"len":512`, `recording line 12: off 0 len 512: a flush has neither`, 0},
		{13, `"len":8192`, `"len":8796093022208`, `recording line 13: len 8796093022208: a discard of more than 4294966784 bytes`, 0},
		{5, `"t":5`, `"t":1`, "", 0}, // earlier than line 4's t=5
		// completion
		{8, `"handle":1`, `"handle":7`, `recording line 8: handle 7: no earlier arrival has this handle`, 0},
		{11, `"handle":2`, `"handle":1`, `recording line 11: handle 1: this arrival already completed`, 0},
		{11, `"data":"xxh3:0123456789abcdef"`, `"data":"md5:x"`, `recording line 11: data "md5:x": want "xxh3:" and 16 hex digits`, 0},
		{11, `"data":"xxh3:0123456789abcdef"`, `"data":"sha256:0123456789abcdef"`, `recording line 11: data "sha256:0123456789abcdef": want "xxh3:" and 16 hex digits`, 0},
		{11, `"check":"oracle: no"`, `"check":""`, `check "": empty`, 0},
		// choice, event
		{10, `"pick":1`, `"pick":2`, `recording line 10: pick 2: outside [0, 2)`, 0},
		{10, `"pick":1`, `"pick":-1`, `pick -1: outside [0, 2)`, 0},
		{10, `"n":2`, `"n":1`, `recording line 10: n 1: a choice is among 2 or more`, 0},
		{10, `"site":"sched.next"`, `"site":""`, `site "": empty`, 0},
		{7, `"site":"disk.io"`, `"site":""`, `recording line 7: site "": empty`, 0},
		{7, `"t":10`, `"t":"ten"`, `recording line 7: field t: string is not a valid int64`, 0},
		{18, `"open":1`, `"open":0`, `recording line 18: dev "": not a device name`, 0},
		// footer
		{19, `"virtual_ns":40`, `"virtual_ns":39`, `recording line 19: virtual_ns 39: before the last line's time 40`, 0},
		{19, `"trace_hash":"sha256:`, `"trace_hash":"sparse-sha256:`, `recording line 19: trace_hash "sparse-sha256:`, 0},
		{19, `"draws":null`, `"draws":[{"stream":"","draws":1}]`, `draws[0].stream "": empty`, 0},
		// kinds
		{6, `"kind":"settle"`, `"kind":"pause"`, `recording line 6: unknown kind "pause"`, 0},
	} {
		lines := full()
		l := lines[tc.line-1]
		if !strings.Contains(l, tc.old) {
			t.Fatalf("line %d %s lacks %s", tc.line, l, tc.old)
		}
		lines[tc.line-1] = strings.Replace(l, tc.old, tc.new, 1)
		_, err := Read(strings.NewReader(strings.Join(lines, "\n") + "\n"))
		want := tc.want
		if want == "" {
			want = "recording line 5: t 1: before the previous line's time 5"
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("line %d %s -> %s: got %v, want %q", tc.line, tc.old, tc.new, err, want)
		}
	}
}

// Lines after the footer, and a line too long, are errors too.
func TestReadStructure(t *testing.T) {
	lines := full()
	extra := strings.Join(lines, "\n") + "\n" + lines[6] + "\n"
	if _, err := Read(strings.NewReader(extra)); err == nil || !strings.Contains(err.Error(), "recording line 20: event line after the footer") {
		t.Errorf("line after footer: %v", err)
	}
	long := lines[0] + "\n" + `{"kind":"event","site":"` + strings.Repeat("x", MaxLine) + `"}` + "\n"
	if _, err := Read(strings.NewReader(long)); err == nil || !strings.Contains(err.Error(), "recording line 2: longer than 67108864 bytes") {
		t.Errorf("long line: %v", err)
	}
	if _, err := Read(strings.NewReader("null\n")); err == nil || !strings.Contains(err.Error(), `recording line 1: kind "": the first line must be the header`) {
		t.Errorf("null: %v", err)
	}
}

// A tape never hands out a pick outside [0, n), whatever its choices say.
func TestTapePickRange(t *testing.T) {
	for _, pick := range []int{-1, 3, 1 << 40} {
		tape := NewTape(&Recording{Choices: []Choice{{Site: "s", N: 3, Pick: pick}}})
		if p, ok, err := tape.Next("s", 3); ok || err == nil || !strings.Contains(err.Error(), "is not among 3") {
			t.Errorf("pick %d: %d %v %v", pick, p, ok, err)
		}
	}
}

// A version 2 write carries a pattern or a blob name instead of its bytes;
// version 1 knows neither field.
func TestReadPayloadForms(t *testing.T) {
	data512 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 512))
	for _, tc := range []struct{ version, with, want string }{
		{`2`, `"pattern":"A"`, ""},
		{`2`, `"blob":"xxh3:00112233445566778899aabbccddeeff"`, ""},
		{`2`, `"data":"` + data512 + `"`, ""},
		{`1`, `"data":"` + data512 + `"`, ""},
		{`1`, `"pattern":"A"`, `recording line 5: pattern "A": format version 1 has no pattern field`},
		{`1`, `"blob":"xxh3:00112233445566778899aabbccddeeff"`, `recording line 5: blob "xxh3:00112233445566778899aabbccddeeff": format version 1 has no blob field`},
	} {
		lines := full()
		lines[0] = strings.Replace(lines[0], `"format_version":2`, `"format_version":`+tc.version, 1)
		lines[4] = strings.Replace(lines[4], `"data":"`+data512+`"`, tc.with, 1)
		if tc.version == `1` { // version 1 hashed reads with sha256
			lines[10] = strings.Replace(lines[10], `"xxh3:`, `"sha256:`, 1)
		}
		_, err := Read(strings.NewReader(strings.Join(lines, "\n") + "\n"))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("v%s %s: %v", tc.version, tc.with, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("v%s %s: got %v, want %q", tc.version, tc.with, err, tc.want)
		}
	}
}
