package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"snaplab/sim/gen"
)

func TestGenCommand(t *testing.T) {
	dir := t.TempDir()
	out, errs, code := runMain(t, "gen", "--seed", "17", "--ops", "30")
	if code != 0 || errs != "" {
		t.Fatalf("gen: code %d, stderr %q", code, errs)
	}
	if out != gen.Generate(17, 30) {
		t.Errorf("gen printed something other than gen.Generate(17, 30)")
	}
	file := filepath.Join(dir, "g17.scn")
	if _, errs, code := runMain(t, "gen", "--seed", "17", "--ops", "30", "-o", file); code != 0 {
		t.Fatalf("gen -o: code %d: %s", code, errs)
	}
	b, err := os.ReadFile(file)
	if err != nil || string(b) != out {
		t.Fatalf("gen -o wrote %d bytes (%v), not the same scenario", len(b), err)
	}
	// The generated file runs and passes on the sim executor.
	runOut, runErr, code := runMain(t, "run", "-record", "", file)
	if code != 0 || !strings.Contains(runOut, "1 passed, 0 failed") {
		t.Fatalf("run of a generated scenario: code %d\n%s\n%s", code, runOut, runErr)
	}
	if other, _, _ := runMain(t, "gen", "--seed", "18", "--ops", "30"); other == out {
		t.Error("seeds 17 and 18 gave the same scenario")
	}
	for _, args := range [][]string{
		{"gen", "--ops", "-1"},
		{"gen", "extra"},
		{"gen", "--seed", "x"},
	} {
		if _, errs, code := runMain(t, args...); code != 2 || errs == "" {
			t.Errorf("%v: code %d, stderr %q; want 2 and a message", args, code, errs)
		}
	}
	if _, _, code := runMain(t, "gen", "-o", filepath.Join(dir, "no", "such", "dir", "x.scn")); code != 1 {
		t.Errorf("gen -o into a missing directory: code %d, want 1", code)
	}
}

const failing = `# the snapshot write lands, so the chunk is not zero any more
disk origin 8MiB
disk cow 1MiB
dmsetup create snap --table "0 16384 snapshot origin cow P 8"
dmsetup create base --table "0 16384 snapshot-origin origin"
write base 0 4KiB pattern=A
dmsetup status snap
write snap 64KiB 4KiB pattern=B
flush base
read base 0 4KiB expect=A
read snap 64KiB 4KiB expect=zero
read snap 0 4KiB
`

func TestShrinkCommand(t *testing.T) {
	dir := t.TempDir()
	file := write(t, dir, "bad.scn", failing)
	small := filepath.Join(dir, "small.scn")
	out, errs, code := runMain(t, "shrink", "-o", small, file)
	want := `disk origin 8MiB
disk cow 1MiB
dmsetup create snap --table "0 16384 snapshot origin cow P 8"
write snap 64KiB 4KiB pattern=B
read snap 64KiB 4KiB expect=zero
`
	if code != 0 || out != want {
		t.Fatalf("shrink: code %d\n%s\nwant\n%s\nstderr: %s", code, out, want, errs)
	}
	if !strings.Contains(errs, "11 step lines -> 5") || !strings.Contains(errs, "read snap 64KiB 4KiB expect=zero") {
		t.Errorf("shrink summary: %s", errs)
	}
	if b, err := os.ReadFile(small); err != nil || string(b) != want {
		t.Errorf("shrink -o wrote %q (%v)", b, err)
	}
	// The minimal scenario still fails with the same line.
	runOut, _, code := runMain(t, "run", "-record", "", small)
	if code != 1 || !strings.Contains(runOut, "0 passed, 1 failed") {
		t.Errorf("run of the shrunk scenario: code %d\n%s", code, runOut)
	}

	// -any keeps any failure on the simulator.
	out, _, code = runMain(t, "shrink", "-any", file)
	if code != 0 || strings.Count(out, "\n") != 1 {
		t.Errorf("shrink -any: code %d\n%s", code, out)
	}

	pass := write(t, dir, "good.scn", good)
	if _, errs, code := runMain(t, "shrink", pass); code != 1 || !strings.Contains(errs, "does not fail") {
		t.Errorf("shrink of a passing scenario: code %d, %q", code, errs)
	}
	for _, args := range [][]string{{"shrink"}, {"shrink", file, file}} {
		if _, _, code := runMain(t, args...); code != 2 {
			t.Errorf("%v: code %d, want 2", args, code)
		}
	}
	if _, errs, code := runMain(t, "shrink", filepath.Join(dir, "missing.scn")); code != 1 || !strings.Contains(errs, "missing.scn") {
		t.Errorf("shrink of a missing file: code %d, %q", code, errs)
	}
}

func TestUsageListsGenAndShrink(t *testing.T) {
	out, _, code := runMain(t, "help")
	if code != 0 || !strings.Contains(out, "snaplab gen ") || !strings.Contains(out, "snaplab shrink ") {
		t.Errorf("help: code %d\n%s", code, out)
	}
}
