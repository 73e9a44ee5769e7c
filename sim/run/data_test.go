package run

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"snaplab/sim/record"
	"snaplab/sim/script"
)

// write ... data=PATH@OFF writes the file's bytes; the recording holds
// their digest, the oracle knows them, a replay reads the file again.
func TestWriteData(t *testing.T) {
	dir := t.TempDir()
	data := bytes.Repeat([]byte("0123456789abcdef"), 1024) // 16 KiB
	if err := os.WriteFile(filepath.Join(dir, "d.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	sc, err := script.Parse("data", "disk a 1MiB\nwrite a 4KiB 8KiB data=d.bin@4KiB fua\nread a 4KiB 8KiB\nwrite a 0 8KiB data=d.bin@12KiB expect=OK\n")
	if err != nil {
		t.Fatal(err)
	}
	sc.Dir = dir
	var rec bytes.Buffer
	rep := Run(sc, Options{Record: &rec, DumpDir: dir})
	if len(rep.Failures) != 1 || !strings.Contains(rep.Failures[0].Msg, "it has no 8192 bytes at offset 12288") {
		t.Fatalf("failures: %v", rep.Failures)
	}
	img, err := os.ReadFile(filepath.Join(dir, "a.img"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img[4096:12288], data[4096:12288]) {
		t.Error("the disk does not hold the file's bytes")
	}
	if !strings.Contains(rec.String(), `"data":"`) {
		t.Error("the recording has no digest of the data")
	}
	// The oracle checked the read (no expect=) against the data written.
	if rep.Checks == 0 {
		t.Error("no sector checked")
	}
	// A replay reads the file again and agrees; a changed file diverges.
	r, err := record.Read(bytes.NewReader(rec.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if _, diff, err := Replay(r, Options{}); err != nil || diff != "" {
		t.Fatalf("replay: %v %s", err, diff)
	}
	data[5000] ^= 1
	if err := os.WriteFile(filepath.Join(dir, "d.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, diff, err := Replay(r, Options{}); err == nil && diff == "" {
		t.Fatal("a replay with a changed data file did not diverge")
	}
	// Outside the scenario's directory: refused, as an image would be.
	sc2, _ := script.Parse("data", "disk a 1MiB\nwrite a 0 4KiB data=../x\n")
	sc2.Dir = dir
	if rep := Run(sc2, Options{}); rep.Pass() {
		t.Error("a data file outside the scenario's directory was read")
	}
}
