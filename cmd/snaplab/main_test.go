package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
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

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
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

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestServe(t *testing.T) {
	nbdinfo, err := exec.LookPath("nbdinfo")
	if err != nil {
		t.Fatalf("nbdinfo not installed (make deps installs libnbd-bin): %v", err)
	}
	dir := t.TempDir()
	scn := write(t, dir, "s.scn", good)
	pr, pw := io.Pipe()
	stdin = pr
	defer func() { stdin = os.Stdin }()
	var out, errb syncBuf
	rec := filepath.Join(dir, "serve.jsonl")
	sock := filepath.Join(dir, "nbd.sock")
	code := make(chan int, 1)
	go func() { code <- cmdServe([]string{"-socket", sock, "-record", rec, scn}, &out, &errb) }()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), "ready:") {
		if time.Now().After(deadline) {
			t.Fatalf("serve did not become ready: %s %s", out.String(), errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "nbd+unix:///snap?socket="+sock) {
		t.Fatalf("URIs not printed:\n%s", out.String())
	}
	info, err := exec.Command(nbdinfo, "--size", "nbd+unix:///snap?socket="+sock).CombinedOutput()
	if err != nil || strings.TrimSpace(string(info)) != "8388608" {
		t.Fatalf("nbdinfo --size: %v %s", err, info)
	}
	fmt.Fprintln(pw, "dmsetup status snap")
	fmt.Fprintln(pw, "dmsetup create z --table \"0 8 zero\"")
	fmt.Fprintln(pw, "dmsetup bogus")
	deadline = time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), "fail:") {
		if time.Now().After(deadline) {
			t.Fatalf("control lines not answered:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	list, err := exec.Command(nbdinfo, "--list", "nbd+unix://?socket="+sock).CombinedOutput()
	if err != nil || !strings.Contains(string(list), "export=\"z\"") {
		t.Fatalf("new device not exported: %v %s", err, list)
	}
	fmt.Fprintln(pw, "quit")
	pw.Close()
	select {
	case <-code:
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
	o := out.String()
	if !strings.Contains(o, "0 16384 snapshot 32/2048 16\nok\n") || !strings.Contains(o, "Unknown command: bogus") {
		t.Fatalf("control output:\n%s", o)
	}
	if _, _, c := runMain(t, "replay", rec); c != 1 { // the bogus command is a recorded failure...
		t.Fatalf("replay exit %d", c)
	}
	r, _, _ := runMain(t, "replay", rec)
	if !strings.Contains(r, "REPRODUCED FAILURE") { // ...reproduced identically
		t.Fatalf("replay: %s", r)
	}
}

// TestRunOnVM runs scenarios through `snaplab run -executor vm` (a guest
// boots), then replays the recordings in process.
func TestRunOnVM(t *testing.T) {
	dir := t.TempDir()
	recs := filepath.Join(dir, "recs")
	out, errs, code := runMain(t, "run", "-executor", "vm", "-record", recs, "../../scenarios/library/seed-call-sequence.scn", write(t, dir, "good.scn", good))
	if code != 0 || !strings.Contains(out, "2 passed, 0 failed") {
		t.Fatalf("run -executor vm: %d\n%s\n%s", code, out, errs)
	}
	out, _, code = runMain(t, "replay", filepath.Join(recs, "seed-call-sequence.jsonl"), filepath.Join(recs, "good.jsonl"))
	if code != 0 || strings.Count(out, "IDENTICAL") != 2 {
		t.Fatalf("replay of vm recordings: %d %s", code, out)
	}
	if _, errs, code := runMain(t, "run", "-executor", "kvm-only", "x.scn"); code != 2 || !strings.Contains(errs, "want sim, vm or kernel") {
		t.Fatalf("bad executor: %d %s", code, errs)
	}
}

// TestRunOnKernelCompare runs a scenario on the real dm-snapshot in a guest
// and on the simulator (-compare sim), then diffs the two recordings.
func TestRunOnKernelCompare(t *testing.T) {
	dir := t.TempDir()
	recs := filepath.Join(dir, "recs")
	scn := write(t, dir, "good.scn", good)
	out, errs, code := runMain(t, "run", "-executor", "kernel", "-compare", "sim", "-record", recs, scn)
	if code != 0 || !strings.Contains(out, "1 passed, 0 failed") {
		t.Fatalf("run -executor kernel -compare sim: %d\n%s\n%s", code, out, errs)
	}
	if _, errs, code := runMain(t, "run", "-record", filepath.Join(dir, "sim"), scn); code != 0 {
		t.Fatal(errs)
	}
	out, _, code = runMain(t, "diff", filepath.Join(recs, "good.jsonl"), filepath.Join(dir, "sim", "good.jsonl"))
	if code != 0 || !strings.Contains(out, "identical results (kernel vs sim") {
		t.Fatalf("diff kernel vs sim: %d %s", code, out)
	}
	// A scenario whose expectation the kernel contradicts fails, with the line.
	bad := write(t, dir, "bad.scn", strings.Replace(good, "32/2048 16", "40/2048 16", 1))
	out, errs, code = runMain(t, "run", "-executor", "kernel", "-record", "", bad)
	if code != 1 || !strings.Contains(errs, "line 7:") {
		t.Fatalf("kernel run of a wrong expectation: %d\n%s\n%s", code, out, errs)
	}
	if _, errs, code := runMain(t, "run", "-compare", "sim", scn); code != 2 || !strings.Contains(errs, "want -compare sim with -executor vm or kernel") {
		t.Fatalf("-compare without executor: %d %s", code, errs)
	}
}
