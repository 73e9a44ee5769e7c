package shrink

import (
	"strings"
	"testing"

	"snaplab/sim/gen"
	"snaplab/sim/run"
	"snaplab/sim/script"
)

func has(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

// mustParse fails the test when the shrinker hands fails an unparsable
// candidate.
func mustParse(t *testing.T, text string) {
	t.Helper()
	if _, err := script.Parse("cand.scn", text); err != nil {
		t.Fatalf("predicate called with a text that does not parse: %v\n%s", err, text)
	}
}

const synthetic = `# a comment the result drops
disk origin 8MiB
disk cow 1MiB
disk spare 1MiB

dmsetup create snap --table "0 16384 snapshot origin cow P 8"
dmsetup create base --table "0 16384 snapshot-origin origin"
write base 0 4KiB pattern=A
read snap 0 4KiB
fault cow write eio after=3 count=1
write snap 64KiB 4KiB pattern=B
flush base
read base 0 4KiB expect=A
dmsetup status snap
`

func TestShrinkSynthetic(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lines []string // fails iff every one of these lines is present
		want  string
	}{
		{"two steps", []string{"write base 0 4KiB pattern=A", "flush base"},
			"write base 0 4KiB pattern=A\nflush base\n"},
		{"one step", []string{"dmsetup status snap"}, "dmsetup status snap\n"},
		{"disk lines go too", []string{"disk spare 1MiB", "read snap 0 4KiB"},
			"disk spare 1MiB\nread snap 0 4KiB\n"},
		// The fault line names the disk cow: removing "disk cow" would
		// not parse, so the disk line stays although fails ignores it.
		{"parse keeps a needed disk", []string{"fault cow write eio after=3 count=1", "flush base"},
			"disk cow 1MiB\nfault cow write eio after=3 count=1\nflush base\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			got := Shrink(synthetic, func(text string) bool {
				calls++
				mustParse(t, text)
				for _, l := range tc.lines {
					if !has(text, l) {
						return false
					}
				}
				return true
			})
			if got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
			t.Logf("%d predicate calls for %d lines", calls, strings.Count(synthetic, "\n"))
		})
	}
}

func TestShrinkNotFailingIsUnchanged(t *testing.T) {
	calls := 0
	got := Shrink(synthetic, func(string) bool { calls++; return false })
	if got != synthetic || calls != 1 {
		t.Errorf("got %d calls and\n%s", calls, got)
	}
}

// simFails is the predicate snaplab shrink uses (SimFails with the
// original's Signature), checking that every candidate parses.
func simFails(t *testing.T, text string) func(string) bool {
	sig := Signature(text)
	if sig == "" {
		t.Fatalf("the scenario does not fail:\n%s", text)
	}
	f := SimFails(sig)
	return func(text string) bool {
		mustParse(t, text)
		return f(text)
	}
}

func TestSignature(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"disk d 1MiB\nwrite d 0 4KiB pattern=A\n", ""},
		{"disk d 1MiB\nwrite d 0 4KiB pattern=A\nread d 0 4KiB expect=B\n", "read d 0 4KiB expect=B\n"},
		{"write nosuch 0 4KiB pattern=A\n", "write nosuch 0 4KiB pattern=A\nno disk or device named nosuch"},
		{"bogus line\n", ""},
	} {
		got := Signature(tc.text)
		if !strings.HasPrefix(got, tc.want) || (tc.want == "") != (got == "") {
			t.Errorf("Signature(%q) = %q, want prefix %q", tc.text, got, tc.want)
		}
		if strings.ContainsAny(strings.SplitN(got, "\n", 2)[min(1, len(strings.SplitN(got, "\n", 2))-1)], "0123456789") && got != "" {
			t.Errorf("Signature(%q) = %q: the message keeps digits", tc.text, got)
		}
	}
	if SimFails("")("write nosuch 0 1KiB pattern=A\n") {
		t.Error("SimFails(\"\") holds")
	}
}

// A scenario that fails on the simulator only when two particular steps
// are present: a write through the snapshot and a read that expects the
// chunk still to be zero. Everything they do not need goes; what they need
// (the disks and the snapshot) stays.
func TestShrinkRealScenario(t *testing.T) {
	const bad = "read snap 64KiB 4KiB expect=zero"
	text := `disk origin 8MiB
disk cow 1MiB
disk other 1MiB
write origin 0 64KiB pattern=O
dmsetup create snap --table "0 16384 snapshot origin cow P 8"
dmsetup create base --table "0 16384 snapshot-origin origin"
write base 0 4KiB pattern=A
read snap 0 4KiB expect=O
dmsetup status snap
write snap 64KiB 4KiB pattern=B
flush base
write base 128KiB 8KiB pattern=C
read snap 128KiB 8KiB expect=zero
dmsetup table snap
` + bad + `
read base 0 4KiB expect=A
`
	if rep := run.Run(mustScenario(t, text), run.Options{}); rep.Pass() {
		t.Fatal("the scenario should fail")
	}
	without := strings.Replace(text, "write snap 64KiB 4KiB pattern=B\n", "", 1)
	if rep := run.Run(mustScenario(t, without), run.Options{}); !rep.Pass() {
		t.Fatalf("without the snapshot write the scenario should pass: %v", rep.Failures)
	}
	got := Shrink(text, simFails(t, text))
	want := `disk origin 8MiB
disk cow 1MiB
dmsetup create snap --table "0 16384 snapshot origin cow P 8"
write snap 64KiB 4KiB pattern=B
` + bad + "\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func mustScenario(t *testing.T, text string) *script.Scenario {
	t.Helper()
	sc, err := script.Parse("t.scn", text)
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

// A generated scenario made to fail by dropping one expect=EIO: the
// shrunk scenario still fails on that line, is much shorter, and no single
// line can be removed from it (1-minimality, checked directly).
func TestShrinkGeneratedScenario(t *testing.T) {
	var text, bad string
	for seed := uint64(1); seed < 100 && bad == ""; seed++ {
		lines := strings.Split(gen.Generate(seed, 40), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			if strings.HasPrefix(lines[i], "write snap") && strings.HasSuffix(lines[i], " expect=EIO") {
				lines[i] = strings.TrimSuffix(lines[i], " expect=EIO")
				bad, text = lines[i], strings.Join(lines, "\n")
				break
			}
		}
	}
	if bad == "" {
		t.Fatal("no generated scenario with a snapshot write expecting EIO")
	}
	fails := simFails(t, text)
	got := Shrink(text, fails)
	if !fails(got) {
		t.Fatalf("shrunk scenario does not fail on %q:\n%s", bad, got)
	}
	n, n0 := strings.Count(got, "\n"), strings.Count(text, "\n")
	if n*2 > n0 {
		t.Errorf("shrunk from %d to only %d lines:\n%s", n0, n, got)
	}
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	for i := range lines {
		cand := strings.Join(append(append([]string{}, lines[:i]...), lines[i+1:]...), "\n") + "\n"
		if _, err := script.Parse("c.scn", cand); err == nil && fails(cand) {
			t.Errorf("not minimal: line %q can go:\n%s", lines[i], got)
		}
	}
	t.Logf("shrunk %d lines to %d:\n%s", n0, n, got)
}

// FuzzShrink: for any set of required lines, the result holds exactly the
// required lines (plus disks the parser needs), in their original order.
func FuzzShrink(f *testing.F) {
	f.Add(uint16(0b101))
	f.Add(uint16(0b1000100100))
	f.Add(uint16(0xffff))
	f.Fuzz(func(t *testing.T, mask uint16) {
		var lines []string
		for _, l := range strings.Split(synthetic, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				lines = append(lines, l)
			}
		}
		var need []string
		for i, l := range lines {
			if mask&(1<<i) != 0 {
				need = append(need, l)
			}
		}
		got := Shrink(synthetic, func(text string) bool {
			mustParse(t, text)
			for _, l := range need {
				if !has(text, l) {
					return false
				}
			}
			return true
		})
		want := ""
		for _, l := range lines {
			required := false
			for _, n := range need {
				required = required || n == l
			}
			if required || (l == "disk cow 1MiB" && slicesHasPrefix(need, "fault cow")) {
				want += l + "\n"
			}
		}
		if got != want {
			t.Errorf("mask %b: got\n%s\nwant\n%s", mask, got, want)
		}
	})
}

func slicesHasPrefix(ss []string, prefix string) bool {
	for _, s := range ss {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

// TestShrinkInlinesLinearDevices: a failure that does not need a COW cut
// into a linear slot shrinks to a scenario on the disk itself.
func TestShrinkInlinesLinearDevices(t *testing.T) {
	text := `disk origin 8MiB
disk cow 2MiB
dmsetup create cow0 --table "0 2048 linear cow 0"
dmsetup create cow1 --table "0 2048 linear cow 2048"
dmsetup create snap --table "0 16384 snapshot origin cow0 P 8"
dmsetup create base --table "0 16384 snapshot-origin origin"
write base 0 4KiB pattern=A
dmsetup status cow0
read snap 0 4KiB expect=A
`
	sig := Signature(text)
	if sig == "" {
		t.Fatal("the scenario does not fail")
	}
	got := Shrink(text, SimFails(sig))
	if strings.Contains(got, "linear") || !strings.Contains(got, "snapshot origin cow P 8") {
		t.Errorf("linear slot not inlined:\n%s", got)
	}
	if Signature(got) != sig {
		t.Errorf("shrunk scenario fails otherwise: %q, want %q", Signature(got), sig)
	}
}
