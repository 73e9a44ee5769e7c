package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseFlagsAnyOrder(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		q        bool
		o        string
		operands []string
	}{
		{[]string{"a", "b"}, false, "", []string{"a", "b"}},
		{[]string{"-q", "a"}, true, "", []string{"a"}},
		{[]string{"a", "-q"}, true, "", []string{"a"}},
		{[]string{"a", "-o", "x", "b"}, false, "x", []string{"a", "b"}},
		{[]string{"a", "--o=x", "b", "-q"}, true, "x", []string{"a", "b"}},
		{[]string{"a", "--", "-q", "b"}, false, "", []string{"a", "-q", "b"}},
		{[]string{"-", "-q"}, true, "", []string{"-"}},
		{[]string{"-o", "-q"}, false, "-q", nil},
		{nil, false, "", nil},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		q := fs.Bool("q", false, "")
		o := fs.String("o", "", "")
		if err := parseFlags(fs, tc.args); err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if *q != tc.q || *o != tc.o || !reflect.DeepEqual(fs.Args(), append([]string{}, tc.operands...)) && len(fs.Args())+len(tc.operands) > 0 {
			t.Errorf("%q: q=%v o=%q operands %q; want %v %q %q", tc.args, *q, *o, fs.Args(), tc.q, tc.o, tc.operands)
		}
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Bool("q", false, "")
	if err := parseFlags(fs, []string{"a", "-nope"}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("an unknown flag after an operand: %v", err)
	}
}

// Every command takes its flags after its operands (the form people type,
// "serve SCN --socket P"), and every command has help.
func TestEveryCommandHelpAndLateFlags(t *testing.T) {
	for _, c := range commands {
		out, _, code := runMain(t, "help", c.name)
		if code != 0 || !strings.Contains(out, "snaplab") {
			t.Errorf("help %s: %d %q", c.name, code, out)
		}
	}
	dir := t.TempDir()
	scn := write(t, dir, "good.scn", good)
	if out, errs, code := runMain(t, "run", scn, "-q", "-record", "off"); code != 0 || strings.Contains(out, "[1/1]") {
		t.Errorf("run FILE -q: %d\n%s%s", code, out, errs)
	}
	if out, errs, code := runMain(t, "gen", "--seed", "3", "-o", filepath.Join(dir, "g.scn")); code != 0 {
		t.Errorf("gen: %d %s %s", code, out, errs)
	}
	if _, errs, code := runMain(t, "export", scn, "--format", "sh", "-o", filepath.Join(dir, "x.sh")); code != 0 {
		t.Errorf("export SCN --format sh: %d %s", code, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.sh")); err != nil {
		t.Error(err)
	}
}

func TestCompletionCandidates(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.scn", good)
	write(t, dir, "b.jsonl", "")
	write(t, dir, ".hidden.scn", "")
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	for _, tc := range []struct {
		words []string
		want  []string
	}{
		{[]string{"se"}, []string{"serve"}},
		{[]string{"run", "-sem"}, []string{"-semantics"}},
		{[]string{"run", "--sem"}, []string{"--semantics"}},
		{[]string{"run", "-semantics", ""}, []string{"mainline", "seed"}},
		{[]string{"run", "-q", ""}, []string{"a.scn", "d/"}},
		{[]string{"run", "."}, []string{".hidden.scn"}},
		{[]string{"replay", ""}, []string{"b.jsonl", "d/"}},
		{[]string{"run", "-record", ""}, []string{"a.scn", "b.jsonl", "d/"}},
		{[]string{"export", "--format", ""}, []string{"sh", "log-writes"}},
		{[]string{"completion", ""}, []string{"bash", "zsh"}},
		{[]string{"help", "im"}, []string{"import", "image"}}, // in the usage text's order
		{[]string{"nosuch", ""}, nil},
	} {
		out, _, _ := runMain(t, append([]string{completeCommand}, tc.words...)...)
		got := strings.Fields(out)
		if !reflect.DeepEqual(got, tc.want) && len(got)+len(tc.want) > 0 {
			t.Errorf("%q: %q, want %q", tc.words, got, tc.want)
		}
	}
}

func TestProgressBar(t *testing.T) {
	for _, tc := range []struct{ done, total int }{{0, 4}, {1, 4}, {4, 4}, {3, 7}, {0, 0}} {
		b := drawBar(tc.done, tc.total)
		if !strings.HasPrefix(b, "[") || strings.Count(b, "#")+strings.Count(b, "-") != barWidth {
			t.Errorf("%v: %q", tc, b)
		}
		if tc.total > 0 && strings.Count(b, "#") != tc.done*barWidth/tc.total {
			t.Errorf("%v: %q", tc, b)
		}
	}
}
