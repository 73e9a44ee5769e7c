package gen

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"snaplab/sim/invariant"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/sim/snapshot"
)

// kernelConfigs are the configurations whose cases run on the real kernel
// too (no Interleave) with fault windows.
var kernelConfigs = []Config{
	{Ops: 60, Semantics: "mainline", Faults: true},
	{Ops: 60, Semantics: "mainline", Faults: true, Swarm: true},
	{Ops: 60, Semantics: "seed", Faults: true},
}

// tableChunk returns the COW and chunk size of a snapshot table in a
// dmsetup create or load argv ("", 0 if it holds none).
func tableChunk(argv []string) (cow string, chunk int64) {
	for i, a := range argv {
		if a != "--table" || i+1 >= len(argv) {
			continue
		}
		f := strings.Fields(argv[i+1])
		if len(f) >= 7 && f[2] == "snapshot" {
			c, _ := strconv.ParseInt(f[6], 10, 64)
			return f[4], c
		}
	}
	return "", 0
}

// windowIO is an I/O step inside a fault window of a generated scenario:
// the device's chunk size (the scenario's smallest for the origin device)
// and the rule's disk.
type windowIO struct {
	st    *script.Step
	unit  int64 // sectors
	fault string
}

// windowIOs lists the I/O steps inside fault windows of sc.
func windowIOs(t *testing.T, sc *script.Scenario) []windowIO {
	t.Helper()
	cowChunk := map[string]int64{} // COW device -> its chunk size
	devChunk := map[string]int64{} // snapshot device -> chunk size
	minChunk := int64(0)
	fault := ""
	var out []windowIO
	for i := range sc.Steps {
		st := &sc.Steps[i]
		switch st.Kind {
		case script.KDmsetup:
			if cow, c := tableChunk(st.Argv); cow != "" {
				if c == 0 {
					c = cowChunk[cow]
				}
				if c == 0 {
					t.Fatalf("line %d: chunk 0 on %s, which has no chunk size yet", st.Line, cow)
				}
				cowChunk[cow], devChunk[st.Argv[1]] = c, c
				if minChunk == 0 || c < minChunk {
					minChunk = c
				}
			}
		case script.KFault:
			fault = st.Dev
			if strings.HasPrefix(st.Fault, "clear") {
				fault = ""
			}
		case script.KRead, script.KWrite:
			if fault == "" {
				continue
			}
			unit := devChunk[st.Dev]
			if st.Dev == "base" {
				unit = minChunk
			}
			out = append(out, windowIO{st: st, unit: unit, fault: fault})
		}
	}
	return out
}

// TestKernelWindowsOneChunk: in the fault windows of cases without
// Interleave, every read and write is one whole chunk, aligned: of the
// snapshot it goes through, or the scenario's smallest chunk size through
// the origin device. (With Interleave, ranges keep their variety: some
// are not.)
func TestKernelWindowsOneChunk(t *testing.T) {
	for _, cfg := range kernelConfigs {
		t.Run(strings.TrimSpace(cfg.flags()), func(t *testing.T) {
			seen := 0
			for seed := uint64(1); seed <= 200; seed++ {
				text, _ := GenerateConfig(seed, cfg)
				sc, err := script.Parse("g.scn", text)
				if err != nil {
					t.Fatalf("seed %d: %v", seed, err)
				}
				for _, w := range windowIOs(t, sc) {
					seen++
					if u := w.unit * sector; w.st.Len != u || w.st.Off%u != 0 {
						t.Errorf("seed %d line %d: %q in a fault window: want one aligned unit of %d bytes", seed, w.st.Line, w.st.Text, u)
					}
				}
			}
			if seen < 200 {
				t.Errorf("only %d I/O steps in fault windows", seen)
			}
		})
	}
	other := 0
	cfg := Config{Ops: 60, Semantics: "mainline", Faults: true, Interleave: true}
	for seed := uint64(1); seed <= 50; seed++ {
		text, _ := GenerateConfig(seed, cfg)
		sc, err := script.Parse("g.scn", text)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		for _, w := range windowIOs(t, sc) {
			if w.st.Len != w.unit*sector {
				other++
			}
		}
	}
	if other == 0 {
		t.Errorf("%s: every I/O in a fault window is one chunk: the variety is gone", cfg)
	}
}

// allocCounter is the session's invariant checker, counting besides the
// exceptions allocated and the stores found full (not overflowing: those
// rewrite a persistent header) by COW device.
type allocCounter struct {
	*invariant.Checker
	n map[string]int
}

func (a *allocCounter) Allocated(s *snapshot.Snapshot, old, new uint64) {
	a.n[s.COW().Name()]++
	a.Checker.Allocated(s, old, new)
}

func (a *allocCounter) Full(s *snapshot.Snapshot, old uint64, overflowed bool) {
	if !overflowed {
		a.n[s.COW().Name()]++
	}
	a.Checker.Full(s, old, overflowed)
}

// TestKernelWindowsCopyAlone runs kernel cases on the simulator and
// counts, step by step, the exceptions each step allocates (or fails to)
// per COW disk: inside a fault window, at most one on the faulty disk, so
// no two copy-outs or header rewrites there are in flight together and
// could be merged by the kernel's block layer.
func TestKernelWindowsCopyAlone(t *testing.T) {
	for _, cfg := range kernelConfigs {
		t.Run(strings.TrimSpace(cfg.flags()), func(t *testing.T) {
			shared := 0 // window steps on a COW disk holding two slots
			for seed := uint64(1); seed <= 120; seed++ {
				text, _ := GenerateConfig(seed, cfg)
				sc, err := script.Parse(fmt.Sprintf("gen-%d.scn", seed), text)
				if err != nil {
					t.Fatalf("seed %d: %v", seed, err)
				}
				diskOf := map[string]string{} // COW device -> disk
				slots := map[string]int{}     // disk -> slots on it
				for _, st := range sc.Steps {
					if st.Kind == script.KDmsetup && len(st.Argv) > 3 && st.Argv[0] == "create" {
						if f := strings.Fields(st.Argv[3]); len(f) == 5 && f[2] == "linear" {
							diskOf[st.Argv[1]] = f[3]
							slots[f[3]]++
						}
					}
				}
				disk := func(cow string) string {
					if d, ok := diskOf[cow]; ok {
						return d
					}
					return cow
				}
				var counter *allocCounter
				var prev *script.Step
				fault, faultRule := "", ""
				check := func() {
					if prev == nil || fault == "" || (prev.Kind != script.KRead && prev.Kind != script.KWrite) {
						return
					}
					if slots[fault] > 1 {
						shared++
					}
					n := 0
					for cow, k := range counter.n { // order-free: a sum
						// Every copy-out reads the origin: with the origin's
						// reads failing, all of them count.
						if disk(cow) == fault || (fault == "origin" && !strings.HasPrefix(faultRule, "write")) {
							n += k
						}
					}
					if n > 1 {
						t.Errorf("seed %d line %d: %q makes %d exceptions on %s, the faulty disk, at once\n%s", seed, prev.Line, prev.Text, n, fault, text)
					}
				}
				opts := run.Options{BeforeStep: func(st *script.Step, s *run.Session) {
					if counter == nil {
						counter = &allocCounter{Checker: s.Invariants(), n: map[string]int{}}
						snapshot.SetProbe(s.Control(), counter)
					}
					check()
					if prev != nil && prev.Kind == script.KFault {
						fault, faultRule = prev.Dev, prev.Fault
						if strings.HasPrefix(prev.Fault, "clear") {
							fault = ""
						}
					}
					prev = st
					clear(counter.n)
				}}
				if rep := run.Run(sc, opts); !rep.Pass() {
					t.Errorf("seed %d: %v", seed, rep.Failures)
				}
				check()
			}
			if shared == 0 {
				t.Errorf("no window step on a COW disk with two slots: nothing was checked")
			}
		})
	}
}
