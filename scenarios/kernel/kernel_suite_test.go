// The kernel suite (label "kernel"): every mainline library scenario, and
// random scenarios from sim/gen, on the real Linux dm-snapshot in a guest,
// each compared step by step with the simulator. Where they disagree, the
// simulator is wrong.
//
// It also regenerates the golden files fixtures/kernel/NAME.json (the
// kernel's normalised results, which the sim suite checks on every run
// without a VM) and fails if they drifted. Flags: -kernel.seeds N (random
// scenarios, default 30), -kernel.ops N (steps each, default 40).
package kernel_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/sim/gen"
	"snaplab/sim/record"
	"snaplab/sim/run"
	"snaplab/sim/script"
	"snaplab/vmtest/guest"
	"snaplab/vmtest/kernexec"
	"snaplab/vmtest/qemu"
)

var (
	seeds = flag.Int("kernel.seeds", 30, "random scenarios to run on kernel and sim")
	ops   = flag.Int("kernel.ops", 40, "steps per random scenario")
)

func TestKernel(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "snaplab kernel executor")
}

var ex *kernexec.Executor

var _ = BeforeSuite(func(ctx SpecContext) {
	img, err := guest.Prepare(ctx, kernexec.ImageOptions()...)
	Expect(err).NotTo(HaveOccurred())
	vm, err := qemu.Start(context.Background(), qemu.WithImage(img), qemu.WithHotplugSlots(8), qemu.WithLogf(GinkgoWriter.Printf))
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func(ctx SpecContext) { _ = vm.Close(ctx) }, NodeTimeout(time.Minute))
	DeferOnFailure(func() { AddReportEntry("serial console", vm.Console()) })
	_, err = vm.Ready(ctx)
	Expect(err).NotTo(HaveOccurred())
	ex = kernexec.New(vm)
}, NodeTimeout(5*time.Minute))

func results(b []byte) []record.StepResult {
	rec, err := record.Read(bytes.NewReader(b))
	Expect(err).NotTo(HaveOccurred())
	r, err := record.Results(rec)
	Expect(err).NotTo(HaveOccurred())
	return r
}

// both runs sc on the kernel and on the simulator and returns the kernel's
// normalised results, failing on any difference.
func both(ctx context.Context, sc *script.Scenario) []record.StepResult {
	var k, s bytes.Buffer
	rep, err := ex.Run(ctx, sc, run.Options{Record: &k})
	Expect(err).NotTo(HaveOccurred())
	run.Run(sc, run.Options{Record: &s})
	kr, sr := results(k.Bytes()), results(s.Bytes())
	diffs := record.CompareResults(kr, sr)
	var b strings.Builder
	for _, d := range diffs {
		fmt.Fprintf(&b, "%s\n", d)
	}
	Expect(diffs).To(BeEmpty(), "%s: kernel (first) and simulator (second) disagree:\n%s\nscenario:\n%s", sc.Name, b.String(), sc.Text)
	var f strings.Builder
	for _, x := range rep.Failures {
		fmt.Fprintln(&f, x)
	}
	Expect(rep.Pass()).To(BeTrue(), "%s fails on the real kernel:\n%s", sc.Name, f.String())
	return kr
}

var _ = Describe("library on the kernel executor, compared with sim", Label("kernel"), func() {
	lib, _ := filepath.Glob("../library/*.scn")
	sort.Strings(lib)
	for _, path := range lib {
		path := path
		text, err := os.ReadFile(path)
		if err != nil {
			panic(err)
		}
		sc, err := script.Parse(path, string(text))
		if err != nil {
			panic(err)
		}
		sc.Name = strings.TrimSuffix(filepath.Base(path), ".scn")
		sc.Dir = filepath.Dir(path)
		if kernexec.Supported(sc) != nil {
			continue
		}
		It(sc.Name, func(ctx SpecContext) {
			kr := both(ctx, sc)
			golden := filepath.Join("../../fixtures/kernel", sc.Name+".json")
			want, _ := os.ReadFile(golden)
			got, err := json.MarshalIndent(kr, "", " ")
			Expect(err).NotTo(HaveOccurred())
			got = append(got, '\n')
			if !bytes.Equal(want, got) {
				Expect(os.WriteFile(golden, got, 0o644)).To(Succeed())
				Fail(fmt.Sprintf("%s: the kernel's results drifted from %s (rewritten: review and commit it)", sc.Name, golden))
			}
		}, SpecTimeout(3*time.Minute))
	}
})

var _ = Describe("random scenarios on kernel and sim", Label("kernel"), func() {
	It(fmt.Sprintf("agree for %d seeds", *seeds), func(ctx SpecContext) {
		for seed := 1; seed <= *seeds; seed++ {
			text := gen.Generate(uint64(seed), *ops)
			sc, err := script.Parse(fmt.Sprintf("gen-seed-%d", seed), text)
			Expect(err).NotTo(HaveOccurred(), text)
			By(fmt.Sprintf("seed %d", seed))
			both(ctx, sc)
		}
	}, SpecTimeout(20*time.Minute))
})
