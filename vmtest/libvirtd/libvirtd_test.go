package libvirtd

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary a test process that starts a daemon and
// a guest, reports them and waits to be killed (TestKilledOwner). Its
// value is a directory with a QEMU capabilities cache to seed the daemon
// with (the probe takes seconds), or "-".
const helperEnv = "SNAPLAB_LIBVIRTD_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		helper()
		return
	}
	os.Exit(m.Run())
}

func needLibvirtd(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		t.Skipf("%s missing (make deps)", Binary)
	}
}

func needQEMU(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 missing (make deps)")
	}
}

func start(t *testing.T) *Daemon {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Error(err)
		}
	})
	return d
}

func virsh(t *testing.T, uri string, args ...string) string {
	t.Helper()
	out, err := exec.Command("virsh", append([]string{"-c", uri}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("virsh -c %s %s: %v\n%s", uri, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func waitGone(t *testing.T, pid int, what string) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); running(pid); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%s (pid %d) still running", what, pid)
		}
	}
}

func noLeftovers(t *testing.T) {
	t.Helper()
	if l := Leftovers(); len(l) > 0 {
		t.Errorf("leftovers: %q", l)
	}
}

// TestStartStop runs two daemons at once, talks to each over both URIs,
// and stops them.
func TestStartStop(t *testing.T) {
	needLibvirtd(t)
	var ds [2]*Daemon
	var errs [2]error
	var wg sync.WaitGroup
	for i := range ds {
		wg.Go(func() {
			start := time.Now()
			ds[i], errs[i] = Start(context.Background())
			t.Logf("Start took %v", time.Since(start))
		})
	}
	wg.Wait()
	for i, d := range ds {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		t.Cleanup(func() { _ = d.Stop() })
	}
	if ds[0].Dir() == ds[1].Dir() || ds[0].TCPURI() == ds[1].TCPURI() {
		t.Fatalf("two daemons share %s / %s", ds[0].Dir(), ds[0].TCPURI())
	}
	for _, d := range ds {
		for _, uri := range []string{d.URI(), d.TCPURI()} {
			if out := virsh(t, uri, "version"); !strings.Contains(out, "Running hypervisor: QEMU") {
				t.Errorf("virsh -c %s version:\n%s", uri, out)
			}
		}
		if !strings.HasPrefix(d.Socket(), d.Dir()+"/") || !strings.Contains(d.URI(), d.Socket()) {
			t.Errorf("socket %s, URI %s, dir %s", d.Socket(), d.URI(), d.Dir())
		}
	}
	if l := Leftovers(); len(l) > 0 {
		t.Errorf("running daemons listed as leftovers: %q", l)
	}
	qemu := 0
	if _, err := exec.LookPath("qemu-system-x86_64"); err == nil {
		if qemu, err = createGuest(ds[0], "start-stop"); err != nil {
			t.Fatal(err)
		}
	}

	for _, d := range ds {
		pid := d.Pid()
		start := time.Now()
		if err := d.Stop(); err != nil {
			t.Fatal(err)
		}
		t.Logf("Stop took %v", time.Since(start))
		if err := d.Stop(); err != nil {
			t.Errorf("second Stop: %v", err)
		}
		if _, err := os.Stat(filepath.Dir(d.Socket())); !os.IsNotExist(err) {
			t.Errorf("%s after Stop: %v", filepath.Dir(d.Socket()), err)
		}
		if _, err := os.Stat(d.Dir()); !os.IsNotExist(err) {
			t.Errorf("%s after Stop: %v", d.Dir(), err)
		}
		if running(pid) {
			t.Errorf("libvirtd pid %d running after Stop", pid)
		}
		if d.Log() == "" {
			t.Error("Log is empty after Stop")
		}
	}
	if qemu != 0 && running(qemu) {
		t.Errorf("QEMU pid %d running after Stop", qemu)
	}
	noLeftovers(t)
}

// TestStartFails: a daemon that cannot start is reported with its log, and
// leaves nothing behind.
func TestStartFails(t *testing.T) {
	needLibvirtd(t)
	_, err := Start(context.Background(), WithLibvirtdConf("listen_addr", `"192.0.2.1"`)) // not this host's
	if err == nil {
		t.Fatal("Start listening on 192.0.2.1 succeeded")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "exited before accepting connections") || !strings.Contains(err.Error(), "Unable to bind") {
		t.Errorf("error lacks the exit or libvirtd.log's reason: %v", err)
	}
	noLeftovers(t)
}

// guestXML is a guest that boots nothing: its QEMU runs until killed.
const guestXML = `<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>16</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>
`

// createGuest starts a transient guest and returns its QEMU's pid.
func createGuest(d *Daemon, name string) (int, error) {
	xml := filepath.Join(d.Dir(), name+".xml")
	if err := os.WriteFile(xml, fmt.Appendf(nil, guestXML, name), 0o600); err != nil {
		return 0, err
	}
	if out, err := exec.Command("virsh", "-c", d.URI(), "create", xml).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("virsh create: %v\n%s\n%s", err, out, d.Log())
	}
	pidfile := filepath.Join(d.Dir(), "run", "qemu", name+".pid")
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// TestKillThenStop: a daemon that died leaves its QEMU running; Stop ends
// that QEMU and removes everything.
func TestKillThenStop(t *testing.T) {
	needLibvirtd(t)
	needQEMU(t)
	d := start(t)
	qemu, err := createGuest(d, "kill-then-stop")
	if err != nil {
		t.Fatal(err)
	}
	pid := d.Pid()
	d.Kill()
	if running(pid) {
		t.Fatalf("libvirtd pid %d running after Kill", pid)
	}
	if !running(qemu) {
		t.Fatalf("QEMU pid %d died with libvirtd: the test proves nothing", qemu)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	waitGone(t, qemu, "QEMU") // Stop waited already: this only reads /proc
	if _, err := os.Stat(d.Dir()); !os.IsNotExist(err) {
		t.Errorf("%s after Stop: %v", d.Dir(), err)
	}
	noLeftovers(t)
}

// TestStaleDir: the next Start removes the directory of a dead process and
// leaves alone a process that its pid files name but that is not one of
// its QEMUs.
func TestStaleDir(t *testing.T) {
	needLibvirtd(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	sleep := exec.Command("sleep", "300")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleep.Process.Kill(); _ = sleep.Wait() })

	dir := filepath.Join(tmp, fmt.Sprintf("%s%d-0", prefix, dead.Process.Pid))
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.MkdirAll(filepath.Join(dir, "run", "qemu"), 0o700); err != nil {
		t.Fatal(err)
	}
	pidfile := filepath.Join(dir, "run", "qemu", "x.pid")
	if err := os.WriteFile(pidfile, []byte(strconv.Itoa(sleep.Process.Pid)), 0o600); err != nil {
		t.Fatal(err)
	}
	if l := Leftovers(); !slices.Contains(l, dir) {
		t.Fatalf("Leftovers %q lacks %s", l, dir)
	}

	start(t)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s after Start: %v", dir, err)
	}
	if !running(sleep.Process.Pid) {
		t.Errorf("Start killed pid %d (sleep 300), named by %s but no QEMU", sleep.Process.Pid, pidfile)
	}
}

// TestKilledOwner: a test process killed while its daemon runs a guest.
// libvirtd dies with it; its QEMU runs on, listed by Leftovers, until the
// next Start ends it and removes the directory.
func TestKilledOwner(t *testing.T) {
	needLibvirtd(t)
	needQEMU(t)
	capsDir := "-"
	if caps.files != nil {
		capsDir = t.TempDir()
		for name, b := range caps.files {
			if err := os.WriteFile(filepath.Join(capsDir, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	h := exec.Command(os.Args[0])
	h.Env = append(os.Environ(), helperEnv+"="+capsDir)
	h.Stderr = os.Stderr
	out, err := h.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Process.Kill(); _ = h.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	var dir string
	var libvirtd, qemu int
	if _, err := fmt.Sscan(line, &dir, &libvirtd, &qemu); err != nil {
		t.Fatalf("helper said %q: %v", line, err)
	}
	if err := h.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = h.Wait()

	waitGone(t, libvirtd, "libvirtd of the killed test process")
	if !running(qemu) {
		t.Fatalf("QEMU pid %d died with its test process: the test proves nothing", qemu)
	}
	l := Leftovers()
	if !slices.Contains(l, dir) || !slices.ContainsFunc(l, func(s string) bool {
		return strings.HasPrefix(s, fmt.Sprintf("pid %d ", qemu))
	}) {
		t.Fatalf("Leftovers %q lacks %s or QEMU pid %d", l, dir, qemu)
	}
	t.Logf("leftovers of the killed test process: %q", l)

	start(t)
	if running(qemu) {
		t.Errorf("QEMU pid %d of %s running after the next Start", qemu, dir)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s after the next Start: %v", dir, err)
	}
	noLeftovers(t)
}

// helper is TestKilledOwner's test process: it prints "dir libvirtd-pid
// qemu-pid" and waits to be killed.
func helper() {
	if entries, err := os.ReadDir(os.Getenv(helperEnv)); err == nil {
		caps.files = map[string][]byte{}
		for _, e := range entries {
			caps.files[e.Name()], _ = os.ReadFile(filepath.Join(os.Getenv(helperEnv), e.Name()))
		}
	}
	d, err := Start(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	qemu, err := createGuest(d, "killed-owner")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = d.Stop()
		os.Exit(1)
	}
	fmt.Println(d.Dir(), d.Pid(), qemu)
	time.Sleep(time.Minute)
	_ = d.Stop()
	syscall.Exit(1)
}
