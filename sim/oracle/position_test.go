package oracle_test

import (
	"math/rand/v2"
	"strings"
	"testing"

	"snaplab/sim/dm"
	"snaplab/sim/pattern"
	"snaplab/sim/run"
	"snaplab/sim/script"
)

// posSession runs text's steps on a session, failing the test on any.
func posSession(t *testing.T, text string) *run.Session {
	t.Helper()
	sc, err := script.Parse("pos.scn", text)
	if err != nil {
		t.Fatal(err)
	}
	s := run.NewSession(sc, run.Options{})
	for i := range sc.Steps {
		if msg := s.Exec(&sc.Steps[i]); msg != "" {
			t.Fatalf("line %d: %s", sc.Steps[i].Line, msg)
		}
	}
	return s
}

// plant writes p into disk name at off behind the oracle's back.
func plant(t *testing.T, s *run.Session, name string, off int64, p []byte) {
	t.Helper()
	for _, d := range s.Control().Disks() {
		if d.Name() == name {
			if _, err := d.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("no disk %s", name)
}

// outside submits an outside request and settles.
func outside(t *testing.T, s *run.Session, dev string, op dm.Op, off int64, data []byte) {
	t.Helper()
	s.External(dev, op, off, data, false, func(error) {})
	s.Settle()
}

func fillAt(name string, off, n int64) []byte {
	p := make([]byte, n)
	pattern.Fill(p, name, off)
	return p
}

// Patterns depend on the offset their writer used. A pattern written
// through one device and read through another (a linear target with an
// offset, a snapshot and its origin on such a linear device) is checked
// as written: the right data passes, and the pattern as the reading
// device's offset would have it (what the oracle once wanted) fails,
// naming the device and the sector.
func TestPatternReadThroughAnotherDevice(t *testing.T) {
	const lin = "disk a 4MiB\ndmsetup create l --table \"0 1024 linear a 128\"\n"
	const snap = "disk a 4MiB\ndisk cow 1MiB\n" +
		"dmsetup create lo --table \"0 1024 linear a 128\"\n" +
		"dmsetup create snap --table \"0 1024 snapshot lo cow P 8\"\n" +
		"dmsetup create base --table \"0 1024 snapshot-origin lo\"\n"
	random := make([]byte, 8192)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	for _, tc := range []struct {
		name, text string
		// outside writes after the scenario: device, offset, data
		writes []struct {
			dev string
			off int64
			p   []byte
		}
		read      string // the device read from outside, 8 KiB at readOff
		readOff   int64
		plantOff  int64  // where on disk a the wrong data goes (2 sectors into the read)
		wrong     []byte // 512 bytes
		wantFails string // in the message of the read of wrong data
	}{
		{name: "written on the disk, read through linear", text: lin + "write a 64KiB 8KiB pattern=A\n",
			read: "l", plantOff: 64<<10 + 1024, wrong: fillAt("A", 1024, 512), wantFails: "oracle: l sector 2 (offset 1024): data is not \"A\" as written at sector 130"},
		{name: "written through linear, read on the disk", text: lin + "write l 0 8KiB pattern=A\n",
			read: "a", readOff: 64 << 10, plantOff: 64<<10 + 1024, wrong: fillAt("A", 64<<10+1024, 512), wantFails: "oracle: a sector 130 (offset 66560): data is not \"A\" as written at sector 2"},
		{name: "written through one linear, read through another", text: lin + "dmsetup create l2 --table \"0 1024 linear a 64\"\nwrite l2 32KiB 8KiB pattern=A\n",
			read: "l", plantOff: 64<<10 + 1024, wrong: fillAt("A", 1024, 512), wantFails: "oracle: l sector 2 (offset 1024): data is not \"A\" as written at sector 66"},
		{name: "outside pattern through linear, read on the disk", text: lin + "write a 0 4KiB pattern=A\n",
			writes: []struct {
				dev string
				off int64
				p   []byte
			}{{"l", 0, fillAt("A", 0, 8192)}},
			read: "a", readOff: 64 << 10, plantOff: 64<<10 + 1024, wrong: fillAt("A", 64<<10+1024, 512), wantFails: "oracle: a sector 130 (offset 66560): data is not \"A\" as written at sector 2"},
		{name: "origin on linear: the origin", text: snap + "write base 0 8KiB pattern=A\nwrite base 0 8KiB pattern=B\nread snap 0 8KiB\n",
			read: "base", plantOff: 64<<10 + 1024, wrong: fillAt("B", 64<<10+1024, 512), wantFails: "oracle: base sector 2 (offset 1024): data is not \"B\""},
		{name: "origin on linear: outside data on the origin", text: snap + "write base 0 8KiB pattern=A\nread snap 0 8KiB\n",
			writes: []struct {
				dev string
				off int64
				p   []byte
			}{{"base", 0, random}},
			read: "base", plantOff: 64<<10 + 1024, wrong: make([]byte, 512), wantFails: "oracle: base sector 2 (offset 1024): data is not the data written from outside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, bad := range []bool{false, true} {
				s := posSession(t, tc.text)
				for _, w := range tc.writes {
					outside(t, s, w.dev, dm.OpWrite, w.off, w.p)
				}
				if bad {
					plant(t, s, "a", tc.plantOff, tc.wrong)
				}
				outside(t, s, tc.read, dm.OpRead, tc.readOff, make([]byte, 8192))
				if strings.HasPrefix(tc.name, "origin on linear") {
					// The snapshot keeps what the origin held first.
					s.External("snap", dm.OpRead, 0, make([]byte, 8192), false, func(error) {})
					s.Settle()
				}
				rep := s.Finish()
				switch {
				case !bad && !rep.Pass():
					t.Fatalf("the right data fails: %v", rep.Failures)
				case bad && (len(rep.Failures) != 1 || !strings.Contains(rep.Failures[0].Msg, tc.wantFails)):
					t.Fatalf("wrong data planted: failures %v, want one saying %q", rep.Failures, tc.wantFails)
				}
			}
		})
	}
}

// A snapshot's own writes from outside (arbitrary data, a scenario
// pattern) are merged into the origin, checked there
// as written, with the origin a disk or a linear device with an offset.
func TestOutsideWritesMerged(t *testing.T) {
	random := make([]byte, 8192)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	for _, tc := range []struct {
		name, origin, text string
		diskOff            int64 // where the origin's sector 0 is on disk a
	}{
		{"origin a disk", "a", "", 0},
		{"origin linear with an offset", "lo", "dmsetup create lo --table \"0 2048 linear a 256\"\n", 128 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, bad := range []int64{-1, 0, 64 << 10} { // no plant, in the random data, in the pattern
				s := posSession(t, "disk a 4MiB\ndisk cow 1MiB\n"+tc.text+"write "+tc.origin+" 0 1MiB pattern=O\nwrite a 3MiB 4KiB pattern=P\n"+
					"dmsetup create snap --table \"0 2048 snapshot "+tc.origin+" cow P 8\"\n")
				outside(t, s, "snap", dm.OpWrite, 0, random)
				outside(t, s, "snap", dm.OpWrite, 64<<10, fillAt("P", 64<<10, 8192)) // the scenario's P at its offset
				sc, err := script.Parse("merge.scn", "dmsetup suspend snap\ndmsetup load snap --table \"0 2048 snapshot-merge "+tc.origin+" cow P 8\"\ndmsetup resume snap\nrun\ndmsetup status snap expect=\"0 2048 snapshot-merge 16/2048 16\"\n")
				if err != nil {
					t.Fatal(err)
				}
				for i := range sc.Steps {
					if msg := s.Exec(&sc.Steps[i]); msg != "" {
						t.Fatalf("%s: %s", sc.Steps[i].Text, msg)
					}
				}
				if bad >= 0 {
					plant(t, s, "a", tc.diskOff+bad+600, []byte{0x55})
				}
				outside(t, s, tc.origin, dm.OpRead, 0, make([]byte, 8192))
				outside(t, s, tc.origin, dm.OpRead, 64<<10, make([]byte, 8192))
				rep := s.Finish()
				switch {
				case bad < 0 && !rep.Pass():
					t.Fatalf("the right data fails: %v", rep.Failures)
				case bad == 0 && (len(rep.Failures) != 1 || !strings.Contains(rep.Failures[0].Msg, "oracle: "+tc.origin+" sector 1 (offset 512): data is not the data written from outside")):
					t.Fatalf("planted in the random data: %v", rep.Failures)
				case bad > 0 && (len(rep.Failures) != 1 || !strings.Contains(rep.Failures[0].Msg, "oracle: "+tc.origin+" sector 129 (offset 66048): data is not \"P\" (model)")):
					t.Fatalf("planted in the pattern: %v", rep.Failures)
				}
			}
		})
	}
}
