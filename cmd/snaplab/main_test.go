package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"snaplab/sim/run"
	"snaplab/sim/script"
)

func runMain(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(args, &out, &errb)
	return out.String(), errb.String(), code
}

func write(t *testing.T, dir, name, text string) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const good = `disk origin 8MiB
disk cow 1MiB
dmsetup create snap --table "0 16384 snapshot origin cow P 8"
dmsetup create base --table "0 16384 snapshot-origin origin"
write base 0 8KiB pattern=A
read snap 0 8KiB expect=zero
dmsetup status snap expect="0 16384 snapshot 32/2048 16"
`

func TestRunReplayDiffCow(t *testing.T) {
	dir := t.TempDir()
	scn := write(t, dir, "good.scn", good)
	recs := filepath.Join(dir, "recs")
	out, errs, code := runMain(t, "run", "-record", recs, "-dump", filepath.Join(dir, "img"), scn)
	if code != 0 || !strings.Contains(out, "1 passed, 0 failed") {
		t.Fatalf("run: code %d\n%s\n%s", code, out, errs)
	}
	rec := filepath.Join(recs, "good.jsonl")
	out, _, code = runMain(t, "replay", rec)
	if code != 0 || !strings.HasPrefix(out, "IDENTICAL") {
		t.Fatalf("replay: %d %s", code, out)
	}
	out, _, code = runMain(t, "diff", rec, rec)
	if code != 0 || strings.TrimSpace(out) != "identical" {
		t.Fatalf("diff same: %d %s", code, out)
	}
	// Another seed gives another recording; diff shows the first difference.
	recs2 := filepath.Join(dir, "recs2")
	if _, errs, code := runMain(t, "run", "-seed", "9", "-record", recs2, scn); code != 0 {
		t.Fatalf("seeded run failed: %s", errs)
	}
	out, _, code = runMain(t, "diff", rec, filepath.Join(recs2, "good.jsonl"))
	if code != 1 || !strings.Contains(out, "first difference at line 1") {
		t.Fatalf("diff different: %d %s", code, out)
	}
	// The COW image the run left is the kernel's format.
	out, errs, code = runMain(t, "cow", filepath.Join(dir, "img", "good", "cow.img"))
	if code != 0 || !strings.Contains(out, "magic 0x70416e53 valid 1 version 1 chunk_size 8") || !strings.Contains(out, "2 exceptions") {
		t.Fatalf("cow: %d\n%s\n%s", code, out, errs)
	}
}

func TestRunFailurePrintsReproducer(t *testing.T) {
	dir := t.TempDir()
	scn := write(t, dir, "bad.scn", strings.Replace(good, "expect=zero", "expect=A", 1))
	out, errs, code := runMain(t, "run", "-record", filepath.Join(dir, "r"), scn)
	if code != 1 || !strings.Contains(out, "0 passed, 1 failed") || !strings.Contains(out, "reproduce: snaplab replay") {
		t.Fatalf("code %d\n%s", code, out)
	}
	if !strings.Contains(errs, "line 6: read snap 0 8KiB expect=A") {
		t.Fatalf("failure does not name the line:\n%s", errs)
	}
	out, _, code = runMain(t, "replay", filepath.Join(dir, "r", "bad.jsonl"))
	if code != 1 || !strings.Contains(out, "REPRODUCED FAILURE") {
		t.Fatalf("replay of a failure: %d %s", code, out)
	}
}

// -q prints only the results table on stdout, but every failure keeps its
// message on stderr, and the table names every failing line.
func TestQuietKeepsFailureMessages(t *testing.T) {
	dir := t.TempDir()
	scn := write(t, dir, "bad.scn", strings.Replace(good, "expect=zero", "expect=A", 1))
	out, errs, code := runMain(t, "run", "-q", "-record", "off", scn)
	if code != 1 || !strings.Contains(out, "0 passed, 1 failed") || !strings.Contains(out, "line 6") {
		t.Fatalf("code %d\n%s", code, out)
	}
	if !strings.Contains(errs, "line 6: read snap 0 8KiB expect=A") || !strings.Contains(errs, "data: want pattern A") {
		t.Fatalf("-q hid the failure's message:\n%s", errs)
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir) // nothing lands in the source tree (run records into out/ by default)
	for _, tc := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"run", write(t, dir, "m.scn", "disk a 1MiB\nread a 0 4KiB expect=??")}, "m.scn:2: expect=\"??\": neither an errno nor a pattern name", 1},
		{[]string{"replay", write(t, dir, "r.jsonl", "{\"kind\":\"header\"}\nnot json\n")}, "r.jsonl", 1},
		{[]string{"cow", write(t, dir, "c.img", strings.Repeat("x", 4096))}, "Invalid or corrupt", 1},
		{[]string{"bogus"}, "unknown command", 2},
		{[]string{"run"}, "no scenario files", 2},
		{[]string{"run", "-semantics", "weird", "x"}, "want mainline or seed", 2},
		{[]string{"run", "-executor", "vm", "-accel", "hvf", "x"}, `-accel: accelerator "hvf": want auto, kvm or tcg`, 2},
		{[]string{"run", "-executor", "kvm-only", "x"}, "want sim, vm or kernel", 2},
	} {
		out, errs, code := runMain(t, tc.args...)
		if code != tc.code || !strings.Contains(out+errs, tc.want) {
			t.Errorf("%v: code %d, output %q %q; want %d and %q", tc.args, code, out, errs, tc.code, tc.want)
		}
	}
	for _, cmd := range []string{"run", "replay", "diff", "cow"} {
		if _, errs, code := runMain(t, cmd, "--help"); code != 0 || !strings.Contains(errs, "Usage: snaplab "+cmd) {
			t.Errorf("%s --help: %d %q", cmd, code, errs)
		}
	}
}

// TestPanicIsThatScenariosError plants a panic in the sim executor for one
// scenario of three: that one is an ERROR with the panic and its stack,
// the others still run.
func TestPanicIsThatScenariosError(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	real := simRun
	t.Cleanup(func() { simRun = real })
	simRun = func(sc *script.Scenario, opts run.Options) *run.Report {
		if sc.Name == "boom" {
			var zero uint64
			_ = 1 / zero
		}
		return real(sc, opts)
	}
	a, boom, c := write(t, dir, "a.scn", good), write(t, dir, "boom.scn", good), write(t, dir, "c.scn", good)
	out, errs, code := runMain(t, "run", a, boom, c)
	if code != 1 || !strings.Contains(out, "2 passed, 1 failed") {
		t.Fatalf("code %d\n%s\n%s", code, out, errs)
	}
	if !regexp.MustCompile(`(?m)^boom +ERROR +0 +\S+ +panic: runtime error: integer divide by zero$`).MatchString(out) {
		t.Errorf("the table does not show boom's panic:\n%s", out)
	}
	if !strings.Contains(errs, "boom.scn: panic: runtime error: integer divide by zero") || !strings.Contains(errs, "TestPanicIsThatScenariosError") {
		t.Errorf("stderr lacks the panic and its stack:\n%s", errs)
	}
	for _, name := range []string{"a", "c"} {
		if _, err := os.Stat(filepath.Join("out", "recordings", name+".jsonl")); err != nil {
			t.Errorf("%s did not run: %v", name, err)
		}
	}
}
