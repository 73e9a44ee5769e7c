package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCrashCommand(t *testing.T) {
	lib := "../../scenarios/library/persistent-reload-keeps-exceptions.scn"
	dump := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		code int
		out  []string // substrings of stdout
		err  string   // substring of stderr
	}{
		{"ok", []string{"--seeds", "3", "--torn", lib}, 0,
			[]string{"state 1: boundary after op 4 (flush cow), kept nothing volatile", "state 2: seed 3 before op 5 (fua write cow 4096+4096)", "state 3: boundary after op 5 (fua write cow 4096+4096)", "state 9: end of the scenario", "10 states checked (7 boundary, 3 seeded)", "judged unread (holes nothing maps)", "ok: every state kept the promise"}, ""},
		{"dump", []string{"-q", "--dump", dump, lib}, 0,
			[]string{"7 states checked (7 boundary, 0 seeded)", "dumped " + filepath.Join(dump, "cut-6", "persistent-reload-keeps-exceptions-cut-6.scn")}, ""},
		{"no scenario", nil, 2, nil, "want exactly one scenario file"},
		{"negative seeds", []string{"--seeds", "-1", lib}, 2, nil, "--seeds -1: want 0 or more"},
		{"bad semantics", []string{"--semantics", "old", lib}, 2, nil, `--semantics "old": want mainline or seed`},
		{"unknown flag", []string{"--cuts", "3", lib}, 2, nil, "flag provided but not defined: -cuts"},
		{"missing file", []string{"nonexistent.scn"}, 1, nil, "nonexistent.scn"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := Main(append([]string{"crash"}, tc.args...), &out, &errb)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out.String(), errb.String())
			}
			for _, w := range tc.out {
				if !strings.Contains(out.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, out.String())
				}
			}
			if !strings.Contains(errb.String(), tc.err) {
				t.Errorf("stderr lacks %q:\n%s", tc.err, errb.String())
			}
		})
	}
	b, err := os.ReadFile(filepath.Join(dump, "cut-6", "persistent-reload-keeps-exceptions-cut-6.scn"))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"disk origin 67108864 image=origin.img", `dmsetup create snap --table "0 131072 snapshot origin cow P 8"`, "dmsetup status snap expect=", "read snap 0 "} {
		if !bytes.Contains(b, []byte(w)) {
			t.Errorf("dumped scenario lacks %q:\n%s", w, b)
		}
	}
}
