package block_test

import (
	"strings"
	"syscall"
	"testing"

	"snaplab/sim/block"
)

func TestParseRule(t *testing.T) {
	for _, c := range []struct {
		in    string
		want  block.Rule
		canon string
	}{
		{"write eio off=0 len=4096", block.Rule{Site: "write.eio", Op: block.OpWrite, Errno: syscall.EIO, Len: 4096}, "write eio off=0 len=4096"},
		{"read eio after=3 count=1", block.Rule{Site: "read.eio", Op: block.OpRead, Errno: syscall.EIO, After: 3, Count: 1}, "read eio after=3 count=1"},
		{"any eio ratio=1/50", block.Rule{Site: "any.eio", Op: block.OpAny, Errno: syscall.EIO, Ratio: block.Ratio{Num: 1, Den: 50}}, "any eio ratio=1/50"},
		{"write enospc", block.Rule{Site: "write.enospc", Op: block.OpWrite, Errno: syscall.ENOSPC}, "write enospc"},
		{"flush", block.Rule{Site: "flush.eio", Op: block.OpFlush, Errno: syscall.EIO}, "flush eio"},
		{"  DISCARD   EROFS  LEN=1MiB  ", block.Rule{Site: "discard.erofs", Op: block.OpDiscard, Errno: syscall.EROFS, Len: 1 << 20}, "discard erofs off=0 len=1048576"},
		{"read count=2 off=8s len=2KiB", block.Rule{Site: "read.eio", Op: block.OpRead, Errno: syscall.EIO, Off: 4096, Len: 2048, Count: 2}, "read eio off=4096 len=2048 count=2"},
		{"write eio site=cow.write.eio off=1GiB len=1TiB", block.Rule{Site: "cow.write.eio", Op: block.OpWrite, Errno: syscall.EIO, Off: 1 << 30, Len: 1 << 40}, "write eio site=cow.write.eio off=1073741824 len=1099511627776"},
		{"write eio site=write.eio", block.Rule{Site: "write.eio", Op: block.OpWrite, Errno: syscall.EIO}, "write eio"},
		{"read errno61", block.Rule{Site: "read.errno61", Op: block.OpRead, Errno: 61}, "read errno61"},
		{"read errno5 count=0 after=0", block.Rule{Site: "read.eio", Op: block.OpRead, Errno: syscall.EIO}, "read eio"},
	} {
		got, err := block.ParseRule(c.in)
		if err != nil {
			t.Errorf("ParseRule(%q): %v", c.in, err)
			continue
		}
		if got != c.want {
			t.Errorf("ParseRule(%q) = %+v, want %+v", c.in, got, c.want)
		}
		if s := got.String(); s != c.canon {
			t.Errorf("ParseRule(%q).String() = %q, want %q", c.in, s, c.canon)
		}
		if back, err := block.ParseRule(got.String()); err != nil || back != got {
			t.Errorf("round trip of %q: %+v, %v", c.in, back, err)
		}
	}
}

func TestParseRuleErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", "empty"},
		{"   ", "empty"},
		{"erase eio", `token "erase": unknown operation`},
		{"write eoops", `token "eoops": unknown errno`},
		{"write ok", `token "ok": unknown errno`},
		{"write errno0", `token "errno0": unknown errno`},
		{"write errno99999", `token "errno99999": unknown errno`},
		{"write eio foo=1", `token "foo=1": unknown key "foo"`},
		{"write eio off", `token "off": want key=value`},
		{"write eio count=1 count=2", `token "count=2": duplicate key count`},
		{"write eio len=4k", `token "len=4k": size "4k"`},
		{"write eio len=-5", `token "len=-5": size "-5"`},
		{"write eio len=+5", `token "len=+5": size "+5"`},
		{"write eio len=99999999999TiB", `token "len=99999999999TiB": size "99999999999TiB" is too large`},
		{"write eio len=0", "len=0: an empty range matches nothing"},
		{"write eio off=4096", "off= without len="},
		{"write eio off=9223372036854775807 len=1", "overflows"},
		{"flush eio len=1", "a flush has no byte range"},
		{"read eio after=-1", `token "after=-1": after must be a non-negative integer`},
		{"read eio count=x", `token "count=x": count must be`},
		{"read eio ratio=1", `token "ratio=1": ratio must be NUM/DEN`},
		{"read eio ratio=1/0", `token "ratio=1/0": ratio must have`},
		{"read eio ratio=3/2", `token "ratio=3/2": ratio must have`},
		{"read eio ratio=+1/2", `token "ratio=+1/2": ratio must be NUM/DEN`},
		{"read eio site=", `token "site=": site name "" must be`},
		{"read eio site=a/b", `invalid character '/'`},
		{"read eio eio", `token "eio": want key=value`},
	} {
		_, err := block.ParseRule(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseRule(%q): error %v, want it to contain %q", c.in, err, c.want)
			continue
		}
		if !strings.Contains(err.Error(), `fault rule "`) {
			t.Errorf("ParseRule(%q): error %v does not quote the rule", c.in, err)
		}
	}
}

func FuzzParseRule(f *testing.F) {
	for _, s := range []string{
		"write eio off=0 len=4096", "read eio after=3 count=1", "any eio ratio=1/50", "write enospc",
		"flush", "discard erofs site=x off=8s len=1GiB", "read errno61 ratio=0/1", "write eio len=0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := block.ParseRule(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fault rule ") {
				t.Fatalf("ParseRule(%q): error %q does not start with \"fault rule \"", s, err)
			}
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("ParseRule(%q) = %+v, which does not validate: %v", s, r, err)
		}
		back, err := block.ParseRule(r.String())
		if err != nil {
			t.Fatalf("ParseRule(%q).String() = %q does not parse: %v", s, r.String(), err)
		}
		if back != r {
			t.Fatalf("round trip of %q: %+v became %+v via %q", s, r, back, r.String())
		}
		if back.String() != r.String() {
			t.Fatalf("String not canonical: %q vs %q", back.String(), r.String())
		}
	})
}
