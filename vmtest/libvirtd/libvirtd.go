// Package libvirtd starts a private, throwaway libvirtd for test suites and
// benchmarks, and stops it leaving nothing behind.
//
// The contract:
//
//   - Start runs the monolithic /usr/sbin/libvirtd as root, without
//     systemd, with its own configuration and runtime directories under
//     Dir (/tmp/snaplab-libvirtd-<pid>-<n>, <pid> the test process's). A
//     privileged libvirtd always uses /etc/libvirt, /run/libvirt,
//     /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt, so it runs
//     in a private mount namespace (unshare -m) with Dir's etc, run, lib,
//     log and cache bind-mounted over those (and its pid file moved into
//     run): the host's libvirt configuration and state are neither read
//     nor written (Start only creates the mount points, empty, where
//     missing), and a libvirtd of the host is not disturbed.
//   - The daemon listens on a unix socket (URI, Socket) and on TCP on
//     127.0.0.1 (TCPURI), both without authentication; its QEMU driver runs
//     guests as root with no security driver, no namespaces and no
//     cgroups. Start returns once both accept connections and the QEMU
//     driver answers (the daemon's first answer waits for its probe of the
//     QEMU binaries: several seconds, once per test process, as later
//     daemons get the probe's result, the capabilities cache, from the
//     first).
//   - Stop ends libvirtd (SIGTERM, then SIGKILL), kills every process
//     still running in the daemon's mount namespace (the QEMUs it started:
//     they are daemonised and outlive libvirtd) and removes Dir. It is
//     idempotent, and works after Kill.
//   - libvirtd dies with the test process (parent-death signal); whatever
//     such a process left behind (its directories and the QEMUs of its
//     daemons) is cleaned up by the next Start of any process, and listed
//     by Leftovers meanwhile.
//
// A process may run several daemons at once; parallel test processes
// (ginkgo -p) each run their own.
package libvirtd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// Binary is the libvirtd that Start runs.
	Binary = "/usr/sbin/libvirtd"

	// tmp holds the daemons' directories: a fixed, short path, because
	// the unix socket's path must fit in 108 bytes.
	tmp = "/tmp"
	// prefix starts the name of every daemon directory.
	prefix = "snaplab-libvirtd-"

	// defaultStartTimeout leaves room for the QEMU probe (8 s on an idle
	// 2-core host) with parallel test processes probing at once.
	defaultStartTimeout = 60 * time.Second
	// termWait is how long Stop lets libvirtd shut down before SIGKILL.
	termWait = 5 * time.Second
	// killWait bounds the wait for a SIGKILLed process to be gone.
	killWait = 10 * time.Second
)

// Daemon is a running private libvirtd.
type Daemon struct {
	name string // base name of dir
	dir  string
	port int
	cmd  *exec.Cmd

	exited  chan struct{} // closed once libvirtd has exited and been reaped
	waitErr error         // cmd.Wait's result, set before exited is closed

	stopOnce sync.Once
	stopErr  error
	lastLog  string // Log as it was when Stop removed dir
}

// Option configures Start.
type Option func(*config)

type config struct {
	startTimeout time.Duration
	libvirtdConf []setting
	qemuConf     []setting
}

type setting struct{ key, value string }

// WithStartTimeout bounds the wait for the daemon to answer (default
// 60 s; Start's ctx bounds it too).
func WithStartTimeout(d time.Duration) Option {
	return func(c *config) { c.startTimeout = d }
}

// WithLibvirtdConf sets key in libvirtd.conf, replacing the package's
// setting if it has one. The value is written as is: quote strings
// (`"x"`). Changing the listen settings breaks URI and TCPURI.
func WithLibvirtdConf(key, value string) Option {
	return func(c *config) { c.libvirtdConf = set(c.libvirtdConf, key, value) }
}

// WithQEMUConf sets key in qemu.conf, like WithLibvirtdConf.
func WithQEMUConf(key, value string) Option {
	return func(c *config) { c.qemuConf = set(c.qemuConf, key, value) }
}

func set(s []setting, key, value string) []setting {
	for i := range s {
		if s[i].key == key {
			s[i].value = value
			return s
		}
	}
	return append(s, setting{key, value})
}

// live holds the names of this process's daemon directories whose Stop
// has not finished; every other snaplab-libvirtd directory named after
// this process is a leftover.
var live = struct {
	sync.Mutex
	names map[string]bool
	next  int
}{names: map[string]bool{}}

// Start starts a private libvirtd and waits until it accepts connections
// on its unix socket and TCP port and its QEMU driver answers, within ctx
// and the start timeout. ctx does not bound the daemon's life: Stop ends
// it. Start first cleans up what dead test processes left behind (see
// Leftovers).
func Start(ctx context.Context, opts ...Option) (*Daemon, error) {
	if err := prerequisites(); err != nil {
		return nil, err
	}
	if err := cleanStale(); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cfg := config{startTimeout: defaultStartTimeout}
	cfg.libvirtdConf = []setting{
		{"listen_tls", "0"},
		{"listen_tcp", "1"},
		{"listen_addr", `"127.0.0.1"`},
		{"tcp_port", fmt.Sprintf(`"%d"`, port)},
		{"auth_tcp", `"none"`},
		{"auth_unix_rw", `"none"`},
		{"unix_sock_rw_perms", `"0700"`},
		{"log_outputs", `"2:file:/var/log/libvirt/libvirtd.log"`},
	}
	cfg.qemuConf = []setting{
		{"user", `"root"`},
		{"group", `"root"`},
		{"dynamic_ownership", "0"},
		{"remember_owner", "0"},
		{"security_driver", `"none"`},
		{"stdio_handler", `"file"`},
		{"namespaces", "[]"},
		{"cgroup_controllers", "[]"},
	}
	for _, o := range opts {
		o(&cfg)
	}

	live.Lock()
	name := fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), live.next)
	live.next++
	live.names[name] = true
	live.Unlock()
	d := &Daemon{name: name, dir: filepath.Join(tmp, name), port: port, exited: make(chan struct{})}

	if err := d.prepare(cfg); err != nil {
		d.unregister()
		return nil, errors.Join(err, os.RemoveAll(d.dir))
	}
	if err := d.launch(); err != nil {
		d.unregister()
		return nil, errors.Join(err, os.RemoveAll(d.dir))
	}
	if err := d.waitReady(ctx, cfg.startTimeout); err != nil {
		logs := fmt.Sprintf("\n--- libvirtd.log:\n%s\n--- stdout.log:\n%s", tail(d.logPath()), tail(d.stdoutPath()))
		return nil, errors.Join(fmt.Errorf("%w%s", err, logs), d.Stop())
	}
	d.keepCaps()
	return d, nil
}

// prerequisites fails, naming what is missing, unless this process can run
// a privileged libvirtd.
func prerequisites() error {
	if _, err := os.Stat(Binary); err != nil {
		return fmt.Errorf("%s missing (install libvirt-daemon-driver-qemu: make deps): %w", Binary, err)
	}
	for _, t := range []struct{ tool, pkg string }{{"unshare", "util-linux"}, {"mount", "mount"}, {"virsh", "libvirt-clients"}} {
		if _, err := exec.LookPath(t.tool); err != nil {
			return fmt.Errorf("%s missing (install %s: make deps): %w", t.tool, t.pkg, err)
		}
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("the test libvirtd runs as root (privileged qemu driver); this process runs as uid %d", os.Geteuid())
	}
	if _, err := user.Lookup("libvirt-qemu"); err != nil {
		return fmt.Errorf("user libvirt-qemu missing (libvirtd's qemu driver looks it up at start: make deps): %w", err)
	}
	if _, err := user.LookupGroup("libvirt-qemu"); err != nil {
		return fmt.Errorf("group libvirt-qemu missing (libvirtd's qemu driver looks it up at start: make deps): %w", err)
	}
	return nil
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free TCP port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// prepare creates dir and the configuration files.
func (d *Daemon) prepare(cfg config) error {
	if err := os.Mkdir(d.dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", d.dir, err)
	}
	for _, sub := range []string{"etc", "run", "lib", "log", "cache"} {
		if err := os.Mkdir(filepath.Join(d.dir, sub), 0o700); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Join(d.dir, sub), err)
		}
	}
	for file, s := range map[string][]setting{"libvirtd.conf": cfg.libvirtdConf, "qemu.conf": cfg.qemuConf} {
		var b strings.Builder
		for _, kv := range s {
			fmt.Fprintf(&b, "%s = %s\n", kv.key, kv.value)
		}
		path := filepath.Join(d.dir, "etc", file)
		if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	return d.seedCaps()
}

// script runs in the private mount namespace, with the daemon's directory
// as $1: it puts the directory's parts over libvirt's paths and becomes
// libvirtd. The mkdir also creates the mount points on the host, where
// they may be missing (no libvirt-daemon-system). The pid file moves into
// run: its default, /run/libvirtd.pid, is the host's, and locked by any
// other libvirtd running (a second daemon would fail to start).
const script = `set -e
mkdir -p /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt
mount --bind "$1/etc" /etc/libvirt
mount --bind "$1/run" /run/libvirt
mount --bind "$1/lib" /var/lib/libvirt
mount --bind "$1/log" /var/log/libvirt
mount --bind "$1/cache" /var/cache/libvirt
exec ` + Binary + ` --listen --pid-file /run/libvirt/libvirtd.pid
`

// launch starts libvirtd. The parent-death signal is tied to the thread
// that forks, not the process, and Go ends threads (one a goroutine left
// locked): so the fork happens on a locked thread that stays alive,
// waiting for libvirtd, as long as libvirtd runs.
func (d *Daemon) launch() error {
	out, err := os.OpenFile(d.stdoutPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", d.stdoutPath(), err)
	}
	defer out.Close()
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	d.cmd = exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", d.dir)
	d.cmd.Dir = "/"
	// A clean environment: LIBVIRT_* variables would override the
	// configuration.
	d.cmd.Env = []string{"PATH=" + path, "LC_ALL=C"}
	d.cmd.Stdout, d.cmd.Stderr = out, out
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	started := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := d.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		d.waitErr = d.cmd.Wait()
		close(d.exited)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start libvirtd in %s: %w", d.dir, err)
	}
	return nil
}

// waitReady waits until libvirtd accepts connections on its unix socket
// and its TCP port, and then until its QEMU driver answers: libvirtd
// accepts connections before its drivers are up, and holds the first
// call until they are.
func (d *Daemon) waitReady(ctx context.Context, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tcp := net.JoinHostPort("127.0.0.1", strconv.Itoa(d.port))
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if accepts("unix", d.Socket()) && accepts("tcp", tcp) {
			virsh := exec.CommandContext(ctx, "virsh", "-c", d.URI(), "version")
			virsh.Env = []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C"}
			out, err := virsh.CombinedOutput()
			if err != nil {
				err = fmt.Errorf("libvirtd (pid %d) accepts connections, but virsh -c %s version: %w\n%s",
					d.Pid(), d.URI(), err, bytes.TrimSpace(out))
				return errors.Join(err, ctx.Err())
			}
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("libvirtd (pid %d, %s) exited before accepting connections: %v", d.Pid(), d.dir, d.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("libvirtd (pid %d) does not accept connections on %s and %s: %w",
				d.Pid(), d.Socket(), tcp, ctx.Err())
		case <-tick.C:
		}
	}
}

// caps is the QEMU capabilities cache of this process's first daemon
// that probed QEMU (file name to content), seeded into later daemons.
var caps struct {
	sync.Mutex
	files map[string][]byte
}

// capsDir is where libvirtd caches the capabilities of the QEMU binaries
// (after probing them, which takes seconds); a cache entry records the
// binaries' and libvirtd's identity, and libvirtd probes again if it does
// not match.
func (d *Daemon) capsDir() string { return filepath.Join(d.dir, "cache", "qemu", "capabilities") }

// keepCaps keeps the daemon's capabilities cache for later daemons, if
// none is kept yet.
func (d *Daemon) keepCaps() {
	caps.Lock()
	defer caps.Unlock()
	if caps.files != nil {
		return
	}
	entries, _ := os.ReadDir(d.capsDir())
	files := map[string][]byte{}
	for _, e := range entries {
		if b, err := os.ReadFile(filepath.Join(d.capsDir(), e.Name())); err == nil && strings.HasSuffix(e.Name(), ".xml") {
			files[e.Name()] = b
		}
	}
	if len(files) > 0 {
		caps.files = files
	}
}

// seedCaps writes the kept capabilities cache into the daemon's.
func (d *Daemon) seedCaps() error {
	caps.Lock()
	defer caps.Unlock()
	if caps.files == nil {
		return nil
	}
	if err := os.MkdirAll(d.capsDir(), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", d.capsDir(), err)
	}
	for name, b := range caps.files {
		if err := os.WriteFile(filepath.Join(d.capsDir(), name), b, 0o600); err != nil {
			return fmt.Errorf("seed the QEMU capabilities cache: %w", err)
		}
	}
	return nil
}

func accepts(network, addr string) bool {
	c, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// URI is the daemon's URI over its unix socket.
func (d *Daemon) URI() string { return "qemu:///system?socket=" + d.Socket() }

// TCPURI is the daemon's URI over TCP (127.0.0.1, no authentication).
func (d *Daemon) TCPURI() string { return fmt.Sprintf("qemu+tcp://127.0.0.1:%d/system", d.port) }

// Socket is the path of the daemon's read-write unix socket.
func (d *Daemon) Socket() string { return filepath.Join(d.dir, "run", "libvirt-sock") }

// Dir is the daemon's directory: etc, run, lib, log and cache are what the
// daemon sees as /etc/libvirt, /run/libvirt, /var/lib/libvirt,
// /var/log/libvirt and /var/cache/libvirt.
func (d *Daemon) Dir() string { return d.dir }

// Pid is libvirtd's process id.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Log is the tail of libvirtd.log, for error messages; after Stop, the
// tail as it was when Stop removed it.
func (d *Daemon) Log() string {
	if s := tail(d.logPath()); s != "" {
		return s
	}
	return d.lastLog
}

func (d *Daemon) logPath() string    { return filepath.Join(d.dir, "log", "libvirtd.log") }
func (d *Daemon) stdoutPath() string { return filepath.Join(d.dir, "log", "stdout.log") }

// Kill SIGKILLs libvirtd alone and waits for it to be gone, as if the
// daemon died: its QEMUs run on. Stop still cleans up after it.
func (d *Daemon) Kill() {
	_ = d.cmd.Process.Kill()
	select {
	case <-d.exited:
	case <-time.After(killWait):
	}
}

// Stop ends libvirtd (SIGTERM, SIGKILL if it is still running after a few
// seconds), kills every process left in its mount namespace (the QEMUs it
// started) and waits for them to be gone, and removes Dir. It returns an
// error naming what it could not kill or remove; later calls return the
// same.
func (d *Daemon) Stop() error {
	d.stopOnce.Do(func() { d.stopErr = d.stop() })
	return d.stopErr
}

func (d *Daemon) stop() error {
	defer d.unregister()
	var errs []error
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(termWait):
		_ = d.cmd.Process.Kill()
		select {
		case <-d.exited:
		case <-time.After(killWait):
			errs = append(errs, fmt.Errorf("libvirtd pid %d (%s) still running after SIGKILL", d.Pid(), d.dir))
		}
	}
	errs = append(errs, killAll(d.name, scan()[d.name]))
	d.lastLog = tail(d.logPath())
	if err := os.RemoveAll(d.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", d.dir, err))
	}
	return errors.Join(errs...)
}

func (d *Daemon) unregister() {
	live.Lock()
	delete(live.names, d.name)
	live.Unlock()
}

// tail returns the last few KiB of the file at path, from a line start,
// or "" if it cannot be read.
func tail(path string) string {
	const size = 4 << 10
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	cut := err == nil && fi.Size() > size
	if cut {
		_, _ = f.Seek(fi.Size()-size, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	if cut {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return strings.TrimRight(string(b), "\n")
}
