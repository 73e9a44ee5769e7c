package kernel_test

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/sim/shexport"
	"snaplab/vmtest/guest/proto"
)

// Scripts of `snaplab export --format sh`, run in the suite's guest with
// bash, losetup, dd and the real dmsetup: every step's verdict must be the
// simulator's (all of these library scenarios pass there), and the script
// must leave no dm or loop device behind. Four scenarios keep the spec
// within make test's time (a script takes about a minute under TCG);
// dmsetup-remove-held-open, ctr-missing-device and status-lvm-snapshot-usage
// (held opens and listings, failed creates' device numbers, a dm device in
// a table) passed too when they were added: run them with
// -kernel.export-all.
var exportCases = []string{
	"h1-handover-basic",            // handover: the old table gets EIO
	"cow-read-error-no-invalidate", // a read fault on a range of the COW (dm-delay's read half on dm-error)
	"cow-write-error-header-fails", // a write fault on the whole COW (dm-error), cleared later
	"suspend-drains-and-queues-io", // async I/O across suspend and resume
}

var exportMore = []string{"dmsetup-remove-held-open", "ctr-missing-device", "status-lvm-snapshot-usage"}

var exportAll = flag.Bool("kernel.export-all", false, "run every exported-script case, not only the four of make test")

var verdictRE = regexp.MustCompile(`^(PASS|FAIL) line ([0-9]+): `)

// runExported runs script in the guest, returning stdout, stderr and the
// exit status.
func runExported(ctx context.Context, name string, sh []byte) (proto.Response, error) {
	cmd := `f=$(mktemp /tmp/export.XXXXXX) && cat >"$f" && bash "$f"; rc=$?; rm -f "$f"; exit $rc`
	return guestVM.Agent().Exec(ctx, proto.ExecReq{Argv: []string{"/usr/bin/bash", "-c", cmd}, Stdin: string(sh),
		Env: []string{"PATH=/usr/sbin:/usr/bin", "SNAPLAB_PREFIX=export-" + name, "SNAPLAB_DEBUG=1"},
		// Killed in the guest before the spec times out, so that a stuck
		// script does not outlive its spec.
		TimeoutMS: (5 * time.Minute).Milliseconds()})
}

var _ = Describe("exported shell scripts in the guest", Label("kernel"), func() {
	cases := exportCases
	if *exportAll {
		cases = append(append([]string(nil), exportCases...), exportMore...)
	}
	for _, name := range cases {
		name := name
		It(name+" agrees with the simulator step by step", func(ctx SpecContext) {
			sc, err := script.ParseFile(filepath.Join("..", "library", name+".scn"))
			Expect(err).NotTo(HaveOccurred())
			// The guest's kernel's verdicts (sim/profile).
			prof := ex.(run.KernelProfiler).KernelProfile()
			rep := run.Run(sc, run.Options{KeepGoing: true, Kernel: prof})
			simFailed := map[int]bool{}
			for _, f := range rep.Failures {
				simFailed[f.Line] = true
			}
			sh, err := shexport.Export(sc, shexport.Options{Kernel: prof})
			Expect(err).NotTo(HaveOccurred())
			resp, err := runExported(ctx, name, sh)
			Expect(err).NotTo(HaveOccurred())
			AddReportEntry("script output", resp.Stdout+resp.Stderr)
			Expect(resp.Errno).To(Or(Equal("OK"), Equal("")), "the script did not finish: %s\n%s%s", resp.Error, resp.Stdout, resp.Stderr)

			got := map[int]string{}
			for _, l := range strings.Split(resp.Stdout, "\n") {
				m := verdictRE.FindStringSubmatch(l)
				if m == nil {
					continue
				}
				n, _ := strconv.Atoi(m[2])
				Expect(got).NotTo(HaveKey(n), "two verdicts for line %d:\n%s", n, resp.Stdout)
				got[n] = l
			}
			var diffs []string
			for _, st := range sc.Steps {
				v, ok := got[st.Line]
				want := "PASS"
				if simFailed[st.Line] {
					want = "FAIL"
				}
				switch {
				case !ok:
					diffs = append(diffs, fmt.Sprintf("line %d: %s: no verdict", st.Line, st.Text))
				case !strings.HasPrefix(v, want+" "):
					diffs = append(diffs, fmt.Sprintf("the simulator's verdict is %s: %s", want, v))
				}
			}
			Expect(diffs).To(BeEmpty(), "the script and the simulator disagree:\n%s\nscript output:\n%s%s",
				strings.Join(diffs, "\n"), resp.Stdout, resp.Stderr)
			Expect(len(got)).To(Equal(len(sc.Steps)), "verdicts for lines that are not steps:\n%s", resp.Stdout)
			wantExit := 0
			if !rep.Pass() {
				wantExit = 1
			}
			Expect(resp.Exit).To(Equal(wantExit), "exit status; output:\n%s%s", resp.Stdout, resp.Stderr)
			Expect(resp.Stdout).To(ContainSubstring(fmt.Sprintf("%d steps, %d passed", len(sc.Steps), len(sc.Steps)-len(simFailed))))

			// Nothing left behind: no dm device, no loop device.
			left, err := guestVM.Agent().Exec(ctx, proto.ExecReq{Argv: []string{"/usr/bin/bash", "-c", "dmsetup ls; losetup -a"},
				Env: []string{"PATH=/usr/sbin:/usr/bin", "DM_DISABLE_UDEV=1"}})
			Expect(err).NotTo(HaveOccurred())
			Expect(strings.TrimSpace(left.Stdout)).To(Equal("No devices found"), "left behind in the guest:\n%s%s", left.Stdout, left.Stderr)
		}, SpecTimeout(6*time.Minute))
	}
})
