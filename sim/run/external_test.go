package run

import (
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/pattern"
	"snaplab/sim/script"
)

// extSession is a session of text's steps, run up to (not including) the
// first `fault` line; the steps are returned for the test to run later.
func extSession(t *testing.T, text string) (*Session, []script.Step) {
	t.Helper()
	sc, err := script.Parse("ext.scn", text)
	if err != nil {
		t.Fatal(err)
	}
	s := NewSession(sc, Options{})
	i := 0
	for ; i < len(sc.Steps) && !strings.HasPrefix(sc.Steps[i].Text, "fault"); i++ {
		if msg := s.Exec(&sc.Steps[i]); msg != "" {
			t.Fatalf("%s: %s", sc.Steps[i].Text, msg)
		}
	}
	return s, sc.Steps[i:]
}

// ext submits an outside request, settles, and returns its error.
func ext(s *Session, dev string, op dm.Op, off int64, data []byte) error {
	var got error
	s.External(dev, op, off, data, false, func(err error) { got = err })
	s.Settle()
	return got
}

// plantByte flips one byte of disk name at off, behind the oracle's back.
func plantByte(t *testing.T, s *Session, name string, off int64) {
	t.Helper()
	for _, d := range s.Control().Disks() {
		if d.Name() != name {
			continue
		}
		var b [1]byte
		if _, err := d.ReadAt(b[:], off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0x5a
		if _, err := d.WriteAt(b[:], off); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("no disk %s", name)
}

func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	return p
}

// An outside write's data is known to the oracle (arbitrary data by each
// sector's hash): a read of it passes, and once a byte is planted in the
// disk behind the simulator's back, the next outside read fails, naming
// the device, the sector and the offset.
func TestExternalWriteIsChecked(t *testing.T) {
	s, _ := extSession(t, "disk d 1MiB\n")
	data := randomBytes(1, 8192)
	if err := ext(s, "d", dm.OpWrite, 4096, data); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8192)
	if err := ext(s, "d", dm.OpRead, 4096, buf); err != nil {
		t.Fatal(err)
	}
	if len(s.report.Failures) != 0 || string(buf) != string(data) {
		t.Fatalf("reading back the data written fails: %v", s.report.Failures)
	}
	plantByte(t, s, "d", 4096+5000)
	if err := ext(s, "d", dm.OpRead, 4096, buf); err != nil {
		t.Fatal(err)
	}
	f := s.report.Failures
	if len(f) != 1 || f[0].Text != "read d 4096 8192 (outside request 3)" ||
		!strings.Contains(f[0].Msg, "oracle: d sector 17 (offset 8704): data is not the data written from outside (model): its content hash is") {
		t.Fatalf("a planted byte: failures %v", f)
	}
	// A read of the sectors the planted byte spares still passes.
	if err := ext(s, "d", dm.OpRead, 4096, buf[:4096]); err != nil || len(s.report.Failures) != 1 {
		t.Fatalf("%v %v", err, s.report.Failures)
	}
	if rep := s.Finish(); rep.Pass() || rep.Checks == 0 {
		t.Fatalf("pass %v, %d checks", rep.Pass(), rep.Checks)
	}
}

// An outside write of a scenario pattern at its offset is known as that
// pattern: a planted byte fails the read, saying which pattern the model
// wanted.
func TestExternalPatternWriteIsChecked(t *testing.T) {
	s, _ := extSession(t, "disk d 1MiB\nwrite d 0 4KiB pattern=A\n")
	data := make([]byte, 8192)
	pattern.Fill(data, "A", 128<<10)
	if err := ext(s, "d", dm.OpWrite, 128<<10, data); err != nil {
		t.Fatal(err)
	}
	plantByte(t, s, "d", 128<<10+100)
	if err := ext(s, "d", dm.OpRead, 128<<10, make([]byte, 8192)); err != nil {
		t.Fatal(err)
	}
	f := s.report.Failures
	if len(f) != 1 || !strings.Contains(f[0].Msg, `oracle: d sector 256 (offset 131072): data is not "A" (model), data differs at offset 131172`) {
		t.Fatalf("failures %v", f)
	}
	s.Finish()
}

// A failed outside write leaves its sectors unknown (they may hold the old
// data or the new): any data read there passes, as it always did; the
// sectors of a write that succeeded are still checked.
func TestExternalFailedWriteIsUnknown(t *testing.T) {
	s, rest := extSession(t, "disk d 1MiB\nfault d write eio\nfault d clear\n")
	if err := ext(s, "d", dm.OpWrite, 0, randomBytes(1, 4096)); err != nil {
		t.Fatal(err)
	}
	if msg := s.Exec(&rest[0]); msg != "" {
		t.Fatal(msg)
	}
	if err := ext(s, "d", dm.OpWrite, 64<<10, randomBytes(2, 4096)); block.Errno(err) != syscall.EIO {
		t.Fatalf("the write under a fault: %v, want EIO", err)
	}
	if msg := s.Exec(&rest[1]); msg != "" {
		t.Fatal(msg)
	}
	plantByte(t, s, "d", 64<<10+10)
	if err := ext(s, "d", dm.OpRead, 64<<10, make([]byte, 4096)); err != nil || len(s.report.Failures) != 0 {
		t.Fatalf("a failed write's sectors are checked: %v %v", err, s.report.Failures)
	}
	plantByte(t, s, "d", 10)
	if err := ext(s, "d", dm.OpRead, 0, make([]byte, 4096)); err != nil || len(s.report.Failures) != 1 ||
		!strings.Contains(s.report.Failures[0].Msg, "oracle: d sector 0 (offset 0)") {
		t.Fatalf("a successful write's sectors are not checked: %v %v", err, s.report.Failures)
	}
	s.Finish()
}
