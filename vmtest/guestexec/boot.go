package guestexec

import (
	"context"

	"snaplab/vmtest/guest"
	"snaplab/vmtest/qemu"
)

// Boot prepares the image a guest of mode m needs (ImageOptions plus
// image), starts it with hot-plug slots and vmOpts, and waits for its
// agent: the guest every caller of an executor of mode m (the CLI, the
// suites, the benchmarks) boots the same way. The caller closes it.
func Boot(ctx context.Context, m Mode, image []guest.Option, vmOpts ...qemu.Option) (*qemu.VM, error) {
	vm, err := BootOn(ctx, QEMU{Opts: vmOpts}, m, image)
	if err != nil {
		return nil, err
	}
	return vm.(*qemu.VM), nil
}
