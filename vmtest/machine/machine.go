// Package machine is the seam between the guest executors
// (vmtest/guestexec) and the backends that run their guests: vmtest/qemu
// (QEMU started by this process) and vmtest/libvirt (a domain of a local or
// remote libvirt daemon). An executor holds a Machine and never asks which
// backend runs it.
//
// The contract every backend keeps:
//
//   - Start returns a guest whose agent channel (proto.PortName) is
//     connected; Ready waits for the agent's ready message.
//   - Plug hot-plugs a virtio disk served over NBD (a unix socket on this
//     host, or TCP for a guest on another host) with the disk's name as
//     its virtio serial, rerror/werror=report (guest I/O errors are EIO in
//     the guest and a BLOCK_IO_ERROR event, never a paused guest), and
//     discards passed on as NBD_CMD_TRIM unless DiskOptions.NoDiscard.
//     Unplug removes it once the guest let go of it and closes its NBD
//     connection.
//   - Events are QEMU's QMP events in arrival order (BLOCK_IO_ERROR,
//     DEVICE_DELETED, ...); BlockIOErrors names each by the disk's serial.
//   - Scale applies the backend's timeout factor (10 under TCG).
//   - Close powers the guest off (Kill if it does not go); Kill ends it at
//     once. Both release everything the guest holds, on every path.
package machine

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"snaplab/vmtest/guest/proto"
)

// Machine is a running guest, whichever backend runs it.
type Machine interface {
	// Agent is the guest agent's client.
	Agent() *proto.Client
	// Ready waits for the agent's ready message.
	Ready(ctx context.Context) (proto.Response, error)
	// KernelRelease is the guest kernel's release once Ready returned.
	KernelRelease() string
	// Scale multiplies a KVM-sized timeout by the backend's slowdown.
	Scale(d time.Duration) time.Duration
	// Plug hot-plugs disk serial, served at src, with properties o.
	Plug(ctx context.Context, serial string, src NBD, o DiskOptions) error
	// Unplug removes a disk Plug attached.
	Unplug(ctx context.Context, serial string) error
	// BlockIOErrors are the BLOCK_IO_ERROR events so far, in order.
	BlockIOErrors() []BlockIOError
	// Console is the tail of the guest's serial console.
	Console() string
	// Close powers the guest off cleanly if it can, then releases it.
	Close(ctx context.Context) error
	// Kill ends the guest at once and releases it. Safe to repeat.
	Kill()
}

// NBD is where a disk's NBD export is served: a unix socket path, or a
// TCP host and port (for a guest on another host).
type NBD struct {
	Socket string // unix socket path; or
	Host   string // TCP host the guest's host reaches this one on
	Port   int
	Export string // export name
}

// String names the export for error messages: unix:PATH or HOST:PORT,
// with the export name.
func (n NBD) String() string {
	where := "unix:" + n.Socket
	if n.Socket == "" {
		where = net.JoinHostPort(n.Host, strconv.Itoa(n.Port))
	}
	return fmt.Sprintf("NBD %s export %q", where, n.Export)
}

// Check reports an NBD source that names no place or two.
func (n NBD) Check() error {
	switch {
	case n.Socket != "" && n.Host != "":
		return fmt.Errorf("%v: both a unix socket and a TCP host", n)
	case n.Socket == "" && (n.Host == "" || n.Port <= 0 || n.Port > 65535):
		return fmt.Errorf("NBD source %+v: want a unix socket, or a TCP host and port", n)
	}
	return nil
}

// DiskOptions are the virtio-blk properties of a plugged disk.
type DiskOptions struct {
	// BlockSize is the logical (and physical) block size in bytes; 0
	// keeps QEMU's default of 512.
	BlockSize uint32
	// NoDiscard plugs the disk in without VIRTIO_BLK_F_DISCARD: the guest
	// sees a queue with discard_max_bytes 0, and BLKDISCARD on it fails
	// with EOPNOTSUPP, as on a device that takes no discards.
	NoDiscard bool
}

// BlockIOError is a BLOCK_IO_ERROR event, with the serial of the disk it
// happened on.
type BlockIOError struct {
	Serial    string // the disk's serial ("" if the backend cannot tell)
	Node      string // the QEMU block node the event named
	Operation string // read or write
	Action    string // report
	Reason    string
}

// WaitDisk waits until m's agent lists a virtio disk with serial (the
// guest probed a disk just plugged in) and returns it; it gives up after
// 3 s (scaled).
func WaitDisk(ctx context.Context, m Machine, serial string) (proto.Disk, error) {
	deadline := time.Now().Add(m.Scale(3 * time.Second))
	for {
		disks, err := m.Agent().Disks(ctx)
		if err != nil {
			return proto.Disk{}, err
		}
		for _, dk := range disks {
			if dk.Serial == serial {
				return dk, nil
			}
		}
		if time.Now().After(deadline) {
			return proto.Disk{}, fmt.Errorf("disk %s: the guest did not see it", serial)
		}
		select {
		case <-ctx.Done():
			return proto.Disk{}, fmt.Errorf("disk %s: %w", serial, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
