package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"snaplab/vmtest/guest"
	"snaplab/vmtest/guestexec"
	"snaplab/vmtest/libvirt"
	"snaplab/vmtest/libvirtd"
	"snaplab/vmtest/machine"
	"snaplab/vmtest/qemu"
)

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// guestFlags choose where a guest executor's guests run: the backend, the
// libvirt daemons, how many guests, and the address remote hosts reach
// this one on.
type guestFlags struct {
	backend *string
	uris    stringList
	guests  *int
	listen  *string
}

func addGuestFlags(fs *flag.FlagSet) *guestFlags {
	g := &guestFlags{
		backend: fs.String("backend", "qemu", "with -executor vm or kernel: what runs the guests: qemu (started by snaplab) or libvirt (domains of a libvirt daemon: -libvirt-uri, else a private daemon snaplab starts, as root)"),
		guests:  fs.Int("guests", 1, "with -executor vm or kernel: guests booted; the scenarios are spread over them and run in parallel"),
		listen:  fs.String("listen", "", "with -backend libvirt and a remote -libvirt-uri: the address (host or IP, no port) the libvirt hosts reach this machine on; the guests' NBD disks and agent channels connect to it"),
	}
	fs.Var(&g.uris, "libvirt-uri", "with -backend libvirt: a daemon's URI (qemu:///system, qemu+tcp://HOST/system, qemu+ssh://USER@HOST/system); repeat it to spread the guests over several hosts, round robin")
	return g
}

// check validates the flags for executor.
func (g *guestFlags) check(executor string) error {
	if executor == "sim" {
		if *g.backend != "qemu" || len(g.uris) > 0 || *g.guests != 1 || *g.listen != "" {
			return errors.New("-backend, -libvirt-uri, -guests and -listen: only with -executor vm or kernel")
		}
		return nil
	}
	switch *g.backend {
	case "qemu":
		if len(g.uris) > 0 || *g.listen != "" {
			return errors.New("-libvirt-uri and -listen: only with -backend libvirt")
		}
	case "libvirt":
		remote := false
		for _, u := range g.uris {
			local, err := libvirt.IsLocal(u)
			if err != nil {
				return fmt.Errorf("-libvirt-uri: %w", err)
			}
			remote = remote || !local
		}
		if remote && *g.listen == "" {
			return errors.New("-libvirt-uri names a remote host: give -listen ADDRESS, where that host reaches this machine (the guests' NBD disks and agent channels connect to it)")
		}
		if *g.listen != "" {
			if err := libvirt.WithListen(*g.listen)(&libvirt.Options{}); err != nil {
				return fmt.Errorf("-listen: %w", err)
			}
		}
	default:
		return fmt.Errorf("-backend %q: want qemu or libvirt", *g.backend)
	}
	if *g.guests < 1 || *g.guests > 64 {
		return fmt.Errorf("-guests %d: want 1..64", *g.guests)
	}
	return nil
}

// pool is the booted guests, each with its executor.
type pool struct {
	vms   []machine.Machine
	execs []*guestexec.Executor
	stop  func()
}

// start boots the guests the flags ask for (startPool). accel is -accel's
// value ("" for the default).
func (g *guestFlags) start(stderr io.Writer, mode guestexec.Mode, kernel, accel string, consoleLog func(i int) string) (*pool, error) {
	s := poolSpec{mode: mode, kernel: kernel, backend: *g.backend, uris: g.uris, listen: *g.listen, n: *g.guests, consoleLog: consoleLog}
	if accel != "" {
		a, err := qemu.ParseAccel(accel)
		if err != nil {
			return nil, fmt.Errorf("-accel: %w", err)
		}
		s.accel, s.accelSource = a, "-accel "+accel
	}
	return startPool(stderr, s)
}

// poolSpec is what guests a pool boots, and where.
type poolSpec struct {
	mode        guestexec.Mode
	kernel      string     // -kernel ("" for the default)
	accel       qemu.Accel // "" for the default
	accelSource string     // where accel came from, for messages
	backend     string     // "qemu" or "libvirt"
	uris        []string   // libvirt daemons (none: a private one)
	listen      string     // the address remote hosts reach this one on
	n           int
	consoleLog  func(i int) string // guest i's console file ("" for the default)
}

// startPool boots s.n guests in parallel on the backend (a private
// libvirtd first, for libvirt without URIs), each with its executor. An
// interrupt kills every guest (and the private daemon) and ends the
// process, so no guest outlives the command; stop powers them off.
func startPool(stderr io.Writer, s poolSpec) (*pool, error) {
	ctx := context.Background()
	img := []guest.Option{guest.WithLogf(func(f string, a ...any) { fmt.Fprintf(stderr, f+"\n", a...) })}
	if s.kernel != "" {
		img = append(img, guest.WithKernel(s.kernel))
	}
	var daemon *libvirtd.Daemon
	uris := s.uris
	if s.backend == "libvirt" && len(uris) == 0 {
		d, err := libvirtd.Start(ctx)
		if err != nil {
			return nil, fmt.Errorf("private libvirtd: %w", err)
		}
		daemon, uris = d, []string{d.URI()}
	}
	backend := func(i int) guestexec.Backend {
		if s.backend == "libvirt" {
			o := []libvirt.Option{libvirt.WithURI(uris[i%len(uris)])}
			if s.accel != "" {
				o = append(o, libvirt.WithAccel(s.accel, s.accelSource))
			}
			if s.listen != "" {
				o = append(o, libvirt.WithListen(s.listen))
			}
			if p := s.consoleLog(i); p != "" {
				o = append(o, libvirt.WithConsoleLog(p))
			}
			return guestexec.Libvirt{Opts: o}
		}
		var o []qemu.Option
		if s.accel != "" {
			o = append(o, qemu.WithAccelFrom(s.accel, s.accelSource))
		}
		if p := s.consoleLog(i); p != "" {
			o = append(o, qemu.WithConsoleLog(p))
		}
		return guestexec.QEMU{Opts: o}
	}
	p := &pool{vms: make([]machine.Machine, s.n)}
	errs := make([]error, s.n)
	var wg sync.WaitGroup
	for i := range p.vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.vms[i], errs[i] = guestexec.BootOn(ctx, backend(i), s.mode, img)
		}()
	}
	wg.Wait()
	var once sync.Once
	release := func(clean bool) {
		once.Do(func() {
			var wg sync.WaitGroup
			for _, vm := range p.vms {
				if vm == nil {
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					if !clean {
						vm.Kill()
						return
					}
					cctx, cancel := context.WithTimeout(ctx, vm.Scale(10*time.Second))
					defer cancel()
					if err := vm.Close(cctx); err != nil {
						vm.Kill()
					}
				}()
			}
			wg.Wait()
			if daemon != nil {
				if err := daemon.Stop(); err != nil {
					fmt.Fprintf(stderr, "snaplab: private libvirtd: %v\n", err)
				}
			}
		})
	}
	for i, err := range errs {
		if err != nil {
			release(false)
			if s.n > 1 {
				return nil, fmt.Errorf("guest %d: %w", i, err)
			}
			return nil, err
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		if _, ok := <-sig; ok {
			release(false)
			os.Exit(130)
		}
	}()
	p.stop = func() {
		signal.Stop(sig)
		close(sig)
		release(true)
	}
	for _, vm := range p.vms {
		ex := guestexec.New(vm, s.mode)
		if s.backend == "libvirt" {
			ex.Listen = s.listen
		}
		p.execs = append(p.execs, ex)
	}
	return p, nil
}

// consoleLogs names the guests' console files in dir: console-EXEC.log for
// one guest, console-EXEC-guestI.log for several; none without dir.
func consoleLogs(dir, executor string, guests int) func(int) string {
	return func(i int) string {
		switch {
		case dir == "":
			return ""
		case guests == 1:
			return filepath.Join(dir, "console-"+executor+".log")
		}
		return filepath.Join(dir, fmt.Sprintf("console-%s-guest%d.log", executor, i))
	}
}
