package cli_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"golang.org/x/sys/unix"
)

// The command line as people use it: flags anywhere, help, completion in
// real shells, a progress bar on a real terminal, documented exit codes.
var _ = Describe("the command line", func() {
	It("takes flags before and after operands in every command, and -- ends them", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		scn := write(dir, "good.scn", good)
		r := snaplab(ctx, dir, nil, "run", scn, "-q", "--record", "recs")
		Expect(r.Code).To(Equal(0), r.Stderr)
		Expect(r.Stdout).To(ContainSubstring("1 passed, 0 failed"))
		Expect(r.Stdout).NotTo(ContainSubstring("[1/1]"), "-q after the operand is a flag, not a file")
		r = snaplab(ctx, dir, nil, "replay", filepath.Join("recs", "good.jsonl"), "-images-anywhere")
		Expect(r.Code).To(Equal(0), r.Stderr)
		r = snaplab(ctx, dir, nil, "export", scn, "--format", "sh", "-o", "good.sh")
		Expect(r.Code).To(Equal(0), r.Stderr)
		Expect(filepath.Join(dir, "good.sh")).To(BeAnExistingFile())
		// After "--", "-q" is an operand: a file that does not exist.
		r = snaplab(ctx, dir, nil, "run", "--", "-q")
		Expect(r.Code).To(Equal(1))
		Expect(r.Stderr + r.Stdout).To(ContainSubstring("-q"))
	})

	It("keeps the exit codes the usage text documents", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		r := snaplab(ctx, dir, nil, "help")
		Expect(r.Code).To(Equal(0))
		for _, code := range []string{"0 ", "1 ", "2 ", "130 "} {
			Expect(r.Stdout).To(ContainSubstring("\n  "+code), "exit status %s is documented", code)
		}
		Expect(snaplab(ctx, dir, nil, "run", write(dir, "good.scn", good), "-record", "off").Code).To(Equal(0))
		Expect(snaplab(ctx, dir, nil, "run", write(dir, "bad.scn", strings.Replace(good, "expect=zero", "expect=A", 1)), "-record", "off").Code).To(Equal(1))
		Expect(snaplab(ctx, dir, nil, "run", "-no-such-flag", "x.scn").Code).To(Equal(2))
		Expect(snaplab(ctx, dir, nil, "frobnicate").Code).To(Equal(2))
		Expect(snaplab(ctx, dir, nil, "cow", filepath.Join(dir, "missing.img")).Code).To(Equal(1))
	})

	It("prints a command's flags with snaplab help COMMAND", func(ctx SpecContext) {
		r := snaplab(ctx, GinkgoT().TempDir(), nil, "help", "serve")
		Expect(r.Code).To(Equal(0), r.Stderr)
		Expect(r.Stdout).To(SatisfyAll(ContainSubstring("Usage: snaplab serve"), ContainSubstring("-socket"), ContainSubstring("-tls-creds")))
		r = snaplab(ctx, GinkgoT().TempDir(), nil, "help", "nosuch")
		Expect(r.Code).To(Equal(2))
		Expect(r.Stderr).To(ContainSubstring(`unknown command "nosuch"`))
	})

	It("completes commands, flags, flag values and files in bash", func(ctx SpecContext) {
		dir := completionDir()
		complete := func(line ...string) []string {
			script := fmt.Sprintf(`source <(snaplab completion bash) || exit 9
COMP_WORDS=(%s); COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_snaplab
printf '%%s\n' "${COMPREPLY[@]}"`, shellWords(line))
			out, err := exec.CommandContext(ctx, "bash", "--norc", "-c", script).CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), "%s", out)
			return strings.Fields(string(out))
		}
		_ = dir
		Expect(complete("snaplab", "re")).To(Equal([]string{"replay"}))
		Expect(complete("snaplab", "run", "--exe")).To(Equal([]string{"--executor"}))
		Expect(complete("snaplab", "run", "-executor", "")).To(Equal([]string{"sim", "vm", "kernel"}))
		Expect(complete("snaplab", "run", "")).To(Equal([]string{"a.scn", "sub/"}), "scenarios and directories, not recordings")
		Expect(complete("snaplab", "replay", "")).To(Equal([]string{"r.jsonl", "sub/"}))
		Expect(complete("snaplab", "serve", "a.scn", "--so")).To(Equal([]string{"--socket"}), "flags after an operand")
		Expect(complete("snaplab", "import", "")).To(Equal([]string{"lvm", "log-writes"}))
		Expect(complete("snaplab", "help", "comp")).To(Equal([]string{"completion"}))
	})

	It("completes in zsh", func(ctx SpecContext) {
		completionDir()
		complete := func(line ...string) []string {
			// compadd is zsh's; outside the completion system a stand-in
			// prints what the function offers.
			script := fmt.Sprintf(`compadd() { while [[ $1 == -* ]]; do [[ $1 == -- ]] && { shift; break }; [[ $1 == -S ]] && shift; shift; done; print -l -- "$@" }
source <(snaplab completion zsh) || exit 9
words=(%s); CURRENT=${#words}
_snaplab`, shellWords(line))
			out, err := exec.CommandContext(ctx, "zsh", "-f", "-c", script).CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), "%s", out)
			return strings.Fields(string(out))
		}
		Expect(complete("snaplab", "ex")).To(Equal([]string{"explore", "export"}))
		Expect(complete("snaplab", "run", "-semantics", "")).To(Equal([]string{"mainline", "seed"}))
		Expect(complete("snaplab", "run", "")).To(Equal([]string{"sub/", "a.scn"}), "directories first, without a trailing space")
	})

	It("draws a progress bar on a terminal and plain lines elsewhere", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		a := write(dir, "a.scn", good)
		b := write(dir, "b.scn", strings.Replace(good, "expect=zero", "expect=A", 1))
		onTTY := runOnTerminal(ctx, dir, "run", a, b, "-record", "off")
		Expect(onTTY).To(ContainSubstring("\r\x1b[K[###############---------------] 1/2"), "the bar, half way")
		Expect(onTTY).To(ContainSubstring("[##############################] 2/2"), "the bar, done")
		Expect(onTTY).To(ContainSubstring("line 6: read snap 0 8KiB expect=A"), "a failure's message")
		Expect(onTTY).NotTo(ContainSubstring("[1/2]"))
		r := snaplab(ctx, dir, nil, "run", a, b, "-record", "off")
		Expect(r.Stdout).To(SatisfyAll(ContainSubstring("[1/2] "), ContainSubstring("[2/2] ")))
		Expect(r.Stdout).NotTo(ContainSubstring("\x1b["), "no escape codes in a pipe")
	})
})

// completionDir makes a temporary directory with a scenario, a recording
// and a subdirectory, puts the command on PATH as "snaplab", and makes the
// directory the working directory for the spec.
func completionDir() string {
	dir := GinkgoT().TempDir()
	write(dir, "a.scn", good)
	write(dir, "r.jsonl", "")
	Expect(os.Mkdir(filepath.Join(dir, "sub"), 0o755)).To(Succeed())
	binDir := GinkgoT().TempDir()
	Expect(os.Symlink(bin, filepath.Join(binDir, "snaplab"))).To(Succeed())
	GinkgoT().Setenv("PATH", binDir+":"+os.Getenv("PATH"))
	GinkgoT().Chdir(dir)
	return dir
}

// shellWords quotes words for a bash or zsh array.
func shellWords(ws []string) string {
	var q []string
	for _, w := range ws {
		q = append(q, "'"+strings.ReplaceAll(w, "'", `'\''`)+"'")
	}
	return strings.Join(q, " ")
}

// runOnTerminal runs the command with stdout and stderr on a new
// pseudo-terminal and returns what it wrote there.
func runOnTerminal(ctx context.Context, dir string, args ...string) string {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	Expect(err).NotTo(HaveOccurred())
	defer master.Close()
	Expect(unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0)).To(Succeed())
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	Expect(err).NotTo(HaveOccurred())
	tty, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	Expect(err).NotTo(HaveOccurred())
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, tty, tty
	var out bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&out, master); close(done) }()
	Expect(cmd.Start()).To(Succeed())
	cmd.Wait()
	tty.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		Fail("the terminal's output did not end")
	}
	return strings.ReplaceAll(out.String(), "\r\n", "\n")
}
