package qemu

import (
	"context"
	"fmt"

	"snaplab/vmtest/guest/proto"
	"snaplab/vmtest/machine"
)

// AttachNBD hot-plugs a virtio disk served over NBD on a unix socket:
// blockdev-add (driver nbd) then device_add virtio-blk-pci on a free
// pcie-root-port, with serial= and id= set to serial and
// rerror/werror=report, so guest I/O errors reach the guest as EIO and
// QEMU reports BLOCK_IO_ERROR instead of pausing. The node has
// discard=unmap: the guest's discards reach the export as NBD_CMD_TRIM
// (QEMU's default, discard=ignore, completes them doing nothing). The guest agent finds
// the disk by its serial once the guest kernel has probed it.
func (vm *VM) AttachNBD(ctx context.Context, serial, socketPath, exportName string) error {
	return vm.AttachNBDWith(ctx, serial, socketPath, exportName, DiskOptions{})
}

// AttachNBDBlockSize is AttachNBD with the disk's logical (and physical)
// block size in bytes; 0 keeps QEMU's default of 512.
func (vm *VM) AttachNBDBlockSize(ctx context.Context, serial, socketPath, exportName string, lbs uint32) error {
	return vm.AttachNBDWith(ctx, serial, socketPath, exportName, DiskOptions{BlockSize: lbs})
}

// DiskOptions are the virtio-blk properties of a disk AttachNBDWith plugs
// in (machine.DiskOptions).
type DiskOptions = machine.DiskOptions

// AttachNBDWith is AttachNBD with the disk's properties o.
func (vm *VM) AttachNBDWith(ctx context.Context, serial, socketPath, exportName string, o DiskOptions) error {
	return vm.Plug(ctx, serial, machine.NBD{Socket: socketPath, Export: exportName}, o)
}

// Plug is AttachNBDWith for an export on a unix socket or over TCP
// (machine.Machine; see machine.Hotplug).
func (vm *VM) Plug(ctx context.Context, serial string, src machine.NBD, o DiskOptions) error {
	if vm.opts.Machine == "microvm" {
		return fmt.Errorf("attach %s: microvm has no hot-plug; use WithBootDisk", serial)
	}
	return vm.hp.Plug(ctx, serial, src, o)
}

// Detach unplugs a disk attached by AttachNBD: device_del, wait for the
// guest to release it (DEVICE_DELETED), then blockdev-del, which closes
// the NBD connection.
func (vm *VM) Detach(ctx context.Context, serial string) error { return vm.hp.Unplug(ctx, serial) }

// Unplug is Detach (machine.Machine).
func (vm *VM) Unplug(ctx context.Context, serial string) error { return vm.Detach(ctx, serial) }

// NodeName is the QMP block node of a disk, as BLOCK_IO_ERROR names it.
func (vm *VM) NodeName(serial string) string { return nodeName(serial) }

// WaitDisk waits until the guest agent lists a virtio disk with serial (the
// guest has probed a disk just attached) and returns it.
func (vm *VM) WaitDisk(ctx context.Context, serial string) (proto.Disk, error) {
	return machine.WaitDisk(ctx, vm, serial)
}

var _ machine.Machine = (*VM)(nil)
