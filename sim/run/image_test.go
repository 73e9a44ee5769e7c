package run

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

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

// digest is the documented image digest (scenarios/README.md), computed
// here from its definition: SHA-256 of the size (8 bytes, big-endian), then
// each sector holding a non-zero byte: its index (8 bytes, big-endian) and
// its 512 bytes, the last one zero-padded. sectors yields the file's
// sectors that may hold data, in order.
func digest(size int64, sectors func(yield func(idx int64, sec []byte))) string {
	h := sha256.New()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(size))
	h.Write(b[:])
	zero := make([]byte, 512)
	sectors(func(idx int64, sec []byte) {
		if bytes.Equal(sec, zero) {
			return
		}
		binary.BigEndian.PutUint64(b[:], uint64(idx))
		h.Write(b[:])
		h.Write(sec)
	})
	return "sparse-sha256:" + hex.EncodeToString(h.Sum(nil))
}

// fileDigestOf is digest for a small file, read whole.
func fileDigestOf(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return digest(int64(len(b)), func(yield func(int64, []byte)) {
		for i := 0; i < len(b); i += 512 {
			sec := make([]byte, 512)
			copy(sec, b[i:])
			yield(int64(i/512), sec)
		}
	})
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
// reads without expect= pass the oracle; the result names the file as the
// scenario does (relative to its directory), and its digest; the header
// names the scenario's directory.
func TestImageLoadsSparse(t *testing.T) {
	dir := t.TempDir()
	writeImage(t, filepath.Join(dir, "d.img"), 16<<20, map[int64]string{0: "P", 10 << 20: "Q", 15<<20 + 4096: "R"})
	sc := parse(t, dir, `disk d 32MiB image=./d.img
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
	if rec.Header.Dir != dir {
		t.Errorf("header dir %q, want %q", rec.Header.Dir, dir)
	}
	want := `"stdout":"d.img","data":"` + fileDigestOf(t, filepath.Join(dir, "d.img")) + `","check":"ok"`
	if !strings.Contains(rec.Lines[2], want) {
		t.Errorf("recording lacks the disk result %s:\n%s", want, rec.Lines[2])
	}
	// Without an image, no dir: recordings stay the same wherever they run.
	buf.Reset()
	Run(parse(t, dir, "disk d 1MiB\n"), Options{Record: &buf})
	if strings.Contains(buf.String(), `"dir"`) {
		t.Errorf("a scenario without images records its directory: %s", record.SplitLines(buf.Bytes())[0])
	}
}

// An image whose size is not a multiple of 512 bytes is zero-padded.
func TestImagePartialSector(t *testing.T) {
	dir := t.TempDir()
	img := bytes.Repeat([]byte{0xa5}, 1000)
	if err := os.WriteFile(filepath.Join(dir, "p.img"), img, 0o644); err != nil {
		t.Fatal(err)
	}
	sc := parse(t, dir, "disk d 4KiB image="+filepath.Join(dir, "p.img")+"\n")
	var buf bytes.Buffer
	s := NewSession(sc, Options{Record: &buf})
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
	if d := fileDigestOf(t, filepath.Join(dir, "p.img")); !strings.Contains(buf.String(), `"data":"`+d+`"`) {
		t.Errorf("recording lacks digest %s", d)
	}
}

// A 1 TiB sparse image with a few extents loads in time proportional to
// its data (SEEK_DATA, SEEK_HOLE): reading it whole took about 35 minutes.
func TestImageSparseTiB(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tib.img")
	const size = 1 << 40
	extents := map[int64]string{0: "A", 1 << 30: "B", 512 << 30: "C", size - 4096: "D", 700<<30 + 512: "E"}
	writeImage(t, path, size, extents)
	sc := parse(t, dir, `disk big 1TiB image=tib.img
read big 0 4KiB expect=A
read big 1GiB 4KiB expect=B
read big 512GiB 4KiB expect=C
read big 1048575MiB 1MiB
read big 700GiB 64KiB
`)
	var buf bytes.Buffer
	s := NewSession(sc, Options{Record: &buf})
	start := time.Now()
	if msg := s.Exec(&sc.Steps[0]); msg != "" {
		t.Fatal(msg)
	}
	took := time.Since(start)
	t.Logf("1 TiB sparse image with %d extents of 4 KiB loaded in %v", len(extents), took)
	if took > 20*time.Second {
		t.Errorf("loading a 1 TiB sparse image with 20 KiB of data took %v", took)
	}
	for i := range sc.Steps[1:] {
		if msg := s.Exec(&sc.Steps[i+1]); msg != "" {
			t.Fatalf("line %d: %s", sc.Steps[i+1].Line, msg)
		}
	}
	if st := memOf(t, s, "big").Stats(); st.DataPages > 8 {
		t.Errorf("%d data pages for 20 KiB of data", st.DataPages)
	}
	s.Finish()
	want := digest(size, func(yield func(int64, []byte)) {
		for _, off := range []int64{0, 1 << 30, 512 << 30, 700<<30 + 512, size - 4096} {
			b := make([]byte, 4096)
			pattern.Fill(b, extents[off], off)
			for i := 0; i < 4096; i += 512 {
				yield((off+int64(i))/512, b[i:i+512])
			}
		}
	})
	if !strings.Contains(buf.String(), `"stdout":"tib.img","data":"`+want+`"`) {
		t.Errorf("recording lacks the digest %s:\n%s", want, record.SplitLines(buf.Bytes())[2])
	}
}

// runWithin runs f, failing the test if it does not return in time (a FIFO
// opened for reading blocks until a writer comes).
func runWithin(t *testing.T, d time.Duration, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("still running after %v (blocked on a FIFO or reading without end?)", d)
	}
}

func TestImageErrors(t *testing.T) {
	dir := t.TempDir()
	scen := filepath.Join(dir, "scen")
	if err := os.MkdirAll(filepath.Join(scen, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeImage(t, filepath.Join(scen, "big.img"), 2<<20, nil)
	writeImage(t, filepath.Join(scen, "ok.img"), 1<<20, nil)
	writeImage(t, filepath.Join(dir, "outside.img"), 1<<20, map[int64]string{0: "O"})
	if err := syscall.Mkfifo(filepath.Join(scen, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(scen, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for name, target := range map[string]string{"shadow": "/etc/shadow", "out": "../outside.img", "in": "ok.img", "null": "/dev/null"} {
		if err := os.Symlink(target, filepath.Join(scen, name)); err != nil {
			t.Fatal(err)
		}
	}
	const outsideFlag = "images elsewhere are read only with -images-anywhere (run.Options.AllowImagesOutside)"
	realScen, _ := filepath.EvalSymlinks(scen)
	realDir, _ := filepath.EvalSymlinks(dir)
	for _, tc := range []struct {
		name, text string
		anywhere   bool
		line       int // 0: passes
		want       []string
	}{
		{"too large", "disk a 1MiB\ndisk cow 1MiB image=big.img\n", false, 2,
			[]string{"disk cow: image " + filepath.Join(scen, "big.img") + " is 2097152 bytes, larger than the disk (1048576 bytes)"}},
		{"missing", "disk cow 1MiB image=nothere.img\n", false, 1,
			[]string{"disk cow: image " + filepath.Join(scen, "nothere.img") + ": no such file or directory"}},
		{"directory", "disk cow 1MiB image=sub\n", false, 1,
			[]string{"disk cow: image " + filepath.Join(scen, "sub") + " is a directory, not a raw image file"}},
		{"FIFO", "disk cow 1MiB image=fifo\n", false, 1,
			[]string{"image " + filepath.Join(scen, "fifo") + " is a FIFO (named pipe), not a raw image file"}},
		{"socket", "disk cow 1MiB image=sock\n", false, 1, []string{"is a socket, not a raw image file"}},
		{"character device", "disk cow 1MiB image=/dev/urandom\n", true, 1,
			[]string{"image /dev/urandom is a character device, not a raw image file"}},
		{"link to a character device", "disk cow 1MiB image=null\n", false, 1,
			[]string{"image " + filepath.Join(scen, "null") + " is a character device"}},
		{"procfs", "disk cow 1MiB image=/proc/version\n", true, 1,
			[]string{"image /proc/version is a file of procfs (/proc), a synthetic file system, not a raw image file"}},
		{"procfs, not allowed", "disk cow 1MiB image=/proc/version\n", false, 1,
			[]string{"image /proc/version is outside the scenario's directory " + realScen, outsideFlag}},
		{"sysfs", "disk cow 1MiB image=/sys/kernel/uevent_seqnum\n", true, 1,
			[]string{"is a file of sysfs (/sys), a synthetic file system"}},
		{"/etc/shadow", "disk cow 1MiB image=/etc/shadow\n", false, 1,
			[]string{"image /etc/shadow is outside the scenario's directory", outsideFlag}},
		{"a link to /etc/shadow", "disk cow 1MiB image=shadow\n", false, 1,
			[]string{"image " + filepath.Join(scen, "shadow") + " (it is /etc/shadow) is outside the scenario's directory", outsideFlag}},
		{"../", "disk cow 1MiB image=../outside.img\n", false, 1,
			[]string{"image " + filepath.Join(dir, "outside.img") + " is outside the scenario's directory " + realScen, outsideFlag}},
		{"a link to ../", "disk cow 1MiB image=out\n", false, 1,
			[]string{"(it is " + filepath.Join(realDir, "outside.img") + ") is outside", outsideFlag}},
		{"absolute elsewhere", "disk cow 1MiB image=" + filepath.Join(dir, "outside.img") + "\n", false, 1, []string{outsideFlag}},
		{"../ allowed", "disk cow 1MiB image=../outside.img\nread cow 0 4KiB expect=O\n", true, 0, nil},
		{"a link inside", "disk cow 1MiB image=in\n", false, 0, nil},
		{"absolute inside", "disk cow 1MiB image=" + filepath.Join(scen, "ok.img") + "\n", false, 0, nil},
		{"same size is fine, then a bad read", "disk cow 1MiB image=ok.img\nread cow 0 4KiB expect=A\n", false, 2,
			[]string{"want pattern A"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if strings.Contains(tc.text, "/sys/") {
				if _, err := os.Stat("/sys/kernel/uevent_seqnum"); err != nil {
					t.Skip("no /sys/kernel/uevent_seqnum")
				}
			}
			var rep *Report
			runWithin(t, 10*time.Second, func() { rep = Run(parse(t, scen, tc.text), Options{AllowImagesOutside: tc.anywhere}) })
			if tc.line == 0 {
				if !rep.Pass() {
					t.Fatal(rep.Failures)
				}
				return
			}
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

// A FIFO swapped in between the checks of the path and its open is
// refused too, without blocking: the open does not wait for a writer.
func TestImageFIFOSwappedIn(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "i.img")
	writeImage(t, path, 1<<20, nil)
	imageOpenHook = func(p string) {
		if err := os.Remove(p); err != nil {
			t.Error(err)
		}
		if err := syscall.Mkfifo(p, 0o644); err != nil {
			t.Error(err)
		}
	}
	defer func() { imageOpenHook = nil }()
	var rep *Report
	runWithin(t, 10*time.Second, func() { rep = Run(parse(t, dir, "disk d 1MiB image=i.img\n"), Options{}) })
	if rep.Pass() || !strings.Contains(rep.Failures[0].Msg, "image "+path+" is a FIFO (named pipe), not a raw image file") {
		t.Fatalf("%+v", rep.Failures)
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

// replayOf reads a recording's bytes and replays them.
func replayOf(t *testing.T, b []byte, opts Options) (*Report, string, error) {
	t.Helper()
	rec, err := record.Read(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return Replay(rec, opts)
}

// Replay reads the recorded file again, from any working directory:
// identical when unchanged, an error naming the file when it changed or is
// gone; a recorded failure to read an image replays as the same failure.
func TestImageReplay(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "o.img")
	writeImage(t, img, 1<<20, map[int64]string{8192: "P"})
	text := "disk o 1MiB image=o.img\nread o 8KiB 4KiB expect=P\n"
	if err := os.WriteFile(filepath.Join(dir, "t.scn"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	sc := parse(t, dir, text)
	var buf bytes.Buffer
	if rep := Run(sc, Options{Record: &buf}); !rep.Pass() {
		t.Fatal(rep.Failures)
	}
	if rep, diff, err := replayOf(t, buf.Bytes(), Options{}); err != nil || diff != "" || !rep.Pass() {
		t.Fatalf("unchanged image: %v %s %v", err, diff, rep.Failures)
	}
	t.Chdir(t.TempDir())
	if rep, diff, err := replayOf(t, buf.Bytes(), Options{}); err != nil || diff != "" || !rep.Pass() {
		t.Fatalf("from another working directory: %v %s %v", err, diff, rep)
	}
	writeImage(t, img, 1<<20, map[int64]string{8192: "Q"})
	_, _, err := replayOf(t, buf.Bytes(), Options{})
	if err == nil || !strings.Contains(err.Error(), "recording line 2: disk o: image "+img+" changed since the recording") {
		t.Fatalf("changed image: %v", err)
	}
	os.Remove(img)
	_, _, err = replayOf(t, buf.Bytes(), Options{})
	if err == nil || !strings.Contains(err.Error(), "image "+img+": no such file or directory") {
		t.Fatalf("missing image: %v", err)
	}

	buf.Reset()
	if rep := Run(sc, Options{Record: &buf}); rep.Pass() {
		t.Fatal("a missing image passed")
	}
	rep, diff, err := replayOf(t, buf.Bytes(), Options{})
	if err != nil || diff != "" || rep.Pass() {
		t.Fatalf("recorded failure: %v %q pass=%v", err, diff, rep.Pass())
	}
}

// A replay reads images only inside the directory of the recorded
// scenario, and only while the scenario file is there (a recording is
// data: it must not make a replay read wherever it says); with
// AllowImagesOutside it reads them anyway.
func TestImageReplayConfined(t *testing.T) {
	dir := t.TempDir()
	scen := filepath.Join(dir, "scen")
	if err := os.Mkdir(scen, 0o755); err != nil {
		t.Fatal(err)
	}
	writeImage(t, filepath.Join(dir, "up.img"), 1<<20, map[int64]string{0: "U"})
	writeImage(t, filepath.Join(scen, "in.img"), 1<<20, map[int64]string{0: "I"})
	text := "disk u 1MiB image=../up.img\nread u 0 4KiB expect=U\n"
	if err := os.WriteFile(filepath.Join(scen, "t.scn"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	var up bytes.Buffer
	if rep := Run(parse(t, scen, text), Options{Record: &up, AllowImagesOutside: true}); !rep.Pass() {
		t.Fatal(rep.Failures)
	}
	if !strings.Contains(up.String(), `"stdout":"../up.img"`) {
		t.Fatalf("image path not recorded as written:\n%s", up.String())
	}
	_, _, err := replayOf(t, up.Bytes(), Options{})
	if err == nil || !strings.Contains(err.Error(), "recording line 2: disk u: image "+filepath.Join(dir, "up.img")+" is outside the scenario's directory") ||
		!strings.Contains(err.Error(), "-images-anywhere") {
		t.Fatalf("replay read an image outside the scenario's directory: %v", err)
	}
	if rep, diff, err := replayOf(t, up.Bytes(), Options{AllowImagesOutside: true}); err != nil || diff != "" || !rep.Pass() {
		t.Fatalf("allowed: %v %s", err, diff)
	}

	var in bytes.Buffer
	inText := "disk i 1MiB image=in.img\nread i 0 4KiB expect=I\n"
	if rep := Run(parse(t, scen, inText), Options{Record: &in}); !rep.Pass() {
		t.Fatal(rep.Failures)
	}
	// A recording that claims another directory as its scenario's.
	other := t.TempDir()
	writeImage(t, filepath.Join(other, "in.img"), 1<<20, map[int64]string{0: "I"})
	forged := bytes.Replace(in.Bytes(), []byte(`"dir":"`+scen+`"`), []byte(`"dir":"`+other+`"`), 1)
	_, _, err = replayOf(t, forged, Options{})
	if err == nil || !strings.Contains(err.Error(), "recording line 1: dir "+other+": no scenario file t.scn there") {
		t.Fatalf("forged dir: %v", err)
	}
	// The scenario file gone.
	if err := os.Remove(filepath.Join(scen, "t.scn")); err != nil {
		t.Fatal(err)
	}
	if _, _, err = replayOf(t, in.Bytes(), Options{}); err == nil || !strings.Contains(err.Error(), "no scenario file t.scn there") || !strings.Contains(err.Error(), "-images-anywhere") {
		t.Fatalf("scenario file gone: %v", err)
	}
	if rep, diff, err := replayOf(t, in.Bytes(), Options{AllowImagesOutside: true}); err != nil || diff != "" || !rep.Pass() {
		t.Fatalf("allowed: %v %s", err, diff)
	}
}

// A recording made before recordings named their scenario's directory
// (testdata/legacy: image path relative to the working directory, digest
// of the whole file) replays identically from that working directory.
func TestImageReplayLegacy(t *testing.T) {
	b, err := os.ReadFile("testdata/legacy/legacy.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"stdout":"testdata/legacy/o.img","data":"`+sha(t, "testdata/legacy/o.img")+`"`)) || bytes.Contains(b, []byte(`"dir"`)) {
		t.Fatal("testdata/legacy/legacy.jsonl is not a recording of the old format")
	}
	rep, diff, err := replayOf(t, b, Options{})
	if err != nil || diff != "" || !rep.Pass() {
		t.Fatalf("%v\n%s", err, diff)
	}
}
