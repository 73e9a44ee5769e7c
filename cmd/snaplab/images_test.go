package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"snaplab/sim/pattern"
	"snaplab/sim/record"
	"snaplab/sim/run"
)

// image writes a 1 MiB image holding pattern p in its first 4 KiB.
func image(t *testing.T, path, p string) {
	t.Helper()
	b := make([]byte, 1<<20)
	pattern.Fill(b[:4096], p, 0)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// -images-anywhere on run, replay and shrink: an image outside the
// scenario's directory needs it; replays find images from any working
// directory; shrink resolves images against the scenario's directory.
func TestImagesAnywhere(t *testing.T) {
	dir := t.TempDir()
	scen := filepath.Join(dir, "scen")
	if err := os.Mkdir(scen, 0o755); err != nil {
		t.Fatal(err)
	}
	image(t, filepath.Join(dir, "up.img"), "U")
	image(t, filepath.Join(scen, "in.img"), "I")
	up := write(t, scen, "up.scn", "disk u 1MiB image=../up.img\nread u 0 4KiB expect=U\n")
	in := write(t, scen, "in.scn", "disk i 1MiB image=in.img\nread i 0 4KiB expect=I\n")
	recs := filepath.Join(dir, "recs")

	out, errs, code := runMain(t, "run", "-record", recs, up)
	if code != 1 || !strings.Contains(errs, "image "+filepath.Join(dir, "up.img")+" is outside the scenario's directory") || !strings.Contains(errs, "-images-anywhere") {
		t.Fatalf("run without -images-anywhere: %d\n%s\n%s", code, out, errs)
	}
	if out, errs, code := runMain(t, "run", "-images-anywhere", "-record", recs, up, in); code != 0 {
		t.Fatalf("run -images-anywhere: %d\n%s\n%s", code, out, errs)
	}
	t.Chdir(t.TempDir()) // replays from elsewhere
	if out, _, code := runMain(t, "replay", filepath.Join(recs, "in.jsonl")); code != 0 || !strings.HasPrefix(out, "IDENTICAL") {
		t.Fatalf("replay from another directory: %d %s", code, out)
	}
	_, errs, code = runMain(t, "replay", filepath.Join(recs, "up.jsonl"))
	if code != 1 || !strings.Contains(errs, "is outside the scenario's directory") || !strings.Contains(errs, "-images-anywhere") {
		t.Fatalf("replay without -images-anywhere: %d %s", code, errs)
	}
	if out, _, code := runMain(t, "replay", "-images-anywhere", filepath.Join(recs, "up.jsonl")); code != 0 || !strings.HasPrefix(out, "IDENTICAL") {
		t.Fatalf("replay -images-anywhere: %d %s", code, out)
	}

	// shrink: from another directory, the image is still the scenario's.
	failing := write(t, scen, "fail.scn", "disk i 1MiB image=in.img\ndisk other 1MiB\nwrite other 0 4KiB pattern=X\nread i 0 4KiB expect=B\n")
	out, errs, code = runMain(t, "shrink", failing)
	if code != 0 || out != "disk i 1MiB image=in.img\nread i 0 4KiB expect=B\n" || !strings.Contains(errs, "want pattern B") {
		t.Fatalf("shrink: %d\n%s\n%s", code, out, errs)
	}
	failingUp := write(t, scen, "failup.scn", "disk u 1MiB image=../up.img\ndisk other 1MiB\nread u 0 4KiB expect=B\n")
	if _, errs, code := runMain(t, "shrink", failingUp); code != 0 || !strings.Contains(errs, "-images-anywhere") {
		t.Fatalf("shrink of an image outside: %d %s", code, errs)
	}
	if out, _, code := runMain(t, "shrink", "-images-anywhere", failingUp); code != 0 || out != "disk u 1MiB image=../up.img\nread u 0 4KiB expect=B\n" {
		t.Fatalf("shrink -images-anywhere: %d %s", code, out)
	}
}

// A replay that panics (a bug) is an error naming the panic, not a crash.
func TestReplayPanicIsAnError(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "g.scn", good)
	recs := filepath.Join(dir, "recs")
	if _, errs, code := runMain(t, "run", "-record", recs, p); code != 0 {
		t.Fatal(errs)
	}
	replayRun = func(*record.Recording, run.Options) (*run.Report, string, error) { panic("planted") }
	defer func() { replayRun = run.Replay }()
	_, errs, code := runMain(t, "replay", filepath.Join(recs, "g.jsonl"))
	if code != 1 || !strings.Contains(errs, "replay panicked (a bug in snaplab): planted") {
		t.Fatalf("%d %s", code, errs)
	}
}
