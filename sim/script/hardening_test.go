package script

import (
	"fmt"
	"strings"
	"testing"
)

// Sizes: the limit is 2^62 bytes and the message says so; a size that is
// not a multiple of 512 keeps its own message.
func TestSizeLimits(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"disk a 8388607TiB", `x.scn:1: disk a: invalid size "8388607TiB": more than 2^62 bytes (4194304TiB), the largest size a scenario takes`},
		{"disk a 4194305TiB", "more than 2^62 bytes"},
		{"disk a 99999999999999999999", `invalid size "99999999999999999999": more than 2^62 bytes`},
		{"disk a 4611686018427387905", "more than 2^62 bytes"},
		{"disk a 100", `disk a: invalid size "100" (a positive multiple of 512 bytes, e.g. 64MiB)`},
		{"disk a 0", "a positive multiple of 512 bytes"},
		{"disk a -1MiB", `invalid size "-1MiB": not a byte count`},
		{"disk a 1XiB", `invalid size "1XiB": not a byte count`},
		{"disk a 1MiB\nread a 4194304TiB 4KiB", ""},
		{"disk a 1MiB\nread a 4194305TiB 4KiB", `x.scn:2: read: invalid offset "4194305TiB": more than 2^62 bytes`},
		{"disk a 1MiB\nread a 0 4194305TiB", `x.scn:2: read: invalid length "4194305TiB": more than 2^62 bytes`},
		{"disk a 4194304TiB", ""},
	} {
		_, err := Parse("x.scn", tc.text)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.text, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: got %v, want %q", tc.text, err, tc.want)
		}
	}
	if n, err := ParseSize("4194304TiB"); err != nil || n != MaxSize {
		t.Errorf("ParseSize(4194304TiB) = %d, %v; want %d", n, err, int64(MaxSize))
	}
}

// A scenario is UTF-8 text without NUL bytes: a recording (JSON) could not
// hold it as it is, and dmsetup's arguments are C strings.
func TestParseText(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"disk a 1MiB\ndmsetup create \"x\x00y\" --notable", "x.scn:2: a NUL byte (a scenario is text)"},
		{"# a comment \x00\n", "x.scn:1: a NUL byte"},
		{"disk a 1MiB\n\n# \xff\xfe", "x.scn:3: not UTF-8 text"},
		{"dmsetup create \xc3 --notable", "x.scn:1: not UTF-8 text"},
		{"# § é\ndisk a 1MiB # ok", ""},
	} {
		_, err := Parse("x.scn", tc.text)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.text, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: got %v, want %q", tc.text, err, tc.want)
		}
	}
}

// flush takes async= as the other I/O lines do: a valid name, used once.
func TestFlushAsync(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"flush a async=f\nwait f", ""},
		{"flush a async=", `x.scn:1: async: invalid name ""`},
		{`flush a "async=x y"`, `async: invalid name "x y"`},
		{"flush a async=f\nflush a async=f", "x.scn:2: async id f used twice"},
		{"disk a 1MiB\nread a 0 4KiB async=f\nflush a async=f", "x.scn:3: async id f used twice"},
		{"flush a async=f\nwrite a 0 4KiB pattern=A async=f", "x.scn:2: async id f used twice"},
	} {
		_, err := Parse("x.scn", tc.text)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.text, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: got %v, want %q", tc.text, err, tc.want)
		}
	}
}

// ParseMore parses a line in the context of the lines before it.
func TestParseMore(t *testing.T) {
	sc, err := Parse("x.scn", "disk a 1MiB\nwrite a 0 4KiB pattern=A async=w\n")
	if err != nil {
		t.Fatal(err)
	}
	st, err := sc.ParseMore(7, "fault a write eio")
	if err != nil || st.Line != 7 || st.Kind != KFault || st.Dev != "a" {
		t.Fatalf("fault on a declared disk: %+v %v", st, err)
	}
	if st, err := sc.ParseMore(8, "wait w"); err != nil || st.Async != "w" {
		t.Fatalf("wait for an earlier async: %+v %v", st, err)
	}
	if _, err := sc.ParseMore(9, "read a 0 4KiB async=r"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ line, want string }{
		{"fault b write eio", "x.scn:10: fault: b is not a disk declared earlier"},
		{"write a 0 4KiB pattern=A async=w", "x.scn:10: async id w used twice"},
		{"read a 0 4KiB async=r", "async id r used twice"}, // declared by an earlier ParseMore
		{"disk a 1MiB", "disk a declared twice"},
		{"seed 3", "seed is fixed when a session starts"},
		{"semantics seed", "semantics is fixed when a session starts"},
		{"# a comment", `"# a comment" is not a step`},
		{"   ", "is not a step"},
		{"run\nrun", "a step is one line"},
	} {
		if _, err := sc.ParseMore(10, tc.line); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseMore(%q) = %v, want %q", tc.line, err, tc.want)
		}
	}
	if sc.Seed != 0 || sc.Semantics != "mainline" || len(sc.Steps) != 2 {
		t.Errorf("ParseMore changed the scenario: %+v", sc)
	}
	// A scenario not made by Parse learns its context from its text.
	bare := &Scenario{Name: "y.scn", Text: "disk d 1MiB\n"}
	if _, err := bare.ParseMore(2, "fault d read eio"); err != nil {
		t.Fatal(err)
	}
	if _, err := bare.ParseMore(3, "fault e read eio"); err == nil {
		t.Fatal("fault on an undeclared disk accepted")
	}
}

// splitReference is Split as it was before it sliced plain words out of
// the line: every word built byte by byte.
func splitReference(line string) ([]string, error) {
	var out []string
	var cur strings.Builder
	have := false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == ' ' || c == '\t':
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		case c == '#' && !have:
			return out, nil
		case c == '"':
			have = true
			i++
			for ; i < len(line) && line[i] != '"'; i++ {
				if line[i] == '\\' && i+1 < len(line) {
					i++
					switch line[i] {
					case 'n':
						cur.WriteByte('\n')
					case 't':
						cur.WriteByte('\t')
					default:
						cur.WriteByte(line[i])
					}
					continue
				}
				cur.WriteByte(line[i])
			}
			if i >= len(line) {
				return nil, fmt.Errorf("unterminated double quote")
			}
		case c == '\'':
			have = true
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated single quote")
			}
			cur.WriteString(line[i+1 : i+1+j])
			i += j + 1
		case c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
			have = true
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out, nil
}

func sameWords(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSplitMatchesReference(t *testing.T) {
	for _, line := range splitSeeds {
		got, err := Split(line)
		want, werr := splitReference(line)
		if (err == nil) != (werr == nil) || !sameWords(got, want) {
			t.Errorf("Split(%q) = %q, %v; want %q, %v", line, got, err, want, werr)
		}
	}
}

var splitSeeds = []string{
	``, `a`, `a b`, `  a   b  `, `a#b c`, `a #b c`, `#x`, `k="a b" c`, `k="a b"c d`, `a"b"c`, `"" x`, `''`,
	`a'b c'd e`, `a\ b`, `a\`, `\#x y`, `"a\"b\\c\nd\te\q"`, `"unterminated`, `'unterminated`, `x"y`,
	"a\tb", `dmsetup create s --table "0 8 snapshot o c P 8" expect="x y" log='z w'`, `a"b"#c`, `a \"b`,
}

// Split keeps the words (and errors) of the byte-by-byte splitter.
func FuzzSplit(f *testing.F) {
	for _, s := range splitSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		got, err := Split(line)
		want, werr := splitReference(line)
		if (err == nil) != (werr == nil) || !sameWords(got, want) {
			t.Fatalf("Split(%q) = %q, %v; want %q, %v", line, got, err, want, werr)
		}
	})
}

// Parsing a large scenario costs a small multiple of its size: it once
// allocated 35 times its size (a slice of every line, a map per line, a
// copy of every word, the step slice doubling).
func TestParseMemory(t *testing.T) {
	text := bigScenario(8 << 20)
	alloc, held := parseMemory(t, text)
	t.Logf("%d-byte scenario: allocated %.1fx its size, held %.1fx", len(text), alloc, held)
	if alloc > 12 {
		t.Errorf("parsing allocated %.1f times the scenario's size, want at most 12", alloc)
	}
	if held > 8 {
		t.Errorf("the parsed scenario holds %.1f times its text's size, want at most 8", held)
	}
}
