package cli_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/scenarios/cmdtest"
	"snaplab/sim/dm"
)

// served is a running `snaplab serve`.
type served struct {
	cmd      *exec.Cmd
	out, err cmdtest.SyncBuffer
	stdin    io.WriteCloser
	exited   chan error
}

// startServe starts `snaplab serve ARGS...` and waits for it to be ready.
func startServe(args ...string) *served {
	s := &served{cmd: exec.Command(bin, append([]string{"serve"}, args...)...), exited: make(chan error, 1)}
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	s.cmd.Stdout, s.cmd.Stderr = &s.out, &s.err
	var err error
	s.stdin, err = s.cmd.StdinPipe()
	Expect(err).NotTo(HaveOccurred())
	Expect(s.cmd.Start()).To(Succeed())
	go func() { s.exited <- s.cmd.Wait() }()
	DeferCleanup(func() { s.cmd.Process.Kill() })
	Eventually(s.out.String).WithTimeout(20*time.Second).Should(ContainSubstring("ready:"), "stderr: %s", s.err.String())
	return s
}

// line sends a control line on stdin and returns what it answered, up to
// and including its "ok" or "fail:" line.
func (s *served) line(l string) string {
	before := len(s.out.String())
	fmt.Fprintln(s.stdin, l)
	var answer string
	Eventually(func() bool {
		answer = s.out.String()[before:]
		return strings.HasSuffix(answer, "ok\n") || strings.Contains(answer, "fail: ")
	}).WithTimeout(20 * time.Second).Should(BeTrue())
	return answer
}

func (s *served) quit() int {
	fmt.Fprintln(s.stdin, "quit")
	s.stdin.Close()
	var err error
	Eventually(s.exited).WithTimeout(30 * time.Second).Should(Receive(&err))
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	Expect(err).NotTo(HaveOccurred())
	return 0
}

// busy is the kernel's refusal to remove an open device, as the simulator
// prints it (the library scenario dmsetup-remove-held-open pins it to the
// kernel's).
func busy(dev string) string {
	return (&dm.IoctlError{Ioctl: "remove", Dev: dev, Errno: syscall.EBUSY}).Error()
}

// nbdsh runs a Python script in libnbd's nbdsh against uri.
func nbdsh(ctx context.Context, script string) (string, error) {
	path, err := exec.LookPath("nbdsh")
	Expect(err).NotTo(HaveOccurred(), "nbdsh (make deps installs python3-libnbd)")
	cmd := exec.CommandContext(ctx, path, "-c", script)
	cmd.Env = systemPython()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// systemPython is the environment in which nbdsh finds the system python3
// that has libnbd's module (a python earlier on PATH, as pyenv puts there,
// does not).
func systemPython() []string {
	return append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
}

var _ = Describe("snaplab serve at its edges", Label("nbd"), func() {
	It("serves clients that negotiate no block sizes byte for byte, on a disk and on a dm device", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		sock := filepath.Join(dir, "nbd.sock")
		s := startServe("-socket", sock, "-record", "", write(dir, "s.scn", good))
		for _, export := range []string{"origin", "base"} {
			out, err := nbdsh(ctx, fmt.Sprintf(`
h.set_strict_mode(0)
h.set_request_block_size(False)
h.connect_uri("nbd+unix:///%s?socket=%s")
before = h.pread(1024, 0)
h.pwrite(b"x" * 512, 100)
assert h.pread(16, 100) == b"x" * 16, "16 bytes at +100"
got = h.pread(1024, 0)
assert got[:100] == before[:100], "bytes before +100 changed"
assert got[100:612] == b"x" * 512, "the write is not at +100"
assert got[612:] == before[612:], "bytes after the write changed"
h.pwrite(b"yz", 611)
assert h.pread(4, 610) == b"xyz" + before[613:614], h.pread(4, 610)
print("byte-exact")
`, export, sock))
			Expect(err).NotTo(HaveOccurred(), "%s: %s", export, out)
			Expect(out).To(ContainSubstring("byte-exact"))
		}
		Expect(s.quit()).To(Equal(0))
	}, SpecTimeout(2*time.Minute))

	It("counts an NBD connection in the device's open count: remove is refused while it is connected", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		sock := filepath.Join(dir, "nbd.sock")
		s := startServe("-socket", sock, "-record", filepath.Join(dir, "rec.jsonl"), write(dir, "s.scn", good))
		Expect(s.line("dmsetup info base")).To(ContainSubstring("Open count:        0\n"))
		path, err := exec.LookPath("nbdsh")
		Expect(err).NotTo(HaveOccurred())
		hold := exec.CommandContext(ctx, path, "-c", fmt.Sprintf(`
import sys
h.connect_uri("nbd+unix:///base?socket=%s")
print("connected", flush=True)
sys.stdin.read()
`, sock))
		hold.Env = systemPython()
		holdIn, err := hold.StdinPipe()
		Expect(err).NotTo(HaveOccurred())
		holdOut, err := hold.StdoutPipe()
		Expect(err).NotTo(HaveOccurred())
		Expect(hold.Start()).To(Succeed())
		l, err := bufio.NewReader(holdOut).ReadString('\n')
		Expect(err).NotTo(HaveOccurred())
		Expect(l).To(Equal("connected\n"))

		Expect(s.line("dmsetup info base")).To(ContainSubstring("Open count:        1\n"))
		Expect(s.line("dmsetup remove base")).To(SatisfyAll(
			ContainSubstring(busy("base")), ContainSubstring("fail: ")))
		holdIn.Close()
		Expect(hold.Wait()).To(Succeed())
		Eventually(func() string { return s.line("dmsetup info base") }).WithTimeout(10 * time.Second).
			Should(ContainSubstring("Open count:        0\n"))
		Expect(s.line("dmsetup remove base")).To(HaveSuffix("ok\n"))
		Expect(s.quit()).To(Equal(1), "the refused remove is a failed control line")
		r := snaplab(ctx, dir, nil, "replay", filepath.Join(dir, "rec.jsonl"))
		Expect(r.Stdout).To(ContainSubstring("REPRODUCED FAILURE"), "the open, the refusal and the close replay: %s", r.Stdout)
	}, SpecTimeout(2*time.Minute))

	It("replaces a stale control socket, makes it 0600 and bounds control lines", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		ctl := filepath.Join(dir, "ctl.sock")
		stale, err := net.Listen("unix", ctl)
		Expect(err).NotTo(HaveOccurred())
		stale.(*net.UnixListener).SetUnlinkOnClose(false)
		stale.Close() // what a crashed server leaves behind
		s := startServe("-socket", filepath.Join(dir, "nbd.sock"), "-control", ctl, "-record", "", write(dir, "s.scn", good))
		fi, err := os.Stat(ctl)
		Expect(err).NotTo(HaveOccurred())
		Expect(fi.Mode().Perm()).To(Equal(os.FileMode(0o600)))
		c, err := net.Dial("unix", ctl)
		Expect(err).NotTo(HaveOccurred())
		defer c.Close()
		br := bufio.NewReader(c)
		fmt.Fprintf(c, "dmsetup %s\n", strings.Repeat("x", 100<<10))
		l, err := br.ReadString('\n')
		Expect(err).NotTo(HaveOccurred())
		Expect(l).To(Equal("fail: control line longer than 65536 bytes refused\n"))
		fmt.Fprintln(c, "dmsetup ls")
		var got strings.Builder
		for !strings.HasSuffix(got.String(), "ok\n") {
			l, err := br.ReadString('\n')
			Expect(err).NotTo(HaveOccurred())
			got.WriteString(l)
		}
		Expect(got.String()).To(ContainSubstring("base\t(253:1)"))
		Expect(s.quit()).To(Equal(0))
	}, SpecTimeout(2*time.Minute))

	It("names what is wrong with where it should listen", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		scn := write(dir, "s.scn", good)
		r := snaplab(ctx, dir, nil, "serve", "-socket", filepath.Join(dir, "missing", "nbd.sock"), scn)
		Expect(r.Code).To(Equal(2))
		Expect(r.Stderr).To(ContainSubstring("missing: no such file or directory"))
		_, err := os.Stat(filepath.Join(dir, "missing"))
		Expect(os.IsNotExist(err)).To(BeTrue(), "serve created the directory")
		r = snaplab(ctx, dir, nil, "serve", "-listen", "0.0.0.0:0", scn)
		Expect(r.Code).To(Equal(2))
		Expect(r.Stderr).To(ContainSubstring("reachable from other hosts"))
		s := startServe("-listen", "0.0.0.0:0", "-insecure", "-record", "", scn)
		Expect(s.err.String()).To(ContainSubstring("warning: serving NBD without TLS"))
		Expect(s.quit()).To(Equal(0))
	}, SpecTimeout(2*time.Minute))
})
