package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// run -record off records nothing and says the runs cannot be replayed; a
// recording directory gets one streamed recording per scenario, and no
// sidecar for the sim executor (no outside client writes to it).
func TestRunRecordOffAndOn(t *testing.T) {
	dir := t.TempDir()
	scn := write(t, dir, "s.scn", "disk d 1MiB\nwrite d 0 4KiB pattern=A\nread d 0 4KiB expect=A\n")
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	os.Chdir(dir)
	out, errs, code := runMain(t, "run", "-record", "off", scn)
	if code != 0 || !strings.Contains(out, "recordings: off (these runs cannot be replayed") {
		t.Fatalf("run -record off: exit %d\n%s%s", code, out, errs)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("-record off left files: %v", ents)
	}
	out, errs, code = runMain(t, "run", "-record", "recs", scn)
	if code != 0 || strings.Contains(out, "recordings: off") {
		t.Fatalf("run -record recs: exit %d\n%s%s", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "recs", "s.jsonl")); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "recs", "s.blobs")); !os.IsNotExist(err) {
		t.Errorf("a sim run made a sidecar: %v", err)
	}
	out, errs, code = runMain(t, "replay", filepath.Join(dir, "recs", "s.jsonl"))
	if code != 0 || !strings.Contains(out, "IDENTICAL") {
		t.Fatalf("replay: exit %d\n%s%s", code, out, errs)
	}
}
