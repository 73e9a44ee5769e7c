package crash

import (
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"snaplab/sim/invariant"
	"snaplab/sim/run"
	"snaplab/sim/script"
)

func parse(t testing.TB, path string) *script.Scenario {
	t.Helper()
	sc, err := script.ParseFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

func library(t testing.TB, globs ...string) []string {
	t.Helper()
	var out []string
	for _, g := range globs {
		m, err := filepath.Glob(filepath.Join("../../scenarios/library", g))
		if err != nil || len(m) == 0 {
			t.Fatalf("no library scenario matches %s (%v)", g, err)
		}
		out = append(out, m...)
	}
	return out
}

// TestLibraryKeepsThePromise: every persistent, COW and handover library
// scenario, cut at every boundary and at seeded points (whole writes and
// torn ones), keeps the promise.
func TestLibraryKeepsThePromise(t *testing.T) {
	files := library(t, "persistent-*.scn", "cow-*.scn", "handover-*.scn", "h1-*.scn", "h4-*.scn")
	for _, torn := range []bool{false, true} {
		for _, f := range files {
			sc := parse(t, f)
			t.Run(sc.Name+map[bool]string{false: "", true: "/torn"}[torn], func(t *testing.T) {
				res, err := Check(sc, Options{Seeds: 6, Torn: torn})
				if err != nil {
					t.Fatal(err)
				}
				if res.Bad != nil {
					t.Fatalf("bad state:\n%s", res.Bad)
				}
				if res.Boundaries < 1 || res.Seeded != 6 || res.States != res.Boundaries+res.Seeded {
					t.Fatalf("states: %d boundaries + %d seeded = %d", res.Boundaries, res.Seeded, res.States)
				}
				if res.Sectors == 0 {
					t.Fatalf("no sector was read and checked in %d states", res.States)
				}
				if !res.Run.Pass() {
					t.Fatalf("the scenario itself failed under the crash checker: %v", res.Run.Failures)
				}
				if strings.HasPrefix(sc.Name, "persistent-") && res.Run.Coverage[invariant.ReloadAfterPowerCut] == 0 {
					t.Fatalf("coverage %v: reload-after-power-cut never counted", res.Run.Coverage)
				}
			})
		}
	}
}

// TestPlantedDefectsAreReported: each planted defect is reported as a bad
// state naming the check, the device and the sector.
func TestPlantedDefectsAreReported(t *testing.T) {
	flip := func(disk string, byteOff int64) func(int, []*image) {
		return func(_ int, images []*image) {
			for _, m := range images {
				if m.Name() != disk {
					continue
				}
				b := make([]byte, 1)
				if _, err := m.ReadAt(b, byteOff); err != nil {
					panic(err)
				}
				b[0] ^= 0x5a
				if _, err := m.WriteAtFUA(b, byteOff); err != nil {
					panic(err)
				}
			}
		}
	}
	cases := []struct {
		name, scn string
		opts      Options
		check     string
		device    string
	}{
		// The COW ignores flushes: no commit is durable, and a seeded cut
		// that keeps an origin write loses its exception.
		{"cow ignores flushes", "persistent-reload-keeps-exceptions.scn",
			Options{Seeds: 30, dropFlush: map[string]bool{"cow": true}}, "pre-image", "snap"},
		// A byte of the origin at sector 0 changes in every crash image:
		// data never written there, read through the origin device.
		{"flipped origin byte", "persistent-reload-keeps-exceptions.scn",
			Options{tamper: flip("origin", 100)}, "written", "base"},
		// A byte of the COW's first data chunk (chunk 2: the pre-image or
		// the snapshot's own write) changes.
		{"flipped COW data byte", "persistent-reload-keeps-exceptions.scn",
			Options{tamper: flip("cow", 2*4096+100)}, "pre-image", "snap"},
		// The low byte of the first exception's COW chunk changes: a
		// table no commit wrote.
		{"flipped exception entry", "persistent-reload-keeps-exceptions.scn",
			Options{tamper: flip("cow", 4096+8)}, "prefix", "cow"},
	}
	for _, tc := range cases {
		for _, full := range []bool{false, true} { // reading what the state touched, or everything
			t.Run(fmt.Sprintf("%s/full=%v", tc.name, full), func(t *testing.T) {
				opts := tc.opts
				opts.fullRead = full
				res, err := Check(parse(t, "../../scenarios/library/"+tc.scn), opts)
				if err != nil {
					t.Fatal(err)
				}
				if res.Bad == nil {
					t.Fatalf("no bad state in %d states", res.States)
				}
				if res.Bad.Check != tc.check || res.Bad.Device != tc.device {
					t.Fatalf("reported check %s on %s, want %s on %s:\n%s", res.Bad.Check, res.Bad.Device, tc.check, tc.device, res.Bad)
				}
				if res.Bad.Expect == "" || res.Bad.Got == "" || res.Bad.Cut.Kept == "" {
					t.Fatalf("incomplete report: %+v", res.Bad)
				}
			})
		}
	}
}

// TestDeterministic: the same scenario and options give the same result.
func TestDeterministic(t *testing.T) {
	sc := parse(t, "../../scenarios/library/handover-pending-copies.scn")
	a, err := Check(sc, Options{Seeds: 10, Torn: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Check(sc, Options{Seeds: 10, Torn: true})
	if err != nil {
		t.Fatal(err)
	}
	a.Run, b.Run = nil, nil
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("two runs differ:\n%+v\n%+v", a, b)
	}
}

// TestDumpRunsOnTheSimulator: a dumped state is a scenario that loads the
// crash images and passes on the simulator, with the status and reads it
// recorded.
func TestDumpRunsOnTheSimulator(t *testing.T) {
	dir := t.TempDir()
	sc := parse(t, "../../scenarios/library/handover-pending-copies.scn")
	all, err := Check(sc, Options{Seeds: 4})
	if err != nil {
		t.Fatal(err)
	}
	n := all.States
	res, err := Check(sc, Options{Seeds: 4, DumpDir: dir, DumpCuts: []int{n - 5, n - 3, n - 1}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Dumped) != 3 {
		t.Fatalf("dumped %v, want 3 scenarios", res.Dumped)
	}
	for i, path := range res.Dumped {
		d := parse(t, path)
		text := d.Text
		want := []string{"disk cow 16777216 image=cow.img", "dmsetup create base --table \"0 131072 snapshot-origin origin\"", "read base 0 "}
		if i == 2 { // the end: the handover is done
			want = append(want, "dmsetup create snap2 --table \"0 131072 snapshot origin cow P 8\"", "dmsetup status snap2 expect=\"0 131072 snapshot 64/32768 16\"", "read snap2 0 ")
		}
		for _, w := range want {
			if !strings.Contains(text, w) {
				t.Fatalf("%s lacks %q:\n%s", path, w, text)
			}
		}
		rep := run.Run(d, run.Options{})
		if !rep.Pass() {
			t.Fatalf("%s fails on the simulator: %v\n%s", path, rep.Failures, text)
		}
	}
	// Sparse: only the chunks holding data or exceptions are read, and the
	// scenario still passes. At the end nothing volatile is kept: the
	// origin writes (never flushed) are lost, the committed pre-images O
	// stay, and so does chunk 30's (the snapshot's own write S is lost).
	sparse, err := Check(sc, Options{Seeds: 4, DumpDir: t.TempDir(), DumpCuts: []int{n - 1}, DumpSparse: true})
	if err != nil {
		t.Fatal(err)
	}
	d := parse(t, sparse.Dumped[0])
	full := parse(t, res.Dumped[2])
	if len(d.Steps) >= len(full.Steps) {
		t.Fatalf("sparse dump has %d steps, the full one %d", len(d.Steps), len(full.Steps))
	}
	for _, w := range []string{"read snap2 0 4096 expect=O", "read base 0 4096 expect=zero", "read snap2 122880 4096 expect=O\n"} {
		if !strings.Contains(d.Text, w) {
			t.Fatalf("sparse dump lacks %q:\n%s", w, d.Text)
		}
	}
	if rep := run.Run(d, run.Options{}); !rep.Pass() {
		t.Fatalf("sparse dump fails on the simulator: %v\n%s", rep.Failures, d.Text)
	}
}

func TestNamedTable(t *testing.T) {
	names := map[[2]uint32]string{{254, 0}: "origin", {254, 16}: "cow", {253, 1}: "lv"}
	lookup := func(a, b uint32) (string, bool) { n, ok := names[[2]uint32{a, b}]; return n, ok }
	for _, tc := range []struct{ in, want string }{
		{"0 131072 snapshot 254:0 254:16 P 8", "0 131072 snapshot origin cow P 8"},
		{"0 24 linear 253:1 0", "0 24 linear lv 0"},
		{"0 8 linear 254:32 0", "0 8 linear 254:32 0"}, // unknown: kept
		{"0 8 linear 254:+0 0  x", "0 8 linear 254:+0 0  x"},
		{"0 8 linear :0 0:", "0 8 linear :0 0:"},
		{"", ""},
	} {
		if got := namedTable(tc.in, lookup); got != tc.want {
			t.Errorf("namedTable(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzNamedTable(f *testing.F) {
	f.Add("0 131072 snapshot 254:0 254:16 P 8")
	f.Add("0 24 linear 253:1 0\n24 8 zero")
	f.Add("  254:0:1 99999999999:0 -1:2 ")
	f.Fuzz(func(t *testing.T, line string) {
		got := namedTable(line, func(a, b uint32) (string, bool) {
			if a == 254 {
				return "d" + string(rune('a'+b%26)), true
			}
			return "", false
		})
		if strings.Count(got, " ") != strings.Count(line, " ") {
			t.Fatalf("spacing changed: %q -> %q", line, got)
		}
		if len(strings.Fields(got)) != len(strings.Fields(line)) {
			t.Fatalf("words changed: %q -> %q", line, got)
		}
	})
}

// BenchmarkCheck reports crash states checked per second on a handover
// scenario with seeded torn cuts.
func BenchmarkCheck(b *testing.B) {
	sc := parse(b, "../../scenarios/library/handover-pending-copies.scn")
	states := 0
	cpu := cpuTime()
	for b.Loop() {
		res, err := Check(sc, Options{Seeds: 20, Torn: true})
		if err != nil || res.Bad != nil {
			b.Fatal(err, res.Bad)
		}
		states += res.States
	}
	b.ReportMetric(float64(states)/b.Elapsed().Seconds(), "states/s")
	b.ReportMetric(float64(states)/(cpuTime()-cpu), "states/cpu-s")
}

// cpuTime is the process's user and system CPU time in seconds: on a
// loaded machine the wall clock says little.
func cpuTime() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
