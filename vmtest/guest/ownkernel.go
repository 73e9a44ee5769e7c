package guest

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// modulesRoot finds lib/modules/VERSION under dir, as `make modules_install
// INSTALL_MOD_PATH=dir` leaves it, or takes dir as that directory itself.
func modulesRoot(dir string) (root, version string, err error) {
	base := filepath.Join(dir, "lib", "modules")
	if ents, err := os.ReadDir(base); err == nil {
		var vs []string
		for _, e := range ents {
			if e.IsDir() {
				vs = append(vs, e.Name())
			}
		}
		switch len(vs) {
		case 1:
			return filepath.Join(base, vs[0]), vs[0], nil
		case 0:
			return "", "", fmt.Errorf("modules %s: lib/modules holds no kernel version", dir)
		}
		return "", "", fmt.Errorf("modules %s: lib/modules holds %d kernel versions (%s): give DIR/lib/modules/VERSION", dir, len(vs), strings.Join(vs, ", "))
	}
	for _, marker := range []string{"modules.builtin", "modules.order", "kernel"} {
		if exists(filepath.Join(dir, marker)) {
			return dir, filepath.Base(dir), nil
		}
	}
	return "", "", fmt.Errorf("modules %s: no lib/modules/VERSION and no modules.builtin: want the INSTALL_MOD_PATH of make modules_install", dir)
}

// dirModules indexes the modules wanted needs from a modules directory:
// names come from file names, and only the modules in wanted's dependency
// closure are read (a full modules_install has thousands).
func dirModules(root string, wanted []string) (map[string]Module, error) {
	files := map[string]string{} // canonical name -> path relative to root
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "build" || d.Name() == "source") {
			return filepath.SkipDir
		}
		if !d.IsDir() && isModuleFile(d.Name()) {
			rel, _ := filepath.Rel(root, p)
			files[CanonicalModule(d.Name())] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("modules %s: %w", root, err)
	}
	idx := map[string]Module{}
	if b, err := os.ReadFile(filepath.Join(root, "modules.builtin")); err == nil {
		for _, n := range ParseBuiltin(b) {
			idx[n] = Module{Name: n, Builtin: true}
		}
	}
	queue := make([]string, 0, len(wanted))
	for _, w := range wanted {
		queue = append(queue, CanonicalModule(w))
	}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		if _, ok := idx[n]; ok {
			continue
		}
		rel, ok := files[n]
		if !ok {
			continue // LoadOrder names it
		}
		raw, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			return nil, err
		}
		ko, err := decompressModule(rel, raw)
		if err != nil {
			return nil, err
		}
		m, err := ReadModule(rel, ko)
		if err != nil {
			return nil, err
		}
		idx[n] = m
		queue = append(queue, m.Depends...)
	}
	return idx, nil
}

// ownFilesKernel is a user's kernel image and modules directory. The
// image is used as it is when it is a PVH vmlinux; a bzImage is unpacked
// to one (cached under its content hash) when its compression is xz, zstd
// or gzip, else booted as a bzImage.
func ownFilesKernel(ctx context.Context, cache string, spec KernelSpec, wanted []string, logf func(string, ...any)) (*Kernel, []Module, error) {
	root, version, err := modulesRoot(spec.Modules)
	if err != nil {
		return nil, nil, fmt.Errorf("kernel %s: %w", spec, err)
	}
	idx, err := dirModules(root, wanted)
	if err != nil {
		return nil, nil, fmt.Errorf("kernel %s: %w", spec, err)
	}
	order, err := LoadOrder(idx, wanted)
	if err != nil {
		return nil, nil, fmt.Errorf("kernel %s (modules %s): %w", spec.Image, root, err)
	}
	img, err := os.ReadFile(spec.Image)
	if err != nil {
		return nil, nil, fmt.Errorf("kernel %s: %w", spec.Image, err)
	}
	k := &Kernel{Version: version, Dir: root, Index: idx}
	if bytes.HasPrefix(img, []byte("\x7fELF")) {
		if v := bannerVersion(img); v != "" && v != version {
			return nil, nil, fmt.Errorf("kernel %s is %s, but the modules in %s are for %s", spec.Image, v, root, version)
		}
		if err := checkPVH(spec.Image); err != nil {
			return nil, nil, err
		}
		k.Vmlinux = spec.Image
		return k, order, nil
	}
	if v := bzVersion(img); v != "" && v != version {
		return nil, nil, fmt.Errorf("kernel %s is %s, but the modules in %s are for %s", spec.Image, v, root, version)
	}
	_, comp, err := BzPayload(img)
	if err != nil {
		return nil, nil, fmt.Errorf("kernel %s: not a vmlinux ELF, and %w", spec.Image, err)
	}
	if comp == "" {
		logf("kernel %s: %v; QEMU boots the bzImage itself", spec.Image, errCompression)
		k.Vmlinux = spec.Image
		return k, order, nil
	}
	sum, err := fileHash(spec.Image)
	if err != nil {
		return nil, nil, err
	}
	dir := filepath.Join(cache, "kernel", "own-"+version+"-"+sum)
	vmlinux := filepath.Join(dir, "vmlinux")
	if !exists(vmlinux) {
		unlock, err := LockFile(ctx, filepath.Join(cache, "kernel", ".lock"))
		if err != nil {
			return nil, nil, err
		}
		defer unlock()
		logf("unpacking %s (%s)", spec.Image, comp)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, nil, err
		}
		if err := extractVmlinux(spec.Image, vmlinux); err != nil {
			return nil, nil, err
		}
	}
	k.Vmlinux = vmlinux
	return k, order, nil
}
