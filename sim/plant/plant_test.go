package plant

import (
	"slices"
	"strings"
	"testing"
)

func TestLookup(t *testing.T) {
	for _, tc := range []struct {
		name string
		want Bug
		err  string // substring of the error, "" for none
	}{
		{"origin-write-skips-cow", OriginWriteSkipsCOW, ""},
		{"area-not-zeroed", AreaNotZeroed, ""},
		{"nondeterministic", Nondeterministic, ""},
		{"", "", `unknown bug ""; known bugs: origin-write-skips-cow, `},
		{"Area-Not-Zeroed", "", `unknown bug "Area-Not-Zeroed"`},
		{"area-not-zeroed ", "", `unknown bug "area-not-zeroed "`},
		{"no-such-bug", "", "known bugs: " + strings.Join(Names(), ", ")},
	} {
		got, err := Lookup(tc.name)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("Lookup(%q): %v", tc.name, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("Lookup(%q) = %q, %v; want an error containing %q", tc.name, got, err, tc.err)
		case got != tc.want:
			t.Errorf("Lookup(%q) = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestBugsListed(t *testing.T) {
	names := Names()
	if len(names) < 11 {
		t.Fatalf("%d planted bugs, want at least 11 (issue 12: ten and a nondeterministic one)", len(names))
	}
	seen := map[string]bool{}
	for _, b := range Bugs {
		if seen[string(b.Bug)] {
			t.Errorf("bug %q listed twice", b.Bug)
		}
		seen[string(b.Bug)] = true
		if b.What == "" || strings.Contains(b.What, "\n") {
			t.Errorf("bug %q: description %q, want one line", b.Bug, b.What)
		}
		if got, err := Lookup(string(b.Bug)); err != nil || got != b.Bug {
			t.Errorf("Lookup(%q) = %q, %v", b.Bug, got, err)
		}
	}
}

// FuzzLookup: any name is either a listed bug, found as itself, or an
// error that quotes it and lists every known bug.
func FuzzLookup(f *testing.F) {
	for _, n := range append(Names(), "", "x", "merge-skips-chunk\n") {
		f.Add(n)
	}
	f.Fuzz(func(t *testing.T, name string) {
		b, err := Lookup(name)
		if slices.Contains(Names(), name) {
			if err != nil || string(b) != name {
				t.Fatalf("Lookup(%q) = %q, %v", name, b, err)
			}
			return
		}
		if err == nil || b != "" {
			t.Fatalf("Lookup(%q) = %q, %v; want an error", name, b, err)
		}
		if !strings.Contains(err.Error(), strings.Join(Names(), ", ")) {
			t.Fatalf("Lookup(%q): %v does not list the known bugs", name, err)
		}
	})
}
