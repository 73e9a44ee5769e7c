package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"snaplab/scenarios/cmdtest"
	"snaplab/sim/script"
	"snaplab/vmtest/guest"
	"snaplab/vmtest/guestexec"
)

// The vm-library group runs the library's scenarios that do guest I/O on
// the vm executor through the snaplab command, as a user runs them
// (snaplab run -executor vm -guests N -record off), once with one guest
// and once with two, and reports each run's wall time, boots included,
// and the speed-up of two guests over one:
//
//   - vm_library_1_guest, vm_library_2_guests: seconds for the whole run.
//     Targets: 3 minutes with one guest; two guests within two thirds
//     of that.
//   - vm_library_speedup_2_guests: the one-guest time over the two-guest
//     time. On two cores each guest has one; the target, 1.5, leaves a
//     quarter of the ideal 2 to the shared host work (the simulator, the
//     NBD server, QEMU's I/O threads).
func init() {
	register("vm-library", benchVMLibrary)
}

func benchVMLibrary(emit func(Result)) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	repo, err := guest.FindRepo()
	if err != nil {
		return err
	}
	files, err := vmLibraryFiles(repo)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "snaplab-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := cmdtest.Build(dir)
	if err != nil {
		return err
	}
	var env []string
	if a := os.Getenv("SNAPLAB_ACCEL"); a != "" {
		env = append(env, "SNAPLAB_ACCEL="+a)
	}
	secs := map[int]float64{}
	for _, n := range []int{1, 2} {
		args := append([]string{"run", "-executor", "vm", "-guests", fmt.Sprint(n), "-record", "off", "-q"}, files...)
		start := time.Now()
		r, err := cmdtest.Run(ctx, bin, dir, env, args...)
		if err != nil {
			return err
		}
		secs[n] = time.Since(start).Seconds()
		if want := fmt.Sprintf("%d passed, 0 failed", len(files)); r.Code != 0 || !strings.Contains(r.Stdout, want) {
			return fmt.Errorf("snaplab run -guests %d: exit %d, want %q:\n%s\n%s", n, r.Code, want, r.Stdout, r.Stderr)
		}
	}
	emit(Result{Name: "vm_library_1_guest", Value: secs[1], Unit: "s", Op: "<=", Target: 180})
	emit(Result{Name: "vm_library_2_guests", Value: secs[2], Unit: "s", Op: "<=", Target: 120})
	emit(Result{Name: "vm_library_speedup_2_guests", Value: secs[1] / secs[2], Unit: "x", Op: ">=", Target: 1.5})
	return nil
}

// vmLibraryFiles are the library's scenarios with guest I/O that the vm
// executor runs, sorted.
func vmLibraryFiles(repo string) ([]string, error) {
	all, err := filepath.Glob(filepath.Join(repo, "scenarios", "library", "*.scn"))
	if err != nil {
		return nil, err
	}
	sort.Strings(all)
	var out []string
	for _, f := range all {
		sc, err := script.ParseFile(f)
		if err != nil {
			return nil, err
		}
		if guestexec.Exercises(guestexec.GuestIO, sc) {
			out = append(out, f)
		}
	}
	return out, nil
}
