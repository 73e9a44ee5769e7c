package qemu

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRestoreKey: every input that shapes the guest changes the key of its
// saved state; what only shapes the harness does not.
func TestRestoreKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kernel := write("vmlinux", "kernel 1", 0o644)
	initramfs := write("initramfs.cpio", "initramfs 1", 0o644)
	fakeQEMU := func(version string) string {
		return write("qemu", "#!/bin/sh\necho 'QEMU emulator version "+version+"'\n", 0o755)
	}
	bin := fakeQEMU("7.2.22")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tcg := accelChoice{accel: AccelTCG}
	key := func(choice accelChoice, opts ...Option) string {
		t.Helper()
		o := defaultOptions()
		o.QEMU, o.Kernel, o.Initramfs, o.AccelCache = bin, kernel, initramfs, dir
		for _, f := range opts {
			if err := f(o); err != nil {
				t.Fatal(err)
			}
		}
		p, err := planRestore(ctx, o, choice)
		if err != nil {
			t.Fatal(err)
		}
		if p.state != filepath.Join(dir, "restore", p.facts.Key+".state") {
			t.Errorf("state file %s, want CACHE/restore/KEY.state", p.state)
		}
		return p.facts.Key
	}
	base := key(tcg)
	if len(base) != 16 {
		t.Fatalf("key %q", base)
	}
	same := map[string][]Option{
		"the same options":    nil,
		"harness options":     {WithVMTimeout(time.Hour), WithBootStall(time.Second), WithSlowdown(3), WithConsoleLog(filepath.Join(dir, "c.log")), WithProbeTimeout(time.Second)},
		"restore asked again": {WithRestore(true)},
	}
	for name, opts := range same {
		if k := key(tcg, opts...); k != base {
			t.Errorf("%s: key %s, want %s", name, k, base)
		}
	}
	changed := map[string][]Option{
		"machine":        {WithMachine("microvm")},
		"memory":         {WithMemory(320)},
		"hot-plug slots": {WithHotplugSlots(8)},
		"kernel args":    {WithAppend("quiet")},
		"QEMU args":      {WithQEMUArgs("-rtc", "base=2001-01-01")},
	}
	seen := map[string]string{base: "base"}
	check := func(name, k string) {
		t.Helper()
		if prev, dup := seen[k]; dup {
			t.Errorf("%s: key %s, the same as %s", name, k, prev)
		}
		seen[k] = name
	}
	for name, opts := range changed {
		check(name, key(tcg, opts...))
	}
	check("accelerator", key(accelChoice{accel: AccelKVM}, WithKVMDevice("/dev/null")))

	// Files: new contents, or the same file rewritten (its mtime).
	later := time.Now().Add(time.Hour)
	write("vmlinux", "kernel 2", 0o644)
	check("kernel contents", key(tcg))
	os.Chtimes(kernel, later, later)
	check("kernel rewritten", key(tcg))
	write("initramfs.cpio", "initramfs 2", 0o644)
	check("initramfs", key(tcg))
	bin = fakeQEMU("7.2.23")
	check("QEMU binary and version", key(tcg))

	if k := key(tcg); k != key(tcg) {
		t.Errorf("key not stable: %s", k)
	}
}
