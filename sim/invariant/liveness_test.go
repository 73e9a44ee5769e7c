package invariant_test

import (
	"strings"
	"testing"

	"snaplab/sim/run"
	"snaplab/sim/script"
)

// stack is a linear device top over a linear device low over a disk.
const stack = `disk d 1MiB
disk e 1MiB
dmsetup create low --table "0 2048 linear d 0"
dmsetup create top --table "0 2048 linear low 0"
`

// Liveness is checked whenever the world is quiescent with no fault rule
// active: I/O waiting on a suspended device (or one below it) is excused,
// I/O stuck on a device nobody suspended is not, and the end of a
// scenario is checked too.
func TestLiveness(t *testing.T) {
	for _, c := range []struct {
		name     string
		scn      string
		lose     string // the device whose internal suspend is never undone, before the step "lose"
		want     string // "" or the first failure's message
		wantStep string // the failed step's text
	}{{
		name: "queued on a suspended device",
		scn:  stack + "dmsetup suspend top\nwrite top 0 4KiB pattern=A async=w\nrun\n",
	}, {
		name: "queued below, on a suspended device",
		scn:  stack + "dmsetup suspend low\nwrite top 0 4KiB pattern=A async=w\nrun\n",
	}, {
		name:     "queued below, on a device left internally suspended",
		scn:      stack + "lose\nwrite top 4KiB 4KiB pattern=A async=w\nrun\n",
		lose:     "low",
		want:     "invariant liveness: write top (line 5, async w): sector 8 of top never completed: nothing is left to run, no fault rule is active, and neither top nor a device below it is suspended",
		wantStep: "write top 4KiB",
	}, {
		name: "a fault rule is active",
		scn:  stack + "fault e write eio\nlose\nwrite top 0 4KiB pattern=A async=w\nrun\n",
		lose: "low",
	}, {
		name:     "at the end of the scenario",
		scn:      stack + "write e 0 4KiB pattern=B async=x\nlose\nwrite top 0 4KiB pattern=A async=w\n",
		lose:     "low",
		want:     "invariant liveness: write top (line 6, async w): sector 0 of top never completed: nothing is left to run, no fault rule is active, and neither top nor a device below it is suspended",
		wantStep: "end of scenario",
	}, {
		name:     "the fault rule cleared",
		scn:      stack + "fault e write eio\nlose\nwrite top 0 4KiB pattern=A async=w\nfault e clear\n",
		lose:     "low",
		want:     "invariant liveness: write top (line 6, async w): sector 0 of top never completed: nothing is left to run, no fault rule is active, and neither top nor a device below it is suspended",
		wantStep: "fault e clear",
	}} {
		t.Run(c.name, func(t *testing.T) {
			// "lose" is not a step: the scenario is parsed without it, and
			// the internal suspend happens before the step that followed.
			text := strings.Replace(c.scn, "lose\n", "", 1)
			var before string
			if i := strings.Index(c.scn, "lose\n"); i >= 0 {
				rest := c.scn[i+len("lose\n"):]
				before = rest[:strings.IndexByte(rest, '\n')]
			}
			sc, err := script.Parse("liveness.scn", text)
			if err != nil {
				t.Fatal(err)
			}
			rep := run.Run(sc, run.Options{BeforeStep: func(st *script.Step, s *run.Session) {
				if c.lose != "" && st.Text == before {
					if err := s.Control().Device(c.lose).InternalSuspend(); err != nil {
						t.Fatal(err)
					}
				}
			}})
			if c.want == "" {
				if !rep.Pass() {
					t.Fatalf("%v", rep.Failures)
				}
				return
			}
			if len(rep.Failures) == 0 {
				t.Fatalf("no failure, want %s", c.want)
			}
			f := rep.Failures[0]
			if f.Msg != c.want || !strings.HasPrefix(f.Text, c.wantStep) {
				t.Errorf("failure %q: %s\nwant %q: %s", f.Text, f.Msg, c.wantStep, c.want)
			}
		})
	}
}
