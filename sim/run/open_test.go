package run

import (
	"bytes"
	"strings"
	"syscall"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/dm"
	"snaplab/sim/pattern"
	"snaplab/sim/record"
	"snaplab/sim/script"
)

// TestOpenSteps: open DEV as ID holds the device open until close ID.
func TestOpenSteps(t *testing.T) {
	sc, err := script.Parse("t.scn", `disk a 1MiB
dmsetup create l --table "0 2048 linear a 0"
open l as h
dmsetup info l
dmsetup remove l exit=1 stderr="device-mapper: remove ioctl on l  failed: Device or resource busy"
dmsetup remove --force l exit=1
dmsetup table l expect="0 2048 error "
read l 0 4KiB expect=EIO
close h
dmsetup remove l
open l as gone expect=ENOENT
open nosuch as x expect=ENOENT
dmsetup create l --notable
open l as t1 expect=ENOENT
dmsetup resume l
open l as t2 expect=ENXIO
`)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	rep := Run(sc, Options{Record: &buf})
	if !rep.Pass() {
		t.Fatalf("%v", rep.Failures)
	}
	if !strings.Contains(buf.String(), `Open count:        1\n`) {
		t.Fatal("dmsetup info does not show the open")
	}
}

func TestOpenStepFailures(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"disk a 1MiB\nopen a as h expect=ENXIO", "open a: got OK, want ENXIO"},
		{"open b as h", "open failed: b open at offset 0 length 0: ENOENT"},
		{"disk a 1MiB\ndmsetup create l --table \"0 2048 linear a 0\"\nopen l as h\ndmsetup remove l", "Device or resource busy"},
	} {
		sc, err := script.Parse("t.scn", tc.text)
		if err != nil {
			t.Fatal(err)
		}
		rep := Run(sc, Options{})
		if rep.Pass() || !strings.Contains(rep.Failures[0].Msg, tc.want) {
			t.Errorf("%q: failures %v, want one containing %q", tc.text, rep.Failures, tc.want)
		}
	}
}

const openSetup = `disk origin 1MiB
disk other 1MiB
dmsetup create base --table "0 2048 linear origin 0"
dmsetup remove base
dmsetup create base --table "0 2048 linear other 0"
`

// session runs the setup's first n steps in a recorded session.
func session(t *testing.T, buf *bytes.Buffer, n int) (*Session, *script.Scenario) {
	t.Helper()
	sc, err := script.Parse("t.scn", openSetup)
	if err != nil {
		t.Fatal(err)
	}
	s := NewSession(sc, Options{Record: buf})
	for i := 0; i < n; i++ {
		if msg := s.Exec(&sc.Steps[i]); msg != "" {
			t.Fatalf("step %d: %s", i, msg)
		}
	}
	return s, sc
}

func external(t *testing.T, s *Session, id OpenID, op dm.Op, off int64, data []byte) error {
	t.Helper()
	var got error
	done := false
	if id == 0 {
		s.External("base", op, off, data, false, func(err error) { got, done = err, true })
	} else {
		s.ExternalVia(id, op, off, data, false, func(err error) { got, done = err, true })
	}
	s.Settle()
	if !done {
		t.Fatal("outside I/O did not complete")
	}
	return got
}

// TestOutsideOpenRecordedAndReplayed: an outside open counts (remove is
// refused with EBUSY), is recorded with the arrivals through it, and a
// replay reproduces the EBUSY because it opens again; without the open
// line, the replay diverges.
func TestOutsideOpenRecordedAndReplayed(t *testing.T) {
	var buf bytes.Buffer
	s, sc := session(t, &buf, 3)
	if _, err := s.Open("nosuch"); block.Errno(err) != syscall.ENXIO {
		t.Fatalf("open of a missing device: %v, want ENXIO", err)
	}
	id, err := s.Open("base")
	if err != nil {
		t.Fatal(err)
	}
	if id != 2 {
		t.Fatalf("open id %d, want 2 (failed opens take an id too)", id)
	}
	data := make([]byte, 4096)
	pattern.Fill(data, "A", 0)
	if err := external(t, s, id, dm.OpWrite, 0, data); err != nil {
		t.Fatal(err)
	}
	if msg := s.Exec(&sc.Steps[3]); !strings.Contains(msg, "Device or resource busy") {
		t.Fatalf("remove of a device open from outside: %q, want EBUSY", msg)
	}
	if n := s.Control().OpenCount(s.Control().Device("base")); n != 1 {
		t.Fatalf("open count %d, want 1", n)
	}
	if err := s.CloseOpen(id); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseOpen(id); err == nil {
		t.Fatal("closing an open twice must be an error")
	}
	s.Finish()
	text := buf.String()
	for _, want := range []string{`{"kind":"open","t":0,"id":1,"dev":"nosuch","errno":"ENXIO"}`, `"kind":"open","t":0,"id":2,"dev":"base","errno":"OK"}`, `"open":2}`, `{"kind":"close","t":`} {
		if !strings.Contains(text, want) {
			t.Fatalf("recording lacks %s:\n%s", want, text)
		}
	}
	rec, err := record.Read(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	rep, diff, err := Replay(rec, Options{})
	if err != nil || diff != "" {
		t.Fatalf("replay: %v\n%s", err, diff)
	}
	if len(rep.Failures) != 1 || !strings.Contains(rep.Failures[0].Msg, "Device or resource busy") {
		t.Fatalf("replay must reproduce the EBUSY: %v", rep.Failures)
	}
	// Without its open (the write arriving by name), the replay's remove
	// succeeds: a divergence.
	var lines []string
	for _, l := range rec.Lines {
		if strings.Contains(l, `"dev":"base","errno":"OK"`) || strings.Contains(l, `"kind":"close"`) {
			continue
		}
		lines = append(lines, strings.Replace(l, `,"open":2}`, `}`, 1))
	}
	rec2, err := record.Read(strings.NewReader(strings.Join(lines, "\n") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, diff, err = Replay(rec2, Options{})
	if err != nil || !strings.Contains(diff, "first difference") {
		t.Fatalf("replay without the open: err %v, diff %q", err, diff)
	}
}

// TestOutsideOpenBoundToDevice: I/O through an uncounted open of a device
// that was removed and re-created under the same name fails with ENXIO and
// never reaches the new device; I/O by name, and a new open, reach it.
func TestOutsideOpenBoundToDevice(t *testing.T) {
	var buf bytes.Buffer
	s, sc := session(t, &buf, 3)
	old, err := s.OpenUncounted("base")
	if err != nil {
		t.Fatal(err)
	}
	for i := 3; i < 5; i++ { // remove base, create base on other
		if msg := s.Exec(&sc.Steps[i]); msg != "" {
			t.Fatalf("%s: %s (an uncounted open must not hold the device)", sc.Steps[i].Text, msg)
		}
	}
	data := make([]byte, 4096)
	pattern.Fill(data, "X", 0)
	err = external(t, s, old, dm.OpWrite, 0, data)
	if block.Errno(err) != syscall.ENXIO || !strings.Contains(err.Error(), "base write at offset 0") {
		t.Fatalf("write through the open of the removed device: %v, want ENXIO naming base and the offset", err)
	}
	got := make([]byte, 4096)
	if err := external(t, s, 0, dm.OpRead, 0, got); err != nil {
		t.Fatal(err)
	}
	if pattern.Verify(got, pattern.Zero, 0) != nil {
		t.Fatal("the stale open's write reached the new device named base")
	}
	nw, err := s.Open("base")
	if err != nil {
		t.Fatal(err)
	}
	if err := external(t, s, nw, dm.OpWrite, 0, data); err != nil {
		t.Fatalf("write through a new open: %v", err)
	}
	if err := s.CloseOpen(old); err != nil {
		t.Fatal(err)
	}
	if err := external(t, s, old, dm.OpRead, 0, got); block.Errno(err) != syscall.EBADF {
		t.Fatalf("I/O through a closed open: %v, want EBADF", err)
	}
	rep := s.Finish()
	if !rep.Pass() {
		t.Fatalf("%v", rep.Failures)
	}
	rec, err := record.Read(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if _, diff, err := Replay(rec, Options{}); err != nil || diff != "" {
		t.Fatalf("replay: %v\n%s", err, diff)
	}
	if !strings.Contains(buf.String(), `"uncounted":true`) {
		t.Fatal("the uncounted open is not recorded as such")
	}
}
