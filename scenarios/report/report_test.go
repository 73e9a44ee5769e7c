package report_test

import (
	"encoding/json"
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/onsi/ginkgo/v2/types"
)

type junit struct {
	Suites []struct {
		Name  string `xml:"name,attr"`
		Cases []struct {
			Name    string `xml:"name,attr"`
			Failure *struct {
				Message string `xml:"message,attr"`
			} `xml:"failure"`
			Props []struct {
				Name  string `xml:"name,attr"`
				Value string `xml:"value,attr"`
			} `xml:"properties>property"`
			SystemErr string `xml:"system-err"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// goTest runs the fixture suite as make test runs suites.
func goTest(t *testing.T, reports string, args ...string) string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"test", "-count=1", "./testdata/failing"}, args...)...)
	cmd.Env = append(os.Environ(), "SNAPLAB_REPORTS="+reports, "SNAPLAB_REPORT_FIXTURE=1", "SNAPLAB_PROGRESS_EVERY=100ms")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the fixture suite passed:\n%s", out)
	}
	return string(out)
}

// A failing spec's report carries the command that runs it alone, what the
// spec and the suite kept, and its recording written out with the command
// that replays it; the JSON report and the progress log are written too.
func TestFailingSpecReport(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a Ginkgo suite")
	}
	dir := t.TempDir()
	goTest(t, dir)
	b, err := os.ReadFile(filepath.Join(dir, "failing.xml"))
	if err != nil {
		t.Fatal(err)
	}
	var j junit
	if err := xml.Unmarshal(b, &j); err != nil {
		t.Fatalf("JUnit XML: %v", err)
	}
	props := map[string]string{}
	failed := 0
	for _, s := range j.Suites {
		for _, c := range s.Cases {
			if c.Failure == nil {
				continue
			}
			failed++
			if !strings.Contains(c.Name, "fails (with a recording)") || !strings.Contains(c.Failure.Message, "the planted failure") {
				t.Errorf("failing case %q: %+v", c.Name, c.Failure)
			}
			for _, p := range c.Props {
				var v string
				if err := json.Unmarshal([]byte(p.Value), &v); err != nil {
					t.Fatalf("property %s: %v", p.Name, err)
				}
				props[p.Name] = v
			}
			if !strings.Contains(c.SystemErr, "last console line") {
				t.Errorf("system-err lacks the console:\n%s", c.SystemErr)
			}
		}
	}
	if failed != 1 {
		t.Fatalf("%d failing cases in the JUnit report, want 1:\n%s", failed, b)
	}
	if got := props["guest console"]; got != "(1 earlier lines left out)\nline 2\nlast console line" {
		t.Errorf("console entry %q", got)
	}
	if props["reproduce outside the suite"] != "snaplab run x.scn" {
		t.Errorf("kept entry: %q", props["reproduce outside the suite"])
	}
	recPath := props["x on the sim"]
	if b, err := os.ReadFile(recPath); err != nil || !strings.Contains(string(b), `"kind":"header"`) {
		t.Errorf("the recording %q was not written: %v", recPath, err)
	}
	if props["x on the sim: reproduce"] != "snaplab replay "+recPath {
		t.Errorf("replay command: %q", props["x on the sim: reproduce"])
	}
	if page := props["x on the sim: timeline"]; !strings.HasSuffix(page, ".html") {
		t.Errorf("timeline: %q", page)
	} else if b, err := os.ReadFile(page); err != nil {
		t.Errorf("timeline: %v", err)
	} else if !strings.Contains(string(b), `data-device="snap"`) {
		t.Errorf("timeline %s has no lane for snap", page)
	}

	// The reproducing command runs that spec alone.
	focus := props["reproduce this spec"]
	if !strings.HasPrefix(focus, "go test -count=1 ./scenarios/report/testdata/failing -args -ginkgo.focus=") {
		t.Fatalf("reproduce this spec: %q", focus)
	}
	re := strings.TrimPrefix(focus, "go test -count=1 ./scenarios/report/testdata/failing -args -ginkgo.focus=")
	re = strings.TrimSuffix(strings.TrimPrefix(re, "'"), "'")
	out := goTest(t, t.TempDir(), "-args", "-ginkgo.focus="+re)
	if !strings.Contains(out, "Ran 1 of 2 Specs") {
		t.Errorf("the focus command ran more or less than the spec:\n%s", out)
	}

	var rep []types.Report
	jb, err := os.ReadFile(filepath.Join(dir, "failing.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(jb, &rep); err != nil || len(rep) != 1 || rep[0].SuiteSucceeded {
		t.Fatalf("JSON report: %v %d", err, len(rep))
	}
	prog, err := os.ReadFile(filepath.Join(dir, "progress.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"[failing] 2 specs of 2\n", "[failing 1/2] running for 100ms: the fixture passes slowly\n",
		"[failing 2/2] failed in 0s: the fixture fails (with a recording)\n", "[failing] FAILED in "} {
		if !strings.Contains(string(prog), want) {
			t.Errorf("progress log lacks %q:\n%s", want, prog)
		}
	}
}
