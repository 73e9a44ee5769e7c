package libvirt

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"snaplab/vmtest/guest"
	"snaplab/vmtest/machine"
	"snaplab/vmtest/qemu"
)

// Options are a guest's settings (see the package doc for defaults).
type Options struct {
	URI          string
	Kernel       string
	Initramfs    string
	CacheDir     string
	Accel        qemu.Accel
	AccelSource  string
	MemoryMB     int
	HotplugSlots int
	Append       []string
	Listen       string
	BootDisks    []bootDisk
	ConsoleLog   string
	Name         string
	CallTimeout  time.Duration
	Slowdown     float64
	Logf         func(string, ...any)
	Notices      io.Writer

	dial func() (*golibvirt.Libvirt, error)
}

// Option sets an option.
type Option func(*Options) error

func defaultOptions() *Options {
	return &Options{Accel: qemu.AccelAuto, MemoryMB: 256, HotplugSlots: 8, CallTimeout: 15 * time.Second,
		Logf: func(string, ...any) {}, Notices: os.Stderr}
}

// WithURI is the daemon: qemu:///system (this host's, or
// qemu:///system?socket=PATH), qemu+tcp://HOST[:PORT]/system,
// qemu+ssh://USER@HOST/system, qemu+tls://HOST/system.
func WithURI(uri string) Option {
	return func(o *Options) error {
		if _, err := IsLocal(uri); err != nil {
			return err
		}
		o.URI = uri
		return nil
	}
}

// WithImage boots img (its kernel and initramfs must be at the same paths
// on the daemon's host).
func WithImage(img *guest.Image) Option {
	return func(o *Options) error {
		o.Kernel, o.Initramfs, o.CacheDir = img.Kernel, img.Initramfs, img.CacheDir
		return nil
	}
}

// WithAccel is the accelerator: auto, kvm or tcg. source names where the
// choice came from, for messages ("" for WithAccel).
func WithAccel(a qemu.Accel, source string) Option {
	return func(o *Options) error { o.Accel, o.AccelSource = a, source; return nil }
}

// WithMemory is the guest's memory in MiB.
func WithMemory(mb int) Option {
	return func(o *Options) error {
		if mb < 64 {
			return fmt.Errorf("memory %d MiB: want at least 64", mb)
		}
		o.MemoryMB = mb
		return nil
	}
}

// WithHotplugSlots is how many empty pcie-root-ports the domain has for
// Plug.
func WithHotplugSlots(n int) Option {
	return func(o *Options) error {
		if n < 0 || n > 30 {
			return fmt.Errorf("hot-plug slots %d: want 0..30", n)
		}
		o.HotplugSlots = n
		return nil
	}
}

// WithAppend adds kernel command-line arguments.
func WithAppend(args ...string) Option {
	return func(o *Options) error { o.Append = append(o.Append, args...); return nil }
}

// WithListen is the address (host or IP) the daemon's host reaches this
// machine on: the agent channel listens there on TCP (and the caller's
// NBD server should too). Required for a remote daemon; without it a
// local daemon's QEMU connects to a unix socket.
func WithListen(host string) Option {
	return func(o *Options) error {
		if host == "" || strings.ContainsAny(host, "/ ") {
			return fmt.Errorf("listen address %q: want a host name or IP address", host)
		}
		if h, _, err := net.SplitHostPort(host); err == nil {
			return fmt.Errorf("listen address %q: want a host without a port (ports are chosen): %s", host, h)
		}
		o.Listen = host
		return nil
	}
}

// WithBootDisk adds an NBD network disk present at boot.
func WithBootDisk(serial string, src machine.NBD) Option {
	return func(o *Options) error {
		if err := machine.CheckSerial(serial); err != nil {
			return err
		}
		if err := src.Check(); err != nil {
			return err
		}
		o.BootDisks = append(o.BootDisks, bootDisk{serial, src})
		return nil
	}
}

// WithConsoleLog writes the whole console to path.
func WithConsoleLog(path string) Option {
	return func(o *Options) error { o.ConsoleLog = path; return nil }
}

// WithName names the domain (default snaplab-HOST-PID-N, which lets a later
// run remove it if this process dies).
func WithName(name string) Option {
	return func(o *Options) error {
		if name == "" || strings.ContainsAny(name, "/ ") {
			return fmt.Errorf("domain name %q: want a non-empty name without '/' or spaces", name)
		}
		o.Name = name
		return nil
	}
}

// WithCallTimeout bounds every call to the daemon (15 s).
func WithCallTimeout(d time.Duration) Option {
	return func(o *Options) error {
		if d <= 0 {
			return fmt.Errorf("call timeout %v: want > 0", d)
		}
		o.CallTimeout = d
		return nil
	}
}

// WithSlowdown overrides the timeout factor (1 under KVM, 10 under TCG).
func WithSlowdown(f float64) Option {
	return func(o *Options) error { o.Slowdown = f; return nil }
}

// WithNoticeOutput is where the lines a user should see go (leftover
// domains removed): os.Stderr.
func WithNoticeOutput(w io.Writer) Option {
	return func(o *Options) error { o.Notices = w; return nil }
}

// WithLogf receives harness messages.
func WithLogf(f func(string, ...any)) Option {
	return func(o *Options) error { o.Logf = f; return nil }
}

// IsLocal reports whether uri's daemon runs on this host: a unix socket,
// or TCP/TLS/SSH to a loopback address.
func IsLocal(uri string) (bool, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return false, fmt.Errorf("libvirt URI %q: %w", uri, err)
	}
	scheme, transport, _ := strings.Cut(u.Scheme, "+")
	if scheme != "qemu" {
		return false, fmt.Errorf("libvirt URI %q: want a qemu driver URI (qemu:///system, qemu+tcp://HOST/system, qemu+ssh://...)", uri)
	}
	switch transport {
	case "", "unix":
		return u.Host == "" || isLoopback(u.Hostname()), nil
	case "tcp", "tls", "ssh":
		if u.Host == "" {
			return false, fmt.Errorf("libvirt URI %q: %s needs a host", uri, transport)
		}
		return isLoopback(u.Hostname()), nil
	}
	return false, fmt.Errorf("libvirt URI %q: transport %q: want unix, tcp, tls or ssh", uri, transport)
}

func isLoopback(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// chooseAccel decides the domain type. On this host it is the QEMU
// backend's choice (auto probes KVM once and caches the verdict: a
// /dev/kvm that opens is not proof that it runs guests). On a remote host
// auto means TCG, which boots anywhere; kvm must be asked for.
func chooseAccel(ctx context.Context, o *Options, local bool) (qemu.Accel, string, error) {
	src := o.AccelSource
	if src == "" {
		src = "WithAccel"
	}
	if !local {
		switch o.Accel {
		case qemu.AccelKVM:
			return qemu.AccelKVM, "kvm, as asked (" + src + "; a remote host's KVM is not probed)", nil
		case qemu.AccelTCG:
			return qemu.AccelTCG, "tcg, as asked (" + src + ")", nil
		}
		return qemu.AccelTCG, "tcg: a remote host's KVM is not probed; ask for kvm to use it", nil
	}
	opts := []qemu.Option{qemu.WithKernel(o.Kernel), qemu.WithInitramfs(o.Initramfs), qemu.WithAccelFrom(o.Accel, src)}
	if o.CacheDir != "" {
		opts = append(opts, qemu.WithAccelCache(o.CacheDir))
	}
	return qemu.ChooseAccel(ctx, opts...)
}
