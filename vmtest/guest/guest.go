// Package guest builds snaplab's test guest image: a Debian kernel and an
// initramfs whose /init is the agent (cmd/snaplab-guest).
//
// Prepare does, skipping every step whose result the cache already holds:
//
//  1. resolve the current kernel package from the meta package
//     (`apt-cache depends linux-image-amd64` → linux-image-6.1.0-N-amd64;
//     never a wildcard);
//  2. `apt-get download` it into $SNAPLAB_CACHE/debs and stream its data
//     archive (dpkg-deb --fsys-tarfile), extracting only boot/vmlinuz and
//     the wanted modules plus their dependencies (read from each .ko's
//     `depends=` modinfo) into $SNAPLAB_CACHE/kernel/VERSION;
//  3. decompress vmlinux out of vmlinuz (PVH boot skips the bzImage
//     decompressor, about 3 s under TCG);
//  4. build the agent (CGO_ENABLED=0 go build ./cmd/snaplab-guest) and
//     write the initramfs with u-root's pkg/cpio: /init, the modules,
//     /lib/modules/snaplab.order (load order), /dev/console, and any extra
//     files; it is stored under its content hash, so an unchanged image is
//     not rewritten.
//
// The cache is $SNAPLAB_CACHE, else <repo>/.cache where <repo> is the
// directory holding snaplab's go.mod, found upward from the working
// directory. Concurrent processes share it safely (flock).
package guest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// DefaultModules are loaded in every guest: the virtio transports (PCI for
// q35, MMIO for microvm), disks, the agent's serial port, and the
// device-mapper snapshot target.
var DefaultModules = []string{"virtio_pci", "virtio_mmio", "virtio_blk", "virtio_console", "dm_mod", "dm_bufio", "dm_snapshot"}

// Image is a bootable guest.
type Image struct {
	Kernel        string   // vmlinux (PVH)
	Initramfs     string   // newc cpio
	KernelVersion string   // e.g. 6.1.0-56-amd64
	Release       string   // the matrix's name (6.1, 6.12, ...), "" for a user's kernel
	KernelSpec    string   // the spec it was built from
	Modules       []string // load order
	CacheDir      string   // the cache it was built in (vmtest/qemu keeps its accelerator verdicts there)
}

// File is an extra file placed in the initramfs.
type File struct {
	Path string // absolute path in the guest
	Data []byte
	Mode os.FileMode // permission bits
}

type config struct {
	cache, repo string
	meta, pkg   string
	kernel      *KernelSpec
	modules     []string
	files       []File
	hostFiles   [][2]string // guest path, host path
	executables []string
	agent       string
	logf        func(string, ...any)
}

// Option configures Prepare.
type Option func(*config) error

// WithCacheDir sets the cache directory (default $SNAPLAB_CACHE or
// <repo>/.cache).
func WithCacheDir(dir string) Option { return func(c *config) error { c.cache = dir; return nil } }

// WithRepoRoot sets snaplab's source tree, used to build the agent and to
// find the default cache.
func WithRepoRoot(dir string) Option { return func(c *config) error { c.repo = dir; return nil } }

// WithKernel sets the kernel by spec (see ParseKernel): a name from
// Releases, a .deb, or IMAGE,MODDIR. The default is $SNAPLAB_KERNEL, else
// DefaultKernel.
func WithKernel(spec string) Option {
	return func(c *config) error {
		k, err := ParseKernel(spec)
		if err != nil {
			return err
		}
		c.kernel = &k
		return nil
	}
}

// WithKernelMeta sets the meta package resolved to a kernel (default: the
// kernel spec's).
func WithKernelMeta(meta string) Option { return func(c *config) error { c.meta = meta; return nil } }

// WithKernelPackage pins the exact kernel package, skipping apt-cache.
func WithKernelPackage(pkg string) Option {
	return func(c *config) error {
		if !strings.HasPrefix(pkg, "linux-image-") || strings.ContainsAny(pkg, "*?[ ") {
			return fmt.Errorf("kernel package %q: want an exact linux-image-VERSION name", pkg)
		}
		c.pkg = pkg
		return nil
	}
}

// WithModules adds modules (and their dependencies) to the default set.
func WithModules(names ...string) Option {
	return func(c *config) error { c.modules = append(c.modules, names...); return nil }
}

// WithFile adds a file with the given contents.
func WithFile(guestPath string, data []byte, mode os.FileMode) Option {
	return func(c *config) error {
		if !path.IsAbs(guestPath) {
			return fmt.Errorf("extra file %q: guest path must be absolute", guestPath)
		}
		c.files = append(c.files, File{Path: guestPath, Data: data, Mode: mode.Perm()})
		return nil
	}
}

// WithHostFile copies a host file (following symlinks) to guestPath.
func WithHostFile(hostPath, guestPath string) Option {
	return func(c *config) error {
		if !path.IsAbs(guestPath) {
			return fmt.Errorf("extra file %q: guest path must be absolute", guestPath)
		}
		c.hostFiles = append(c.hostFiles, [2]string{guestPath, hostPath})
		return nil
	}
}

// WithExecutable copies a dynamically linked host program to the same path
// in the guest together with the shared libraries and loader ldd lists
// (e.g. /usr/sbin/dmsetup).
func WithExecutable(hostPath string) Option {
	return func(c *config) error { c.executables = append(c.executables, hostPath); return nil }
}

// WithAgentBinary uses a prebuilt static agent instead of building one.
func WithAgentBinary(p string) Option { return func(c *config) error { c.agent = p; return nil } }

// WithLogf reports progress (downloads, builds).
func WithLogf(f func(string, ...any)) Option { return func(c *config) error { c.logf = f; return nil } }

// RepoRoot finds the directory holding snaplab's go.mod, upward from dir.
func RepoRoot(dir string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(b), []byte("module snaplab")) {
			line, _, _ := bytes.Cut(b, []byte("\n"))
			if strings.TrimSpace(string(line)) == "module snaplab" {
				return d, nil
			}
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("no snaplab go.mod above %s", dir)
		}
		d = parent
	}
}

// FindRepo finds snaplab's source tree (the agent is built from it, and
// the cache is in it): upward from the working directory, else
// $SNAPLAB_REPO, else the tree this program was built from, so that a
// snaplab binary runs from any directory.
func FindRepo() (string, error) {
	wd, _ := os.Getwd()
	if r, err := RepoRoot(wd); err == nil {
		return r, nil
	}
	if env := os.Getenv("SNAPLAB_REPO"); env != "" {
		r, err := RepoRoot(env)
		if err != nil {
			return "", fmt.Errorf("SNAPLAB_REPO=%s: %w", env, err)
		}
		return r, nil
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		if r, err := RepoRoot(filepath.Dir(file)); err == nil {
			return r, nil
		}
	}
	return "", fmt.Errorf("no snaplab source tree above %s: run inside it or set SNAPLAB_REPO", wd)
}

// CacheDir is $SNAPLAB_CACHE, else <repo>/.cache.
func CacheDir(repo string) string {
	if c := os.Getenv("SNAPLAB_CACHE"); c != "" {
		return c
	}
	return filepath.Join(repo, ".cache")
}

// Prepare returns a bootable image, fetching and building what the cache
// lacks.
func Prepare(ctx context.Context, opts ...Option) (*Image, error) {
	c := &config{logf: func(string, ...any) {}}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	if c.repo == "" && (c.agent == "" || c.cache == "") {
		r, err := FindRepo()
		if err != nil {
			return nil, fmt.Errorf("guest image: %w", err)
		}
		c.repo = r
	}
	if c.cache == "" {
		c.cache = CacheDir(c.repo)
	}
	spec := KernelSpec{Release: "(package)"}
	if c.kernel != nil {
		spec = *c.kernel
	} else if c.meta == "" && c.pkg == "" {
		k, err := KernelFromEnv()
		if err != nil {
			return nil, err
		}
		spec = k
	}
	wanted := append(append([]string(nil), DefaultModules...), c.modules...)
	var k *Kernel
	var order []Module
	var err error
	switch {
	case spec.Deb != "":
		src, err := ownDebKernel(ctx, c.cache, spec.Deb)
		if err != nil {
			return nil, err
		}
		k, order, err = fetchKernel(ctx, c.cache, src, wanted, c.logf)
		if err != nil {
			return nil, err
		}
	case spec.Image != "":
		k, order, err = ownFilesKernel(ctx, c.cache, spec, wanted, c.logf)
		if err != nil {
			return nil, err
		}
	default:
		pkg := c.pkg
		if pkg == "" {
			meta := c.meta
			if meta == "" {
				meta = metaOf(spec.Release)
			}
			p, err := resolveKernelPackage(ctx, meta, c.logf)
			if err != nil {
				v := newestCachedKernel(c.cache, meta)
				if v == "" {
					return nil, err
				}
				c.logf("%v; using cached kernel %s", err, v)
				p = "linux-image-" + v
			}
			pkg = p
		}
		k, order, err = fetchKernel(ctx, c.cache, aptKernel(c.cache, pkg, c.logf), wanted, c.logf)
		if err != nil {
			return nil, err
		}
	}

	agent := c.agent
	if agent == "" {
		agent, err = buildAgent(ctx, c.repo, c.cache)
		if err != nil {
			return nil, err
		}
		defer os.Remove(agent)
	}
	agentBin, err := os.ReadFile(agent)
	if err != nil {
		return nil, fmt.Errorf("agent binary: %w", err)
	}

	files := []File{{Path: "/init", Data: agentBin, Mode: 0o755}}
	var orderLines []string
	var names []string
	for _, m := range order {
		raw, err := os.ReadFile(filepath.Join(k.Dir, m.Path))
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", m.Name, err)
		}
		b, err := decompressModule(m.Path, raw)
		if err != nil {
			return nil, err
		}
		gp := "/lib/modules/" + k.Version + "/" + baseName(moduleFileName(m.Path))
		files = append(files, File{Path: gp, Data: b, Mode: 0o644})
		orderLines = append(orderLines, gp)
		names = append(names, m.Name)
	}
	files = append(files, File{Path: "/lib/modules/snaplab.order", Data: []byte(strings.Join(orderLines, "\n") + "\n"), Mode: 0o644})
	for _, hf := range c.hostFiles {
		f, err := hostFile(hf[1], hf[0])
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	for _, e := range c.executables {
		fs, err := executableFiles(ctx, e)
		if err != nil {
			return nil, err
		}
		files = append(files, fs...)
	}
	files = append(files, c.files...)

	initrd, err := writeInitramfs(filepath.Join(c.cache, "initramfs"), files)
	if err != nil {
		return nil, err
	}
	return &Image{Kernel: k.Vmlinux, Initramfs: initrd, KernelVersion: k.Version, Release: spec.Release, KernelSpec: spec.String(), Modules: names, CacheDir: c.cache}, nil
}

// buildAgent compiles cmd/snaplab-guest statically into a temp file in
// the cache.
func buildAgent(ctx context.Context, repo, cache string) (string, error) {
	dir := filepath.Join(cache, "agent")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dir, "snaplab-guest-*")
	if err != nil {
		return "", err
	}
	out := f.Name()
	f.Close()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./cmd/snaplab-guest")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		os.Remove(out)
		return "", fmt.Errorf("building the guest agent in %s: %v: %s", repo, err, b)
	}
	return out, nil
}

func hostFile(hostPath, guestPath string) (File, error) {
	st, err := os.Stat(hostPath)
	if err != nil {
		return File{}, fmt.Errorf("extra file for %s: %w", guestPath, err)
	}
	b, err := os.ReadFile(hostPath)
	if err != nil {
		return File{}, fmt.Errorf("extra file for %s: %w", guestPath, err)
	}
	return File{Path: guestPath, Data: b, Mode: st.Mode().Perm()}, nil
}

// ParseLdd extracts the files a program needs from `ldd` output: the
// resolved library paths ("libx.so => /lib/.../libx.so (0x...)") keyed by
// the path the loader will search, and the loader itself
// ("/lib64/ld-linux-x86-64.so.2 (0x...)"). linux-vdso has no file and is
// skipped. A "not found" library is an error naming it.
func ParseLdd(out []byte) ([]string, error) {
	var paths []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "linux-vdso") || strings.Contains(line, "statically linked") {
			continue
		}
		if lib, rest, ok := strings.Cut(line, "=>"); ok {
			rest = strings.TrimSpace(rest)
			if strings.HasPrefix(rest, "not found") {
				return nil, fmt.Errorf("ldd: library %s not found", strings.TrimSpace(lib))
			}
			p := strings.Fields(rest)
			if len(p) == 0 || !path.IsAbs(p[0]) {
				return nil, fmt.Errorf("ldd line %q: no absolute library path", line)
			}
			paths = append(paths, p[0])
			continue
		}
		p := strings.Fields(line)
		if len(p) > 0 && path.IsAbs(p[0]) {
			paths = append(paths, p[0])
			continue
		}
		return nil, fmt.Errorf("ldd line %q: unrecognised", line)
	}
	return paths, nil
}

func executableFiles(ctx context.Context, exe string) ([]File, error) {
	main, err := hostFile(exe, exe)
	if err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, "ldd", exe).CombinedOutput()
	if err != nil && !bytes.Contains(out, []byte("not a dynamic executable")) {
		return nil, fmt.Errorf("ldd %s: %v: %s", exe, err, out)
	}
	files := []File{main}
	if err != nil { // static
		return files, nil
	}
	libs, err := ParseLdd(out)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", exe, err)
	}
	for _, l := range libs {
		f, err := hostFile(l, l)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", exe, err)
		}
		files = append(files, f)
	}
	return files, nil
}

// writeInitramfs writes files (plus the directories, device nodes and
// mount points the agent needs) as a newc cpio named by its content hash
// in dir, unless it exists already.
func writeInitramfs(dir string, files []File) (string, error) {
	recs := []cpio.Record{
		cpio.Directory("dev", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.CharDev("dev/null", 0o666, 1, 3),
		cpio.Directory("proc", 0o555),
		cpio.Directory("sys", 0o555),
		cpio.Directory("tmp", 0o1777),
		cpio.Directory("run", 0o755),
	}
	seen := map[string]bool{}
	sort.SliceStable(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	for _, f := range files {
		name := strings.TrimPrefix(path.Clean(f.Path), "/")
		if name == "" || name == "." {
			return "", fmt.Errorf("initramfs file %q: empty path", f.Path)
		}
		if seen[name] {
			// Later options win over earlier; identical files from two
			// executables' library lists are common.
			for i := range recs {
				if recs[i].Name == name {
					recs[i] = cpio.StaticRecord(f.Data, cpio.Info{Name: name, Mode: cpio.S_IFREG | uint64(f.Mode.Perm())})
				}
			}
			continue
		}
		seen[name] = true
		recs = append(recs, cpio.StaticRecord(f.Data, cpio.Info{Name: name, Mode: cpio.S_IFREG | uint64(f.Mode.Perm())}))
	}
	cpio.MakeAllReproducible(recs)

	h := sha256.New()
	for _, r := range recs {
		fmt.Fprintf(h, "%s\x00%o\x00%d:%d\x00%d\x00", r.Name, r.Mode, r.Rmajor, r.Rminor, r.FileSize)
		if r.ReaderAt != nil {
			io.Copy(h, io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		}
	}
	sum := hex.EncodeToString(h.Sum(nil))[:20]
	out := filepath.Join(dir, "initramfs-"+sum+".cpio")
	if exists(out) {
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	w := cpio.NewDedupWriter(cpio.Newc.Writer(&buf))
	if err := cpio.WriteRecordsAndDirs(w, recs); err != nil {
		return "", fmt.Errorf("initramfs: %w", err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return "", fmt.Errorf("initramfs: %w", err)
	}
	if err := writeAtomic(out, buf.Bytes(), 0o644); err != nil {
		return "", err
	}
	return out, nil
}
