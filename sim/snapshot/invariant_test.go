package snapshot_test

import (
	"strings"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/exstore"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/sim/snapshot"
)

// The invariant checker (sim/invariant) is the snapshot targets' probe in
// every session. Each case below runs a small scenario twice: as it is,
// where it must pass, and with a defect planted through a seam
// (export_test.go) before one of its steps, where the step that follows
// must fail with the invariant's message.

// plant is an exception store with a defect: each non-nil hook replaces
// the real store's method.
type plant struct {
	exstore.Store
	prepare func(real exstore.Store) (uint64, error)
	commit  func(real exstore.Store, old, new uint64, valid bool, done func(bool))
	drop    func(real exstore.Store)
}

func (p *plant) Unwrap() exstore.Store { return p.Store }

func (p *plant) Prepare() (uint64, error) {
	if p.prepare != nil {
		return p.prepare(p.Store)
	}
	return p.Store.Prepare()
}

func (p *plant) Commit(old, new uint64, valid bool, done func(bool)) {
	if p.commit != nil {
		p.commit(p.Store, old, new, valid, done)
		return
	}
	p.Store.Commit(old, new, valid, done)
}

func (p *plant) Drop() {
	if p.drop != nil {
		p.drop(p.Store)
		return
	}
	p.Store.Drop()
}

// misload is the session's probe, except that a table loaded from a COW
// gets origin chunk 0 mapped one COW chunk further first (the wrong chunk
// used after a reload).
type misload struct{ snapshot.Probe }

func (m misload) Loaded(s *snapshot.Snapshot) {
	if c, ok := s.Lookup(0); ok {
		snapshot.SetException(s, 0, c+1)
	}
	m.Probe.Loaded(s)
}

func snap(t *testing.T, s *run.Session, name string) *snapshot.Snapshot {
	t.Helper()
	for _, x := range snapshot.AllSnapshots(s.Control()) {
		if x.Name() == name {
			return x
		}
	}
	t.Fatalf("no snapshot %s", name)
	return nil
}

func withStore(t *testing.T, s *run.Session, name string, p *plant) {
	snapshot.SetStore(snap(t, s, name), func(real exstore.Store) exstore.Store { p.Store = real; return p })
}

// base is an origin with one persistent snapshot (chunk 8, E = 256) and a
// snapshot-origin device; chunk 0 has an exception.
const base = `disk origin 1MiB
disk cow 1MiB
dmsetup create snap --table "0 2048 snapshot origin cow P 8"
dmsetup create base --table "0 2048 snapshot-origin origin"
write base 0 4KiB pattern=A
`

func TestInvariantsCatchPlantedDefects(t *testing.T) {
	for _, c := range []struct {
		name  string
		scn   string
		at    string // the step before which the defect is planted
		plant func(t *testing.T, s *run.Session)
		want  string // the failure of the step at or after `at`
	}{{
		name: "cow-alloc: a metadata area",
		scn:  base + "write base 8KiB 4KiB pattern=A\n",
		at:   "write base 8KiB",
		plant: func(t *testing.T, s *run.Session) {
			withStore(t, s, "snap", &plant{prepare: func(real exstore.Store) (uint64, error) { real.Prepare(); return 1, nil }})
		},
		want: "invariant cow-alloc: snapshot snap: COW chunk 1 (sector 8 of cow) allocated for origin chunk 2 (origin sector 16) is metadata area 0",
	}, {
		name: "cow-alloc: the header",
		scn:  base + "write base 8KiB 4KiB pattern=A\n",
		at:   "write base 8KiB",
		plant: func(t *testing.T, s *run.Session) {
			withStore(t, s, "snap", &plant{prepare: func(real exstore.Store) (uint64, error) { real.Prepare(); return 0, nil }})
		},
		want: "invariant cow-alloc: snapshot snap: COW chunk 0 (sector 0 of cow) allocated for origin chunk 2 (origin sector 16) is the header (and 1 more: disk-table)",
	}, {
		name: "cow-alloc: beyond the COW's end",
		scn:  base + "write base 8KiB 4KiB pattern=A\n",
		at:   "write base 8KiB",
		plant: func(t *testing.T, s *run.Session) {
			withStore(t, s, "snap", &plant{prepare: func(real exstore.Store) (uint64, error) { real.Prepare(); return 256, nil }})
		},
		want: "invariant cow-alloc: snapshot snap: COW chunk 256 (sector 2048 of cow) allocated for origin chunk 2 (origin sector 16) is beyond the COW's end (256 chunks of 8 sectors)",
	}, {
		name: "cow-alloc and injectivity: a chunk handed out twice",
		scn:  base + "write base 8KiB 4KiB pattern=A\n",
		at:   "write base 8KiB",
		plant: func(t *testing.T, s *run.Session) {
			withStore(t, s, "snap", &plant{prepare: func(real exstore.Store) (uint64, error) { real.Prepare(); return 2, nil }})
		},
		want: "invariant cow-alloc: snapshot snap: COW chunk 2 (sector 16 of cow) allocated for origin chunk 2 (origin sector 16) is not above COW chunk 2, allocated or loaded before (allocation must increase) (and 2 more: exception-table-injective)",
	}, {
		name: "exception-table-injective: a pending exception retargeted",
		scn:  base + "write base 40KiB 4KiB pattern=A async=w\nwait w\n",
		at:   "wait w",
		plant: func(t *testing.T, s *run.Session) {
			if !snapshot.RetargetPending(snap(t, s, "snap"), 10, 2) {
				t.Fatal("no pending exception for chunk 10")
			}
		},
		want: "invariant exception-table-injective: snapshot snap: origin chunk 0 (origin sector 0) and origin chunk 10 (origin sector 80) both map to COW chunk 2 (sector 16 of cow)",
	}, {
		name: "copy-before-write: an origin write skips copy-on-write",
		scn:  base + "read snap 0 4KiB\n",
		at:   "read snap",
		plant: func(t *testing.T, s *run.Session) {
			snapshot.OriginWriteNoCOW(s.Control(), s.Control().Node("origin"), 24, make([]byte, 4096), func(error) {})
		},
		want: "invariant copy-before-write: a write of origin at sector 24 reaches it before chunk 3 (origin sector 24) is copied into snapshot snap",
	}, {
		name: "commit-after-copy: a commit before its copy",
		scn:  base + "write base 40KiB 4KiB pattern=A async=w\nwait w\n",
		at:   "wait w",
		plant: func(t *testing.T, s *run.Session) {
			if snapshot.CommitBeforeCopy(snap(t, s, "snap")) != 1 {
				t.Fatal("no copy in flight")
			}
		},
		want: "invariant commit-after-copy: snapshot snap: the exception of origin chunk 10 (origin sector 80) to COW chunk 3 (sector 24 of cow) is committed before its copy finished",
	}, {
		name: "disk-table: the store writes another entry than the table holds",
		scn:  base + "write base 8KiB 4KiB pattern=A\n",
		at:   "write base 8KiB",
		plant: func(t *testing.T, s *run.Session) {
			withStore(t, s, "snap", &plant{commit: func(real exstore.Store, old, new uint64, valid bool, done func(bool)) {
				real.Commit(old+100, new, valid, done)
			}})
		},
		want: "invariant disk-table: snapshot snap: entry 1 of area 0 of cow (byte offset 4112) maps origin chunk 102 (origin sector 816) to COW chunk 3 (sector 24 of cow); the in-memory table has no exception",
	}, {
		name: "disk-table: a full area's successor not zeroed",
		scn: `disk origin 1MiB
disk cow 1MiB
dmsetup create snap --table "0 2048 snapshot origin cow P 1"
dmsetup create base --table "0 2048 snapshot-origin origin"
write base 0 16KiB pattern=A
`,
		at: "write base 0 16KiB",
		plant: func(t *testing.T, s *run.Session) {
			cow := s.Control().Node("cow")
			withStore(t, s, "snap", &plant{commit: func(real exstore.Store, old, new uint64, valid bool, done func(bool)) {
				real.Commit(old, new, valid, done)
				if l, _ := exstore.LayoutOf(real); l.LastEntries == l.PerArea {
					junk := []byte{7, 0, 0, 0, 0, 0, 0, 0, 9}
					if _, err := cow.WriteAt(append(junk, make([]byte, 503)...), int64(l.AreaChunk(l.LastArea+1))*block.SectorSize); err != nil {
						t.Error(err)
					}
				}
			}})
		},
		want: "invariant disk-table: snapshot snap: area 0 is full, but area 1 of cow (COW chunk 34, byte offset 17408) was not zeroed: its entry 0 maps origin chunk 7 (origin sector 7) to COW chunk 9 (sector 9 of cow)",
	}, {
		name: "disk-table: invalidated, the header not rewritten",
		scn: `disk origin 1MiB
disk cow 12KiB
dmsetup create snap --table "0 2048 snapshot origin cow P 8"
dmsetup create base --table "0 2048 snapshot-origin origin"
write base 0 4KiB pattern=A
write base 8KiB 4KiB pattern=A
`,
		at: "write base 8KiB",
		plant: func(t *testing.T, s *run.Session) {
			withStore(t, s, "snap", &plant{drop: func(exstore.Store) {}})
		},
		want: "invariant disk-table: snapshot snap is invalid, but the header of cow (chunk 0, sector 0) still says valid=1",
	}, {
		name: "disk-table: a reload maps a chunk to the wrong COW chunk",
		scn:  base + "dmsetup remove snap\ndmsetup create snap --table \"0 2048 snapshot origin cow P 8\"\n",
		at:   "dmsetup create snap --table",
		plant: func(t *testing.T, s *run.Session) {
			snapshot.SetProbe(s.Control(), misload{s.Invariants()})
		},
		want: "invariant disk-table: snapshot snap: entry 0 of area 0 of cow (byte offset 4096) maps origin chunk 0 (origin sector 0) to COW chunk 2 (sector 16 of cow), but the table loaded from it has COW chunk 3 (sector 24 of cow)",
	}, {
		name: "liveness: I/O on a device left internally suspended",
		scn:  base + "write base 40KiB 4KiB pattern=A async=w\nrun\n",
		at:   "write base 40KiB",
		plant: func(t *testing.T, s *run.Session) {
			if err := s.Control().Device("base").InternalSuspend(); err != nil {
				t.Fatal(err)
			}
		},
		want: "invariant liveness: write base (line 6, async w): sector 80 of base never completed: nothing is left to run, no fault rule is active, and neither base nor a device below it is suspended",
	}, {
		name: "liveness: a pending exception nothing will finish",
		scn:  base + "run\n",
		at:   "run",
		plant: func(t *testing.T, s *run.Session) {
			snapshot.StrandPending(snap(t, s, "snap"), 100, 50)
		},
		want: "invariant liveness: snapshot snap: the pending exception of origin chunk 100 (origin sector 800) to COW chunk 50 (sector 400 of cow) never completed (copy finished: false): nothing is left to run and no fault rule is active",
	}} {
		t.Run(c.name, func(t *testing.T) {
			sc, err := script.Parse(c.name+".scn", c.scn)
			if err != nil {
				t.Fatal(err)
			}
			if rep := run.Run(sc, run.Options{}); !rep.Pass() {
				t.Fatalf("without the defect: %v", rep.Failures)
			}
			planted := false
			rep := run.Run(sc, run.Options{BeforeStep: func(st *script.Step, s *run.Session) {
				if strings.HasPrefix(st.Text, c.at) && !planted {
					planted = true
					c.plant(t, s)
				}
			}})
			if !planted {
				t.Fatalf("no step %q", c.at)
			}
			if len(rep.Failures) == 0 {
				t.Fatalf("the defect went unreported")
			}
			if got := rep.Failures[0].Msg; got != c.want {
				t.Errorf("failure:\n got %s\nwant %s", got, c.want)
			}
			if !strings.HasPrefix(rep.Failures[0].Text, c.at) {
				t.Errorf("failed step %q, want the step %q", rep.Failures[0].Text, c.at)
			}
		})
	}
}

// TestCheckerSeesThroughWrappers: the checker's view of a wrapped store
// is the real one (a plant that changes nothing breaks nothing).
func TestCheckerSeesThroughWrappers(t *testing.T) {
	sc, err := script.Parse("wrapped.scn", base+"write base 8KiB 4KiB pattern=A\nwrite snap 40KiB 4KiB pattern=S\nread snap 0 4KiB\n")
	if err != nil {
		t.Fatal(err)
	}
	rep := run.Run(sc, run.Options{BeforeStep: func(st *script.Step, s *run.Session) {
		if strings.HasPrefix(st.Text, "write base 8KiB") {
			withStore(t, s, "snap", &plant{})
		}
	}})
	if !rep.Pass() {
		t.Fatalf("%v", rep.Failures)
	}
}
