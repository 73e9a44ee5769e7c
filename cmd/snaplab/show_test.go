package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// showRecordings records the H4 scenario under mainline and under seed
// semantics (the seed run fails at the source's removal: no "Cancelling"
// line) and returns the two recordings.
func showRecordings(t *testing.T, dir string) (mainline, seed string) {
	t.Helper()
	scn := filepath.Join("..", "..", "scenarios", "library", "h4-remove-source-cancels-handover.scn")
	if _, errs, code := runMain(t, "run", "-record", filepath.Join(dir, "m"), scn); code != 0 {
		t.Fatalf("run: %d %s", code, errs)
	}
	if _, errs, code := runMain(t, "run", "-semantics", "seed", "-record", filepath.Join(dir, "s"), scn); code != 1 {
		t.Fatalf("run -semantics seed: exit %d, want 1 (the scenario pins mainline) %s", code, errs)
	}
	return filepath.Join(dir, "m", "h4-remove-source-cancels-handover.jsonl"), filepath.Join(dir, "s", "h4-remove-source-cancels-handover.jsonl")
}

func TestShow(t *testing.T) {
	dir := t.TempDir()
	m, s := showRecordings(t, dir)

	// One recording, HTML on stdout.
	out, errs, code := runMain(t, "show", m)
	if code != 0 || !strings.HasPrefix(out, "<!DOCTYPE html>") || !strings.Contains(out, `class="lane lane-dm" data-device="snap2"`) {
		t.Fatalf("show: %d %s\n%.300s", code, errs, out)
	}
	if strings.Contains(out, `id="divergence"`) {
		t.Error("one recording has a divergence")
	}
	again, _, _ := runMain(t, "show", m)
	if again != out {
		t.Error("two runs of show on one recording differ")
	}

	// Two, to an SVG file, flags after the operands.
	svg := filepath.Join(dir, "x.svg")
	_, errs, code = runMain(t, "show", m, s, "-o", svg)
	if code != 0 || !strings.Contains(errs, "first divergence: line 15") {
		t.Fatalf("show -o x.svg: %d %s", code, errs)
	}
	b, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), "<?xml") || !strings.Contains(string(b), `<g id="divergence"`) {
		t.Errorf("x.svg: %.300s", b)
	}

	// -format wins over stdout's default; -o's extension must agree.
	out, _, code = runMain(t, "show", "-format", "svg", m)
	if code != 0 || !strings.HasPrefix(out, "<?xml") {
		t.Errorf("-format svg: %d %.100s", code, out)
	}
	html := filepath.Join(dir, "x.HTML")
	if _, errs, code := runMain(t, "show", "-o", html, "-format", "html", m, s); code != 0 {
		t.Errorf("-o x.HTML -format html: %d %s", code, errs)
	}
}

func TestShowErrors(t *testing.T) {
	dir := t.TempDir()
	m, _ := showRecordings(t, dir)
	trunc := filepath.Join(dir, "trunc.jsonl")
	b, err := os.ReadFile(m)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	if err := os.WriteFile(trunc, []byte(strings.Join(lines[:5], "")), 0o644); err != nil {
		t.Fatal(err)
	}
	scn := filepath.Join("..", "..", "scenarios", "library", "h1-handover-basic.scn")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "want one or two recordings, got 0"},
		{[]string{m, m, m}, 2, "want one or two recordings, got 3"},
		{[]string{"-o", filepath.Join(dir, "x.png"), m}, 2, "cannot tell the format"},
		{[]string{"-format", "pdf", m}, 2, `-format "pdf": want html or svg`},
		{[]string{"-format", "svg", "-o", filepath.Join(dir, "x.html"), m}, 2, "-format svg but -o"},
		{[]string{"-bogus", m}, 2, "flag provided but not defined"},
		{[]string{filepath.Join(dir, "missing.jsonl")}, 1, "missing.jsonl: no such file"},
		{[]string{trunc}, 1, "trunc.jsonl:5: no footer line (truncated?)"},
		{[]string{scn}, 1, "h1-handover-basic.scn:1: not a JSON object"},
		{[]string{"-o", filepath.Join(dir, "no", "such", "dir.html"), m}, 1, "no such file or directory"},
	} {
		_, errs, code := runMain(t, append([]string{"show"}, tc.args...)...)
		if code != tc.code || !strings.Contains(errs, tc.want) {
			t.Errorf("show %q: exit %d, stderr %q; want exit %d and %q", tc.args, code, errs, tc.code, tc.want)
		}
	}
	if out, _, code := runMain(t, "show", "--help"); code != 0 || out != "" {
		t.Errorf("show --help: %d %q", code, out)
	}
}
