package script

import (
	"strings"
	"testing"
)

func TestParseStdoutPartsLogsBuffered(t *testing.T) {
	text := `disk a 64MiB
dmsetup info a expect~="^State: +ACTIVE$" line="Open count:        0" line="Event number:      0" log="x"
write a 0 4KiB pattern=A buffered
fsync a expect=EIO log="Buffer I/O error on dev a, logical block 0, lost async page write" log="I/O error, dev a, sector 0 op 0x1:(WRITE)"
sync log="y"
read a 0 4KiB expect=A log="one" log="two"
write a 0 4KiB pattern=B async=w
wait w log="z"
flush a log="f"
fsync a
`
	sc, err := Parse("x.scn", text)
	if err != nil {
		t.Fatal(err)
	}
	st := sc.Steps
	if len(st[1].Expect.StdoutMatch) != 1 || StdoutPattern(st[1].Expect.StdoutMatch[0]) != "^State: +ACTIVE$" {
		t.Errorf("expect~: %v", st[1].Expect.StdoutMatch)
	}
	if !st[1].Expect.StdoutMatch[0].MatchString("Name: a\nState:             ACTIVE\nOpen count: 0") {
		t.Errorf("expect~ is not in multi-line mode")
	}
	if got := strings.Join(st[1].Expect.StdoutLines, "|"); got != "Open count:        0|Event number:      0" {
		t.Errorf("line=: %q", got)
	}
	if strings.Join(st[1].Argv, " ") != "info a" {
		t.Errorf("argv %q", st[1].Argv)
	}
	if !st[2].Buffered || st[2].Pattern != "A" {
		t.Errorf("buffered write: %+v", st[2])
	}
	if st[3].Kind != KFsync || st[3].Dev != "a" || st[3].Expect.Errno == nil || len(st[3].Expect.Log) != 2 {
		t.Errorf("fsync: %+v", st[3])
	}
	if st[4].Kind != KSync || len(st[4].Expect.Log) != 1 {
		t.Errorf("sync: %+v", st[4])
	}
	if strings.Join(st[5].Expect.Log, "|") != "one|two" || st[5].Expect.Data != "A" {
		t.Errorf("read log=: %+v", st[5].Expect)
	}
	if strings.Join(st[7].Expect.Log, "|") != "z" || strings.Join(st[8].Expect.Log, "|") != "f" {
		t.Errorf("wait/flush log=: %+v %+v", st[7].Expect, st[8].Expect)
	}
	if st[9].Expect.Errno != nil {
		t.Errorf("fsync without expect=: %+v", st[9].Expect)
	}
}

func TestParseNewLineErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{`dmsetup ls expect~="("`, `x.scn:2: expect~="(": invalid regular expression: error parsing regexp: missing closing ): ` + "`(?m)(`"},
		{`dmsetup ls expect~=""`, `x.scn:2: expect~="": an empty regular expression`},
		{`dmsetup ls line="a\nb"`, `x.scn:2: line="a\nb": one line of stdout`},
		{`write a 0 4KiB pattern=A buffered fua`, `x.scn:2: write: buffered and fua together`},
		{`write a 0 4KiB pattern=A buffered async=w`, `x.scn:2: write: buffered and async=w together`},
		{`read a 0 4KiB buffered`, `x.scn:2: read: want "read DEV OFFSET LENGTH ..."`},
		{`write a 0 4KiB pattern=A async=w log="x"`, `x.scn:2: write: log= on an asynchronous I/O (async=w): put it on its wait step`},
		{`fsync`, `x.scn:2: fsync: want "fsync DEV [expect=ERRNO] [log=LINE]..."`},
		{`fsync a b`, `x.scn:2: fsync: want "fsync DEV`},
		{`fsync a expect=A`, `x.scn:2: fsync: expect="A": want an errno`},
		{`fsync a async=x`, `x.scn:2: fsync: unknown option "async" (known: expect)`},
		{`fsync a/b`, `x.scn:2: fsync: device: invalid name "a/b"`},
		{`sync a`, `x.scn:2: sync: want "sync [log=LINE]..." (sync(2) writes back every device and returns no error), got "a"`},
		{`sync expect=EIO`, `x.scn:2: sync: want "sync [log=LINE]..."`},
		{`read a 0 4KiB logs=x`, `x.scn:2: unknown option "logs"`},
	} {
		_, err := Parse("x.scn", "disk a 64MiB\n"+tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.text, err, tc.want)
		}
	}
}

// FuzzParseNewLines: the partial stdout checks, log= on I/O lines,
// buffered writes, fsync and sync never make Parse panic; an error names
// the file and line; what parses holds what the line said.
func FuzzParseNewLines(f *testing.F) {
	f.Add(`dmsetup info a expect~="^State: +ACTIVE$" line="Open count:        0"`)
	f.Add(`dmsetup ls expect~="(" line="x"`)
	f.Add(`write a 0 4KiB pattern=A buffered log="I/O error, dev a, sector 0 op 0x1:(WRITE)"`)
	f.Add(`fsync a expect=EIO log="Buffer I/O error on dev a, logical block 0, lost async page write" log=y`)
	f.Add(`sync log="x" log='y'`)
	f.Add(`read a 0 4KiB expect=zero log= log="\n"`)
	f.Add(`write a 0 4KiB pattern=A async=w buffered`)
	f.Fuzz(func(t *testing.T, line string) {
		sc, err := Parse("fuzz.scn", "disk a 64MiB\n"+line)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.scn:") {
				t.Fatalf("error does not name the file and line: %v", err)
			}
			return
		}
		for _, st := range sc.Steps {
			for _, re := range st.Expect.StdoutMatch {
				if !strings.HasPrefix(re.String(), "(?m)") {
					t.Fatalf("expect~= not in multi-line mode: %q", re)
				}
			}
			for _, l := range st.Expect.StdoutLines {
				if strings.Contains(l, "\n") {
					t.Fatalf("line= holds a newline: %q", l)
				}
			}
			if st.Buffered && (st.Kind != KWrite || st.FUA || st.Async != "") {
				t.Fatalf("buffered on %+v", st)
			}
			if st.Async != "" && st.Kind != KWait && len(st.Expect.Log) > 0 {
				t.Fatalf("log= on an async I/O: %+v", st)
			}
			if st.Kind == KFsync && st.Dev == "" {
				t.Fatalf("fsync without a device: %+v", st)
			}
		}
	})
}
