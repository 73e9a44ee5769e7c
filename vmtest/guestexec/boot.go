package guestexec

import (
	"context"
	"fmt"

	"snaplab/vmtest/guest"
	"snaplab/vmtest/qemu"
)

// Boot prepares the image a guest of mode m needs (ImageOptions plus
// image), starts it with hot-plug slots and vmOpts, and waits for its
// agent: the guest every caller of an executor of mode m (the CLI, the
// suites, the benchmarks) boots the same way. The caller closes it.
func Boot(ctx context.Context, m Mode, image []guest.Option, vmOpts ...qemu.Option) (*qemu.VM, error) {
	img, err := guest.Prepare(ctx, append(ImageOptions(m), image...)...)
	if err != nil {
		return nil, fmt.Errorf("guest image: %w", err)
	}
	vm, err := qemu.Start(ctx, append([]qemu.Option{qemu.WithImage(img), qemu.WithHotplugSlots(8)}, vmOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	if _, err := vm.Ready(ctx); err != nil {
		vm.Kill()
		return nil, fmt.Errorf("boot: %w", err)
	}
	return vm, nil
}
