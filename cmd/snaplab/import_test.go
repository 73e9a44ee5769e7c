package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestImportLVM(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "session.scn")
	var so, se bytes.Buffer
	if code := Main([]string{"import", "lvm", "-o", out, "../../sim/lvmlog/testdata/session-6.1-loop.log"}, &so, &se); code != 0 {
		t.Fatalf("exit %d: %s", code, se.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `dmsetup load vg-snap --table "0 32768 snapshot vg-origin-real vg-snap-cow P 8"`) {
		t.Errorf("imported scenario:\n%s", b)
	}
	// The user's next step: run it.
	so.Reset()
	se.Reset()
	if code := Main([]string{"run", "-q", "-record", "off", out}, &so, &se); code != 0 {
		t.Fatalf("running the imported session: exit %d\n%s\n%s", code, so.String(), se.String())
	}

	notlog := filepath.Join(dir, "not.log")
	os.WriteFile(notlog, []byte("hello\n"), 0o644)
	for _, tc := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"import", "lvm", notlog}, 1, "no device-mapper operation"},
		{[]string{"import", "lvm", filepath.Join(dir, "none.log")}, 1, "no such file"},
		{[]string{"import", "lvm"}, 2, "want one log file"},
		{[]string{"import", "log-writes", notlog}, 1, "shorter than a super block"},
		{[]string{"import", "bogus", notlog}, 2, `format "bogus": want lvm or log-writes`},
		{[]string{"import"}, 2, "Usage: snaplab import"},
	} {
		se.Reset()
		if code := Main(tc.args, &so, &se); code != tc.code || !strings.Contains(se.String(), tc.err) {
			t.Errorf("%v: exit %d %q, want %d %q", tc.args, code, se.String(), tc.code, tc.err)
		}
	}
}
