// The in-process suite (label "sim"): every library scenario on the
// simulator (in the semantics it names); every recording under
// fixtures/recordings replayed; determinism of recordings.
package scenarios_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/scenarios/report"

	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/guest"
)

func TestScenarios(t *testing.T) {
	RegisterFailHandler(Fail)
	report.Run(t, "scenarios", "snaplab scenarios")
}

func files(pattern string) []string {
	m, err := filepath.Glob(pattern)
	if err != nil {
		panic(err)
	}
	sort.Strings(m)
	return m
}

func load(path string) *script.Scenario {
	text, err := os.ReadFile(path)
	Expect(err).NotTo(HaveOccurred())
	sc, err := script.Parse(path, string(text))
	Expect(err).NotTo(HaveOccurred())
	sc.Name = strings.TrimSuffix(filepath.Base(path), ".scn")
	return sc
}

// okReads counts sc's read steps that do not expect an error.
func okReads(sc *script.Scenario) int {
	n := 0
	for i := range sc.Steps {
		st := &sc.Steps[i]
		if st.Kind == script.KRead && (st.Expect.Errno == nil || *st.Expect.Errno == 0) {
			n++
		}
	}
	return n
}

func describeFailures(rep *run.Report) string {
	var b strings.Builder
	for _, f := range rep.Failures {
		b.WriteString(f.String())
		b.WriteString("\n")
	}
	return b.String()
}

var _ = Describe("library on the sim executor", Label("sim"), func() {
	lib := files("library/*.scn")
	It("has at least 30 scenarios", func() {
		Expect(len(lib)).To(BeNumerically(">=", 30), "scenarios/library holds %d scenarios", len(lib))
	})
	for _, path := range lib {
		path := path
		It(filepath.Base(path), func() {
			sc := load(path)
			rep := run.Run(sc, run.Options{})
			Expect(rep.Pass()).To(BeTrue(), "%s failed:\n%s", path, describeFailures(rep))
			// The oracle checks every read's sectors, whether or not
			// the line has an expect=: a scenario with a read that
			// succeeded has its sectors checked.
			if reads := okReads(sc); reads > 0 {
				Expect(rep.Checks).To(BeNumerically(">", 0), "%s: %d reads expected to succeed, but the oracle checked no sector", path, reads)
			}
		})
	}
})

var _ = Describe("recordings", Label("sim"), func() {
	for _, path := range files("../fixtures/recordings/*.jsonl") {
		path := path
		It("replays "+filepath.Base(path)+" identically", func() {
			f, err := os.Open(path)
			Expect(err).NotTo(HaveOccurred())
			defer f.Close()
			rec, err := record.Read(f)
			Expect(err).NotTo(HaveOccurred())
			rep, diff, err := run.Replay(rec, run.Options{})
			Expect(err).NotTo(HaveOccurred())
			Expect(diff).To(BeEmpty(), "replay of %s diverged", path)
			Expect(rep.Pass()).To(Equal(rec.Footer.Pass))
		})
	}

	It("are deterministic: the same seed twice gives identical bytes, for several seeds", func() {
		for _, path := range files("library/*.scn") {
			sc := load(path)
			for _, seed := range []uint64{0, 1, 42} {
				seed := seed
				var a, b bytes.Buffer
				ra := run.Run(sc, run.Options{Seed: &seed, Record: &a})
				rb := run.Run(sc, run.Options{Seed: &seed, Record: &b})
				Expect(a.Bytes()).To(Equal(b.Bytes()), "%s seed %d: recordings differ", path, seed)
				Expect(ra.TraceHash).To(Equal(rb.TraceHash))
			}
		}
	})

	It("a changed recording is reported as a divergence with its line", func() {
		lib := files("library/*.scn")
		Expect(lib).NotTo(BeEmpty())
		var buf bytes.Buffer
		run.Run(load(lib[0]), run.Options{Record: &buf})
		lines := record.SplitLines(buf.Bytes())
		// Tamper with the first result line's check.
		for i, l := range lines {
			if strings.Contains(l, `"kind":"result"`) {
				lines[i] = strings.Replace(l, `"check":"ok"`, `"check":"tampered"`, 1)
				break
			}
		}
		rec, err := record.Read(strings.NewReader(strings.Join(lines, "\n") + "\n"))
		Expect(err).NotTo(HaveOccurred())
		_, diff, err := run.Replay(rec, run.Options{})
		Expect(err).NotTo(HaveOccurred())
		Expect(diff).To(ContainSubstring("first difference at line"))
		Expect(diff).To(ContainSubstring("tampered"))
	})
})

var _ = Describe("the real kernels' results (fixtures/kernel/RELEASE)", Label("sim"), func() {
	base := files("../fixtures/kernel/" + guest.DefaultKernel + "/*.json")
	It("cover the library's mainline scenarios, for every kernel of the matrix", func() {
		Expect(len(base)).To(BeNumerically(">=", 40))
		names := func(paths []string) []string {
			var out []string
			for _, p := range paths {
				out = append(out, filepath.Base(p))
			}
			return out
		}
		for _, r := range guest.Releases {
			Expect(names(files("../fixtures/kernel/"+r.Name+"/*.json"))).To(Equal(names(base)),
				"fixtures/kernel/%s: goldens for other scenarios than %s's (SNAPLAB_KERNEL=%s make goldens)", r.Name, guest.DefaultKernel, r.Name)
		}
	})
	for _, r := range guest.Releases {
		for _, path := range files("../fixtures/kernel/" + r.Name + "/*.json") {
			path := path
			name := strings.TrimSuffix(filepath.Base(path), ".json")
			It("the simulator matches "+r.Name+" on "+name, func() {
				b, err := os.ReadFile(path)
				Expect(err).NotTo(HaveOccurred())
				var want []record.StepResult
				Expect(json.Unmarshal(b, &want)).To(Succeed())
				sc := load(filepath.Join("library", name+".scn"))
				var buf bytes.Buffer
				rep := run.Run(sc, run.Options{Record: &buf, Kernel: r.Name})
				Expect(rep.Pass()).To(BeTrue(), "the simulator with kernel profile %s fails %s: %v", r.Name, name, rep.Failures)
				rec, err := record.Read(bytes.NewReader(buf.Bytes()))
				Expect(err).NotTo(HaveOccurred())
				got, err := record.Results(rec)
				Expect(err).NotTo(HaveOccurred())
				diffs := record.CompareResults(want, got)
				var sb strings.Builder
				for _, d := range diffs {
					fmt.Fprintln(&sb, d)
				}
				Expect(diffs).To(BeEmpty(), "kernel %s (first) vs simulator (second):\n%s", r.Name, sb.String())
			})
		}
	}
})
