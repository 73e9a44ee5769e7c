package run

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/pattern"
	"snaplab/sim/record"
	"snaplab/sim/script"
)

// writeImage writes a sparse image file of size bytes holding pattern
// data at the given extents (offset -> pattern name, 4 KiB each).
func writeImage(t *testing.T, path string, size int64, data map[int64]string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, p := range data {
		b := make([]byte, 4096)
		pattern.Fill(b, p, off)
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
}

func sha(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func parse(t *testing.T, dir, text string) *script.Scenario {
	t.Helper()
	sc, err := script.Parse("t.scn", text)
	if err != nil {
		t.Fatal(err)
	}
	sc.Dir = dir
	return sc
}

func memOf(t *testing.T, s *Session, name string) *block.Mem {
	t.Helper()
	for _, d := range s.ctl.Disks() {
		if d.Name() == name {
			return d.Device.(*block.Faulty).Unwrap().(*block.Mem)
		}
	}
	t.Fatalf("no disk %s", name)
	return nil
}

// A sparse image smaller than the disk: its data comes back at its
// offsets, the rest of the disk reads as zeros, holes allocate nothing,
// reads without expect= pass the oracle, and the result names the file
// (resolved against Scenario.Dir) and its sha256.
func TestImageLoadsSparse(t *testing.T) {
	dir := t.TempDir()
	writeImage(t, filepath.Join(dir, "d.img"), 16<<20, map[int64]string{0: "P", 10 << 20: "Q", 15<<20 + 4096: "R"})
	sc := parse(t, dir, `disk d 32MiB image=d.img
read d 0 4KiB expect=P
read d 10MiB 4KiB expect=Q
read d 15MiB 4KiB expect=zero
read d 16MiB 4MiB expect=zero
read d 15MiB 1MiB
`)
	var buf bytes.Buffer
	s := NewSession(sc, Options{Record: &buf})
	for i := range sc.Steps {
		if msg := s.Exec(&sc.Steps[i]); msg != "" {
			t.Fatalf("line %d: %s", sc.Steps[i].Line, msg)
		}
	}
	if st := memOf(t, s, "d").Stats(); st.DataPages != 3 {
		t.Errorf("16 MiB sparse image with 12 KiB of data: %d data pages, want 3", st.DataPages)
	}
	rep := s.Finish()
	if !rep.Pass() {
		t.Fatal(rep.Failures)
	}
	rec, err := record.Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	want := `"stdout":"` + filepath.Join(dir, "d.img") + `","data":"` + sha(t, filepath.Join(dir, "d.img")) + `","check":"ok"`
	if !strings.Contains(strings.Join(rec.Lines, "\n"), want) {
		t.Errorf("recording lacks the disk result %s:\n%s", want, rec.Lines[1])
	}
}

// An image whose size is not a multiple of 512 bytes is zero-padded.
func TestImagePartialSector(t *testing.T) {
	dir := t.TempDir()
	img := bytes.Repeat([]byte{0xa5}, 1000)
	if err := os.WriteFile(filepath.Join(dir, "p.img"), img, 0o644); err != nil {
		t.Fatal(err)
	}
	sc := parse(t, "", "disk d 4KiB image="+filepath.Join(dir, "p.img")+"\n")
	s := NewSession(sc, Options{})
	if msg := s.Exec(&sc.Steps[0]); msg != "" {
		t.Fatal(msg)
	}
	got := make([]byte, 4096)
	if _, err := memOf(t, s, "d").ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := append(img, make([]byte, 4096-1000)...)
	if !bytes.Equal(got, want) {
		t.Fatalf("disk content differs from the 1000-byte image padded with zeros")
	}
}

func TestImageErrors(t *testing.T) {
	dir := t.TempDir()
	writeImage(t, filepath.Join(dir, "big.img"), 2<<20, nil)
	writeImage(t, filepath.Join(dir, "ok.img"), 1<<20, nil)
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, text string
		line       int
		want       []string
	}{
		{"too large", "disk a 1MiB\ndisk cow 1MiB image=big.img\n", 2,
			[]string{"disk cow", filepath.Join(dir, "big.img"), "2097152 bytes", "larger than the disk (1048576 bytes)"}},
		{"missing", "disk cow 1MiB image=nothere.img\n", 1,
			[]string{"disk cow", filepath.Join(dir, "nothere.img"), "no such file"}},
		{"directory", "disk cow 1MiB image=sub\n", 1,
			[]string{"disk cow", filepath.Join(dir, "sub"), "directory"}},
		{"same size is fine, then a bad read", "disk cow 1MiB image=ok.img\nread cow 0 4KiB expect=A\n", 2,
			[]string{"want pattern A"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := Run(parse(t, dir, tc.text), Options{})
			if rep.Pass() || rep.Failures[0].Line != tc.line {
				t.Fatalf("want a failure at line %d, got %+v", tc.line, rep.Failures)
			}
			for _, w := range tc.want {
				if !strings.Contains(rep.Failures[0].Msg, w) {
					t.Errorf("failure %q does not say %q", rep.Failures[0].Msg, w)
				}
			}
		})
	}
}

func TestImageParse(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"disk cow 1MiB image=", `t.scn:1: disk cow: invalid image=""`},
		{"disk cow 1MiB image=a image=b", "t.scn:1: option image given twice"},
		{"disk a 1MiB\ndisk cow 1MiB imag=x", `t.scn:2: unknown option "imag"`},
	} {
		_, err := script.Parse("t.scn", tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.text, err, tc.want)
		}
	}
	sc, err := script.Parse("t.scn", "disk a 1MiB image=x/a.img\ndisk b 1MiB image=/abs/b.img lbs=4096\ndisk c 1MiB")
	if err != nil {
		t.Fatal(err)
	}
	sc.Dir = "scen"
	for i, want := range []string{"scen/x/a.img", "/abs/b.img", ""} {
		if got := sc.ImagePath(&sc.Steps[i]); got != want {
			t.Errorf("ImagePath(%s) = %q, want %q", sc.Steps[i].Text, got, want)
		}
	}
	if sc.Steps[1].LBS != 4096 || sc.Steps[1].Image != "/abs/b.img" {
		t.Errorf("step 2: %+v", sc.Steps[1])
	}
}

// Replay reads the recorded file again: identical when unchanged, an
// error naming the file when it changed or is gone; a recorded failure to
// read an image replays as the same failure.
func TestImageReplay(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "o.img")
	writeImage(t, img, 1<<20, map[int64]string{8192: "P"})
	sc := parse(t, dir, "disk o 1MiB image=o.img\nread o 8KiB 4KiB expect=P\n")
	var buf bytes.Buffer
	if rep := Run(sc, Options{Record: &buf}); !rep.Pass() {
		t.Fatal(rep.Failures)
	}
	replay := func() (*Report, string, error) {
		rec, err := record.Read(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		return Replay(rec, Options{})
	}
	if rep, diff, err := replay(); err != nil || diff != "" || !rep.Pass() {
		t.Fatalf("unchanged image: %v %s %v", err, diff, rep.Failures)
	}
	writeImage(t, img, 1<<20, map[int64]string{8192: "Q"})
	_, _, err := replay()
	if err == nil || !strings.Contains(err.Error(), "disk o: image "+img+" changed since the recording") {
		t.Fatalf("changed image: %v", err)
	}
	os.Remove(img)
	_, _, err = replay()
	if err == nil || !strings.Contains(err.Error(), img) || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing image: %v", err)
	}

	buf.Reset()
	if rep := Run(sc, Options{Record: &buf}); rep.Pass() {
		t.Fatal("a missing image passed")
	}
	rep, diff, err := replay()
	if err != nil || diff != "" || rep.Pass() {
		t.Fatalf("recorded failure: %v %q pass=%v", err, diff, rep.Pass())
	}
}
