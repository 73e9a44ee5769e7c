// Package failing is report's fixture: a suite with one passing and one
// failing spec, run by report_test.go through go test as make test runs
// suites. It fails only when $SNAPLAB_REPORT_FIXTURE is set, so that it
// can never fail by being run by accident.
package failing

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/scenarios/report"
	"snaplab/sim/run"
	"snaplab/sim/script"
)

func TestFailing(t *testing.T) {
	RegisterFailHandler(Fail)
	report.KeepSuite("guest console", func() string { return report.Tail("boot\nline 2\nlast console line", 2) })
	report.Run(t, "failing", "report fixture")
}

const scn = `disk origin 8MiB
disk cow 1MiB
dmsetup create snap --table "0 16384 snapshot origin cow P 8"
dmsetup create base --table "0 16384 snapshot-origin origin"
write base 0 8KiB pattern=A
read snap 0 8KiB expect=zero
`

var _ = Describe("the fixture", func() {
	It("passes slowly", func() { time.Sleep(300 * time.Millisecond) })
	It("fails (with a recording)", func() {
		report.Keep("reproduce outside the suite", "snaplab run x.scn")
		sc, err := script.Parse("x", scn)
		Expect(err).NotTo(HaveOccurred())
		var rec bytes.Buffer
		_, err = run.Sim{}.Run(context.Background(), sc, run.Options{Record: &rec})
		Expect(err).NotTo(HaveOccurred())
		report.KeepRecording("x on the sim", rec.Bytes())
		Expect(os.Getenv("SNAPLAB_REPORT_FIXTURE")).To(BeEmpty(), "the planted failure")
	})
})
