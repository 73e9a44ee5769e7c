package record

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// StepResult is what one step produced, normalised so that results of
// different executors can be compared: the data hash is cut to 16 hex
// digits, timestamps and executor-specific fields are dropped.
type StepResult struct {
	Line   int      `json:"line"`
	Text   string   `json:"text"`
	Exit   *int     `json:"exit,omitempty"`
	Stdout string   `json:"stdout,omitempty"`
	Stderr string   `json:"stderr,omitempty"`
	Log    []string `json:"log,omitempty"`
	Errno  string   `json:"errno,omitempty"`
	Data   string   `json:"data,omitempty"`
	// DM: an lvm step's device-mapper operations with their outcomes.
	DM []string `json:"dm,omitempty"`
}

// Results extracts the normalised step results of a recording, in step
// order. Disk steps are skipped (they are the harness's, not the
// kernel's).
func Results(rec *Recording) ([]StepResult, error) {
	var out []StepResult
	ops := map[int]Op{}
	for n, line := range rec.Lines {
		var k struct {
			Kind string `json:"kind"`
		}
		if err := json.Unmarshal([]byte(line), &k); err != nil {
			return nil, fmt.Errorf("recording line %d: %v", n+1, err)
		}
		switch k.Kind {
		case "op":
			var op Op
			if err := json.Unmarshal([]byte(line), &op); err != nil {
				return nil, fmt.Errorf("recording line %d: %v", n+1, err)
			}
			ops[op.I] = op
		case "result":
			var r Result
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				return nil, fmt.Errorf("recording line %d: %v", n+1, err)
			}
			op := ops[r.I]
			if strings.HasPrefix(op.Text, "disk ") {
				continue
			}
			sr := StepResult{Line: r.Line, Text: op.Text, Exit: r.Exit, Stdout: r.Stdout, Stderr: r.Stderr, Log: r.Log, Errno: r.Errno, Data: normData(r.Data), DM: r.DM}
			if strings.HasPrefix(op.Text, "lvm ") {
				// LVM's own output is the kernel run's alone (the
				// simulator repeats LVM's device-mapper operations, not
				// LVM); the step's expectations check it there.
				sr.Exit, sr.Stdout, sr.Stderr = nil, "", ""
			}
			if sr.Errno == "" && isIO(op.Text) {
				sr.Errno = "OK"
			}
			out = append(out, sr)
		}
	}
	return out, nil
}

func isIO(text string) bool {
	for _, p := range []string{"read ", "write ", "flush ", "wait "} {
		if strings.HasPrefix(text, p) {
			return true
		}
	}
	return false
}

func normData(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if d == "" {
		return ""
	}
	return DataHashOf(d)
}

// Difference is one way two executors disagree on a step.
type Difference struct {
	Line  int
	Text  string
	Field string
	A, B  string
}

func (d Difference) String() string {
	return fmt.Sprintf("line %d: %s\n    %s: %q vs %q", d.Line, d.Text, d.Field, d.A, d.B)
}

// CompareResults lists every field on which two executors' step results
// differ, over the steps both ran (a run stops at its first failure; a
// missing step is a difference too).
//
// Kernel log lines of background work are compared where either executor
// may log them. A run step's lines count as the step's before it: the real
// kernel does work (a merge that a resume started) while the step that
// started it is still being reported, the simulator when the run step lets
// time pass. And from the resume that starts a merge (a snapshot-merge
// table) to the run that waits for it, the lines of every step in between
// are compared as one set, on the resume: the kernel's merge logs while
// whichever of those steps is being reported.
func CompareResults(a, b []StepResult) []Difference {
	a, b = foldRunLogs(a), foldRunLogs(b)
	var out []Difference
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		x, y := a[i], b[i]
		add := func(field, p, q string) {
			if p != q {
				out = append(out, Difference{Line: x.Line, Text: x.Text, Field: field, A: p, B: q})
			}
		}
		if x.Line != y.Line {
			add("step", fmt.Sprint(x.Line), fmt.Sprint(y.Line))
			return out
		}
		add("exit", intp(x.Exit), intp(y.Exit))
		add("stdout", x.Stdout, y.Stdout)
		add("stderr", x.Stderr, y.Stderr)
		add("kernel log", strings.Join(x.Log, "\n"), strings.Join(y.Log, "\n"))
		add("errno", x.Errno, y.Errno)
		add("data", x.Data, y.Data)
		add("dm operations", strings.Join(x.DM, "\n"), strings.Join(y.DM, "\n"))
	}
	if len(a) != len(b) {
		var last StepResult
		if len(a) > n {
			last = a[n]
		} else {
			last = b[n]
		}
		out = append(out, Difference{Line: last.Line, Text: last.Text, Field: "steps run", A: fmt.Sprint(len(a)), B: fmt.Sprint(len(b))})
	}
	return out
}

// foldRunLogs is rs with each run step's kernel log lines moved to the
// step that owns them: the resume that started a merge, with the lines of
// every step in between, sorted (their order depends on timing on the
// kernel); else the preceding step, order kept.
func foldRunLogs(rs []StepResult) []StepResult {
	out := append([]StepResult(nil), rs...)
	merging := map[string]bool{} // a device's last loaded table is snapshot-merge
	start := -1                  // the step that started a merge, until the run after it
	for i := range out {
		w := strings.Fields(out[i].Text)
		if len(w) == 0 {
			continue
		}
		switch {
		case w[0] == "dmsetup" && len(w) >= 3 && (w[1] == "load" || w[1] == "reload" || w[1] == "create"):
			merging[w[2]] = strings.Contains(out[i].Text, "snapshot-merge")
			if w[1] == "create" && merging[w[2]] && start < 0 {
				start = i
			}
		case w[0] == "dmsetup" && len(w) >= 3 && w[1] == "resume" && merging[w[2]] && start < 0:
			start = i
		case isRun(out[i].Text) && i > 0:
			if start < 0 {
				j := i - 1 // a chain of run steps folds into the step before it
				for j > 0 && isRun(out[j].Text) {
					j--
				}
				if len(out[i].Log) > 0 {
					out[j].Log = append(append([]string(nil), out[j].Log...), out[i].Log...)
					out[i].Log = nil
				}
				continue
			}
			var lines []string
			for j := start; j <= i; j++ {
				lines = append(lines, out[j].Log...)
				out[j].Log = nil
			}
			slices.Sort(lines)
			out[start].Log = lines
			start = -1
		}
	}
	return out
}

func isRun(text string) bool {
	w := strings.Fields(text)
	return len(w) > 0 && w[0] == "run"
}

func intp(p *int) string {
	if p == nil {
		return ""
	}
	return fmt.Sprint(*p)
}

// DataHash is a step result's "data" field for the bytes a read returned:
// "sha256:" and the first 16 hex digits of their SHA-256 (every executor,
// every format version).
func DataHash(data []byte) string {
	sum := sha256.Sum256(data)
	return DataHashOf(hex.EncodeToString(sum[:]))
}

// DataHashOf is DataHash of data whose SHA-256 is already known, in hex
// (as a guest agent reports it).
func DataHashOf(sha256Hex string) string {
	if len(sha256Hex) > 16 {
		sha256Hex = sha256Hex[:16]
	}
	return "sha256:" + sha256Hex
}
