package script

import (
	"strings"
	"testing"
)

func TestParseErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"disk a 64MiB\nfrobnicate x", "x.scn:2: unknown step \"frobnicate\""},
		{"disk a 100", "x.scn:1: disk a: invalid size \"100\""},
		{"disk a 1MiB\ndisk a 1MiB", "x.scn:2: disk a declared twice"},
		{"write a 0 4KiB", "x.scn:1: write: missing pattern=NAME"},
		{"read a 0 4KiB expect=\"no way\"", "neither an errno nor a pattern name"},
		{"read a 1 4KiB", "invalid offset \"1\""},
		{"wait w1", "no earlier I/O with async=w1"},
		{"dmsetup create x --table \"0 8 zero", "unterminated double quote"},
		{"semantics weird", "semantics: want"},
		{"fault a write eio", "fault: a is not a disk declared earlier"},
		{"disk a 1MiB\nfault a write bogus", "x.scn:2: fault:"},
		{"dmsetup status exit=x", "exit=\"x\": not a number"},
		{"read a 0 4KiB bogus=1", "unknown option \"bogus\""},
		{"read a 0 128MiB", "too large"},
		{"open a", "x.scn:1: open: want \"open DEV as ID [expect=ERRNO]\""},
		{"open a to h", "open: want"},
		{"open a as h\nopen b as h", "x.scn:2: open id h used twice (first on line 1)"},
		{"open a as h expect=A", "open: expect=\"A\": want an errno"},
		{"open a as h bogus=1", "unknown option \"bogus\""},
		{"open a/b as h", "open: device: invalid name"},
		{"open a as h!", "open: id: invalid name"},
		{"close h", "x.scn:1: close: no earlier open ... as h"},
		{"open a as h\nclose h\nclose h", "x.scn:3: close: h already closed on line 2"},
		{"open a as h expect=ENXIO\nclose h", "x.scn:2: close: the open of h on line 1 expects an error"},
		{"open a as h\nclose h expect=OK", "close: want \"close ID\""},
		{"open a as h\nclose", "close: want \"close ID\""},
		{"close h\nopen a as h", "x.scn:1: close: no earlier open"},
	} {
		_, err := Parse("x.scn", tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want error containing %q", tc.text, err, tc.want)
		}
	}
}

func TestParseSteps(t *testing.T) {
	sc, err := Parse("x.scn", `
semantics seed
seed 7
disk origin 64MiB
disk cow 8MiB lbs=4096
dmsetup create base --table "0 131072 snapshot-origin origin" exit=0 log="a b"
write base 0 64KiB pattern=A fua async=w
wait w expect=OK
read base 4KiB 8s expect=A
dmsetup status snap expect="0 8 zero \nx"
fault cow write eio off=0 len=4KiB
log none
`)
	if err != nil {
		t.Fatal(err)
	}
	if sc.Semantics != "seed" || sc.Seed != 7 || len(sc.Steps) != 9 {
		t.Fatalf("got %+v", sc)
	}
	d := sc.Steps[2]
	if strings.Join(d.Argv, "|") != "create|base|--table|0 131072 snapshot-origin origin" || *d.Expect.Exit != 0 || d.Expect.Log[0] != "a b" {
		t.Fatalf("dmsetup step %+v", d)
	}
	w := sc.Steps[3]
	if w.Off != 0 || w.Len != 64<<10 || !w.FUA || w.Pattern != "A" || w.Async != "w" {
		t.Fatalf("write step %+v", w)
	}
	r := sc.Steps[5]
	if r.Off != 4096 || r.Len != 4096 || r.Expect.Data != "A" {
		t.Fatalf("read step %+v", r)
	}
	if *sc.Steps[6].Expect.Stdout != "0 8 zero \nx" {
		t.Fatalf("expect %q", *sc.Steps[6].Expect.Stdout)
	}
	if sc.Steps[1].LBS != 4096 || !sc.Steps[8].Expect.NoLog {
		t.Fatal("lbs or log none")
	}
}

func FuzzParse(f *testing.F) {
	f.Add("disk a 64MiB\ndmsetup create x --table \"0 8 zero\"\nread x 0 4KiB expect=zero\n")
	f.Add("write a 0 4KiB pattern=A async=w\nwait w expect=EIO\nlog expect='x'")
	f.Add("fault a write eio off=0 len=4KiB ratio=1/2\nseed 0x10\n# c")
	f.Add("open base as h\nopen snap as s expect=ENXIO\nclose h\nclose s")
	f.Add("disk a 1MiB\nwrite a 0 4KiB data=x.log@1536 fua\nwrite a 8s 1s data=d@0 async=q\nwait q")
	f.Fuzz(func(t *testing.T, text string) {
		sc, err := Parse("fuzz.scn", text)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.scn:") {
				t.Fatalf("error does not name the file and line: %v", err)
			}
			return
		}
		for _, st := range sc.Steps {
			if st.Line <= 0 || st.Kind == "" {
				t.Fatalf("bad step %+v", st)
			}
		}
	})
}

func TestParseOpenClose(t *testing.T) {
	sc, err := Parse("x.scn", "open base as h\nopen cow as c expect=ENOENT\nclose h\nopen base as h2 expect=OK\n")
	if err != nil {
		t.Fatal(err)
	}
	o, c := sc.Steps[0], sc.Steps[2]
	if o.Kind != KOpen || o.Dev != "base" || o.Handle != "h" || o.Expect.Errno != nil {
		t.Fatalf("open step %+v", o)
	}
	if e := sc.Steps[1].Expect.Errno; e == nil || *e != 2 {
		t.Fatalf("open expect=ENOENT: %+v", sc.Steps[1].Expect)
	}
	if c.Kind != KClose || c.Handle != "h" || c.Dev != "" {
		t.Fatalf("close step %+v", c)
	}
	if e := sc.Steps[3].Expect.Errno; e == nil || *e != 0 {
		t.Fatalf("open expect=OK: %+v", sc.Steps[3].Expect)
	}
}
