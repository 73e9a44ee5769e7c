package guest

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Module is a kernel module's identity and dependencies as its .modinfo
// section states them.
type Module struct {
	Name    string   // canonical: '-' replaced by '_'
	Path    string   // path inside the kernel package, e.g. lib/modules/V/kernel/drivers/md/dm-mod.ko
	Depends []string // canonical names
	// Builtin: compiled into the kernel (modules.builtin); nothing to
	// load, and no file.
	Builtin bool `json:",omitempty"`
}

// CanonicalModule normalises a module name: the kernel treats '-' and '_'
// alike; file names use either.
func CanonicalModule(name string) string {
	name = strings.TrimSuffix(moduleFileName(name), ".ko")
	return strings.ReplaceAll(name, "-", "_")
}

// ParseModinfo parses the contents of a .modinfo section: NUL-separated
// "key=value" strings. It returns the module name (when present) and its
// dependencies (canonical names).
func ParseModinfo(sec []byte) (name string, depends []string, err error) {
	for _, kv := range bytes.Split(sec, []byte{0}) {
		if len(kv) == 0 {
			continue
		}
		k, v, ok := bytes.Cut(kv, []byte("="))
		if !ok {
			return "", nil, fmt.Errorf("modinfo entry %.60q has no '='", kv)
		}
		switch string(k) {
		case "name":
			name = CanonicalModule(string(v))
		case "depends":
			for _, d := range strings.Split(string(v), ",") {
				if d = strings.TrimSpace(d); d != "" {
					depends = append(depends, CanonicalModule(d))
				}
			}
		}
	}
	return name, depends, nil
}

// ReadModule reads a .ko file's modinfo. path names it in error messages
// and fixes its name when the section has none.
func ReadModule(path string, ko []byte) (Module, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return Module{}, fmt.Errorf("module %s: %w", path, err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return Module{}, fmt.Errorf("module %s: no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return Module{}, fmt.Errorf("module %s: reading .modinfo: %w", path, err)
	}
	name, deps, err := ParseModinfo(data)
	if err != nil {
		return Module{}, fmt.Errorf("module %s: %w", path, err)
	}
	if name == "" {
		name = CanonicalModule(baseName(path))
	}
	return Module{Name: name, Path: path, Depends: deps}, nil
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// LoadOrder returns the closure of wanted under the dependency relation in
// index, ordered so every module comes after its dependencies; ties are
// broken by name, so the order is deterministic. It fails naming the
// module that is unknown or the modules that form a cycle.
func LoadOrder(index map[string]Module, wanted []string) ([]Module, error) {
	const (
		unseen = iota
		active
		done
	)
	state := map[string]int{}
	var out []Module
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case done:
			return nil
		case active:
			return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(chain, " -> "), name)
		}
		m, ok := index[name]
		if !ok {
			cfg := ""
			if c, ok := moduleConfig[name]; ok {
				cfg = " (is " + c + " set?)"
			}
			if len(chain) == 0 {
				return fmt.Errorf("module %q not found in the kernel package%s", name, cfg)
			}
			return fmt.Errorf("module %q (needed by %s) not found in the kernel package%s", name, chain[len(chain)-1], cfg)
		}
		if m.Builtin {
			state[name] = done
			return nil
		}
		state[name] = active
		deps := append([]string(nil), m.Depends...)
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = done
		out = append(out, m)
		return nil
	}
	// The wanted order is kept: it decides which driver registers its block
	// major first (virtio_blk before dm_mod gives virtio 254 and dm 253, as
	// on an installed system and in the simulator).
	ws := make([]string, len(wanted))
	for i, w := range wanted {
		ws[i] = CanonicalModule(w)
	}
	for _, w := range ws {
		if err := visit(w, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// moduleFileName strips a module file's compression suffix (.xz, .zst,
// .gz): the name the guest loads it under, decompressed.
func moduleFileName(p string) string {
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(p, ".ko"+ext) {
			return strings.TrimSuffix(p, ext)
		}
	}
	return p
}

// isModuleFile reports whether p is a kernel module, compressed or not.
func isModuleFile(p string) bool { return strings.HasSuffix(moduleFileName(p), ".ko") }

// decompressModule returns a module file's ELF, decompressing a .ko.xz,
// .ko.zst or .ko.gz (CONFIG_MODULE_COMPRESS_*) by its suffix.
func decompressModule(p string, b []byte) ([]byte, error) {
	var r io.Reader
	var err error
	switch {
	case strings.HasSuffix(p, ".ko"):
		return b, nil
	case strings.HasSuffix(p, ".ko.xz"):
		r, err = xz.NewReader(bytes.NewReader(b))
	case strings.HasSuffix(p, ".ko.zst"):
		var d *zstd.Decoder
		d, err = zstd.NewReader(bytes.NewReader(b), zstd.WithDecoderConcurrency(1))
		if err == nil {
			defer d.Close()
			r = d
		}
	case strings.HasSuffix(p, ".ko.gz"):
		r, err = gzip.NewReader(bytes.NewReader(b))
	default:
		return nil, fmt.Errorf("module %s: not a .ko, .ko.xz, .ko.zst or .ko.gz", p)
	}
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", p, err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("module %s: decompressing: %w", p, err)
	}
	return out, nil
}

// ParseBuiltin reads modules.builtin (one module path per line, as
// modules_install writes it) into canonical names.
func ParseBuiltin(b []byte) []string {
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" && isModuleFile(line) {
			out = append(out, CanonicalModule(baseName(line)))
		}
	}
	return out
}
