package gen

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"snaplab/sim/run"
	"snaplab/sim/script"
)

func runSim(t *testing.T, name, text string) *run.Report {
	t.Helper()
	sc, err := script.Parse(name, text)
	if err != nil {
		t.Fatalf("%s does not parse: %v\n%s", name, err, text)
	}
	return run.Run(sc, run.Options{})
}

// TestGeneratedScenariosPassOnSim runs seeds 1..200 (40 ops each) on the
// simulator: the generator's model of each exception store (which I/O
// gets EIO, which dmsetup command is refused) must agree with the
// simulator, and every read must satisfy the oracle.
func TestGeneratedScenariosPassOnSim(t *testing.T) {
	failed := 0
	for seed := uint64(1); seed <= 200; seed++ {
		name := fmt.Sprintf("gen-%d.scn", seed)
		text := Generate(seed, 40)
		rep := runSim(t, name, text)
		if !rep.Pass() {
			failed++
			if failed <= 5 {
				t.Errorf("seed %d: %v\n%s", seed, rep.Failures, text)
			}
		}
	}
	if failed > 0 {
		t.Errorf("%d of 200 seeds failed", failed)
	}
}

func TestDeterministic(t *testing.T) {
	for _, seed := range []uint64{0, 1, 7, 1 << 40, ^uint64(0)} {
		a, b := Generate(seed, 60), Generate(seed, 60)
		if a != b {
			t.Fatalf("seed %d: two different texts", seed)
		}
		if c := Generate(seed+1, 60); c == a {
			t.Errorf("seeds %d and %d give the same text", seed, seed+1)
		}
		// ops only appends steps: the shorter run is a prefix of the
		// longer one (after the header line, which names ops).
		short, long := Generate(seed, 20), Generate(seed, 60)
		body := func(s string) string { return s[strings.IndexByte(s, '\n')+1:] }
		if !strings.HasPrefix(body(long), body(short)) {
			t.Errorf("seed %d: ops 20 is not a prefix of ops 60", seed)
		}
	}
}

// TestKindsCovered: over seeds 1..200 (40 ops), every kind of step occurs,
// and the counts agree with the text (expect=EIO and exit=1 lines).
func TestKindsCovered(t *testing.T) {
	total := map[string]int{}
	for seed := uint64(1); seed <= 200; seed++ {
		text, kinds := generate(seed, 40)
		for k, v := range kinds {
			total[k] += v
		}
		if n := strings.Count(text, " expect=EIO\n"); n != kinds[KExpectEIO] {
			t.Errorf("seed %d: %d expect=EIO lines, counted %d", seed, n, kinds[KExpectEIO])
		}
		if n, want := strings.Count(text, " exit=1\n"), kinds[KRefuseDest]+kinds[KRefuseSource]+kinds[KRefuseThird]; n != want {
			t.Errorf("seed %d: %d exit=1 lines, counted %d refusals", seed, n, want)
		}
		if !reflect.DeepEqual(kinds, Kinds(seed, 40)) {
			t.Errorf("seed %d: Kinds differs from generate", seed)
		}
	}
	for _, k := range AllKinds {
		if total[k] == 0 {
			t.Errorf("kind %s never generated", k)
		}
	}
	t.Logf("%v", total)
}

// TestScenarioShape checks the rules the kernel executor relies on: 2 or 3
// disks, an 8..64 MiB origin, 1..3 snapshots created by the setup (the
// scenario with 0 ops), no faults, seed, async I/O, waits or expected
// dmsetup output.
func TestScenarioShape(t *testing.T) {
	for seed := uint64(1); seed <= 200; seed++ {
		sc, err := script.Parse("g.scn", Generate(seed, 40))
		if err != nil {
			t.Fatal(err)
		}
		if sc.Seed != 0 || sc.Semantics != "mainline" {
			t.Errorf("seed %d: scenario seed %d semantics %s", seed, sc.Seed, sc.Semantics)
		}
		disks, origin := 0, int64(0)
		snaps := strings.Count(Generate(seed, 0), " snapshot origin ")
		for _, st := range sc.Steps {
			switch st.Kind {
			case script.KDisk:
				disks++
				if strings.HasPrefix(st.Text, "disk origin ") {
					origin = st.Size
				}
			case script.KFault, script.KWait, script.KRun, script.KLog:
				t.Errorf("seed %d line %d: %s", seed, st.Line, st.Text)
			case script.KDmsetup:
				if st.Expect.Stdout != nil || len(st.Expect.Stderr) > 0 || len(st.Expect.Log) > 0 {
					t.Errorf("seed %d line %d: dmsetup output expected: %s", seed, st.Line, st.Text)
				}
			default:
				if st.Async != "" {
					t.Errorf("seed %d line %d: async I/O", seed, st.Line)
				}
				if st.Len > 0 && (st.Off%512 != 0 || st.Len%512 != 0) {
					t.Errorf("seed %d line %d: not in 512-byte units: %s", seed, st.Line, st.Text)
				}
			}
		}
		if disks < 2 || disks > 3 || origin < 8<<20 || origin > 64<<20 || snaps < 1 || snaps > 3 {
			t.Errorf("seed %d: %d disks, origin %d bytes, %d snapshots at setup", seed, disks, origin, snaps)
		}
	}
}

// FuzzGenerate: any seed and op count give a scenario that parses and
// passes on the simulator.
func FuzzGenerate(f *testing.F) {
	f.Add(uint64(0), uint8(0))
	f.Add(uint64(42), uint8(80))
	f.Add(uint64(1)<<63, uint8(120))
	f.Fuzz(func(t *testing.T, seed uint64, ops uint8) {
		text := Generate(seed, int(ops))
		if rep := runSim(t, "fuzz.scn", text); !rep.Pass() {
			t.Fatalf("seed %d ops %d: %v\n%s", seed, ops, rep.Failures, text)
		}
	})
}
