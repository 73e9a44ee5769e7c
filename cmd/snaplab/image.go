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
	fs := newFlags("image [-kernel SPEC|all]", "image [-kernel SPEC|all]\n\nFetches a kernel into the cache ($SNAPLAB_CACHE, default .cache/) and builds the\nguest initramfs of the vm and kernel executors. Nothing is rebuilt when nothing changed.", stderr)
	kernel := kernelFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "snaplab image: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	specs := []string{*kernel}
	if *kernel == "all" {
		specs = guest.ReleaseNames()
	} else if err := checkKernel(*kernel, "kernel"); err != nil {
		fmt.Fprintf(stderr, "snaplab image: %v\n", err)
		return 2
	}
	ctx := context.Background()
	logf := guest.WithLogf(func(f string, a ...any) { fmt.Fprintf(stderr, f+"\n", a...) })
	for _, k := range specs {
		for _, m := range []guestexec.Mode{guestexec.GuestIO, guestexec.GuestKernel} {
			opts := append(guestexec.ImageOptions(m), logf)
			if k != "" {
				opts = append(opts, guest.WithKernel(k))
			}
			img, err := guest.Prepare(ctx, opts...)
			if err != nil {
				fmt.Fprintf(stderr, "snaplab image: %s guest: %v\n", m, err)
				return 1
			}
			fmt.Fprintf(stdout, "%s guest: kernel %s (%s), initramfs %s\n", m, img.KernelVersion, img.Kernel, img.Initramfs)
		}
	}
	return 0
}
