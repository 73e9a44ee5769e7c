package guest

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"
)

// TestPrepare fetches the Debian kernel (once; later runs hit the cache),
// builds the agent and the initramfs, and checks what went in.
func TestPrepare(t *testing.T) {
	if testing.Short() {
		t.Skip("fetches a kernel package; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t0 := time.Now()
	img, err := Prepare(ctx, WithLogf(t.Logf), WithFile("/etc/snaplab-test", []byte("hello\n"), 0o600))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("prepared %+v in %v", img, time.Since(t0))
	if err := checkPVH(img.Kernel); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(img.KernelVersion, "-amd64") {
		t.Errorf("kernel version %q", img.KernelVersion)
	}
	// Dependencies come before their users.
	pos := map[string]int{}
	for i, m := range img.Modules {
		pos[m] = i
	}
	for _, pair := range [][2]string{{"virtio_ring", "virtio"}, {"virtio", "virtio_blk"}, {"virtio", "virtio_console"},
		{"dm_mod", "dm_bufio"}, {"dm_bufio", "dm_snapshot"}, {"virtio_pci_modern_dev", "virtio_pci"}} {
		a, aok := pos[pair[0]]
		b, bok := pos[pair[1]]
		if !aok || !bok || a >= b {
			t.Errorf("module order %v: want %s before %s", img.Modules, pair[0], pair[1])
		}
	}

	f, err := os.Open(img.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(f))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]cpio.Record{}
	for _, r := range recs {
		got[r.Name] = r
	}
	for _, name := range []string{"init", "dev/console", "lib/modules/snaplab.order", "etc/snaplab-test",
		"lib/modules/" + img.KernelVersion + "/dm-snapshot.ko", "lib/modules/" + img.KernelVersion + "/virtio_blk.ko"} {
		if _, ok := got[name]; !ok {
			t.Errorf("initramfs lacks %s", name)
		}
	}
	if r := got["dev/console"]; r.Mode&cpio.S_IFMT != cpio.S_IFCHR || r.Rmajor != 5 || r.Rminor != 1 {
		t.Errorf("dev/console: %v", r.Info)
	}
	if r := got["init"]; r.Mode&0o111 == 0 || r.FileSize < 100000 {
		t.Errorf("init: %v", r.Info)
	}
	order := make([]byte, got["lib/modules/snaplab.order"].FileSize)
	got["lib/modules/snaplab.order"].ReadAt(order, 0)
	if lines := strings.Split(strings.TrimSpace(string(order)), "\n"); len(lines) != len(img.Modules) {
		t.Errorf("order file has %d lines for %d modules", len(lines), len(img.Modules))
	}
	data := make([]byte, 6)
	got["etc/snaplab-test"].ReadAt(data, 0)
	if !bytes.Equal(data, []byte("hello\n")) {
		t.Errorf("extra file content %q", data)
	}

	// Unchanged inputs: same image, not rewritten.
	st1, _ := os.Stat(img.Initramfs)
	img2, err := Prepare(ctx, WithFile("/etc/snaplab-test", []byte("hello\n"), 0o600))
	if err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(img2.Initramfs)
	if img2.Initramfs != img.Initramfs || !st1.ModTime().Equal(st2.ModTime()) {
		t.Errorf("second Prepare rebuilt the image: %s %v vs %s %v", img.Initramfs, st1.ModTime(), img2.Initramfs, st2.ModTime())
	}
	// A changed extra file changes the image.
	// So does an executable, which brings its libraries and loader.
	img3, err := Prepare(ctx, WithFile("/etc/snaplab-test", []byte("other\n"), 0o600), WithExecutable("/usr/sbin/dmsetup"))
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(img3.Initramfs)
	if img3.Initramfs == img.Initramfs {
		t.Errorf("different content, same image %s", img3.Initramfs)
	}
	f3, err := os.Open(img3.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	defer f3.Close()
	recs3, err := cpio.ReadAllRecords(cpio.Newc.Reader(f3))
	if err != nil {
		t.Fatal(err)
	}
	var names3 []string
	for _, r := range recs3 {
		names3 = append(names3, r.Name)
	}
	all := strings.Join(names3, " ")
	for _, want := range []string{"usr/sbin/dmsetup", "libdevmapper.so", "libc.so.6", "ld-linux-x86-64.so.2"} {
		if !strings.Contains(all, want) {
			t.Errorf("initramfs with dmsetup lacks %s: %s", want, all)
		}
	}
}
