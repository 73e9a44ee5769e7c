package timeline

import (
	"bytes"
	"flag"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func load(t *testing.T, name string) *record.Recording {
	t.Helper()
	rec, err := Load(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// record runs scenario text on the simulator and returns its recording.
func recordScenario(t *testing.T, name, text, semantics string) *record.Recording {
	t.Helper()
	sc, err := script.Parse(name, text)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	run.Run(sc, run.Options{Record: &buf, Semantics: semantics})
	rec, err := Parse(name, buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func build(t *testing.T, names []string, recs ...*record.Recording) *Timeline {
	t.Helper()
	tl, err := Build(names, recs)
	if err != nil {
		t.Fatal(err)
	}
	return tl
}

func laneOf(t *testing.T, g *Group, dev string) *Lane {
	t.Helper()
	for _, l := range g.Lanes {
		if l.Device == dev {
			return l
		}
	}
	t.Fatalf("no lane %q in %s", dev, laneNames(g))
	return nil
}

func laneNames(g *Group) string {
	var s []string
	for _, l := range g.Lanes {
		s = append(s, l.Device)
	}
	return strings.Join(s, " ")
}

// states is a lane's sequence of states, each with the scenario line of
// the slot where it starts ("live@9").
func states(tl *Timeline, l *Lane) string {
	var s []string
	for _, sg := range l.Segments {
		x := sg.State
		if sg.Pending {
			x += "+pending"
		}
		x += "@" + strconv.Itoa(tl.Slots[sg.From].Line)
		if sg.Suspended {
			x += "+suspended"
		}
		s = append(s, x)
	}
	return strings.Join(s, " ")
}

func markers(l *Lane) string {
	var s []string
	for _, m := range l.Markers {
		x := m.Verb + "@" + strconv.Itoa(m.Line)
		if m.Failed {
			x += "!"
		}
		s = append(s, x)
	}
	return strings.Join(s, " ")
}

func ticks(l *Lane) string {
	var s []string
	for _, tk := range l.Ticks {
		x := tk.Class + "@" + strconv.Itoa(tk.Line)
		if tk.Waited {
			x += "(waited)"
		}
		s = append(s, x)
	}
	return strings.Join(s, " ")
}

func TestLibraryRecordings(t *testing.T) {
	for _, tc := range []struct {
		file      string
		lanes     string
		states    map[string]string
		markers   map[string]string
		ticks     map[string]string
		handovers string
	}{{
		file:  "h1.jsonl",
		lanes: "origin cow snap1 base snap2",
		states: map[string]string{
			"snap1": "live@9 suspended@21 handed-over@22+suspended handed-over@39 removed@46",
			"snap2": "empty@19 loaded@20 live@22",
			"cow":   "disk@7",
		},
		markers: map[string]string{
			"snap1": "create@9 status@17 suspend@21 status@25 table@28 resume@39 remove@46",
			"snap2": "create@19 load@20 resume@22 status@24 table@29 status@52 ls@53",
		},
		ticks: map[string]string{
			"snap1": "io-ok@13 io-ok@15 io-eio@40 io-eio@41 io-eio@42 io-eio@43",
			"cow":   "cow-commit@13 cow-copy@14 cow-copy@14 cow-commit@14 cow-copy@50 cow-copy@50 cow-commit@50",
		},
		handovers: "snap1→snap2@22",
	}, {
		file:  "seed-call-sequence.jsonl",
		lanes: "origin cow base snap1 snap2",
		states: map[string]string{
			"base":  "live@8 suspended@10 live@11",
			"snap1": "live@9 suspended@20 handed-over@21+suspended handed-over@23 removed@30",
		},
		ticks: map[string]string{
			"snap1": "io-ok@13 io-eio@22(waited) io-eio@25 io-eio@26",
		},
		handovers: "snap1→snap2@21",
	}, {
		file:  "h4-mainline.jsonl",
		lanes: "origin cow snap1 base snap2",
		states: map[string]string{
			"snap1": "live@8 removed@15",
			"snap2": "empty@13 loaded@14 invalid@17 removed@28",
		},
	}, {
		file: "h4-seed.jsonl",
		states: map[string]string{
			"snap1": "live@8 removed@15",
			"snap2": "empty@13 loaded@14",
		},
		handovers: "snap1→snap2@15",
	}} {
		t.Run(tc.file, func(t *testing.T) {
			tl := build(t, []string{tc.file}, load(t, tc.file))
			g := tl.Groups[0]
			if tc.lanes != "" && laneNames(g) != tc.lanes {
				t.Errorf("lanes %q, want %q", laneNames(g), tc.lanes)
			}
			for _, dev := range sortedKeys(tc.states) {
				if got := states(tl, laneOf(t, g, dev)); got != tc.states[dev] {
					t.Errorf("%s states:\n got %s\nwant %s", dev, got, tc.states[dev])
				}
			}
			for _, dev := range sortedKeys(tc.markers) {
				if got := markers(laneOf(t, g, dev)); got != tc.markers[dev] {
					t.Errorf("%s markers:\n got %s\nwant %s", dev, got, tc.markers[dev])
				}
			}
			for _, dev := range sortedKeys(tc.ticks) {
				if got := ticks(laneOf(t, g, dev)); got != tc.ticks[dev] {
					t.Errorf("%s ticks:\n got %s\nwant %s", dev, got, tc.ticks[dev])
				}
			}
			var hs []string
			for _, h := range g.Handovers {
				hs = append(hs, h.From+"→"+h.To+"@"+strconv.Itoa(h.Line))
			}
			if got := strings.Join(hs, " "); got != tc.handovers {
				t.Errorf("handovers %q, want %q", got, tc.handovers)
			}
			if tl.Divergence != nil || tl.Compared {
				t.Errorf("one recording compared: %+v", tl.Divergence)
			}
		})
	}
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }

// The rules that only a few scenarios reach, each on a scenario of its
// own run here on the simulator.
func TestStateRules(t *testing.T) {
	const pre = "disk origin 64MiB\ndisk cow 8MiB\n" +
		"dmsetup create base --table \"0 131072 snapshot-origin origin\"\n" +
		"dmsetup create snap1 --table \"0 131072 snapshot origin cow P 8\"\n"
	for _, tc := range []struct {
		name, semantics, text string
		dev, states           string
		handovers             string
		markers               string
	}{{
		name: "seed: the source's resume hands over", semantics: "seed",
		text: pre + "dmsetup create snap2 --notable\n" +
			"dmsetup load snap2 --table \"0 131072 snapshot origin cow P 8\"\n" +
			"dmsetup suspend snap1\n" +
			"dmsetup resume snap1\n" +
			"dmsetup resume snap2\n",
		dev: "snap1", states: "live@4 suspended@7 handed-over@8", handovers: "snap1→snap2@8",
	}, {
		name: "mainline: the destination's resume refused while the source runs", semantics: "mainline",
		text: pre + "dmsetup create snap2 --notable\n" +
			"dmsetup load snap2 --table \"0 131072 snapshot origin cow P 8\"\n" +
			"dmsetup resume snap2 exit=1 stderr=\"device-mapper: resume ioctl on snap2  failed: Invalid argument\" stderr=\"Command failed.\"\n" +
			"dmsetup suspend snap1\n" +
			"dmsetup resume snap2\n",
		dev: "snap2", states: "empty@5 loaded@6 suspended@7 live@9", handovers: "snap1→snap2@9",
		markers: "create@5 load@6 resume@7! resume@9",
	}, {
		name: "an invalid snapshot from its status", semantics: "mainline",
		text: "disk origin 64MiB\ndisk cow 12KiB\n" +
			"dmsetup create snap1 --table \"0 131072 snapshot origin cow P 8\"\n" +
			"write snap1 0 4KiB pattern=S\n" +
			"write snap1 4KiB 4KiB pattern=S expect=EIO\n" +
			"dmsetup status snap1 expect=\"0 131072 snapshot Invalid\"\n",
		dev: "snap1", states: "live@3 invalid@6",
	}, {
		name: "a new table on the same COW in the same device", semantics: "mainline",
		text: pre + "dmsetup load snap1 --table \"0 131072 snapshot origin cow P 16\"\n" +
			"dmsetup suspend snap1\n" +
			"dmsetup resume snap1\n",
		dev: "snap1", states: "live@4 live+pending@5 suspended+pending@6 live@7", handovers: "snap1→snap1@7",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			rec := recordScenario(t, "rules.scn", tc.text, tc.semantics)
			if !rec.Footer.Pass {
				t.Fatalf("the scenario fails on the simulator:\n%s", strings.Join(rec.Lines, "\n"))
			}
			tl := build(t, []string{"rules"}, rec)
			g := tl.Groups[0]
			l := laneOf(t, g, tc.dev)
			if got := states(tl, l); got != tc.states {
				t.Errorf("%s states:\n got %s\nwant %s", tc.dev, got, tc.states)
			}
			if tc.markers != "" {
				if got := markers(l); got != tc.markers {
					t.Errorf("%s markers:\n got %s\nwant %s", tc.dev, got, tc.markers)
				}
			}
			var hs []string
			for _, h := range g.Handovers {
				hs = append(hs, h.From+"→"+h.To+"@"+strconv.Itoa(h.Line))
			}
			if got := strings.Join(hs, " "); got != tc.handovers {
				t.Errorf("handovers %q, want %q", got, tc.handovers)
			}
		})
	}
}

func TestDivergence(t *testing.T) {
	tl := build(t, []string{"h4-mainline.jsonl", "h4-seed.jsonl"}, load(t, "h4-mainline.jsonl"), load(t, "h4-seed.jsonl"))
	d := tl.Divergence
	if d == nil {
		t.Fatal("no divergence between mainline and seed runs of H4")
	}
	if d.Line != 15 || d.Field != "kernel log" || tl.Slots[d.Slot].Line != 15 {
		t.Errorf("divergence %+v at slot line %d, want line 15, kernel log", d, tl.Slots[d.Slot].Line)
	}
	if !strings.HasPrefix(d.Label, "first divergence: line 15 dmsetup remove snap1: kernel log") {
		t.Errorf("label %q", d.Label)
	}
	if len(tl.Groups) != 2 || tl.Groups[1].Header.Semantics != "seed" {
		t.Fatalf("groups %+v", tl.Groups)
	}
	// The seed run stopped at its failure: its lanes end there.
	last := 0
	for _, l := range tl.Groups[1].Lanes {
		for _, sg := range l.Segments {
			last = max(last, sg.To)
		}
	}
	if last != d.Slot+1 {
		t.Errorf("the seed run's lanes end at slot %d, want %d", last, d.Slot+1)
	}

	// Identical results: compared, no divergence.
	tl = build(t, []string{"a", "b"}, load(t, "h1.jsonl"), load(t, "h1.jsonl"))
	if !tl.Compared || tl.Divergence != nil {
		t.Errorf("a recording against itself: compared %v, divergence %+v", tl.Compared, tl.Divergence)
	}
}

// Two seeds and the vm executor's recording (NBD arrivals) of library
// scenarios, from fixtures/recordings: they build, and a vm run's guest
// I/O is one tick per step, not one per NBD request.
func TestFixtures(t *testing.T) {
	dir := filepath.Join("..", "..", "fixtures", "recordings")
	a, err := Load(filepath.Join(dir, "sim-h1-handover-basic.jsonl"))
	if err != nil {
		t.Skip("fixtures not present:", err)
	}
	b, err := Load(filepath.Join(dir, "sim-seed7-h1-handover-basic.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	tl := build(t, []string{"seed0", "seed7"}, a, b)
	if !tl.Compared {
		t.Error("not compared")
	}
	vm, err := Load(filepath.Join(dir, "vm-seed-call-sequence.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	tl = build(t, []string{"vm"}, vm)
	g := tl.Groups[0]
	if g.Header.Executor != "vm" {
		t.Fatalf("executor %q", g.Header.Executor)
	}
	// The guest's own reads of a new device (partition probes) and its
	// flush at close are outside I/O, between steps (line 0).
	if got, want := ticks(laneOf(t, g, "snap1")), "io-ok@0 io-ok@0 io-ok@0 io-ok@0 io-ok@13 io-eio@22(waited) io-eio@25 io-eio@26 io-error@0"; got != want {
		t.Errorf("vm snap1 ticks:\n got %s\nwant %s", got, want)
	}
}

func TestBadInput(t *testing.T) {
	good, err := os.ReadFile(filepath.Join("testdata", "h4-mainline.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(good), "\n")
	for _, tc := range []struct{ name, data, want string }{
		{"empty", "", "x.jsonl:1: empty file"},
		{"a scenario", "disk origin 64MiB\n", "x.jsonl:1: not a JSON object"},
		{"truncated", strings.Join(lines[:10], ""), "x.jsonl:10: no footer line (truncated?)"},
		{"cut mid-line", strings.Join(lines[:10], "") + lines[10][:20], "x.jsonl:11: not a JSON object"},
		{"newer format", strings.Replace(string(good), `"format_version":2`, `"format_version":99`, 1), "x.jsonl:1: format_version"},
		{"not first", lines[1] + lines[0], "x.jsonl:1: kind \"op\": the first line must be the header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("x.jsonl", []byte(tc.data))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	if _, err := Load(filepath.Join("testdata", "no-such.jsonl")); err == nil || !strings.Contains(err.Error(), "no-such.jsonl") {
		t.Errorf("missing file: %v", err)
	}
	if _, err := Build(nil, nil); err == nil {
		t.Error("Build of no recordings: no error")
	}
	rec := load(t, "h1.jsonl")
	if _, err := Build([]string{"a", "b", "c"}, []*record.Recording{rec, rec, rec}); err == nil {
		t.Error("Build of three recordings: no error")
	}
}

func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		golden string
		files  []string
		html   bool
	}{
		{"h1.svg", []string{"h1.jsonl"}, false},
		{"seed-call-sequence.html", []string{"seed-call-sequence.jsonl"}, true},
		{"h4-divergence.svg", []string{"h4-mainline.jsonl", "h4-seed.jsonl"}, false},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			var recs []*record.Recording
			for _, f := range tc.files {
				recs = append(recs, load(t, f))
			}
			render := func() []byte {
				tl := build(t, tc.files, recs...)
				var b bytes.Buffer
				var err error
				if tc.html {
					err = tl.HTML(&b)
				} else {
					err = tl.SVG(&b)
				}
				if err != nil {
					t.Fatal(err)
				}
				return b.Bytes()
			}
			got := render()
			if again := render(); !bytes.Equal(got, again) {
				t.Fatal("two renderings of the same input differ")
			}
			path := filepath.Join("testdata", tc.golden)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the rendering (go test ./sim/timeline -update, and review the diff)", path)
			}
			for _, bad := range []string{"http://", "https://", "@import", "src="} {
				s := strings.ReplaceAll(string(got), `xmlns="http://www.w3.org/2000/svg"`, "")
				if strings.Contains(s, bad) {
					t.Errorf("output holds %q: it must fetch nothing", bad)
				}
			}
		})
	}
}

func TestStripComment(t *testing.T) {
	for in, want := range map[string]string{ // order-free: each case alone
		`read a 0 4KiB   # x`:                       `read a 0 4KiB`,
		`dmsetup message s 0 "a # b" # c`:           `dmsetup message s 0 "a # b"`,
		`dmsetup status s expect="0 1 snapshot#x"`:  `dmsetup status s expect="0 1 snapshot#x"`,
		`write a 0 4KiB pattern=A`:                  `write a 0 4KiB pattern=A`,
		`dmsetup create x --table 'a # b'   # real`: `dmsetup create x --table 'a # b'`,
	} {
		if got := stripComment(in); got != want {
			t.Errorf("stripComment(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzParse: no input makes Parse or Build panic, and whatever Parse
// accepts renders.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"h4-mainline.jsonl", "h4-seed.jsonl"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"kind":"header"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := Parse("fuzz.jsonl", b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.jsonl:") {
				t.Fatalf("error without the file name: %v", err)
			}
			return
		}
		tl, err := Build([]string{"a", "b"}, []*record.Recording{rec, rec})
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := tl.HTML(&buf); err != nil {
			t.Fatal(err)
		}
	})
}
