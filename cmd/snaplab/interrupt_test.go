package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"snaplab/sim/explore"
)

// TestMain lets a test run this package's binary as the snaplab command
// (SNAPLAB_TEST_MAIN=1), to send it real signals.
func TestMain(m *testing.M) {
	if os.Getenv("SNAPLAB_TEST_MAIN") == "1" {
		os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// An interrupted campaign finishes the cases it runs and writes its
// summary, marked interrupted, and says where to continue.
func TestExploreInterruptWritesSummary(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a campaign in a subprocess")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "explore", "--for", "10m", "--ops", "20", "--jobs", "2", "--progress", "lines", "--out", dir)
	cmd.Env = append(os.Environ(), "SNAPLAB_TEST_MAIN=1")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var stderr strings.Builder
	sc := bufio.NewScanner(errPipe)
	sent := false
	for sc.Scan() {
		line := sc.Text()
		stderr.WriteString(line + "\n")
		// The first progress line comes with the first finished case.
		if !sent && strings.Contains(line, " seeds, ") {
			if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			sent = true
		}
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 130 {
		t.Fatalf("exit: %v, want status 130\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout.String())
	}
	if !sent {
		t.Fatalf("no progress line before the end:\n%s", stderr.String())
	}
	for _, want := range []string{"an interrupt stops after the running cases", "interrupt: finishing the running cases"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	if !strings.Contains(stdout.String(), "  interrupted: cases 0 to ") || !strings.Contains(stdout.String(), "--seed ") {
		t.Errorf("the summary does not say it was interrupted and where to go on:\n%s", stdout.String())
	}
	b, err := os.ReadFile(filepath.Join(dir, "summary.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s explore.Summary
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if !s.Interrupted || s.Ran < 1 || s.Ran != s.Cases || s.Passed != s.Ran {
		t.Errorf("summary: interrupted %v, cases %d, ran %d, passed %d: want interrupted, every taken case run and passed",
			s.Interrupted, s.Cases, s.Ran, s.Passed)
	}
}
