package run

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"snaplab/sim/record"
	"snaplab/sim/script"
)

// fuzzDisks bounds the disks a fuzzed recording may declare: a replay may
// hold what its devices declare (and their content), so larger ones are
// skipped rather than replayed.
const fuzzDisks = 256 << 20

// declaredDisks is the total size of the disks rec's scenario and its
// added lines declare (saturating).
func declaredDisks(rec *record.Recording) int64 {
	sc, err := script.Parse(rec.Header.Scenario, rec.Header.Text)
	if err != nil {
		return 1 << 62
	}
	var total int64
	add := func(n int64) { total = min(total+n, 1<<62) }
	for _, st := range sc.Steps {
		if st.Kind == script.KDisk {
			add(st.Size)
		}
	}
	for _, l := range rec.Lines {
		var op record.Op
		if !strings.Contains(l, `"kind":"op"`) || json.Unmarshal([]byte(l), &op) != nil || op.Kind != "op" {
			continue
		}
		if words, err := script.Split(op.Text); err == nil && len(words) >= 3 && words[0] == script.KDisk {
			if n, err := script.ParseSize(words[2]); err == nil {
				add(n)
			}
		}
	}
	return total
}

// fuzzSeeds are the fixtures' recordings, each also damaged in the ways
// that once crashed a replay, and testdata/fuzz's crashers.
func fuzzSeeds(t testing.TB) [][]byte {
	paths, _ := filepath.Glob("../../fixtures/recordings/*.jsonl")
	paths = append(paths, "testdata/legacy/legacy.jsonl")
	var out [][]byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
		for _, d := range [][2]string{
			{`"kind":"op","i":1,`, `"kind":"op","i":-1,`},
			{`"op":"read","off":0,"len":4096`, `"op":"read","off":0,"len":-1`},
			{`"op":"read","off":0,"len":4096`, `"op":"discard","off":0,"len":-1`},
			{`"op":"read","off":0,"len":4096`, `"op":"read","off":0,"len":1099511627776`},
			{`"op":"read","off":0,"len":4096`, `"op":"discard","off":0,"len":67108864`},
			{`"semantics":"mainline"`, `"semantics":"x"`},
			{`"executor":"sim"`, `"executor":"x"`},
			{`"pick":1`, `"pick":7`},
			{`"kind":"completion"`, `"kind":"settle"`},
		} {
			if bytes.Contains(b, []byte(d[0])) {
				out = append(out, bytes.Replace(b, []byte(d[0]), []byte(d[1]), 1))
			}
		}
		lines := bytes.SplitAfter(b, []byte("\n"))
		out = append(out, bytes.Join(lines[:len(lines)/2], nil)) // truncated
	}
	return out
}

// FuzzReplay feeds arbitrary bytes to the recording reader and replays
// what it accepts: neither may panic or hang, and a replay holds no more
// than the devices the recording declares (larger declarations are
// skipped). `snaplab diff`'s functions run on it too.
func FuzzReplay(f *testing.F) {
	for _, b := range fuzzSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := record.Read(bytes.NewReader(b))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "recording") {
				t.Fatalf("error does not name the recording: %v", err)
			}
			return
		}
		if _, err := record.Results(rec); err != nil && !strings.HasPrefix(err.Error(), "recording line ") {
			t.Fatalf("Results: %v", err)
		}
		record.Diff(rec.Lines, rec.Lines[:len(rec.Lines)/2], "a", "b", 3)
		if declaredDisks(rec) > fuzzDisks {
			return
		}
		rep, diff, err := Replay(rec, Options{})
		if err != nil {
			if !strings.HasPrefix(err.Error(), "recording") {
				t.Fatalf("error does not name the recording: %v", err)
			}
			return
		}
		// Deterministic whatever the input.
		rep2, diff2, err := Replay(rec, Options{})
		if err != nil || rep2.TraceHash != rep.TraceHash || diff2 != diff {
			t.Fatalf("a second replay differs: %v\n%s\n%s", err, diff, diff2)
		}
	})
}

// FuzzReplaySteps replays recordings that name a scenario's steps in an
// order the fuzzer picks (repeated, skipped, some as lines added after the
// scenario): Replay must refuse what it cannot do, never panic.
func FuzzReplaySteps(f *testing.F) {
	libs, _ := filepath.Glob("../../scenarios/library/*.scn")
	for i, p := range libs {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		picks := []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
		if i%2 == 1 {
			picks = []byte{3, 0, 131, 1, 2, 2, 200, 7, 6, 5}
		}
		f.Add(string(b), picks)
	}
	f.Fuzz(func(t *testing.T, text string, picks []byte) {
		sc, err := script.Parse("f.scn", text)
		if err != nil || len(sc.Steps) == 0 || len(picks) > 200 {
			return
		}
		var disks int64
		for _, st := range sc.Steps {
			if st.Kind == script.KDisk {
				disks = min(disks+st.Size, 1<<62)
			}
		}
		if disks > fuzzDisks {
			return
		}
		var buf bytes.Buffer
		w := record.NewWriter(&buf)
		w.Write(record.Header{Kind: "header", Format: record.Format, FormatVersion: record.FormatVersion,
			Scenario: "f.scn", Executor: "sim", Semantics: sc.Semantics, Seed: sc.Seed, Text: text})
		for i, p := range picks {
			st := sc.Steps[int(p&127)%len(sc.Steps)]
			line := st.Line
			if p >= 128 {
				line += 100000 // not the scenario's step: an added line
			}
			w.Write(record.Op{Kind: "op", I: i, Line: line, Text: st.Text})
			w.Write(record.Result{Kind: "result", I: i, Line: line, Check: "ok"})
		}
		w.Write(record.Footer{Kind: "footer", TraceHash: w.Hash()})
		rec, err := record.Read(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatalf("a recording built from a scenario that parses does not read: %v", err)
		}
		if _, _, err := Replay(rec, Options{}); err != nil && !strings.HasPrefix(err.Error(), "recording") {
			t.Fatalf("error does not name the recording: %v", err)
		}
	})
}
