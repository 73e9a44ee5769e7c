package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"snaplab/vmtest/guest"
	"snaplab/vmtest/guestexec"
)

// cmdImage fetches Debian's kernel and builds the guest images the vm and
// kernel executors boot, into the cache (make deps runs it).
func cmdImage(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("image", "image\n\nFetches Debian's current linux-image-amd64 kernel into the cache ($SNAPLAB_CACHE,\ndefault .cache/) and builds the guest initramfs of the vm and kernel executors.\nNothing is rebuilt when nothing changed.", stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	ctx := context.Background()
	logf := guest.WithLogf(func(f string, a ...any) { fmt.Fprintf(stderr, f+"\n", a...) })
	for _, m := range []guestexec.Mode{guestexec.GuestIO, guestexec.GuestKernel} {
		img, err := guest.Prepare(ctx, append(guestexec.ImageOptions(m), logf)...)
		if err != nil {
			fmt.Fprintf(stderr, "snaplab image: %s guest: %v\n", m, err)
			return 1
		}
		fmt.Fprintf(stdout, "%s guest: kernel %s (%s), initramfs %s\n", m, img.KernelVersion, img.Kernel, img.Initramfs)
	}
	return 0
}
