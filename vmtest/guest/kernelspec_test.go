package guest

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"
)

func TestParseKernel(t *testing.T) {
	dir := t.TempDir()
	deb := filepath.Join(dir, "linux-image-6.9.0-mine_6.9.0-1_amd64.deb")
	img := filepath.Join(dir, "bzImage")
	mods := filepath.Join(dir, "mods")
	for _, p := range []string{deb, img} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(mods, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		spec string
		want KernelSpec
		err  string
	}{
		{"6.1", KernelSpec{Release: "6.1"}, ""},
		{"6.12-rt", KernelSpec{Release: "6.12-rt"}, ""},
		{" 6.12 ", KernelSpec{Release: "6.12"}, ""},
		{deb, KernelSpec{Deb: deb}, ""},
		{img + "," + mods, KernelSpec{Image: img, Modules: mods}, ""},
		{"", KernelSpec{}, "empty spec"},
		{"6.13", KernelSpec{}, "not one of 6.1, 6.12, 6.1-rt, 6.12-rt"},
		{"rt", KernelSpec{}, "not one of"},
		{img, KernelSpec{}, "needs its modules: give IMAGE,MODDIR"},
		{dir, KernelSpec{}, "is a directory"},
		{filepath.Join(dir, "none.deb"), KernelSpec{}, "no such file"},
		{img + "," + filepath.Join(dir, "nomods"), KernelSpec{}, "no such file"},
		{img + "," + img, KernelSpec{}, "is not a directory"},
		{"," + mods, KernelSpec{}, "both paths"},
	} {
		got, err := ParseKernel(tc.spec)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseKernel(%q) = %v, %v; want error containing %q", tc.spec, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseKernel(%q) = %+v, %v; want %+v", tc.spec, got, err, tc.want)
		}
	}
	t.Setenv("SNAPLAB_KERNEL", "")
	if k, err := KernelFromEnv(); err != nil || k.Release != DefaultKernel {
		t.Errorf("default kernel: %+v %v", k, err)
	}
	t.Setenv("SNAPLAB_KERNEL", "6.7")
	if _, err := KernelFromEnv(); err == nil || !strings.Contains(err.Error(), "SNAPLAB_KERNEL") {
		t.Errorf("bad SNAPLAB_KERNEL: %v", err)
	}
}

func TestBuiltinModules(t *testing.T) {
	got := ParseBuiltin([]byte("kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/char/virtio_console.ko\n\nkernel/x/dm-mod.ko.xz\n"))
	if want := []string{"virtio_pci", "virtio_console", "dm_mod"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseBuiltin = %v, want %v", got, want)
	}
	idx := map[string]Module{
		"virtio":      {Name: "virtio", Builtin: true},
		"virtio_pci":  {Name: "virtio_pci", Builtin: true, Depends: []string{"virtio"}},
		"virtio_blk":  {Name: "virtio_blk", Path: "kernel/virtio_blk.ko", Depends: []string{"virtio"}},
		"dm_mod":      {Name: "dm_mod", Path: "kernel/dm-mod.ko"},
		"dm_snapshot": {Name: "dm_snapshot", Path: "kernel/dm-snapshot.ko", Depends: []string{"dm_mod"}},
	}
	order, err := LoadOrder(idx, []string{"virtio_pci", "virtio_blk", "dm_snapshot"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range order {
		names = append(names, m.Name)
	}
	// Built-in modules have nothing to load.
	if want := []string{"virtio_blk", "dm_mod", "dm_snapshot"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("load order %v, want %v", names, want)
	}
	delete(idx, "dm_snapshot")
	if _, err := LoadOrder(idx, []string{"dm_snapshot"}); err == nil || !strings.Contains(err.Error(), "CONFIG_DM_SNAPSHOT") {
		t.Fatalf("missing dm_snapshot: %v", err)
	}
}

func TestDecompressModule(t *testing.T) {
	elf := []byte("\x7fELF module bytes")
	for _, c := range []struct{ ext, tool string }{{".xz", "xz"}, {".zst", "zstd"}, {".gz", "gzip"}} {
		if _, err := exec.LookPath(c.tool); err != nil {
			continue
		}
		cmd := exec.Command(c.tool, "-c")
		cmd.Stdin = bytes.NewReader(elf)
		packed, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		got, err := decompressModule("m.ko"+c.ext, packed)
		if err != nil || !bytes.Equal(got, elf) {
			t.Errorf("%s: %q %v", c.ext, got, err)
		}
		if _, err := decompressModule("m.ko"+c.ext, []byte("garbage")); err == nil || !strings.Contains(err.Error(), "m.ko"+c.ext) {
			t.Errorf("%s garbage: %v", c.ext, err)
		}
	}
	if _, err := decompressModule("m.ko.bz2", elf); err == nil {
		t.Error("bz2 accepted")
	}
}

func FuzzBzPayload(f *testing.F) {
	hdr := make([]byte, 0x400)
	copy(hdr[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(hdr[0x206:], 0x20f)
	hdr[0x1f1] = 0
	f.Add(hdr)
	f.Add([]byte("MZ"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, comp, err := BzPayload(b)
		if err == nil && (len(p) == 0 || comp != "" && len(p) < 2) {
			t.Fatalf("payload %d bytes, %q", len(p), comp)
		}
		_ = bzVersion(b)
		_ = bannerVersion(b)
	})
}

// TestOwnKernel hands Prepare a Debian kernel the way a user hands over
// their own build: as its .deb (make bindeb-pkg), and unpacked as a
// bzImage or vmlinux plus a modules directory (make modules_install),
// with a compressed module; and checks the errors for a kernel without
// dm-snapshot and for modules of another version.
func TestOwnKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("unpacks a kernel package; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	stock, err := Prepare(ctx, WithKernel(DefaultKernel), WithLogf(t.Logf))
	if err != nil {
		t.Fatal(err)
	}
	debs, _ := filepath.Glob(filepath.Join(stock.CacheDir, "debs", "linux-image-"+stock.KernelVersion+"_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("cached .deb of %s: %v", stock.KernelVersion, debs)
	}
	deb := debs[0]

	t.Run("deb", func(t *testing.T) {
		img, err := Prepare(ctx, WithKernel(deb), WithLogf(t.Logf))
		if err != nil {
			t.Fatal(err)
		}
		if img.KernelVersion != stock.KernelVersion || img.Release != "" || img.KernelSpec != deb {
			t.Errorf("image %+v", img)
		}
		if !strings.Contains(img.Kernel, "/own-"+stock.KernelVersion+"-") {
			t.Errorf("own kernel cached at %s, want an own-VERSION-HASH directory", img.Kernel)
		}
		if err := checkPVH(img.Kernel); err != nil {
			t.Error(err)
		}
		if !reflect.DeepEqual(img.Modules, stock.Modules) {
			t.Errorf("modules %v, want %v", img.Modules, stock.Modules)
		}
	})

	root := t.TempDir()
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x: %v: %s", err, out)
	}
	vmlinuz := filepath.Join(root, "boot", "vmlinuz-"+stock.KernelVersion)
	snap := filepath.Join(root, "lib", "modules", stock.KernelVersion, "kernel", "drivers", "md", "dm-snapshot.ko")
	if out, err := exec.Command("xz", snap).CombinedOutput(); err != nil { // leaves dm-snapshot.ko.xz
		t.Fatalf("xz: %v: %s", err, out)
	}
	for _, image := range []string{vmlinuz, stock.Kernel} {
		t.Run("files "+filepath.Base(image), func(t *testing.T) {
			img, err := Prepare(ctx, WithKernel(image+","+root), WithLogf(t.Logf))
			if err != nil {
				t.Fatal(err)
			}
			if img.KernelVersion != stock.KernelVersion || !reflect.DeepEqual(img.Modules, stock.Modules) {
				t.Errorf("image %+v, want version %s modules %v", img, stock.KernelVersion, stock.Modules)
			}
			if err := checkPVH(img.Kernel); err != nil {
				t.Error(err)
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
			found := false
			for _, r := range recs {
				if r.Name == "lib/modules/"+stock.KernelVersion+"/dm-snapshot.ko" {
					head := make([]byte, 4)
					r.ReadAt(head, 0)
					found = string(head) == "\x7fELF"
				}
			}
			if !found {
				t.Error("initramfs lacks the decompressed dm-snapshot.ko")
			}
		})
	}

	// No dm-snapshot: the error names the option.
	if err := os.Rename(snap+".xz", snap+".xz.off"); err != nil {
		t.Fatal(err)
	}
	_, err = Prepare(ctx, WithKernel(vmlinuz+","+root))
	if err == nil || !strings.Contains(err.Error(), `module "dm_snapshot" not found`) || !strings.Contains(err.Error(), "CONFIG_DM_SNAPSHOT") {
		t.Errorf("kernel without dm-snapshot: %v", err)
	}
	os.Rename(snap+".xz.off", snap+".xz")
	// Modules of another build.
	other := filepath.Join(root, "lib", "modules", "6.99.0-other")
	if err := os.Rename(filepath.Join(root, "lib", "modules", stock.KernelVersion), other); err != nil {
		t.Fatal(err)
	}
	_, err = Prepare(ctx, WithKernel(vmlinuz+","+root))
	if err == nil || !strings.Contains(err.Error(), "is "+stock.KernelVersion+", but the modules in") || !strings.Contains(err.Error(), "6.99.0-other") {
		t.Errorf("modules of another version: %v", err)
	}
}

func TestCachedMatches(t *testing.T) {
	for _, tc := range []struct {
		version, meta string
		want          bool
	}{
		{"6.1.0-57-amd64", "linux-image-amd64", true},
		{"6.1.0-57-rt-amd64", "linux-image-amd64", false},
		{"6.1.0-57-rt-amd64", "linux-image-rt-amd64", true},
		{"6.12.117+deb12-amd64", "linux-image-amd64", false},
		{"6.12.117+deb12-amd64", "linux-image-6.12-amd64", true},
		{"6.12.117+deb12-rt-amd64", "linux-image-6.12-rt-amd64", true},
		{"own-6.1.0-57-amd64-abc", "linux-image-amd64", false},
		{"6.1.0-57-amd64", "linux-image-other", false},
	} {
		if got := cachedMatches(tc.version, tc.meta); got != tc.want {
			t.Errorf("cachedMatches(%q, %q) = %v", tc.version, tc.meta, got)
		}
	}
}
