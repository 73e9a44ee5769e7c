package run

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// dataExtents calls fn for each range of f's first size bytes that may
// hold data, in order, skipping holes (SEEK_DATA, SEEK_HOLE). A file
// system without them reports the whole file as data.
func dataExtents(f *os.File, size int64, fn func(start, end int64) error) error {
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			return nil // no data after off
		}
		if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP) {
			return fn(off, size)
		}
		if err != nil {
			return fmt.Errorf("image %s: SEEK_DATA at %d: %w", f.Name(), off, err)
		}
		if start >= size {
			return nil
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			end = size
		}
		end = min(max(end, start+1), size)
		if err := fn(start, end); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// synthetic file systems: their files are regular but not data at rest
// (/proc/kcore is 128 TiB; /sys files answer what the kernel says now).
var synthetic = map[int64]string{
	unix.PROC_SUPER_MAGIC:    "procfs (/proc)",
	unix.SYSFS_MAGIC:         "sysfs (/sys)",
	unix.DEBUGFS_MAGIC:       "debugfs",
	unix.TRACEFS_MAGIC:       "tracefs",
	unix.SECURITYFS_MAGIC:    "securityfs",
	unix.CGROUP_SUPER_MAGIC:  "cgroupfs",
	unix.CGROUP2_SUPER_MAGIC: "cgroup2fs",
	0x62656570:               "configfs", // CONFIGFS_MAGIC
	unix.BPF_FS_MAGIC:        "bpffs",
	unix.PSTOREFS_MAGIC:      "pstore",
	unix.EFIVARFS_MAGIC:      "efivarfs",
	unix.SELINUX_MAGIC:       "selinuxfs",
	unix.SMACK_MAGIC:         "smackfs",
	unix.BINFMTFS_MAGIC:      "binfmt_misc",
	0x65735543:               "fusectl", // FUSE_CTL_SUPER_MAGIC
	unix.DEVPTS_SUPER_MAGIC:  "devpts",
	unix.NSFS_MAGIC:          "nsfs",
	unix.ANON_INODE_FS_MAGIC: "anon_inodefs",
	unix.PIPEFS_MAGIC:        "pipefs",
	unix.SOCKFS_MAGIC:        "sockfs",
}

// syntheticFS names the synthetic file system f is on, or "".
func syntheticFS(f *os.File) string {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return ""
	}
	return synthetic[int64(st.Type)]
}

// openedPath is the path of the file f has open, links resolved, or ""
// when the system does not say.
func openedPath(f *os.File) string {
	p, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil || len(p) == 0 || p[0] != '/' {
		return ""
	}
	return p
}
