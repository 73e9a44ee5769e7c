package lvmlog_test

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"

	. "snaplab/sim/lvmlog"
	"snaplab/sim/run"
	"snaplab/sim/script"
)

var update = flag.Bool("update", false, "rewrite testdata/*.scn")

// A real session (Debian's lvm2 2.03.16 on Linux 6.1, a loop device as
// the physical volume; mm/memlock.c lines dropped): pvcreate, vgcreate,
// lvcreate, lvcreate -s, lvs, lvextend of the snapshot, lvconvert --merge.
func TestSessionGolden(t *testing.T) {
	f, err := os.Open("testdata/session-6.1-loop.log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ops, err := Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Scenario(ops, "session-6.1-loop")
	if err != nil {
		t.Fatal(err)
	}
	const golden = "testdata/session-6.1-loop.scn"
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Fatalf("the imported scenario differs from %s (go test -run TestSessionGolden -update rewrites it):\n%s", golden, got)
	}
	for _, must := range []string{
		"dmsetup load vg-snap --table \"0 32768 snapshot vg-origin-real vg-snap-cow P 8\"",
		"write vg-snap 0 4096 pattern=zero",
		"dmsetup suspend vg-origin\n",
		"dmsetup load vg-origin --table \"0 32768 snapshot-merge vg-origin-real vg-snap-cow P 8\"",
		"dmsetup status vg-snap",
		"# lvm lvconvert --merge vg/snap",
	} {
		if !strings.Contains(got, must) {
			t.Errorf("imported scenario lacks %q", must)
		}
	}
	// It is a scenario the simulator runs through.
	sc, err := script.Parse("session", got)
	if err != nil {
		t.Fatal(err)
	}
	if rep := run.Run(sc, run.Options{}); !rep.Pass() {
		t.Fatalf("the imported session fails on the simulator: %v", rep.Failures)
	}
}

func TestParseEdges(t *testing.T) {
	log := `12:00:00.000001 lvcreate[1] lvmcmdline.c:3218Processing command: lvcreate -s -n s vg/o
12:00:00.000002 lvcreate[1] device_mapper/ioctl/libdm-iface.c:2081dm create vg-s LVM-abc [ noopencount flush ]   [16384] (*1)
12:00:00.000003 lvcreate[1] device_mapper/libdm-deptree.c:3095Loading table for vg-s (253:3).
12:00:00.000004 lvcreate[1] device_mapper/libdm-deptree.c:3037Adding target to (253:3): 0 16 snapshot 253:1 253:2 P 8
12:00:00.000005 lvcreate[1] device_mapper/ioctl/libdm-iface.c:2081dm reload   (253:3) [ noopencount flush ]   [2048] (*1)
12:00:00.000006 lvcreate[1] device_mapper/ioctl/libdm-iface.c:1990device-mapper: reload ioctl on  (253:3) failed: Invalid argument
12:00:00.000007 lvcreate[1] device_mapper/ioctl/libdm-iface.c:2081dm suspend   (253:3) [ noopencount noflush skiplockfs ]   [2048] (*1)
12:00:00.000008 lvcreate[1] device_mapper/ioctl/libdm-iface.c:2081dm status  LVM-abc [ opencount noflush ]   [16384] (*1)
12:00:00.000009 lvcreate[1] device_mapper/ioctl/libdm-iface.c:2081dm status  LVM-unknown [ opencount noflush ]   [16384] (*1)
12:00:00.000010 lvcreate[1] device_mapper/ioctl/libdm-iface.c:2081dm info   (253:3) [ opencount flush ]   [2048] (*1)
12:00:00.000011 lvcreate[1] metadata/lv_manip.c:7848Initializing 1.50 MiB of logical volume my-vg/my-lv with value 0.
`
	ops, err := Parse(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range ops {
		got = append(got, o.String())
	}
	want := "create vg-s: ok|load vg-s: Invalid argument|suspend vg-s: ok|status vg-s: ok|zero my--vg-my--lv: ok"
	if strings.Join(got, "|") != want {
		t.Fatalf("ops %q\nwant %q", strings.Join(got, "|"), want)
	}
	if ops[2].Flags == nil || strings.Join(ops[2].Flags, ",") != "noflush,nolockfs" || ops[4].Bytes != 1536<<10 || ops[0].Command != "lvcreate -s -n s vg/o" {
		t.Errorf("ops %+v", ops)
	}
	lines, err := Lines(ops, func(d string) string { return "disk" + d })
	if err != nil {
		t.Fatal(err)
	}
	if lines[1] != `dmsetup load vg-s --table "0 16 snapshot disk253:1 disk253:2 P 8" exit=1` || lines[2] != "dmsetup suspend --noflush --nolockfs vg-s" {
		t.Errorf("lines %q", lines)
	}
	for _, tc := range []struct{ log, err string }{
		{"x.c:1dm reload   (253:9) [ flush ]\n", "never named"},
		{"x.c:1Loading table for a (253:9).\nx.c:2dm reload   (253:9) [ flush ]\n", "no \"Adding target\""},
		{"x.c:1Initializing 1.2.3 KiB of logical volume a/b with value 0.\n", "line 1"},
	} {
		if _, err := Parse(strings.NewReader(tc.log)); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%q: err %v, want %q", tc.log, err, tc.err)
		}
	}
	if got := LineOp("dmsetup suspend --nolockfs vg-s"); got != "suspend vg-s" {
		t.Errorf("LineOp = %q", got)
	}
	if got := Outcome(1, "device-mapper: reload ioctl on vg-s  (253:3) failed: Invalid argument\nCommand failed.\n"); got != "Invalid argument" {
		t.Errorf("Outcome = %q", got)
	}
}

func TestExpand(t *testing.T) {
	text := "disk pv 64MiB\nlvm lvcreate -s -L 8M -n snap vg/origin\nread vg-snap 0 4KiB\nlvm lvs\n"
	ops := map[int][]string{
		2: {"dmsetup create vg-snap --notable", `dmsetup load vg-snap --table "0 16384 linear 254:0 34816"`, "dmsetup resume vg-snap"},
		4: {"dmsetup status vg-snap", "dmsetup status vg-snap", "dmsetup status vg-origin", "dmsetup status vg-snap"},
	}
	got, err := Expand(text, map[int]bool{2: true, 4: true}, []string{"pv"}, ops)
	if err != nil {
		t.Fatal(err)
	}
	want := `disk pv 64MiB
# lvm lvcreate -s -L 8M -n snap vg/origin
dmsetup create vg-snap --notable
dmsetup load vg-snap --table "0 16384 linear pv 34816"
dmsetup resume vg-snap
read vg-snap 0 4KiB
# lvm lvs
run
dmsetup status vg-snap
run
dmsetup status vg-origin
run
dmsetup status vg-snap
`
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if _, err := Expand(text, map[int]bool{2: true, 4: true}, []string{"pv"}, map[int][]string{2: nil}); err == nil || !strings.Contains(err.Error(), "line 4") {
		t.Errorf("missing ops: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	b, _ := os.ReadFile("testdata/session-6.1-loop.log")
	f.Add(string(b[:min(len(b), 20000)]))
	f.Add("x.c:1dm create a U [ x ]\nx.c:2Loading table for a (253:0).\nx.c:3Adding target to (253:0): 0 8 linear 7:0 0\nx.c:4dm reload (253:0) [ x ]\n")
	f.Fuzz(func(t *testing.T, log string) {
		ops, err := Parse(bytes.NewReader([]byte(log)))
		if err != nil {
			return
		}
		if _, err := Scenario(ops, "fuzz"); err != nil {
			return
		}
	})
}

func TestSplitDMName(t *testing.T) {
	for _, tc := range []struct {
		name, vg string
		ok       bool
	}{{"vg-origin", "vg", true}, {"my--vg-my--lv", "my-vg", true}, {"vg-snap-cow", "vg", true}, {"plain", "", false}, {"-x", "", false}} {
		vg, ok := SplitDMName(tc.name)
		if vg != tc.vg || ok != tc.ok {
			t.Errorf("SplitDMName(%q) = %q %v", tc.name, vg, ok)
		}
		if ok && !strings.HasPrefix(tc.name, strings.ReplaceAll(vg, "-", "--")+"-") {
			t.Errorf("%q: %q", tc.name, vg)
		}
	}
}
