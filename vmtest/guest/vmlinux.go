package guest

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// errCompression is a bzImage whose payload snaplab cannot decompress; QEMU
// still boots the bzImage itself, only more slowly.
var errCompression = errors.New("unsupported bzImage compression")

// BzPayload locates the compressed vmlinux inside a bzImage from its x86
// boot protocol header (setup_sects at 0x1f1, "HdrS" at 0x202,
// payload_offset and payload_length at 0x248 and 0x24c, relative to the
// protected-mode code after the setup sectors) and names its compression
// by magic: xz, zstd or gzip, else "".
func BzPayload(b []byte) (payload []byte, compression string, err error) {
	if len(b) < 0x250 || string(b[0x202:0x206]) != "HdrS" {
		return nil, "", fmt.Errorf("not a bzImage (no HdrS boot header)")
	}
	if binary.LittleEndian.Uint16(b[0x206:]) < 0x208 {
		return nil, "", fmt.Errorf("bzImage boot protocol %#x predates payload fields (2.08)", binary.LittleEndian.Uint16(b[0x206:]))
	}
	setup := int(b[0x1f1])
	if setup == 0 {
		setup = 4
	}
	off := (setup+1)*512 + int(binary.LittleEndian.Uint32(b[0x248:]))
	n := int(binary.LittleEndian.Uint32(b[0x24c:]))
	if off < 0 || n <= 0 || off+n > len(b) || off+n < off {
		return nil, "", fmt.Errorf("bzImage payload %d+%d outside the file's %d bytes", off, n, len(b))
	}
	p := b[off : off+n]
	switch {
	case bytes.HasPrefix(p, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return p, "xz", nil
	case bytes.HasPrefix(p, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return p, "zstd", nil
	case bytes.HasPrefix(p, []byte{0x1f, 0x8b}):
		return p, "gzip", nil
	}
	return p, "", nil
}

// decompressPayload decompresses the first stream of a bzImage payload;
// what follows it (the kernel appends the decompressed size) is ignored.
func decompressPayload(p []byte, compression string) ([]byte, error) {
	var out bytes.Buffer
	switch compression {
	case "xz":
		// The kernel's xz payload uses the x86 BCJ filter, which Go's xz
		// decoder lacks: xz-utils (make deps) decodes it.
		cmd := exec.Command("xz", "-dc", "--single-stream")
		cmd.Stdin = bytes.NewReader(p)
		cmd.Stdout = &out
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("xz -dc: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))
		}
	case "zstd":
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<31))
		if err != nil {
			return nil, err
		}
		defer d.Close()
		// One frame: the payload ends with 4 bytes of size, which a
		// frame decoder would take for the next frame's magic.
		return d.DecodeAll(p[:len(p)-4], nil)
	case "gzip":
		r, err := gzip.NewReader(bytes.NewReader(p))
		if err != nil {
			return nil, err
		}
		r.Multistream(false)
		if _, err := io.Copy(&out, r); err != nil {
			return nil, err
		}
	default:
		return nil, errCompression
	}
	return out.Bytes(), nil
}

// extractVmlinux decompresses the vmlinux ELF out of a bzImage (xz, zstd
// or gzip payload: Debian's 6.1 is xz, its 6.12 zstd) and checks it has a
// PVH entry note, so QEMU boots it directly and skips the bzImage's own
// decompressor (about 3 s under TCG).
func extractVmlinux(vmlinuz, vmlinux string) error {
	b, err := os.ReadFile(vmlinuz)
	if err != nil {
		return err
	}
	p, comp, err := BzPayload(b)
	if err != nil {
		return fmt.Errorf("%s: %w", vmlinuz, err)
	}
	if comp == "" {
		return fmt.Errorf("%s: %w (payload starts % x)", vmlinuz, errCompression, p[:min(6, len(p))])
	}
	elfb, err := decompressPayload(p, comp)
	if err != nil {
		return fmt.Errorf("%s: decompressing its %s payload: %w", vmlinuz, comp, err)
	}
	tmp := vmlinux + ".tmp"
	if err := writeAtomic(tmp, elfb, 0o644); err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := checkPVH(tmp); err != nil {
		return err
	}
	return os.Rename(tmp, vmlinux)
}

// bannerVersion reads the release out of an uncompressed kernel's
// "Linux version RELEASE (" banner.
func bannerVersion(b []byte) string {
	i := bytes.Index(b, []byte("Linux version "))
	for i >= 0 {
		rest := b[i+len("Linux version "):]
		if j := bytes.IndexAny(rest, " \x00\n"); j > 0 && j < 128 && !bytes.HasPrefix(rest, []byte("%s")) {
			return string(rest[:j])
		}
		k := bytes.Index(rest, []byte("Linux version "))
		if k < 0 {
			break
		}
		i += len("Linux version ") + k
	}
	return ""
}

// bzVersion is the kernel_version string a bzImage's header points to
// (its release is the first word).
func bzVersion(b []byte) string {
	if len(b) < 0x210 || string(b[0x202:0x206]) != "HdrS" {
		return ""
	}
	off := int(binary.LittleEndian.Uint16(b[0x20e:])) + 0x200
	if off <= 0x200 || off >= len(b) {
		return ""
	}
	s := b[off:min(len(b), off+256)]
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	f := strings.Fields(string(s))
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

func fileHash(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// checkPVH verifies that path is an ELF with a Xen PVH entry note (type
// 18, XEN_ELFNOTE_PHYS32_ENTRY).
func checkPVH(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("vmlinux %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			continue
		}
		for len(data) >= 12 {
			nsz := int(f.ByteOrder.Uint32(data[0:]))
			dsz := int(f.ByteOrder.Uint32(data[4:]))
			typ := f.ByteOrder.Uint32(data[8:])
			nameEnd := 12 + (nsz+3)&^3
			end := nameEnd + (dsz+3)&^3
			if nsz < 0 || dsz < 0 || end > len(data) || end < 12 {
				break
			}
			if typ == 18 && strings.TrimRight(string(data[12:12+nsz]), "\x00") == "Xen" {
				return nil
			}
			data = data[end:]
		}
	}
	return fmt.Errorf("vmlinux %s has no PVH entry note (CONFIG_PVH): QEMU cannot boot it with -kernel; give the bzImage instead", path)
}
