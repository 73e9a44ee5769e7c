// Package report gives every Ginkgo suite of snaplab the same reports and
// progress, for CI systems and for people watching make test.
//
// A suite calls Run instead of RunSpecs. When $SNAPLAB_REPORTS names a
// directory (make test sets out/reports), Run writes there:
//
//	NAME.xml        JUnit XML (Ginkgo's --junit-report), one per suite
//	NAME.json       Ginkgo's JSON report (--json-report)
//	progress.log    "[NAME k/n] passed in 3.2s: SPEC" as specs end (fast
//	                ones only now and then), and "running for 10s: SPEC"
//	                while a long one runs; make test follows it
//
// Without $SNAPLAB_REPORTS nothing is written and nothing changes.
//
// A failing spec's report carries what is needed to look into it: the
// command that runs that spec alone (always), and whatever the spec kept
// (Keep: the command that reproduces it outside the suite; KeepRecording:
// the failing run's recordings, written out with the command that replays
// them and their timeline, an HTML page attached by path) and the suite
// kept (KeepSuite: the shared guest's console, its last ConsoleLines
// lines). All of this is in the JUnit XML (the test case's properties,
// and its system-err timeline) and in the JSON report's report entries,
// and printed with the failure.
package report

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
)

// Env names the directory the reports go to.
const Env = "SNAPLAB_REPORTS"

// ProgressFile is the progress log's name in the reports directory;
// $SNAPLAB_PROGRESS names another file (make test's extra kernels' runs
// report into the first run's log).
const (
	ProgressFile = "progress.log"
	ProgressEnv  = "SNAPLAB_PROGRESS"
)

// ConsoleLines is how much of a guest's console a failure's report
// carries (see Tail).
const ConsoleLines = 80

type kept struct{ name, value string }

var (
	mu        sync.Mutex
	keeps     []kept                    // this spec's
	suite     []func() (string, string) // the suite's: name and file path
	pkgDir    string
	suiteDesc string
)

// Keep attaches name: value (a recording's path, a reproducing command) to
// the current spec's report if the spec fails.
func Keep(name, value string) {
	mu.Lock()
	defer mu.Unlock()
	keeps = append(keeps, kept{name: name, value: value})
}

// KeepSuite attaches, to every failing spec of the suite, what value()
// returns then (the last lines of the shared guest's console, see Tail);
// "" attaches nothing.
func KeepSuite(name string, value func() string) {
	mu.Lock()
	defer mu.Unlock()
	suite = append(suite, func() (string, string) { return name, value() })
}

// Tail is the last n lines of text, saying how many were left out.
func Tail(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) <= n {
		return strings.Join(lines, "\n")
	}
	return fmt.Sprintf("(%d earlier lines left out)\n%s", len(lines)-n, strings.Join(lines[len(lines)-n:], "\n"))
}

// Run runs the suite's specs with the reports and progress above; name
// names its files (kernel, vm, cli...) and description is RunSpecs's.
func Run(t *testing.T, name, description string, args ...any) bool {
	t.Helper()
	dir := os.Getenv(Env)
	if wd, err := os.Getwd(); err == nil {
		pkgDir = wd
	}
	suiteDesc = description
	ginkgo.JustAfterEach(func() {
		mu.Lock()
		defer mu.Unlock()
		defer func() { keeps, recordings = nil, nil }()
		if !ginkgo.CurrentSpecReport().Failed() {
			return
		}
		attach(ginkgo.CurrentSpecReport())
	})
	ginkgo.AfterEach(func() {
		// A spec that failed in JustAfterEach or later, or an earlier
		// AfterEach, still has its keeps dropped here.
		mu.Lock()
		keeps, recordings = nil, nil
		mu.Unlock()
	})
	if dir == "" {
		return ginkgo.RunSpecs(t, description, args...)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("report: %s: %v", Env, err)
	}
	p := &progress{name: name, path: filepath.Join(dir, ProgressFile)}
	if f := os.Getenv(ProgressEnv); f != "" {
		p.path = f
	}
	ginkgo.ReportBeforeSuite(func(r ginkgo.Report) { p.suiteStart(r) })
	ginkgo.ReportBeforeEach(func(r ginkgo.SpecReport) { p.specStart(r) })
	ginkgo.ReportAfterEach(func(r ginkgo.SpecReport) { p.specEnd(r) })
	ginkgo.ReportAfterSuite("progress", func(r ginkgo.Report) { p.suiteEnd(r) })
	_, rc := ginkgo.GinkgoConfiguration()
	rc.JUnitReport = filepath.Join(dir, name+".xml")
	rc.JSONReport = filepath.Join(dir, name+".json")
	return ginkgo.RunSpecs(t, description, append(args, rc)...)
}

// attach adds the failing spec's entries; the caller holds mu.
func attach(r ginkgo.SpecReport) {
	vis := ginkgo.ReportEntryVisibilityFailureOrVerbose
	ginkgo.AddReportEntry("reproduce this spec", FocusCommand(pkgDir, suiteDesc, r), vis)
	for _, k := range keeps {
		ginkgo.AddReportEntry(k.name, k.value, vis)
	}
	for _, rc := range recordings {
		paths, err := writeRecordings(r, rc)
		if err != nil {
			ginkgo.AddReportEntry(rc.name, fmt.Sprintf("could not be kept: %v", err), vis)
			continue
		}
		ginkgo.AddReportEntry(rc.name, strings.Join(paths, "\n"), vis)
		ginkgo.AddReportEntry(rc.name+": reproduce", "snaplab replay "+paths[0], vis)
		if page, err := renderTimeline(paths); err != nil {
			ginkgo.AddReportEntry(rc.name+": timeline", fmt.Sprintf("not drawn: %v", err), vis)
		} else {
			ginkgo.AddReportEntry(rc.name+": timeline", page, vis)
		}
	}
	for _, f := range suite {
		if name, value := f(); value != "" {
			ginkgo.AddReportEntry(name, value, vis)
		}
	}
}

// FocusCommand is the command that runs the spec alone from the
// repository's root: go test on its package, focused on its full text
// (Ginkgo matches the suite's description, a space, and the spec's text).
func FocusCommand(pkgDir, description string, r ginkgo.SpecReport) string {
	pkg := "."
	if root := repoRoot(pkgDir); root != "" {
		if rel, err := filepath.Rel(root, pkgDir); err == nil {
			pkg = "./" + filepath.ToSlash(rel)
		}
	}
	return fmt.Sprintf("go test -count=1 %s -args -ginkgo.focus=%s", pkg, shellQuote("^"+regexpQuote(description+" "+r.FullText())+"$"))
}

func repoRoot(dir string) string {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}

func regexpQuote(s string) string {
	var b strings.Builder
	for _, c := range s {
		if strings.ContainsRune(`\.+*?()|[]{}^$`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// progress appends lines to the progress log: one as the suite starts; one
// as a spec ends if it took a second or more, failed, is the last, or ten
// seconds have passed since the last line (fast suites stay terse); and
// one when a spec has run for ten seconds, so a long spec says what it
// is while it runs. The lines are short single writes with O_APPEND, so
// suites running at once (go test runs packages in parallel) do not mix
// within a line.
type progress struct {
	name, path string
	total, n   int
	start      time.Time
	mu         sync.Mutex
	last       time.Time
	running    *time.Timer
}

// slowSpec is how long a spec runs before its end has a line of its own.
const slowSpec = time.Second

// quietPeriod is how long a spec runs before it has a "running" line, and
// how long the log stays quiet at most while specs end; $SNAPLAB_PROGRESS_EVERY
// (a Go duration) sets it.
var quietPeriod = 10 * time.Second

func init() {
	if d, err := time.ParseDuration(os.Getenv("SNAPLAB_PROGRESS_EVERY")); err == nil && d > 0 {
		quietPeriod = d
	}
}

func (p *progress) line(format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last = time.Now()
	f, err := os.OpenFile(p.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	f.WriteString(fmt.Sprintf(format, a...) + "\n")
}

func (p *progress) suiteStart(r ginkgo.Report) {
	p.total = r.PreRunStats.SpecsThatWillRun
	p.start = time.Now()
	p.line("[%s] %d specs of %d", p.name, p.total, r.PreRunStats.TotalSpecs)
}

func (p *progress) specStart(r ginkgo.SpecReport) {
	if r.State == types.SpecStateSkipped || r.State == types.SpecStatePending {
		return
	}
	p.n++
	n, text := p.n, r.FullText()
	p.running = time.AfterFunc(quietPeriod, func() {
		p.line("[%s %d/%d] running for %s: %s", p.name, n, p.total, quietPeriod, text)
	})
}

func (p *progress) specEnd(r ginkgo.SpecReport) {
	if r.State == types.SpecStateSkipped || r.State == types.SpecStatePending {
		return
	}
	if p.running != nil {
		p.running.Stop()
	}
	p.mu.Lock()
	quiet := time.Since(p.last)
	p.mu.Unlock()
	if r.RunTime >= slowSpec || r.State != types.SpecStatePassed || p.n == p.total || quiet >= quietPeriod {
		p.line("[%s %d/%d] %s in %s: %s", p.name, p.n, p.total, r.State, r.RunTime.Round(100*time.Millisecond), r.FullText())
	}
}

func (p *progress) suiteEnd(r ginkgo.Report) {
	st := "passed"
	if !r.SuiteSucceeded {
		st = "FAILED"
	}
	p.line("[%s] %s in %s", p.name, st, time.Since(p.start).Round(time.Second))
}

// recording is a recording kept for a failing spec's report.
type recording struct {
	name string
	recs [][]byte
}

var recordings []recording

// KeepRecording keeps a run's recording (and, optionally, a second run's
// of the same scenario, e.g. the simulator's beside the kernel's) for the
// current spec. If the spec fails, the recordings are written to the
// reports directory ($SNAPLAB_REPORTS, else a temporary directory) under
// failed/, and the report names them, the command that replays them, and
// their timeline (an HTML page of snaplab show, the first divergence
// marked when there are two).
func KeepRecording(name string, rec []byte, other ...[]byte) {
	mu.Lock()
	defer mu.Unlock()
	recordings = append(recordings, recording{name: name, recs: append([][]byte{rec}, other...)})
}

// writeRecordings writes a kept recording (and its companion) under the
// reports directory, named for the spec.
func writeRecordings(r ginkgo.SpecReport, rc recording) ([]string, error) {
	dir := os.Getenv(Env)
	if dir == "" {
		dir = os.TempDir()
	}
	dir = filepath.Join(dir, "failed")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	base := slug(r.FullText()) + "-" + slug(rc.name)
	var paths []string
	for i, b := range rc.recs {
		p := filepath.Join(dir, base+".jsonl")
		if i > 0 {
			p = filepath.Join(dir, fmt.Sprintf("%s-%d.jsonl", base, i+1))
		}
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// slug is s in lower-case letters, digits and dashes, at most 60 bytes.
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, c := range strings.ToLower(s) {
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') {
			b.WriteRune(c)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	out := strings.TrimRight(b.String(), "-")
	if len(out) > 60 {
		out = strings.TrimRight(out[:60], "-")
	}
	return out
}
