package run

import (
	"bytes"
	"strings"
	"testing"

	"snaplab/sim/record"
	"snaplab/sim/script"
)

func TestFailureStopsAndNamesTheLine(t *testing.T) {
	sc, err := script.Parse("t.scn", `disk a 1MiB
dmsetup create l --table "0 2048 linear a 0"
write l 0 4KiB pattern=A
read l 0 4KiB expect=B
read l 0 4KiB expect=A
`)
	if err != nil {
		t.Fatal(err)
	}
	rep := Run(sc, Options{})
	if rep.Pass() || len(rep.Failures) != 1 || rep.Failures[0].Line != 4 || rep.Steps != 4 {
		t.Fatalf("%+v", rep)
	}
	if !strings.Contains(rep.Failures[0].Msg, "want pattern B") {
		t.Fatal(rep.Failures[0].Msg)
	}
}

func TestIOToSuspendedDeviceNeedsAsync(t *testing.T) {
	sc, _ := script.Parse("t.scn", `disk a 1MiB
dmsetup create l --table "0 2048 linear a 0"
dmsetup suspend l
read l 0 4KiB
`)
	rep := Run(sc, Options{})
	if rep.Pass() || !strings.Contains(rep.Failures[0].Msg, "use async=ID and wait ID") {
		t.Fatalf("%+v", rep.Failures)
	}
}

func TestReplayDetectsChangedScenario(t *testing.T) {
	sc, _ := script.Parse("t.scn", "disk a 1MiB\nwrite a 0 4KiB pattern=A async=w\nwrite a 8KiB 4KiB pattern=B async=v\nwait w\nwait v\n")
	seed := uint64(3)
	var buf bytes.Buffer
	Run(sc, Options{Seed: &seed, Record: &buf})
	rec, err := record.Read(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if _, diff, _ := Replay(rec, Options{}); diff != "" {
		t.Fatalf("identical replay diverged:\n%s", diff)
	}
	// Change the embedded scenario: the replay must say where it diverges.
	rec.Header.Text = strings.Replace(rec.Header.Text, "8KiB", "16KiB", 1)
	_, diff, _ := Replay(rec, Options{})
	if !strings.Contains(diff, "first difference at line") {
		t.Fatalf("changed scenario replayed identically:\n%s", diff)
	}
}

// A wait for async I/O whose step failed before submitting it (no such
// device) fails the wait, naming it, instead of crashing on the missing
// I/O: a session driven step by step goes on after a failure.
func TestWaitForFailedAsync(t *testing.T) {
	sc, err := script.Parse("w", "disk d 1MiB\nwrite nosuch 0 4KiB pattern=A async=w1\nwait w1\n")
	if err != nil {
		t.Fatal(err)
	}
	s := NewSession(sc, Options{})
	var msgs []string
	for i := range sc.Steps {
		msgs = append(msgs, s.Exec(&sc.Steps[i]))
	}
	s.Finish()
	if !strings.Contains(msgs[1], "no disk or device named nosuch") || !strings.Contains(msgs[2], "wait w1: no I/O was started as w1") {
		t.Fatalf("step messages %q", msgs)
	}
}
