package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"snaplab/sim/logwrites"
)

const lwScenario = `disk data 1MiB
disk cow 256KiB
dmsetup create lw --table "0 2048 linear data 0"
write lw 0 8KiB pattern=A
write lw 64KiB 4KiB pattern=B buffered
fsync lw
write lw 128KiB 4KiB pattern=C fua
dmsetup message lw 0 mark one exit=1
write lw 192KiB 4KiB pattern=D
discard lw 256KiB 64KiB
flush lw
write lw 8KiB 4KiB pattern=E
dmsetup create snap --table "0 2048 snapshot data cow P 8"
`

func readLog(t *testing.T, path string) *logwrites.Log {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	l, err := logwrites.Read(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// export --format log-writes of a recorded run, then import log-writes of
// that log and a run of it: the disk ends as it did.
func TestExportImportLogWrites(t *testing.T) {
	dir := t.TempDir()
	scn := write(t, dir, "lw.scn", lwScenario)
	recs := filepath.Join(dir, "recs")
	if out, errs, code := runMain(t, "run", "-record", recs, "-dump", filepath.Join(dir, "img"), scn); code != 0 {
		t.Fatalf("run: %d\n%s%s", code, out, errs)
	}
	rec := filepath.Join(recs, "lw.jsonl")
	logf := filepath.Join(dir, "data.log")
	if out, errs, code := runMain(t, "export", "--format", "log-writes", "--device", "data", "-o", logf, rec); code != 0 || !strings.Contains(errs, "entries (512-byte sectors) of disk data") {
		t.Fatalf("export: %d\n%s%s", code, out, errs)
	}
	l := readLog(t, logf)
	var got []string
	for _, e := range l.Entries {
		got = append(got, e.String())
	}
	// Writes and discards wait for the next flush (the target logs them
	// when it completes); FUA writes and marks go at once; the end is what
	// the target's removal logs.
	want := []string{`mark "line3:create-lw"`, "write 0+16 NONE", "write 128+8 NONE", "flush 0+0 FLUSH",
		"write 256+8 FUA", `mark "one"`, "write 384+8 NONE", "discard 512+128 DISCARD", "flush 0+0 FLUSH",
		`mark "line13:create-snap"`, "write 16+8 NONE", `mark "dm-log-writes-end"`}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("entries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The same run's export of the COW holds the snapshot's header write.
	cowLog := filepath.Join(dir, "cow.log")
	if _, errs, code := runMain(t, "export", "--format=log-writes", "--device=cow", "-o", cowLog, rec); code != 0 {
		t.Fatal(errs)
	}
	var cow []string
	for _, e := range readLog(t, cowLog).Entries {
		cow = append(cow, e.String())
	}
	// The dm stack's own writes: the persistent store's header and first
	// metadata area, written when the snapshot is created.
	if want := []string{`mark "line3:create-lw"`, `mark "one"`, `mark "line13:create-snap"`, "write 0+8 NONE", "write 8+8 NONE", `mark "dm-log-writes-end"`}; !reflect.DeepEqual(cow, want) {
		t.Errorf("cow log: %v, want %v", cow, want)
	}

	imp := filepath.Join(dir, "imp.scn")
	if out, errs, code := runMain(t, "import", "log-writes", "-device", "data", "-size", "1MiB", "-o", imp, logf); code != 0 {
		t.Fatalf("import: %d\n%s%s", code, out, errs)
	}
	text, _ := os.ReadFile(imp)
	for _, w := range []string{"disk data 1048576 lbs=512\n", "write data 131072 4096 data=data.log@", " fua\n", "discard data 262144 65536\n", `# entry 5: mark "one"`} {
		if !strings.Contains(string(text), w) {
			t.Errorf("imported scenario lacks %q:\n%s", w, text)
		}
	}
	if out, errs, code := runMain(t, "run", "-record", "off", "-dump", filepath.Join(dir, "img2"), imp); code != 0 {
		t.Fatalf("run imported: %d\n%s%s", code, out, errs)
	}
	a, _ := os.ReadFile(filepath.Join(dir, "img", "lw", "data.img"))
	b, _ := os.ReadFile(filepath.Join(dir, "img2", "imp", "data.img"))
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Errorf("the imported scenario's disk differs from the recorded run's (%d, %d bytes)", len(a), len(b))
	}
}

func TestLogWritesErrors(t *testing.T) {
	dir := t.TempDir()
	scn := write(t, dir, "lw.scn", lwScenario)
	recs := filepath.Join(dir, "recs")
	if _, errs, code := runMain(t, "run", "-record", recs, scn); code != 0 {
		t.Fatal(errs)
	}
	rec := filepath.Join(recs, "lw.jsonl")
	notlog := write(t, dir, "not.log", strings.Repeat("x", 1024))
	for _, tc := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"export", "--format", "log-writes", "--device", "lw", rec}, 1, `no disk named "lw" in the recording (disks: data, cow; dm devices, which export does not tap: lw, snap)`},
		{[]string{"export", "--format", "log-writes", rec}, 2, "--device DISK"},
		{[]string{"export", "--format", "log-writes", "--device", "data"}, 2, "want one recording"},
		{[]string{"export", "--format", "log-writes", "--device", "data", scn}, 1, "lw.scn"},
		{[]string{"export", "--format", "tar", scn}, 2, "want sh or log-writes"},
		{[]string{"import", "log-writes", notlog}, 1, "not.log: log-writes super block at byte 0: bad magic"},
		{[]string{"import", "log-writes"}, 2, "want one log file"},
	} {
		_, errs, code := runMain(t, tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.err) {
			t.Errorf("%v: exit %d %q, want %d %q", tc.args, code, errs, tc.code, tc.err)
		}
	}
	// -size smaller than the log reaches; a bad device name.
	logf := filepath.Join(dir, "d.log")
	if _, errs, code := runMain(t, "export", "--format", "log-writes", "--device", "data", "-o", logf, rec); code != 0 {
		t.Fatal(errs)
	}
	for _, tc := range [][]string{{"-size", "64KiB"}, {"-device", "a b"}, {"-size", "100"}} {
		if _, errs, code := runMain(t, append(append([]string{"import", "log-writes"}, tc...), logf)...); code == 0 {
			t.Errorf("%v accepted: %s", tc, errs)
		}
	}
}
