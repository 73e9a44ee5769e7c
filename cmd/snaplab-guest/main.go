// Command snaplab-guest is the /init of snaplab's test guests: a static
// binary (CGO_ENABLED=0) that
//
//  1. mounts proc, sys, devtmpfs (/dev), and tmpfs on /tmp and /run;
//  2. loads the kernel modules listed, in dependency order, in
//     /lib/modules/snaplab.order (one path per line, written by
//     vmtest/guest) with finit_module;
//  3. finds the virtio-serial port named proto.PortName under
//     /sys/class/virtio-ports and serves the agent protocol on it
//     (vmtest/guest/agent);
//  4. powers the guest off when asked to, when the host closes the port,
//     or when anything above fails (after printing why on the console).
//
// Progress and failures go to the console (ttyS0) prefixed "snaplab-guest:".
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"snaplab/vmtest/guest/agent"
	"snaplab/vmtest/guest/proto"
)

// OrderFile lists the modules to load, one path per line.
const OrderFile = "/lib/modules/snaplab.order"

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "snaplab-guest: "+format+"\n", a...)
}

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "snaplab-guest: must run as /init (pid 1) inside a test guest")
		os.Exit(2)
	}
	err := run()
	if err != nil {
		logf("FATAL: %v", err)
	}
	poweroff()
}

func run() error {
	if err := mountAll(); err != nil {
		return err
	}
	mods, err := loadModules(OrderFile)
	if err != nil {
		return err
	}
	port, err := findPort(proto.PortName, 10*time.Second)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(port, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opening agent port %s: %w", port, err)
	}
	defer f.Close()
	cfg := agent.DefaultConfig()
	cfg.Modules = mods
	cfg.Poweroff = func() { logf("poweroff requested") }
	logf("agent on %s, kernel %s, %d modules loaded", port, cfg.Kernel, len(mods))
	if err := agent.Serve(context.Background(), f, cfg); err != nil {
		return fmt.Errorf("agent on %s: %w", port, err)
	}
	logf("host closed the agent port or asked for poweroff")
	return nil
}

func mountAll() error {
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/tmp", "tmpfs"},
		{"tmpfs", "/run", "tmpfs"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", m.dst, err)
		}
		if err := syscall.Mount(m.src, m.dst, m.fstype, 0, ""); err != nil && !errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("mounting %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	return nil
}

// loadModules loads each module listed in order, returning their names.
func loadModules(order string) ([]string, error) {
	f, err := os.Open(order)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		p := strings.TrimSpace(sc.Text())
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		mf, err := os.Open(p)
		if err != nil {
			return names, fmt.Errorf("%s line %d: %w", order, line, err)
		}
		err = unix.FinitModule(int(mf.Fd()), "", 0)
		mf.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return names, fmt.Errorf("loading module %s (%s line %d): %w", p, order, line, err)
		}
		names = append(names, strings.ReplaceAll(strings.TrimSuffix(filepath.Base(p), ".ko"), "-", "_"))
	}
	return names, sc.Err()
}

// findPort waits for the virtio-serial port called name and returns its
// /dev path.
func findPort(name string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		ents, _ := os.ReadDir("/sys/class/virtio-ports")
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join("/sys/class/virtio-ports", e.Name(), "name"))
			if err == nil && strings.TrimSpace(string(b)) == name {
				p := filepath.Join("/dev", e.Name())
				if _, err := os.Stat(p); err == nil {
					return p, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no virtio-serial port named %q after %v (ports: %d)", name, wait, len(ents))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func poweroff() {
	syscall.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		logf("poweroff: %v", err)
	}
	// Returning from pid 1 panics the kernel; with panic=-1 that ends the
	// VM too.
	os.Exit(1)
}
