package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	. "github.com/onsi/gomega/gstruct"

	"snaplab/scenarios/report"
	"snaplab/sim/block"
)

// The conformance suite drives the server with real NBD clients: nbdinfo,
// nbdsh (python3-libnbd), nbdcopy, qemu-io and qemu-img. They come from
// scripts/deps.sh; a missing one fails the suite with that hint.
func TestConformance(t *testing.T) {
	RegisterFailHandler(Fail)
	report.Run(t, "nbd-conformance", "nbd conformance", Label("nbd"))
}

const (
	confSize  = 32 << 20
	badOff    = 1 << 20
	badLen    = 64 << 10
	confPref  = 65536
	toolLimit = 30 * time.Second
)

var (
	confSrv   *Server
	confAddr  net.Addr
	confDir   string
	confDisks = map[string]block.Device{}
)

func uri(export string) string { return URI(confAddr, export) }

// tool runs a client program and returns its combined output.
func tool(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, toolLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// nbdsh needs the system python3 with the nbd module.
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	fmt.Fprintf(GinkgoWriter, "$ %s %s\n%s", name, strings.Join(args, " "), out)
	return string(out), err
}

func nbdsh(ctx context.Context, script string) string {
	out, err := tool(ctx, "nbdsh", "-c", script)
	ExpectWithOffset(1, err).NotTo(HaveOccurred(), "nbdsh failed:\n%s", out)
	return out
}

var _ = BeforeSuite(func() {
	for _, bin := range []string{"nbdinfo", "nbdsh", "nbdcopy", "qemu-io", "qemu-img"} {
		_, err := exec.LookPath(bin)
		Expect(err).NotTo(HaveOccurred(), "%s is missing: run `make deps` (scripts/deps.sh installs it)", bin)
	}
	var err error
	confDir, err = os.MkdirTemp("", "nbdc")
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(os.RemoveAll, confDir)
	l, err := Listen(filepath.Join(confDir, "nbd.sock"))
	Expect(err).NotTo(HaveOccurred())
	confAddr = l.Addr()
	confSrv = NewServer(WithDefaultExport("disk"))
	mem := func(name string) *block.Mem {
		m, err := block.NewMem(name, confSize)
		Expect(err).NotTo(HaveOccurred())
		confDisks[name] = m
		return m
	}
	ro := mem("ro")
	_, err = ro.WriteAt(bytes.Repeat([]byte{0x5a}, 1<<20), 0)
	Expect(err).NotTo(HaveOccurred())
	exports := []Export{
		{Name: "disk", Description: "conformance disk", Dev: mem("disk"), PreferredBlock: confPref},
		{Name: "ro", Description: "read-only disk", Dev: ro, ReadOnly: true},
		{Name: "copy", Dev: mem("copy")},
		{Name: "qio", Dev: mem("qio")},
		{Name: "nbdcopy", Dev: mem("nbdcopy")},
		{Name: "many", Dev: mem("many")},
	}
	for _, e := range []syscall.Errno{syscall.EIO, syscall.ENOSPC, syscall.EPERM} {
		name := strings.ToLower(block.ErrnoName(e))
		d := &failDev{memDev: newMemDev(name, confSize), badOff: badOff, badLen: badLen, errno: e}
		exports = append(exports, Export{Name: name, Description: "fails in [1M, 1M+64K)", Dev: d})
	}
	for _, e := range exports {
		Expect(confSrv.AddExport(e)).To(Succeed())
	}
	served := make(chan error, 1)
	go func() { served <- confSrv.Serve(l) }()
	DeferCleanup(func(ctx SpecContext) {
		Expect(confSrv.Shutdown(ctx)).To(Succeed())
		Expect(<-served).To(MatchError(ErrServerClosed))
	}, NodeTimeout(10*time.Second))
})

var _ = Describe("nbdinfo", func() {
	It("reports size, flags, block sizes, description and base:allocation", func(ctx SpecContext) {
		out, err := tool(ctx, "nbdinfo", "--json", "--no-content", uri("disk"))
		Expect(err).NotTo(HaveOccurred())
		var info struct {
			Protocol   string `json:"protocol"`
			Structured bool   `json:"structured"`
			Exports    []map[string]any
		}
		Expect(json.Unmarshal([]byte(out), &info)).To(Succeed())
		Expect(info.Protocol).To(Equal("newstyle-fixed"))
		Expect(info.Structured).To(BeTrue())
		Expect(info.Exports).To(HaveLen(1))
		Expect(info.Exports[0]).To(MatchKeys(IgnoreExtras, Keys{
			"export-name":          Equal("disk"),
			"description":          Equal("conformance disk"),
			"export-size":          BeNumerically("==", confSize),
			"is_read_only":         BeFalse(),
			"can_flush":            BeTrue(),
			"can_fua":              BeTrue(),
			"can_trim":             BeTrue(),
			"can_zero":             BeTrue(),
			"can_df":               BeTrue(),
			"can_multi_conn":       BeTrue(),
			"can_cache":            BeFalse(),
			"can_fast_zero":        BeFalse(),
			"block_size_minimum":   BeNumerically("==", 512),
			"block_size_preferred": BeNumerically("==", confPref),
			"block_size_maximum":   BeNumerically("==", 32<<20),
			"contexts":             ConsistOf("base:allocation"),
		}))
	})

	It("lists every export with its description", func(ctx SpecContext) {
		out, err := tool(ctx, "nbdinfo", "--list", "--json", "--no-content", uri("disk"))
		Expect(err).NotTo(HaveOccurred())
		var info struct{ Exports []map[string]any }
		Expect(json.Unmarshal([]byte(out), &info)).To(Succeed())
		names := map[string]any{}
		for _, e := range info.Exports {
			names[e["export-name"].(string)] = e["description"]
		}
		Expect(names).To(HaveKeyWithValue("ro", "read-only disk"))
		Expect(names).To(HaveKeyWithValue("disk", "conformance disk"))
		Expect(names).To(HaveKey("eio"))
		Expect(names).To(HaveLen(len(confSrv.Exports())))
	})

	It("maps holes and data through base:allocation", func(ctx SpecContext) {
		out, err := tool(ctx, "nbdinfo", "--map", uri("ro"))
		Expect(err).NotTo(HaveOccurred())
		Expect(strings.Fields(out)).To(Equal([]string{
			"0", "1048576", "0", "data",
			"1048576", fmt.Sprint(confSize - 1<<20), "3", "hole,zero",
		}))
	})

	It("reports a read-only export", func(ctx SpecContext) {
		out, err := tool(ctx, "nbdinfo", "--can", "readonly", uri("ro"))
		Expect(err).NotTo(HaveOccurred(), out)
		_, err = tool(ctx, "nbdinfo", "--can", "readonly", uri("disk"))
		Expect(err).To(HaveOccurred())
	})

	It("fails cleanly for an unknown export", func(ctx SpecContext) {
		out, err := tool(ctx, "nbdinfo", uri("nosuch"))
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("nbd_opt_go: server replied with error"))
		Expect(out).To(ContainSubstring("nosuch"))
	})
})

var _ = Describe("nbdsh", func() {
	It("negotiates every feature and performs every command", func(ctx SpecContext) {
		nbdsh(ctx, fmt.Sprintf(`
h.add_meta_context("base:allocation")
h.connect_uri(%q)
assert h.get_structured_replies_negotiated()
assert h.get_protocol() == "newstyle-fixed"
assert not h.is_read_only()
assert h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero()
assert h.can_df() and h.can_multi_conn()
assert not h.can_cache() and not h.can_fast_zero()
assert h.can_meta_context("base:allocation")
assert h.get_block_size(nbd.SIZE_MINIMUM) == 512
assert h.get_block_size(nbd.SIZE_PREFERRED) == %d
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20
assert h.get_size() == %d

buf = bytes(range(256)) * 256
h.pwrite(buf, 65536, nbd.CMD_FLAG_FUA)
h.pwrite(buf, 2 << 20)
assert h.pread(65536, 65536) == buf
chunks = []
def chunk(sub, off, status, err):
    chunks.append((off, len(sub), status))
    return 0
assert h.pread_structured(131072, 0, chunk) is not None
assert [c[2] for c in chunks] == [nbd.READ_HOLE, nbd.READ_DATA], chunks
chunks.clear()
h.pread_structured(131072, 0, chunk, nbd.CMD_FLAG_DF)
assert chunks == [(0, 131072, nbd.READ_DATA)], chunks
h.flush()

def extents(off, n, flags=0):
    out = []
    def cb(ctx, o, e, err):
        assert ctx == "base:allocation"
        out.extend(zip(e[0::2], e[1::2]))
    h.block_status(n, off, cb, flags)
    return out

assert extents(0, 131072) == [(65536, 3), (65536, 0)], extents(0, 131072)
assert extents(0, 131072, nbd.CMD_FLAG_REQ_ONE) == [(65536, 3)]

h.trim(65536, 65536)
assert extents(65536, 65536) == [(65536, 3)]
assert h.pread(65536, 65536) == bytes(65536)

h.zero(65536, 2 << 20, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(65536, 2 << 20) == bytes(65536)
assert extents(2 << 20, 65536) == [(65536, 0)]
h.zero(65536, 2 << 20, nbd.CMD_FLAG_FUA)
assert extents(2 << 20, 65536) == [(65536, 3)]

# Structured reads of mixed holes and data reassemble correctly.
h.pwrite(buf[:4096], 8 << 20)
got = h.pread(1 << 20, (8 << 20) - 4096)
assert got[:4096] == bytes(4096) and got[4096:8192] == buf[:4096] and got[8192:] == bytes(len(got) - 8192)
h.shutdown()
`, uri("disk"), confPref, confSize))
	})

	It("works with simple replies only", func(ctx SpecContext) {
		nbdsh(ctx, fmt.Sprintf(`
h.set_request_structured_replies(False)
h.connect_uri(%q)
assert not h.get_structured_replies_negotiated()
assert not h.can_df()
assert not h.can_meta_context("base:allocation")
h.pwrite(b"x" * 4096, 4 << 20, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 4 << 20) == b"x" * 4096
h.flush()
h.set_strict_mode(0)
try:
    h.pread(512, %d)
    assert False, "read past the end succeeded"
except nbd.Error as e:
    assert e.errno == "EINVAL", e
assert h.pread(512, 4 << 20) == b"x" * 512
`, uri("disk"), confSize))
	})

	It("refuses bad requests with the errno the protocol asks for", func(ctx SpecContext) {
		nbdsh(ctx, fmt.Sprintf(`
h.connect_uri(%q)
h.set_strict_mode(0)
def expect(errno, f, *args):
    try:
        f(*args)
    except nbd.Error as e:
        assert e.errno == errno, (f.__name__, args, e.errno, e.string)
        return
    assert False, ("no error", f.__name__, args)
size = h.get_size()
expect("EINVAL", h.pread, 512, size)
expect("ENOSPC", h.pwrite, bytes(512), size)
expect("ENOSPC", h.zero, 1024, size - 512)
expect("EINVAL", h.trim, 1024, size - 512)
expect("EINVAL", h.pread, 512, 1)
expect("EINVAL", h.pwrite, bytes(100), 0)
expect("EINVAL", h.pread, (32 << 20) + 512, 0)
expect("EINVAL", h.pread, 512, 0, nbd.CMD_FLAG_REQ_ONE)
expect("EINVAL", h.zero, 512, 0, nbd.CMD_FLAG_FAST_ZERO)
expect("EINVAL", h.cache, 512, 0)
# the connection is still usable
assert h.pread(512, 0) is not None
`, uri("disk")))
	})

	It("refuses writes to a read-only export with EPERM", func(ctx SpecContext) {
		nbdsh(ctx, fmt.Sprintf(`
h.connect_uri(%q)
assert h.is_read_only()
assert not h.can_trim() and not h.can_zero() and not h.can_fua()
assert h.pread(512, 0) == bytes([0x5a]) * 512
h.set_strict_mode(0)
for f, args in ((h.pwrite, (bytes(512), 0)), (h.trim, (512, 0)), (h.zero, (512, 0))):
    try:
        f(*args)
        assert False, f.__name__
    except nbd.Error as e:
        assert e.errno == "EPERM", (f.__name__, e.errno)
`, uri("ro")))
	})

	DescribeTable("maps device errors", func(ctx SpecContext, export, errno string) {
		nbdsh(ctx, fmt.Sprintf(`
h.add_meta_context("base:allocation")
h.connect_uri(%q)
def expect(f, *args):
    try:
        f(*args)
    except nbd.Error as e:
        assert e.errno == %q, (f.__name__, e.errno, e.string)
        return
    assert False, f.__name__
expect(h.pread, 4096, %d)
expect(h.pwrite, bytes(4096), %d)
expect(h.pwrite, bytes(4096), %d, nbd.CMD_FLAG_FUA)
expect(h.trim, 4096, %d)
expect(h.zero, 4096, %d)
expect(h.block_status, 4096, %d, lambda *a: 0)
# outside the bad range all is well
h.pwrite(b"ok" * 2048, 0)
assert h.pread(4096, 0) == b"ok" * 2048
`, uri(export), errno, badOff, badOff, badOff, badOff, badOff, badOff))
	},
		Entry("EIO", "eio", "EIO"),
		Entry("ENOSPC", "enospc", "ENOSPC"),
		Entry("EPERM", "eperm", "EPERM"),
	)

	It("haggles options step by step", func(ctx SpecContext) {
		out := nbdsh(ctx, fmt.Sprintf(`
h.set_opt_mode(True)
h.set_full_info(True)
h.connect_uri(%q)
names = []
h.opt_list(lambda name, desc: names.append((name, desc)))
assert ("disk", "conformance disk") in names and ("ro", "read-only disk") in names, names
ctxs = []
h.opt_list_meta_context(lambda c: ctxs.append(c))
assert ctxs == ["base:allocation"], ctxs
h.set_export_name("ro")
h.opt_info()
assert h.get_size() == %d and h.is_read_only()
assert h.get_export_description() == "read-only disk"
h.set_export_name("nosuch")
try:
    h.opt_info()
    assert False
except nbd.Error as e:
    print("unknown export:", e.errno)
h.set_export_name("")
h.opt_go()
assert h.get_canonical_export_name() == "disk", h.get_canonical_export_name()
assert h.get_size() == %d
h.shutdown()
`, uri("disk"), confSize, confSize))
		Expect(out).To(ContainSubstring("unknown export: ENOENT"))
	})
})

var _ = Describe("qemu-io and qemu-img", func() {
	It("writes, reads back, flushes", func(ctx SpecContext) {
		out, err := tool(ctx, "qemu-io", "-f", "raw",
			"-c", "write -P 0xab 0 64k", "-c", "write -P 0xcd 64k 64k", "-c", "flush",
			"-c", "read -P 0xab 0 64k", "-c", "read -P 0xcd 64k 64k",
			"-c", "write -z 128k 64k", "-c", "read -P 0 128k 64k",
			"-c", "discard 0 64k", "-c", "read -P 0 0 64k",
			"-c", "write -P 0x11 512 512", "-c", "read -P 0x11 512 512",
			uri("qio"))
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).NotTo(ContainSubstring("Pattern verification failed"))
		Expect(out).NotTo(ContainSubstring("failed"))
	})

	DescribeTable("surfaces device errors", func(ctx SpecContext, export, cmd, msg string) {
		out, _ := tool(ctx, "qemu-io", "-f", "raw", "-c", cmd, uri(export))
		Expect(out).To(ContainSubstring(msg))
	},
		Entry("EIO on read", "eio", "read 1M 4k", "read failed: Input/output error"),
		Entry("ENOSPC on write", "enospc", "write 1M 4k", "write failed: No space left on device"),
		Entry("EPERM on write", "eperm", "write 1M 4k", "write failed: Operation not permitted"),
		Entry("read-only export", "ro", "write 0 4k", "Could not open image: Permission denied"),
	)

	It("reads a read-only export", func(ctx SpecContext) {
		out, err := tool(ctx, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5a 0 1M", "-c", "read -P 0 1M 1M", uri("ro"))
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).NotTo(ContainSubstring("failed"))
	})

	It("converts an image onto the export and compares it", func(ctx SpecContext) {
		img := filepath.Join(confDir, "src.img")
		data := make([]byte, confSize)
		r := rand.New(rand.NewPCG(1, 2))
		for i := 0; i < confSize; i += 1 << 20 { // half data, half holes
			for j := i; j < i+512<<10; j += 8 {
				v := r.Uint64()
				for k := range 8 {
					data[j+k] = byte(v >> (8 * k))
				}
			}
		}
		Expect(os.WriteFile(img, data, 0o644)).To(Succeed())
		out, err := tool(ctx, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", img, uri("copy"))
		Expect(err).NotTo(HaveOccurred(), out)
		out, err = tool(ctx, "qemu-img", "compare", "-f", "raw", "-F", "raw", img, uri("copy"))
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("Images are identical"))

		got := make([]byte, confSize)
		_, err = confDisks["copy"].ReadAt(got, 0)
		Expect(err).NotTo(HaveOccurred())
		Expect(bytes.Equal(got, data)).To(BeTrue(), "device content differs from the image")

		_, err = confDisks["copy"].WriteAt([]byte{^data[5<<20+7]}, 5<<20+7)
		Expect(err).NotTo(HaveOccurred())
		out, err = tool(ctx, "qemu-img", "compare", "-f", "raw", "-F", "raw", img, uri("copy"))
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring(fmt.Sprintf("Content mismatch at offset %d", 5<<20)))
		_, err = confDisks["copy"].WriteAt(data[5<<20+7:5<<20+8], 5<<20+7)
		Expect(err).NotTo(HaveOccurred())
	})
})

var _ = Describe("nbdcopy", func() {
	It("round-trips file → export → file", func(ctx SpecContext) {
		src := filepath.Join(confDir, "nbdcopy-src.img")
		dst := filepath.Join(confDir, "nbdcopy-dst.img")
		data := make([]byte, confSize)
		r := rand.New(rand.NewPCG(3, 4))
		for i := 0; i < confSize; i += 3 << 20 { // sparse: 1 MiB of data every 3 MiB
			for j := i; j < min(i+1<<20, confSize); j++ {
				data[j] = byte(r.Uint32())
			}
		}
		Expect(os.WriteFile(src, data, 0o644)).To(Succeed())
		out, err := tool(ctx, "nbdcopy", "--flush", src, uri("nbdcopy"))
		Expect(err).NotTo(HaveOccurred(), out)
		out, err = tool(ctx, "nbdcopy", uri("nbdcopy"), dst)
		Expect(err).NotTo(HaveOccurred(), out)
		got, err := os.ReadFile(dst)
		Expect(err).NotTo(HaveOccurred())
		Expect(len(got)).To(Equal(confSize))
		Expect(bytes.Equal(got, data)).To(BeTrue(), "nbdcopy round trip differs")
		// nbdcopy sent the source's holes as zero requests, which the
		// server turned into discards: the export is as sparse as the file.
		out, err = tool(ctx, "nbdinfo", "--map", "--totals", uri("nbdcopy"))
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(MatchRegexp(`(?m)^\s*%d\s.*\s0 data$`, 11<<20))
		Expect(out).To(MatchRegexp(`(?m)^\s*%d\s.*\s3 hole,zero$`, confSize-11<<20))
	})
})

var _ = Describe("64 concurrent clients", func() {
	It("serves 63 well-behaved clients while one misbehaves, and leaks nothing", func(ctx SpecContext) {
		goroutines, fds := runtime.NumGoroutine(), openFDs()
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for i := range 63 {
			wg.Add(1)
			go func() {
				defer GinkgoRecover()
				defer wg.Done()
				off := i * 256 << 10
				pat := fmt.Sprintf("0x%02x", i+1)
				out, err := tool(ctx, "qemu-io", "-f", "raw",
					"-c", fmt.Sprintf("write -P %s %d 256k", pat, off),
					"-c", "flush",
					"-c", fmt.Sprintf("read -P %s %d 256k", pat, off), uri("many"))
				if err != nil || strings.Contains(out, "failed") {
					errs <- fmt.Errorf("client %d: %v\n%s", i, err, out)
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer GinkgoRecover()
			defer wg.Done()
			errs <- misbehave(confAddr)
		}()
		wg.Wait()
		close(errs)
		for err := range errs {
			Expect(err).NotTo(HaveOccurred())
		}
		Eventually(runtime.NumGoroutine).WithTimeout(5 * time.Second).Should(BeNumerically("<=", goroutines))
		Eventually(openFDs).WithTimeout(5 * time.Second).Should(BeNumerically("<=", fds))
	})
})

func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// misbehave negotiates, sends requests, then garbage, then stops reading
// and vanishes. It returns an error only if the server did not close the
// connection after the garbage.
func misbehave(addr net.Addr) error {
	c, err := net.Dial(addr.Network(), addr.String())
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var buf bytes.Buffer
	buf.Write([]byte{0, 0, 0, flagCFixedNewstyle | flagCNoZeroes})
	buf.Write(optBytes(optGo, infoData("many")))
	for i := range 16 {
		buf.Write(reqBytes(0, CmdRead, uint64(i), 0, 4096))
	}
	buf.WriteString("this is not an NBD request header")
	if _, err := c.Write(buf.Bytes()); err != nil {
		return err
	}
	// Drain until the server hangs up.
	n, err := bytes.NewBuffer(nil).ReadFrom(c)
	if err != nil {
		return fmt.Errorf("misbehaving client: server did not close after %d bytes: %w", n, err)
	}
	return nil
}
