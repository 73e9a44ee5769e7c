package guest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// A kernel spec names the kernel a guest boots. It is one of:
//
//	6.1 | 6.12 | 6.1-rt | 6.12-rt   a Debian kernel, resolved through its meta package
//	PATH.deb                        a kernel package, as `make bindeb-pkg` builds it
//	IMAGE,MODDIR                    a bzImage or vmlinux plus the INSTALL_MOD_PATH of
//	                                `make modules_install` (or its lib/modules/VERSION)
//
// The default is $SNAPLAB_KERNEL, else 6.1.

// Release is a Debian kernel snaplab keeps golden results for
// (fixtures/kernel/NAME/).
type Release struct {
	Name   string // 6.1, 6.12, 6.1-rt, 6.12-rt
	Series string // the upstream series its builds' versions start with: 6.1, 6.12
	RT     bool   // a PREEMPT_RT build (versions end in -rt-amd64)
	Meta   string // the meta package that depends on today's build
	Note   string
}

// Releases are the kernels of the matrix, the default first.
var Releases = []Release{
	{"6.1", "6.1", false, "linux-image-amd64", "Debian 12's kernel"},
	{"6.12", "6.12", false, "linux-image-6.12-amd64", "Debian 12's newer kernel (bookworm-security)"},
	{"6.1-rt", "6.1", true, "linux-image-rt-amd64", "6.1 with PREEMPT_RT"},
	{"6.12-rt", "6.12", true, "linux-image-6.12-rt-amd64", "6.12 with PREEMPT_RT"},
}

// DefaultKernel is the kernel when neither WithKernel nor $SNAPLAB_KERNEL
// says otherwise.
const DefaultKernel = "6.1"

// ReleaseNames lists the matrix's kernel names.
func ReleaseNames() []string {
	var out []string
	for _, r := range Releases {
		out = append(out, r.Name)
	}
	return out
}

// KernelSpec is a parsed kernel spec: exactly one of Release, Deb, Image
// is set (Modules with Image).
type KernelSpec struct {
	Release string // a name from Releases
	Deb     string // a kernel .deb
	Image   string // bzImage or vmlinux
	Modules string // modules_install's INSTALL_MOD_PATH, or DIR/lib/modules/VERSION
}

// String is the spec as given.
func (s KernelSpec) String() string {
	switch {
	case s.Release != "":
		return s.Release
	case s.Deb != "":
		return s.Deb
	}
	return s.Image + "," + s.Modules
}

// Own reports whether the spec is a user's kernel (no golden results).
func (s KernelSpec) Own() bool { return s.Release == "" }

// ParseKernel parses a kernel spec. Paths must exist; a named kernel must
// be one of Releases.
func ParseKernel(spec string) (KernelSpec, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return KernelSpec{}, fmt.Errorf("kernel: empty spec (want %s, a .deb, or IMAGE,MODDIR)", strings.Join(ReleaseNames(), ", "))
	}
	for _, r := range Releases {
		if spec == r.Name {
			return KernelSpec{Release: r.Name}, nil
		}
	}
	if img, mods, ok := strings.Cut(spec, ","); ok {
		if img == "" || mods == "" {
			return KernelSpec{}, fmt.Errorf("kernel %q: want IMAGE,MODDIR with both paths", spec)
		}
		for _, p := range []string{img, mods} {
			if _, err := os.Stat(p); err != nil {
				return KernelSpec{}, fmt.Errorf("kernel %q: %w", spec, err)
			}
		}
		if st, _ := os.Stat(mods); !st.IsDir() {
			return KernelSpec{}, fmt.Errorf("kernel %q: modules %s is not a directory (want the INSTALL_MOD_PATH of make modules_install)", spec, mods)
		}
		ai, _ := filepath.Abs(img)
		am, _ := filepath.Abs(mods)
		return KernelSpec{Image: ai, Modules: am}, nil
	}
	st, err := os.Stat(spec)
	if err != nil {
		if !strings.Contains(spec, "/") && !strings.HasSuffix(spec, ".deb") {
			return KernelSpec{}, fmt.Errorf("kernel %q: not one of %s, and no such file", spec, strings.Join(ReleaseNames(), ", "))
		}
		return KernelSpec{}, fmt.Errorf("kernel %q: %w", spec, err)
	}
	abs, _ := filepath.Abs(spec)
	switch {
	case st.IsDir():
		return KernelSpec{}, fmt.Errorf("kernel %q is a directory: want a .deb, or IMAGE,MODDIR (the kernel image, then the INSTALL_MOD_PATH of make modules_install)", spec)
	case strings.HasSuffix(spec, ".deb"):
		return KernelSpec{Deb: abs}, nil
	}
	return KernelSpec{}, fmt.Errorf("kernel %q: a kernel image needs its modules: give IMAGE,MODDIR (MODDIR as make modules_install INSTALL_MOD_PATH=MODDIR leaves it)", spec)
}

// KernelFromEnv is the kernel spec of $SNAPLAB_KERNEL, else DefaultKernel.
func KernelFromEnv() (KernelSpec, error) {
	s := os.Getenv("SNAPLAB_KERNEL")
	if s == "" {
		s = DefaultKernel
	}
	k, err := ParseKernel(s)
	if err != nil {
		return KernelSpec{}, fmt.Errorf("SNAPLAB_KERNEL: %w", err)
	}
	return k, nil
}

func metaOf(release string) string {
	for _, r := range Releases {
		if r.Name == release {
			return r.Meta
		}
	}
	return ""
}

// moduleConfig names the option that builds a module, for errors about a
// kernel that lacks it.
var moduleConfig = map[string]string{
	"dm_snapshot":    "CONFIG_DM_SNAPSHOT",
	"dm_mod":         "CONFIG_BLK_DEV_DM",
	"dm_bufio":       "CONFIG_DM_BUFIO",
	"dm_zero":        "CONFIG_DM_ZERO",
	"dm_delay":       "CONFIG_DM_DELAY",
	"dm_log_writes":  "CONFIG_DM_LOG_WRITES",
	"loop":           "CONFIG_BLK_DEV_LOOP",
	"virtio_blk":     "CONFIG_VIRTIO_BLK",
	"virtio_pci":     "CONFIG_VIRTIO_PCI",
	"virtio_mmio":    "CONFIG_VIRTIO_MMIO",
	"virtio_console": "CONFIG_VIRTIO_CONSOLE",
}

// ReleaseDeb returns the cached .deb of a matrix kernel, fetching it with
// apt-get download when the cache lacks it (tests hand it over as a user's
// own kernel).
func ReleaseDeb(ctx context.Context, cache, release string, logf func(string, ...any)) (string, error) {
	meta := metaOf(release)
	if meta == "" {
		return "", fmt.Errorf("kernel %q: not one of %s", release, strings.Join(ReleaseNames(), ", "))
	}
	pkg, err := resolveKernelPackage(ctx, meta, logf)
	if err != nil {
		return "", err
	}
	return downloadDeb(ctx, cache, pkg, logf)
}
