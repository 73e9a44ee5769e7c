package record

import (
	"bytes"
	"strings"
	"testing"
)

func sample() []byte {
	var b bytes.Buffer
	w := NewWriter(&b)
	w.Write(Header{Kind: "header", Format: Format, FormatVersion: FormatVersion, Scenario: "s", Executor: "sim", Semantics: "mainline", Text: "disk a 1MiB"})
	w.Write(Op{Kind: "op", I: 0, Line: 1, Text: "disk a 1MiB"})
	w.Write(Choice{Kind: "choice", Site: "sched.next", N: 2, Pick: 1})
	w.Write(Result{Kind: "result", I: 0, Line: 1, Check: "ok"})
	h := w.Hash()
	w.Write(Footer{Kind: "footer", Pass: true, TraceHash: h})
	return b.Bytes()
}

func TestReadRoundTrip(t *testing.T) {
	rec, err := Read(bytes.NewReader(sample()))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Header.Scenario != "s" || len(rec.Choices) != 1 || rec.Footer == nil || !rec.Footer.Pass || len(rec.Lines) != 5 {
		t.Fatalf("%+v", rec)
	}
	if !strings.HasPrefix(rec.Footer.TraceHash, "sha256:") {
		t.Fatal(rec.Footer.TraceHash)
	}
}

func TestReadErrorsNameTheLine(t *testing.T) {
	good := string(sample())
	lines := strings.Split(strings.TrimSpace(good), "\n")
	for _, tc := range []struct{ text, want string }{
		{"", "no header"},
		{"not json\n", "line 1: not a JSON object"},
		{strings.Replace(good, `"format_version":2`, `"format_version":99`, 1), "format_version 99"},
		{strings.Replace(good, Format, "other", 1), `format "other"`},
		{strings.Join(lines[:4], "\n"), "no footer"},
		{strings.Replace(good, `"kind":"choice"`, `"kind":"mystery"`, 1), `line 3: unknown kind "mystery"`},
		{lines[1] + "\n" + good, `line 1: kind "op": the first line must be the header`},
		{good + lines[0] + "\n", "line 6: header line after the footer"},
	} {
		_, err := Read(strings.NewReader(tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Read(%.40q) = %v, want %q", tc.text, err, tc.want)
		}
	}
}

func TestDiffAndTape(t *testing.T) {
	a := []string{"h", "x", "y", "z"}
	if d := Diff(a, a, "a", "b", 3); d != "" {
		t.Fatal(d)
	}
	d := Diff(a, []string{"h", "x", "Y", "z"}, "a", "b", 1)
	if !strings.Contains(d, "first difference at line 3") || !strings.Contains(d, "  x\n") || !strings.Contains(d, "- a: y\n+ b: Y") {
		t.Fatalf("diff:\n%s", d)
	}
	if d := Diff(a, a[:2], "a", "b", 0); !strings.Contains(d, "(end of recording)") {
		t.Fatal(d)
	}
	tape := NewTape(&Recording{Choices: []Choice{{Site: "sched.next", N: 3, Pick: 2}}})
	if p, ok, err := tape.Next("sched.next", 3); p != 2 || !ok || err != nil {
		t.Fatal(p, ok, err)
	}
	if _, ok, _ := tape.Next("sched.next", 3); ok {
		t.Fatal("exhausted tape still answers")
	}
	tape = NewTape(&Recording{Choices: []Choice{{Site: "sched.next", N: 3, Pick: 2}}})
	if _, _, err := tape.Next("kcopyd.x", 3); err == nil || !strings.Contains(err.Error(), "divergence at choice 1") {
		t.Fatal(err)
	}
}

func FuzzRead(f *testing.F) {
	f.Add(sample())
	f.Add([]byte("{\"kind\":\"header\"}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := Read(bytes.NewReader(b))
		if err == nil && (rec.Footer == nil || rec.Header.Format != Format) {
			t.Fatal("accepted a recording without footer or format")
		}
	})
}
