package guestexec

import (
	"context"
	"fmt"

	"snaplab/vmtest/guest"
	"snaplab/vmtest/libvirt"
	"snaplab/vmtest/machine"
	"snaplab/vmtest/qemu"
)

// Backend starts the guests executors run on: QEMU started by this
// process, or a libvirt daemon's domain. Executors do not care which.
type Backend interface {
	// Name is "qemu" or "libvirt".
	Name() string
	// Start boots a guest of img with hot-plug slots, returning once its
	// agent channel is connected.
	Start(ctx context.Context, img *guest.Image) (machine.Machine, error)
}

// QEMU is the backend that runs QEMU itself, with Opts.
type QEMU struct{ Opts []qemu.Option }

func (QEMU) Name() string { return "qemu" }

func (b QEMU) Start(ctx context.Context, img *guest.Image) (machine.Machine, error) {
	return qemu.Start(ctx, append([]qemu.Option{qemu.WithImage(img), qemu.WithHotplugSlots(8)}, b.Opts...)...)
}

// Libvirt is the backend that defines domains on a libvirt daemon, with
// Opts (libvirt.WithURI among them).
type Libvirt struct{ Opts []libvirt.Option }

func (Libvirt) Name() string { return "libvirt" }

func (b Libvirt) Start(ctx context.Context, img *guest.Image) (machine.Machine, error) {
	return libvirt.Start(ctx, append([]libvirt.Option{libvirt.WithImage(img), libvirt.WithHotplugSlots(8)}, b.Opts...)...)
}

// BootOn prepares the image a guest of mode m needs (ImageOptions plus
// image), starts it on backend b and waits for its agent. The caller
// closes it.
func BootOn(ctx context.Context, b Backend, m Mode, image []guest.Option) (machine.Machine, error) {
	img, err := guest.Prepare(ctx, append(ImageOptions(m), image...)...)
	if err != nil {
		return nil, fmt.Errorf("guest image: %w", err)
	}
	vm, err := b.Start(ctx, img)
	if err != nil {
		return nil, fmt.Errorf("boot (%s): %w", b.Name(), err)
	}
	if _, err := vm.Ready(ctx); err != nil {
		vm.Kill()
		return nil, fmt.Errorf("boot (%s): %w", b.Name(), err)
	}
	return vm, nil
}
