package record

import (
	"strings"
	"testing"
)

// A run step's log lines count as the step's before it: the kernel logs a
// merge's invalidation during the resume that started the merge, the
// simulator during the run that lets it happen.
func TestCompareResultsFoldsRunLogs(t *testing.T) {
	inv := "device-mapper: snapshots: Invalidating snapshot: Unable to allocate exception."
	loadMerge := func() StepResult {
		return StepResult{Line: 4, Text: `dmsetup load base --table "0 8 snapshot-merge origin cow P 8"`}
	}
	resume := func(log ...string) StepResult { return StepResult{Line: 5, Text: "dmsetup resume base", Log: log} }
	run := func(log ...string) StepResult {
		return StepResult{Line: 6, Text: "run   # the merge is over", Log: log}
	}
	read := func(log ...string) StepResult {
		return StepResult{Line: 7, Text: "read base 0 4KiB", Errno: "OK", Log: log}
	}
	for _, tc := range []struct {
		name string
		a, b []StepResult
		want string // "" or the differing field's line
	}{
		{"resume vs run", []StepResult{resume(inv), run()}, []StepResult{resume(), run(inv)}, ""},
		{"same place", []StepResult{resume(), run(inv)}, []StepResult{resume(), run(inv)}, ""},
		{"two runs", []StepResult{resume(inv), run(), run()}, []StepResult{resume(), run(), run(inv)}, ""},
		{"order kept", []StepResult{resume("a"), run("b")}, []StepResult{resume("b"), run("a")}, "line 5"},
		{"missing", []StepResult{resume(inv), run()}, []StepResult{resume(), run()}, "line 5"},
		// While a merge runs, from the resume that starts it to the run
		// that waits for it, lines are compared as one set.
		{"merge window", []StepResult{loadMerge(), resume(inv, "a"), read(), run()}, []StepResult{loadMerge(), resume(), read("a"), run(inv)}, ""},
		{"merge window missing", []StepResult{loadMerge(), resume(inv), read(), run()}, []StepResult{loadMerge(), resume(), read(), run()}, "line 5"},
		// Only a run step's lines move: an I/O step's belong to it.
		{"not past an I/O step", []StepResult{resume(inv), read()}, []StepResult{resume(), read(inv)}, "line 5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a0 := append([]string(nil), tc.a[0].Log...)
			d := CompareResults(tc.a, tc.b)
			var got string
			if len(d) > 0 {
				got = d[0].String()
			}
			if (tc.want == "") != (got == "") || !strings.HasPrefix(got, tc.want) {
				t.Fatalf("differences %v, want %q", d, tc.want)
			}
			if strings.Join(tc.a[0].Log, "|") != strings.Join(a0, "|") {
				t.Fatalf("CompareResults changed its input: %q", tc.a[0].Log)
			}
		})
	}
}
