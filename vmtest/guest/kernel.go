package guest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Kernel is a Debian kernel unpacked in the cache: an uncompressed
// vmlinux (PVH-bootable) and the modules extracted so far.
type Kernel struct {
	Version string // e.g. 6.1.0-56-amd64
	Package string // e.g. linux-image-6.1.0-56-amd64
	Dir     string // cache directory of this version
	Vmlinux string
	// Index holds every module of the package with its dependencies.
	Index map[string]Module
}

// ParseAptDepends extracts the kernel image package from the output of
// `apt-cache depends linux-image-amd64`: the first "Depends:" naming a
// linux-image-* package. Alternatives ("|Depends:") and virtual packages
// (<...>) are skipped.
func ParseAptDepends(out []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		rest, ok := strings.CutPrefix(line, "Depends:")
		if !ok {
			continue
		}
		pkg := strings.TrimSpace(rest)
		if strings.HasPrefix(pkg, "linux-image-") && !strings.ContainsAny(pkg, "<>* \t") {
			return pkg, nil
		}
	}
	return "", fmt.Errorf("no \"Depends: linux-image-...\" line in apt-cache output %.200q", out)
}

// resolveKernelPackage asks apt which kernel image the meta package meta
// depends on today.
func resolveKernelPackage(ctx context.Context, meta string, logf func(string, ...any)) (string, error) {
	run := func() ([]byte, error) {
		return exec.CommandContext(ctx, "apt-cache", "depends", meta).CombinedOutput()
	}
	out, err := run()
	pkg, perr := ParseAptDepends(out)
	if err == nil && perr == nil {
		return pkg, nil
	}
	if os.Geteuid() == 0 {
		logf("apt-cache depends %s failed (%v); running apt-get update", meta, firstErr(err, perr))
		if uout, uerr := exec.CommandContext(ctx, "apt-get", "update", "-qq", "-o", "DPkg::Lock::Timeout=600").CombinedOutput(); uerr != nil {
			return "", fmt.Errorf("apt-get update: %v: %s", uerr, uout)
		}
		out, err = run()
		if pkg, perr = ParseAptDepends(out); err == nil && perr == nil {
			return pkg, nil
		}
	}
	return "", fmt.Errorf("resolving %s with apt-cache: %w", meta, firstErr(err, perr))
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// newestCachedKernel returns the newest kernel version already complete in
// the cache, for use when apt cannot be asked.
func newestCachedKernel(cache, meta string) string {
	ents, _ := os.ReadDir(filepath.Join(cache, "kernel"))
	var vs []string
	for _, e := range ents {
		if !cachedMatches(e.Name(), meta) {
			continue
		}
		if _, err := os.Stat(filepath.Join(cache, "kernel", e.Name(), "modules.json")); err == nil {
			vs = append(vs, e.Name())
		}
	}
	if len(vs) == 0 {
		return ""
	}
	sort.Strings(vs)
	return vs[len(vs)-1]
}

// cachedMatches reports whether a cached kernel version is a build of the
// release meta stands for (Releases: its series and whether it is RT).
func cachedMatches(version, meta string) bool {
	for _, r := range Releases {
		if r.Meta == meta {
			return strings.HasPrefix(version, r.Series+".") && strings.HasSuffix(version, "-rt-amd64") == r.RT
		}
	}
	return false
}

// LockFile takes an exclusive flock on path, creating it and its
// directory; unlock with the returned function. It lets concurrent test
// processes share the cache (images here, accelerator verdicts in
// vmtest/qemu).
func LockFile(ctx context.Context, path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- unix.Flock(int(f.Fd()), unix.LOCK_EX) }()
	select {
	case err := <-done:
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
	case <-ctx.Done():
		f.Close() // unblocks nothing, but the lock dies with the fd once flock returns
		return nil, fmt.Errorf("waiting for lock %s: %w", path, ctx.Err())
	}
	return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

// debKernel is a kernel package to unpack into the cache: a Debian
// package fetched with apt, or a user's .deb.
type debKernel struct {
	version string // the kernel release, as under /lib/modules
	dir     string // its cache directory
	deb     func(ctx context.Context) (string, error)
}

// aptKernel is Debian's package pkg, fetched with apt-get download.
func aptKernel(cache, pkg string, logf func(string, ...any)) debKernel {
	version := strings.TrimPrefix(pkg, "linux-image-")
	return debKernel{version: version, dir: filepath.Join(cache, "kernel", version),
		deb: func(ctx context.Context) (string, error) { return downloadDeb(ctx, cache, pkg, logf) }}
}

// ownDebKernel is a user's kernel package (make bindeb-pkg), cached under
// its content hash: a rebuilt kernel keeps its version but not its hash.
func ownDebKernel(ctx context.Context, cache, deb string) (debKernel, error) {
	out, err := exec.CommandContext(ctx, "dpkg-deb", "-f", deb, "Package").CombinedOutput()
	if err != nil {
		return debKernel{}, fmt.Errorf("kernel %s: dpkg-deb -f: %v: %s", deb, err, bytes.TrimSpace(out))
	}
	pkg := strings.TrimSpace(string(out))
	version, ok := strings.CutPrefix(pkg, "linux-image-")
	if !ok || version == "" || strings.HasSuffix(version, "-dbg") {
		return debKernel{}, fmt.Errorf("kernel %s: package %q is not a kernel image (want linux-image-VERSION, as make bindeb-pkg names it)", deb, pkg)
	}
	sum, err := fileHash(deb)
	if err != nil {
		return debKernel{}, fmt.Errorf("kernel %s: %w", deb, err)
	}
	return debKernel{version: version, dir: filepath.Join(cache, "kernel", "own-"+version+"-"+sum),
		deb: func(context.Context) (string, error) { return deb, nil }}, nil
}

// fetchKernel makes sure the cache holds the package's vmlinux, module
// index and the files of the modules in wanted's dependency closure.
func fetchKernel(ctx context.Context, cache string, src debKernel, wanted []string, logf func(string, ...any)) (*Kernel, []Module, error) {
	version, dir := src.version, src.dir
	unlock, err := LockFile(ctx, filepath.Join(cache, "kernel", ".lock"))
	if err != nil {
		return nil, nil, err
	}
	defer unlock()

	k := &Kernel{Version: version, Package: "linux-image-" + version, Dir: dir, Vmlinux: filepath.Join(dir, "vmlinux")}
	if idx, err := readIndex(filepath.Join(dir, "modules.json")); err == nil {
		k.Index = idx
		order, err := LoadOrder(idx, wanted)
		if err != nil {
			return nil, nil, fmt.Errorf("kernel %s: %w", version, err)
		}
		if missing := missingModules(dir, order); len(missing) == 0 && exists(k.Vmlinux) {
			return k, order, nil
		}
	}

	deb, err := src.deb(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	logf("unpacking %s", filepath.Base(deb))
	wantSet := map[string]bool{}
	for _, w := range wanted {
		wantSet[CanonicalModule(w)] = true
	}
	keep := func(m Module) bool { return wantSet[m.Name] }
	idx, err := scanDeb(ctx, deb, dir, version, !exists(k.Vmlinux), keep)
	if err != nil {
		return nil, nil, err
	}
	order, err := LoadOrder(idx, wanted)
	if err != nil {
		return nil, nil, fmt.Errorf("kernel %s (%s): %w", version, deb, err)
	}
	if missing := missingModules(dir, order); len(missing) > 0 {
		// Dependencies seen before we knew they were needed.
		need := map[string]bool{}
		for _, m := range missing {
			need[m.Name] = true
		}
		if _, err := scanDeb(ctx, deb, dir, version, false, func(m Module) bool { return need[m.Name] }); err != nil {
			return nil, nil, err
		}
		if missing := missingModules(dir, order); len(missing) > 0 {
			return nil, nil, fmt.Errorf("kernel %s: module %s not extracted from %s", version, missing[0].Path, deb)
		}
	}
	if !exists(k.Vmlinux) {
		if err := extractVmlinux(filepath.Join(dir, "vmlinuz"), k.Vmlinux); err != nil {
			return nil, nil, err
		}
		os.Remove(filepath.Join(dir, "vmlinuz"))
	}
	b, err := json.Marshal(idx)
	if err != nil {
		return nil, nil, err
	}
	if err := writeAtomic(filepath.Join(dir, "modules.json"), b, 0o644); err != nil {
		return nil, nil, err
	}
	k.Index = idx
	return k, order, nil
}

func readIndex(path string) (map[string]Module, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	idx := map[string]Module{}
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("module index %s: %w", path, err)
	}
	return idx, nil
}

func missingModules(dir string, order []Module) []Module {
	var out []Module
	for _, m := range order {
		if !m.Builtin && !exists(filepath.Join(dir, m.Path)) {
			out = append(out, m)
		}
	}
	return out
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// downloadDeb returns the cached .deb of pkg, fetching it with
// `apt-get download` (an exact package name, never a wildcard).
func downloadDeb(ctx context.Context, cache, pkg string, logf func(string, ...any)) (string, error) {
	debs := filepath.Join(cache, "debs")
	if m, _ := filepath.Glob(filepath.Join(debs, pkg+"_*.deb")); len(m) > 0 {
		sort.Strings(m)
		return m[len(m)-1], nil
	}
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(debs, ".download-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	// apt-get download as root would drop to _apt, which cannot write a
	// private temp dir; the sandbox user is switched off for this call.
	os.Chmod(tmp, 0o755)
	logf("apt-get download %s", pkg)
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s: %v: %s", pkg, err, out)
	}
	m, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(m) != 1 {
		return "", fmt.Errorf("apt-get download %s: expected one %s_*.deb, found %d", pkg, pkg, len(m))
	}
	dst := filepath.Join(debs, filepath.Base(m[0]))
	if err := os.Rename(m[0], dst); err != nil {
		return "", err
	}
	return dst, nil
}

// scanDeb streams the data archive of a kernel .deb (dpkg-deb
// --fsys-tarfile), indexing every module and writing into dir only the
// modules keep accepts (or that a kept module depends on, when seen
// later), plus boot/vmlinuz as dir/vmlinuz when wantVmlinuz.
func scanDeb(ctx context.Context, deb, dir, version string, wantVmlinuz bool, keep func(Module) bool) (map[string]Module, error) {
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w", deb, err)
	}
	defer func() { out.Close(); cmd.Wait() }()

	idx := map[string]Module{}
	kept := map[string]bool{}
	needed := map[string]bool{}
	tr := tar.NewReader(bufio.NewReaderSize(out, 1<<20))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w (%s)", deb, err, stderr.String())
		}
		name := strings.TrimPrefix(h.Name, "./")
		switch {
		case h.Typeflag != tar.TypeReg:
		case name == "boot/vmlinuz-"+version && wantVmlinuz:
			if err := writeFrom(filepath.Join(dir, "vmlinuz"), tr, 0o644); err != nil {
				return nil, err
			}
		case name == "boot/config-"+version:
			if err := writeFrom(filepath.Join(dir, "config"), tr, 0o644); err != nil {
				return nil, err
			}
		case name == "lib/modules/"+version+"/modules.builtin":
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, fmt.Errorf("reading %s from %s: %w", name, deb, err)
			}
			for _, n := range ParseBuiltin(b) {
				if _, ok := idx[n]; !ok {
					idx[n] = Module{Name: n, Builtin: true}
				}
			}
		case isModuleFile(name) && strings.HasPrefix(name, "lib/modules/"+version+"/"):
			raw, err := io.ReadAll(tr)
			if err != nil {
				return nil, fmt.Errorf("reading %s from %s: %w", name, deb, err)
			}
			// Compressed modules are kept decompressed: the guest's
			// finit_module gets a plain ELF.
			ko, err := decompressModule(name, raw)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", deb, err)
			}
			name = moduleFileName(name)
			m, err := ReadModule(name, ko)
			if err != nil {
				return nil, err
			}
			idx[m.Name] = m
			if keep(m) || needed[m.Name] {
				kept[m.Name] = true
				for _, d := range m.Depends {
					needed[d] = true
				}
				if err := writeAtomic(filepath.Join(dir, name), ko, 0o644); err != nil {
					return nil, err
				}
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("dpkg-deb --fsys-tarfile %s: %v: %s", deb, err, stderr.String())
	}
	if wantVmlinuz && !exists(filepath.Join(dir, "vmlinuz")) {
		return nil, fmt.Errorf("%s holds no boot/vmlinuz-%s", deb, version)
	}
	return idx, nil
}

func writeFrom(path string, r io.Reader, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if err := f.Chmod(mode); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

func writeAtomic(path string, b []byte, mode os.FileMode) error {
	return writeFrom(path, bytes.NewReader(b), mode)
}
