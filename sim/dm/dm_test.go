package dm

import (
	"strings"
	"testing"

	"snaplab/sim/block"
	"snaplab/sim/world"
)

func newCtl(t *testing.T) *Control {
	c := NewControl(world.New(0))
	m, err := block.NewMem("vda", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddDisk(m, 512); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDmsetupFormats(t *testing.T) {
	c := newCtl(t)
	for _, tc := range []struct {
		cmd            []string
		stdout, stderr string
		exit           int
	}{
		{[]string{"ls"}, "No devices found\n", "", 0},
		{[]string{"create", "lin", "--table", "0 1024 linear vda 0\n1024 1024 linear /dev/vda 1024"}, "", "", 0},
		{[]string{"create", "z", "--notable"}, "", "", 0},
		{[]string{"ls"}, "lin\t(253:0)\nz\t(253:1)\n", "", 0},
		{[]string{"table", "lin"}, "0 1024 linear 254:0 0\n1024 1024 linear 254:0 1024\n", "", 0},
		{[]string{"status"}, "lin: 0 1024 linear \nlin: 1024 1024 linear \nz: \n", "", 0},
		{[]string{"status", "z"}, "\n", "", 0},
		{[]string{"info", "z"}, "Name:              z\nState:             ACTIVE\nTables present:    None\nOpen count:        0\nEvent number:      0\nMajor, minor:      253, 1\nNumber of targets: 0\n\n",
			"/dev/mapper/z: open failed: No such file or directory\n", 0},
		{[]string{"load", "z", "--table", "0 8 error"}, "", "", 0},
		{[]string{"info", "z"}, "Name:              z\nState:             ACTIVE\nRead Ahead:        256\nTables present:    INACTIVE\nOpen count:        0\nEvent number:      0\nMajor, minor:      253, 1\nNumber of targets: 0\n\n", "", 0},
		{[]string{"create", "lin", "--notable"}, "", "device-mapper: create ioctl on lin  failed: Device or resource busy\nCommand failed.\n", 1},
		{[]string{"status", "nope"}, "", "Device does not exist.\nCommand failed.\n", 1},
		{[]string{"table", "nope"}, "", "device-mapper: table ioctl on nope  failed: No such device or address\nCommand failed.\n", 1},
		{[]string{"suspend", "nope"}, "", "device-mapper: suspend ioctl on nope  failed: No such device or address\nCommand failed.\n", 1},
		{[]string{"create", "bad", "--table", "0 8 nosuch"}, "", "device-mapper: reload ioctl on bad (253:2) failed: Invalid argument\nCommand failed.\n", 1},
		{[]string{"create", "gap", "--table", "0 8 zero\n16 8 zero"}, "", "device-mapper: reload ioctl on gap (253:2) failed: Invalid argument\nCommand failed.\n", 1},
		{[]string{"create", "fmt", "--table", "0 zero"}, "", "Invalid format on line 1 of table .\nCommand failed.\n", 1},
		{[]string{"ls"}, "lin\t(253:0)\nz\t(253:1)\n", "", 0},
	} {
		r := c.Dmsetup(tc.cmd)
		if r.Stdout != tc.stdout || r.Stderr != tc.stderr || r.Exit != tc.exit {
			t.Errorf("dmsetup %q:\n stdout %q want %q\n stderr %q want %q\n exit %d want %d", tc.cmd, r.Stdout, tc.stdout, r.Stderr, tc.stderr, r.Exit, tc.exit)
		}
	}
	log := strings.Join(c.Log.Lines(), "\n")
	for _, want := range []string{
		"device-mapper: table: 253:2: nosuch: unknown target type",
		"device-mapper: table: 253:2: zero: Gap in table (-EINVAL)",
		"device-mapper: ioctl: error adding target to table",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("kernel log lacks %q:\n%s", want, log)
		}
	}
}

func TestRemoveOpenAndForce(t *testing.T) {
	c := newCtl(t)
	c.Dmsetup([]string{"create", "a", "--table", "0 2048 linear vda 0"})
	c.Dmsetup([]string{"create", "b", "--table", "0 2048 linear a 0"})
	r := c.Dmsetup([]string{"remove", "a"})
	if r.Exit != 1 || r.Stderr != "device-mapper: remove ioctl on a  failed: Device or resource busy\nCommand failed.\n" {
		t.Fatalf("remove open: %+v", r)
	}
	r = c.Dmsetup([]string{"remove", "--force", "a"})
	if r.Exit != 1 {
		t.Fatalf("remove --force of an open device must still fail: %+v", r)
	}
	if got := c.Dmsetup([]string{"table", "a"}).Stdout; got != "0 2048 error \n" {
		t.Fatalf("after remove --force: table %q", got)
	}
	if r := c.Dmsetup([]string{"remove", "b"}); r.Exit != 0 {
		t.Fatal(r)
	}
	if r := c.Dmsetup([]string{"remove", "a"}); r.Exit != 0 {
		t.Fatal(r)
	}
}

func FuzzParseTable(f *testing.F) {
	f.Add("0 8 zero")
	f.Add("0 131072 snapshot 254:0 254:16 P 8\n# c\n131072 8 linear vda 0")
	f.Add("0 x y")
	f.Fuzz(func(t *testing.T, text string) {
		lines, err := ParseTable(text)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "Invalid format on line ") {
				t.Fatalf("unexpected error text %v", err)
			}
			return
		}
		for _, l := range lines {
			if l.Type == "" || strings.ContainsAny(l.Type, " \t\n") {
				t.Fatalf("bad type %q", l.Type)
			}
		}
	})
}

// FuzzLoad feeds arbitrary table text through the whole load path
// (parsing, every target's ctr): it must never panic and a failure must be
// an *IoctlError or *FormatError.
func FuzzLoad(f *testing.F) {
	f.Add("0 8 linear vda 0")
	f.Add("0 8 linear vda 99999999")
	f.Add("0 8 error\n8 8 zero")
	f.Fuzz(func(t *testing.T, text string) {
		c := newCtl(t)
		c.Dmsetup([]string{"create", "x", "--notable"})
		err := c.Load("x", text)
		if err == nil {
			return
		}
		switch err.(type) {
		case *IoctlError, *FormatError:
		default:
			t.Fatalf("Load(%q): unexpected error type %T: %v", text, err, err)
		}
	})
}
