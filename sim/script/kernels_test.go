package script

import (
	"strings"
	"syscall"
	"testing"
)

func TestKernelQualifiedExpectations(t *testing.T) {
	sc, err := Parse("k", `disk origin 8MiB
dmsetup create s --table "0 16 snapshot nosuch origin P 8" exit=1 stderr="failed: No such device" stderr@6.12="failed: No such file or directory" log="a (-ENODEV)" log@6.12="a (-ENOENT)" log@6.12="b"
read origin 0 4KiB expect=zero async=r1
flush origin expect=EIO log="sector 16" log@6.12="sector 0"
`)
	if err != nil {
		t.Fatal(err)
	}
	dm := sc.Steps[1]
	if len(dm.Kernels) != 1 || dm.Kernels[0].Kernel != "6.12" {
		t.Fatalf("kernels %+v", dm.Kernels)
	}
	if strings.Join(dm.Argv, " ") != "create s --table 0 16 snapshot nosuch origin P 8" {
		t.Errorf("argv %q", dm.Argv)
	}
	k := sc.ForKernel("6.12")
	if k == sc {
		t.Fatal("ForKernel(6.12) returned the scenario itself")
	}
	e := k.Steps[1].Expect
	if *e.Exit != 1 || strings.Join(e.Stderr, "|") != "failed: No such file or directory" || strings.Join(e.Log, "|") != "a (-ENOENT)|b" {
		t.Errorf("6.12 expectations %+v", e)
	}
	if e := sc.Steps[1].Expect; strings.Join(e.Stderr, "|") != "failed: No such device" || strings.Join(e.Log, "|") != "a (-ENODEV)" {
		t.Errorf("plain expectations changed: %+v", e)
	}
	if e := k.Steps[3].Expect; *e.Errno != syscall.EIO || strings.Join(e.Log, "|") != "sector 0" {
		t.Errorf("flush on 6.12: %+v", e)
	}
	if sc.ForKernel("6.1") != sc {
		t.Error("ForKernel(6.1) copied a scenario with no 6.1 expectations")
	}

	for _, tc := range []struct{ line, err string }{
		{`dmsetup ls expect@5.4="x"`, `unknown kernel profile "5.4"`},
		{`dmsetup ls expect@6.12-rt="x"`, `unknown kernel profile "6.12-rt"`},
		{`read d 0 4KiB pattern@6.12=A`, "only expectations are given per kernel"},
		{`dmsetup ls exit@6.12=x`, `exit="x": not a number`},
		{`seed 1 exit@6.12=1`, "seed"},
	} {
		_, err := Parse("bad", "disk d 1MiB\n"+tc.line+"\n")
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: err %v, want %q", tc.line, err, tc.err)
		}
	}
}
