package run

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"snaplab/sim/dm"
	"snaplab/sim/record"
	"snaplab/sim/script"
)

const vmFixture = "../../fixtures/recordings/vm-handover-pending-copies.jsonl"

// fixtureLines are the lines of a recording under fixtures/recordings.
func fixtureLines(t testing.TB, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return record.SplitLines(b)
}

// edit replaces, in the first line matching re, the submatch old with new.
func edit(t testing.TB, lines []string, re, old, new string) []string {
	t.Helper()
	out := append([]string(nil), lines...)
	rx := regexp.MustCompile(re)
	for i, l := range out {
		if rx.MatchString(l) {
			if !strings.Contains(l, old) {
				t.Fatalf("line %d %s lacks %s", i+1, l, old)
			}
			out[i] = strings.Replace(l, old, new, 1)
			return out
		}
	}
	t.Fatalf("no line matches %s", re)
	return nil
}

// replayBytes is what snaplab replay does: read, then replay.
func replayBytes(b []byte, opts Options) (rep *Report, diff string, err error) {
	rec, err := record.Read(bytes.NewReader(b))
	if err != nil {
		return nil, "", err
	}
	return Replay(rec, opts)
}

// Damaged recordings are errors naming the line, the field and its value,
// whether Read or Replay finds them; none panics or allocates what it
// says. Each of these once panicked (index out of range, makeslice) or
// died allocating a terabyte.
func TestReplayDamaged(t *testing.T) {
	lines := fixtureLines(t, vmFixture)
	arrival := `"kind":"arrival".*"op":"read","off":0,"len":4096`
	for _, tc := range []struct {
		name     string
		lines    []string
		want     string
		wantLine int
	}{
		{"op index -1", edit(t, lines, `"kind":"op","i":1,`, `"i":1`, `"i":-1`), `i -1: want 1 (ops are numbered in order from 0)`, 22},
		{"read of len -1", edit(t, lines, arrival, `"len":4096`, `"len":-1`), `len -1: not a length that is a multiple of 512`, 10},
		{"discard of len -1", edit(t, lines, arrival, `"op":"read","off":0,"len":4096`, `"op":"discard","off":0,"len":-1`), `len -1`, 10},
		{"read of 1 TiB", edit(t, lines, arrival, `"len":4096`, `"len":1099511627776`), `len 1099511627776: a read of more than 67108864 bytes`, 10},
		{"discard of 1 TiB", edit(t, lines, arrival, `"op":"read","off":0,"len":4096`, `"op":"discard","off":0,"len":1099511627776`), `len 1099511627776: a discard of more than`, 10},
		{"read longer than its disk", edit(t, lines, arrival, `"dev":"origin","op":"read","off":0,"len":4096`, `"dev":"origin","op":"read","off":0,"len":67109376`), `len 67109376: a read of more than 67108864 bytes`, 10},
		{"discard longer than its disk", edit(t, lines, arrival, `"op":"read","off":0,"len":4096`, `"op":"discard","off":0,"len":67109376`), `arrival len 67109376: more than the size of origin (67108864 bytes) when it arrives`, 10},
		{"read longer than the disk it goes to", edit(t, lines, arrival, `"dev":"origin","op":"read","off":0,"len":4096`, `"dev":"origin","op":"read","off":0,"len":67108864`), "", 0},
		{"semantics", edit(t, lines, `"kind":"header"`, `"semantics":"mainline"`, `"semantics":"2009"`), `semantics "2009": want mainline or seed`, 1},
		{"executor", edit(t, lines, `"kind":"header"`, `"executor":"vm"`, `"executor":"qemu"`), `executor "qemu": want sim, vm, kernel`, 1},
		{"completion of nothing", edit(t, lines, `"kind":"completion","t":20000,"handle":1`, `"handle":1`, `"handle":99`), `handle 99: no earlier arrival has this handle`, 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := replayBytes([]byte(strings.Join(tc.lines, "\n")+"\n"), Options{})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			want := fmt.Sprintf("recording line %d: %s", tc.wantLine, tc.want)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("got %v, want %q", err, want)
			}
		})
	}
}

// Replay checks what it relies on itself, for recordings that did not
// come through Read (or were changed after it).
func TestReplayUnread(t *testing.T) {
	b, err := os.ReadFile(vmFixture)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*record.Recording)
		want string
	}{
		{"op index -1", func(r *record.Recording) {
			r.Lines[2] = strings.Replace(r.Lines[2], `"i":0`, `"i":-1`, 1)
		}, "recording line 3: op i -1: want 0"},
		{"arrival of len -1", func(r *record.Recording) {
			r.Lines[5] = strings.Replace(r.Lines[5], `"len":512`, `"len":-1`, 1)
		}, "recording line 6: arrival off 0 len -1: out of range"},
		{"arrival of 1 TiB", func(r *record.Recording) {
			r.Lines[5] = strings.Replace(r.Lines[5], `"len":512`, `"len":1099511627776`, 1)
		}, "recording line 6: arrival off 0 len 1099511627776: out of range"},
		{"a write without its data", func(r *record.Recording) {
			r.Lines[5] = strings.Replace(r.Lines[5], `"op":"read"`, `"op":"write"`, 1)
		}, "recording line 6: arrival data: 0 bytes for a write of len 512"},
		{"semantics", func(r *record.Recording) { r.Header.Semantics = "" }, `recording line 1: semantics "": want mainline or seed`},
		{"executor", func(r *record.Recording) { r.Header.Executor = "x" }, `recording line 1: executor "x": want sim, vm, kernel`},
		{"a pick out of range", func(r *record.Recording) { r.Choices[0].Pick = 1 << 40 }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, err := record.Read(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			tc.edit(rec)
			_, diff, err := Replay(rec, Options{})
			if tc.want == "" {
				if err != nil || !strings.Contains(diff, "first difference") {
					t.Fatalf("want a divergence: %v %q", err, diff)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// liveRecording records a session that runs the scenario text, then
// steps(s), as a live session would.
func liveRecording(t *testing.T, text string, steps func(s *Session)) []byte {
	t.Helper()
	sc, err := script.Parse("t.scn", text)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	s := NewSession(sc, Options{Record: &buf})
	for i := range sc.Steps {
		s.Exec(&sc.Steps[i])
	}
	steps(s)
	s.Finish()
	return buf.Bytes()
}

// Reads from outside a device that is suspended pile up; a replay holds
// their buffers only up to the size of the session's disks and 64 MiB.
func TestReplayHoldsBoundedBuffers(t *testing.T) {
	b := liveRecording(t, "disk a 1MiB\ndmsetup create l --table \"0 2048 linear a 0\"\ndmsetup suspend l\n", func(s *Session) {
		for i := 0; i < 70; i++ {
			s.External("l", dm.OpRead, 0, make([]byte, 1<<20), false, func(error) {})
			s.Settle()
		}
	})
	_, _, err := replayBytes(b, Options{})
	want := "arrival: a read of 1048576 bytes on l would make the replay hold 69206016 bytes of I/O buffers, more than the session's disks (1048576 bytes) and 64 MiB"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want %q", err, want)
	}
	// Completed reads give their buffers back: 70 of them replay.
	b = liveRecording(t, "disk a 1MiB\n", func(s *Session) {
		for i := 0; i < 70; i++ {
			s.External("a", dm.OpRead, 0, make([]byte, 1<<20), false, func(error) {})
			s.Settle()
		}
	})
	if _, diff, err := replayBytes(b, Options{}); err != nil || diff != "" {
		t.Fatalf("%v %s", err, diff)
	}
	// The scenario's asynchronous I/O is kept by the session: bounded too.
	var text strings.Builder
	text.WriteString("disk a 1MiB\ndmsetup create l --table \"0 2048 linear a 0\"\ndmsetup suspend l\n")
	for i := 0; i < 70; i++ {
		fmt.Fprintf(&text, "read l 0 1MiB async=r%d\n", i)
	}
	b = liveRecording(t, text.String(), func(*Session) {})
	_, _, err = replayBytes(b, Options{})
	if want := "recording line 138: read of 1048576 bytes on l would make the replay hold 69206016 bytes"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want %q", err, want)
	}
}

// A recording may name steps in any order: one that needs what no
// replayed step made is an error, not a nil dereference.
func TestReplayStepsOutOfOrder(t *testing.T) {
	for _, tc := range []struct{ text, op, want string }{
		{"disk a 1MiB\nfault a write eio\n", "fault a write eio", "fault on disk a, which no replayed step has attached"},
		{"disk a 1MiB\nread a 0 4KiB async=w\nwait w\n", "wait w", "wait for w, which no replayed step has started"},
	} {
		b := liveRecording(t, tc.text, func(*Session) {})
		lines := record.SplitLines(b)
		// Only the last step's op and result, as op 0 at line 9.
		var kept []string
		kept = append(kept, lines[0])
		kept = append(kept, fmt.Sprintf(`{"kind":"op","i":0,"t":0,"line":9,"text":%q}`, tc.op))
		kept = append(kept, `{"kind":"result","i":0,"t":0,"line":9,"check":"ok"}`)
		kept = append(kept, lines[len(lines)-1])
		_, _, err := replayBytes([]byte(strings.Join(kept, "\n")+"\n"), Options{})
		if want := "recording line 2: " + tc.want; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", tc.op, err, want)
		}
	}
}

// A live session's added lines are parsed in the context of the lines
// before them, once each: 20000 added lines replay in linear time (each
// once reparsed the whole text).
func TestReplayAddedLines(t *testing.T) {
	sc, err := script.Parse("t.scn", "disk a 1MiB\n")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	s := NewSession(sc, Options{Record: &buf})
	s.Exec(&sc.Steps[0])
	const n = 20000
	for i := 0; i < n; i++ {
		st, err := sc.ParseMore(2+i, fmt.Sprintf("fault a write eio off=%dKiB len=4KiB", i%512))
		if err != nil {
			t.Fatal(err)
		}
		s.Exec(st)
	}
	s.Finish()
	rec, err := record.Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(1, func() {
		if _, diff, err := Replay(rec, Options{}); err != nil || diff != "" {
			t.Fatalf("%v %s", err, diff)
		}
	})
	if allocs > 200*n {
		t.Errorf("replaying %d added lines took %.0f allocations", n, allocs)
	}
}

// A replay stops at the first line it does not reproduce: a few recorded
// lines cannot make it do (and buffer) the work of many steps. Here 100
// op lines, each a 64 MiB write, without the events each causes: the
// replay stops at the first event instead of writing 6.4 GiB.
func TestReplayStopsAtFirstDivergence(t *testing.T) {
	text := "disk origin 64MiB\ndisk cow 64MiB\ndmsetup create base --table \"0 131072 snapshot-origin origin\"\n"
	b := liveRecording(t, text, func(*Session) {})
	lines := record.SplitLines(b)
	footer := lines[len(lines)-1]
	lines = lines[:len(lines)-1]
	for i := 0; i < 100; i++ {
		lines = append(lines, fmt.Sprintf(`{"kind":"op","i":%d,"t":0,"line":%d,"text":"write base 0 64MiB pattern=A"}`, 3+i, 4+i),
			fmt.Sprintf(`{"kind":"result","i":%d,"t":0,"line":%d,"errno":"OK","check":"ok"}`, 3+i, 4+i))
	}
	lines = append(lines, footer)
	rec, err := record.Read(strings.NewReader(strings.Join(lines, "\n") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, diff, err := Replay(rec, Options{})
	runtime.ReadMemStats(&after)
	if err != nil || !strings.Contains(diff, "first difference at line") || !strings.Contains(diff, `+ replayed: {"kind":"event"`) {
		t.Fatalf("%v\n%s", err, diff)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<30 {
		t.Errorf("the replay allocated %d MiB", alloc>>20)
	}
}

// The comparer describes the first difference exactly as record.Diff does
// with the whole replayed recording in hand, written in any pieces.
func TestLineComparer(t *testing.T) {
	rec := []string{"h", "a", "b", "c", "d", "f"}
	for _, replayed := range [][]string{
		rec, {"h", "a", "B", "c", "d", "f"}, {"H"}, {"h", "a", "b"}, {}, {"h", "a", "b", "c", "d", "f", "extra"}, {"h", "a", "b", "c", "d", "F", "x"},
	} {
		c := &lineComparer{recorded: rec}
		all := strings.Join(replayed, "\n")
		if len(replayed) > 0 {
			all += "\n"
		}
		for i := 0; i < len(all); i += 3 { // in pieces across lines
			c.Write([]byte(all[i:min(i+3, len(all))]))
		}
		if got, want := c.diff(3), record.Diff(rec, replayed, "recorded", "replayed", 3); got != want {
			t.Errorf("replayed %q:\n%s\nwant\n%s", replayed, got, want)
		}
	}
}
