package explore

import (
	"bytes"
	"testing"

	"snaplab/sim/gen"
	"snaplab/sim/run"
	"snaplab/sim/script"
)

// FuzzExplore feeds fuzz bytes to the simulator as both of a case's
// sources of choice: the op stream (gen.GenerateBytes draws every
// generator choice from ops) and the choice tape (every seeded choice of
// the run, which interleaving the world takes, from tape). Whatever the
// bytes, the scenario parses, passes every check (the generator's
// expectations, the oracle, the invariants) and runs deterministically:
// twice with the same tape, the same recording.
func FuzzExplore(f *testing.F) {
	f.Add([]byte{}, []byte{})
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, []byte{1, 0, 1, 0, 2})
	f.Add(bytes.Repeat([]byte{0xff, 0x10, 0x80, 0x03}, 64), bytes.Repeat([]byte{7, 3}, 32))
	f.Add(bytes.Repeat([]byte{0x41, 0x9c, 0x02, 0xee, 0x31}, 100), []byte{0xff, 0xff, 0, 5})
	f.Fuzz(func(t *testing.T, ops, tape []byte) {
		sem := "mainline"
		if len(ops) > 0 && ops[0]&1 == 1 {
			sem = "seed"
		}
		cfg := gen.Config{Ops: 30, Semantics: sem, Faults: true, Swarm: true, Interleave: true}
		text := gen.GenerateBytes(ops, cfg)
		sc, err := script.Parse("fuzz.scn", text)
		if err != nil {
			t.Fatalf("generated scenario does not parse: %v\n%s", err, text)
		}
		var a, b bytes.Buffer
		rep := run.Run(sc, run.Options{Tape: NewByteTape(tape), Record: &a})
		if !rep.Pass() {
			t.Fatalf("%v\n%s", rep.Failures[0], text)
		}
		run.Run(sc, run.Options{Tape: NewByteTape(tape), Record: &b})
		if !bytes.Equal(a.Bytes(), b.Bytes()) {
			t.Fatalf("two runs with the same tape differ at %s\n%s", firstDiff(a.Bytes(), b.Bytes()), text)
		}
	})
}

func TestByteTape(t *testing.T) {
	tp := NewByteTape([]byte{5, 1, 2, 9})
	for _, c := range []struct {
		n, pick int
		ok      bool
	}{{3, 2, true}, {300, (1 | 2<<8) % 300, true}, {4, 1, true}, {2, 0, false}} {
		p, ok, err := tp.Next("site", c.n)
		if err != nil || ok != c.ok || (ok && p != c.pick) {
			t.Errorf("Next(%d) = %d, %v, %v; want %d, %v", c.n, p, ok, err, c.pick, c.ok)
		}
	}
}
