package qemu

import (
	"context"
	"errors"
	"fmt"
	"time"

	"snaplab/vmtest/guest/proto"
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
// in.
type DiskOptions struct {
	// BlockSize is the logical (and physical) block size in bytes; 0
	// keeps QEMU's default of 512.
	BlockSize uint32
	// NoDiscard plugs the disk in without VIRTIO_BLK_F_DISCARD
	// (discard=off): the guest sees a queue with discard_max_bytes 0, and
	// BLKDISCARD on it fails with EOPNOTSUPP, as on a device that takes no
	// discards. Without it the guest may discard (discard_max_bytes > 0).
	NoDiscard bool
}

// AttachNBDWith is AttachNBD with the disk's properties o.
func (vm *VM) AttachNBDWith(ctx context.Context, serial, socketPath, exportName string, o DiskOptions) error {
	lbs := o.BlockSize
	if err := checkSerial(serial); err != nil {
		return err
	}
	if vm.opts.Machine == "microvm" {
		return fmt.Errorf("attach %s: microvm has no hot-plug; use WithBootDisk", serial)
	}
	vm.slotMu.Lock()
	if _, ok := vm.nodes[serial]; ok {
		vm.slotMu.Unlock()
		return fmt.Errorf("attach %s: a disk with this serial is already attached", serial)
	}
	slot := -1
	for i, s := range vm.slots {
		if s == "" {
			slot = i
			break
		}
	}
	if slot < 0 {
		vm.slotMu.Unlock()
		return fmt.Errorf("attach %s: all %d hot-plug slots are in use (WithHotplugSlots)", serial, len(vm.slots))
	}
	node := nodeName(serial)
	vm.slots[slot] = serial
	vm.nodes[serial] = node
	vm.slotMu.Unlock()
	release := func() {
		vm.slotMu.Lock()
		vm.slots[slot] = ""
		delete(vm.nodes, serial)
		vm.slotMu.Unlock()
	}

	bd := map[string]any{"driver": "nbd", "node-name": node, "discard": "unmap",
		"server": map[string]any{"type": "unix", "path": socketPath}}
	if exportName != "" {
		bd["export"] = exportName
	}
	if _, err := vm.QMP(ctx, "blockdev-add", bd); err != nil {
		release()
		return fmt.Errorf("attach %s (NBD %s export %q): %w", serial, socketPath, exportName, err)
	}
	dev := map[string]any{"driver": "virtio-blk-pci", "id": serial, "drive": node, "serial": serial,
		"bus": fmt.Sprintf("hp%d", slot), "rerror": "report", "werror": "report"}
	if lbs != 0 {
		dev["logical_block_size"] = lbs
		dev["physical_block_size"] = lbs
	}
	if o.NoDiscard {
		dev["discard"] = false
	}
	if _, err := vm.QMP(ctx, "device_add", dev); err != nil {
		vm.QMP(ctx, "blockdev-del", map[string]any{"node-name": node})
		release()
		return fmt.Errorf("attach %s: %w", serial, err)
	}
	return nil
}

// Detach unplugs a disk attached by AttachNBD: device_del, wait for the
// guest to release it (DEVICE_DELETED), then blockdev-del, which closes
// the NBD connection.
func (vm *VM) Detach(ctx context.Context, serial string) error {
	vm.slotMu.Lock()
	node, ok := vm.nodes[serial]
	vm.slotMu.Unlock()
	if !ok {
		return fmt.Errorf("detach %s: no such disk attached", serial)
	}
	from := len(vm.Events())
	if _, err := vm.QMP(ctx, "device_del", map[string]any{"id": serial}); err != nil {
		return fmt.Errorf("detach %s: %w", serial, err)
	}
	wctx, cancel := context.WithTimeout(ctx, vm.Scale(5*time.Second))
	defer cancel()
	if _, _, err := vm.WaitEvent(wctx, from, "DEVICE_DELETED", func(e Event) bool { return e.Str("device") == serial }); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("detach %s: the guest did not release the device: %w", serial, err)
		}
		return fmt.Errorf("detach %s: %w", serial, err)
	}
	if _, err := vm.QMP(ctx, "blockdev-del", map[string]any{"node-name": node}); err != nil {
		return fmt.Errorf("detach %s: %w", serial, err)
	}
	vm.slotMu.Lock()
	for i, s := range vm.slots {
		if s == serial {
			vm.slots[i] = ""
		}
	}
	delete(vm.nodes, serial)
	vm.slotMu.Unlock()
	return nil
}

// NodeName is the QMP block node of a disk, as BLOCK_IO_ERROR names it.
func (vm *VM) NodeName(serial string) string { return nodeName(serial) }

// WaitDisk waits until the guest agent lists a virtio disk with serial (the
// guest has probed a disk just attached) and returns it.
func (vm *VM) WaitDisk(ctx context.Context, serial string) (proto.Disk, error) {
	deadline := time.Now().Add(vm.Scale(3 * time.Second))
	for {
		disks, err := vm.Agent().Disks(ctx)
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
		time.Sleep(20 * time.Millisecond)
	}
}
