package libvirtd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A daemon's processes are found by their mount namespace, not by pid
// files or command lines: a process belongs to daemon directory D when its
// /run/libvirt is a bind mount of D/run, which is so for libvirtd and for
// everything it starts, QEMUs included (libvirtd runs with namespaces = [],
// so its QEMUs share its mount namespace), and for no other process. This
// holds after D is removed (the mount's root then ends in //deleted), and
// pids reused by other processes do not match. QEMU's pid files
// (D/run/qemu/*.pid) name a subset of these processes.

// nameRE matches a daemon directory's name: prefix, owner pid, counter.
var nameRE = regexp.MustCompile(`^` + prefix + `([0-9]+)-([0-9]+)$`)

// mountRE matches the root of a daemon's /run/libvirt bind mount in
// /proc/PID/mountinfo (relative to its file system's root).
var mountRE = regexp.MustCompile(`(?:^|/)(` + prefix + `[0-9]+-[0-9]+)/run(?://deleted)?$`)

// Leftovers lists what a Stop should have removed but exists: the
// directories of daemons (/tmp/snaplab-libvirtd-<pid>-<n>) and the live
// processes (libvirtd, QEMU) in their mount namespaces, for daemons that
// nobody runs any more: those of dead processes, and those of this
// process that were stopped or never started. Daemons of other live
// processes (parallel test processes) and this process's running daemons
// are not leftovers. The next Start removes what Leftovers lists.
func Leftovers() []string {
	dirs, procs := inventory()
	var out []string
	for _, name := range names(dirs, procs) {
		if !stale(name) {
			continue
		}
		if dirs[name] {
			out = append(out, filepath.Join(tmp, name))
		}
		for _, pid := range procs[name] {
			out = append(out, fmt.Sprintf("pid %d (%s) of %s", pid, comm(pid), filepath.Join(tmp, name)))
		}
	}
	return out
}

// cleanStale kills the processes of the daemons that nobody runs any more
// and removes their directories.
func cleanStale() error {
	dirs, procs := inventory()
	var errs []error
	for _, name := range names(dirs, procs) {
		if !stale(name) {
			continue
		}
		errs = append(errs, killAll(name, procs[name]))
		if err := os.RemoveAll(filepath.Join(tmp, name)); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", filepath.Join(tmp, name), err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up after earlier test libvirtds: %w", err)
	}
	return nil
}

// inventory returns the names of the daemon directories in /tmp, and the
// processes in each daemon's mount namespace (see scan).
func inventory() (dirs map[string]bool, procs map[string][]int) {
	dirs = map[string]bool{}
	entries, _ := os.ReadDir(tmp)
	for _, e := range entries {
		if nameRE.MatchString(e.Name()) {
			dirs[e.Name()] = true
		}
	}
	return dirs, scan()
}

// names returns the daemon names in dirs and procs, sorted.
func names(dirs map[string]bool, procs map[string][]int) []string {
	var out []string
	for name := range dirs {
		out = append(out, name)
	}
	for name := range procs {
		if !dirs[name] {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// stale reports whether nobody runs the daemon named name: its owner
// process is dead, or it is this process and the daemon is not live.
func stale(name string) bool {
	m := nameRE.FindStringSubmatch(name)
	if m == nil {
		return false
	}
	pid, err := strconv.Atoi(m[1])
	if err != nil {
		return false
	}
	if pid == os.Getpid() {
		live.Lock()
		defer live.Unlock()
		return !live.names[name]
	}
	return !running(pid)
}

// scan returns the live processes in daemons' mount namespaces, by daemon
// name. Only processes in a mount namespace other than this process's are
// looked at.
func scan() map[string][]int {
	procs := map[string][]int{}
	self, _ := os.Readlink("/proc/self/ns/mnt")
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err != nil || ns == self {
			continue
		}
		if name := owner(pid); name != "" && running(pid) {
			procs[name] = append(procs[name], pid)
		}
	}
	return procs
}

// owner returns the name of the daemon in whose mount namespace pid runs,
// or "".
func owner(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		// ID parent major:minor root mountpoint options...
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != "/run/libvirt" {
			continue
		}
		if m := mountRE.FindStringSubmatch(f[3]); m != nil {
			return m[1]
		}
	}
	return ""
}

// running reports whether process pid exists and is not a zombie.
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...; comm may contain anything, ')' included.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// comm is process pid's command name, for messages.
func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// killAll SIGKILLs those of pids that still run in the mount namespace of
// daemon name, and waits for them to be gone. Each process is checked
// through a pidfd opened before the check, so a pid reused meanwhile is
// never signalled.
func killAll(name string, pids []int) error {
	var errs []error
	type victim struct{ pid, fd int }
	var victims []victim
	for _, pid := range pids {
		fd, err := unix.PidfdOpen(pid, 0)
		if errors.Is(err, unix.ESRCH) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("kill pid %d of %s: pidfd_open: %w", pid, name, err))
			continue
		}
		if owner(pid) != name {
			unix.Close(fd) // gone, or a reused pid
			continue
		}
		if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("kill pid %d (%s) of %s: %w", pid, comm(pid), name, err))
		}
		victims = append(victims, victim{pid, fd})
	}
	deadline := time.Now().Add(killWait)
	for _, v := range victims {
		if !exited(v.fd, deadline) {
			errs = append(errs, fmt.Errorf("pid %d (%s) of %s still running %v after SIGKILL", v.pid, comm(v.pid), name, killWait))
		}
		unix.Close(v.fd)
	}
	return errors.Join(errs...)
}

// exited waits until the process of pidfd fd has exited or deadline has
// passed, and reports whether it has exited.
func exited(fd int, deadline time.Time) bool {
	for {
		ms := max(int(time.Until(deadline)/time.Millisecond), 0)
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0
	}
}
