package run

import (
	"fmt"
	"math"

	"snaplab/sim/dm"
	"snaplab/sim/record"
	"snaplab/sim/script"
)

// replayOptions are what Replay tells the session it builds.
type replayOptions struct {
	headerDir string // the recording's header "dir"
	version   int    // the recording's format version: lines are written as it wrote them
	blobs     string // the recording's sidecar ("": data inline)
}

// replaySlack is what a replay may hold in I/O buffers beyond the size of
// the session's disks.
const replaySlack = 64 << 20

// replayGuard checks what a recording's lines ask of a replay before the
// replay does it, so that no recording can crash it or make it allocate
// more than the devices the recording declares: a request's length against
// its device's size when it arrives, and the I/O buffers held at once
// (reads and discards from outside until they complete; the scenario's
// asynchronous reads and writes, which the session keeps, and those that
// never completed) against the session's disks plus replaySlack.
type replayGuard struct {
	s    *Session
	held int64
}

// budget is the size of the session's disks plus replaySlack.
func (g *replayGuard) budget() (disks, budget int64) {
	for _, d := range g.s.ctl.Disks() {
		if disks > math.MaxInt64-d.Size() {
			return math.MaxInt64, math.MaxInt64
		}
		disks += d.Size()
	}
	return disks, disks + min(replaySlack, math.MaxInt64-disks)
}

// take reserves n bytes of buffers for what.
func (g *replayGuard) take(n int64, what string) error {
	disks, budget := g.budget()
	if n > budget-g.held {
		return fmt.Errorf("%s would make the replay hold %d bytes of I/O buffers, more than the session's disks (%d bytes) and %d MiB: a recording may not ask for more memory than the devices it declares",
			what, g.held+n, disks, replaySlack>>20)
	}
	g.held += n
	return nil
}

func (g *replayGuard) release(n int64) { g.held -= n }

// step checks a scenario step about to be replayed: what it needs was
// replayed before it (a recording may name its steps in any order), and
// the buffers of a read or write fit.
func (g *replayGuard) step(st *script.Step) error {
	switch st.Kind {
	case script.KFault:
		if g.s.faults[st.Dev] == nil {
			return fmt.Errorf("fault on disk %s, which no replayed step has attached", st.Dev)
		}
	case script.KWait:
		if g.s.asyncs[st.Async] == nil {
			return fmt.Errorf("wait for %s, which no replayed step has started", st.Async)
		}
	case script.KRead, script.KWrite:
		return g.take(st.Len, fmt.Sprintf("%s of %d bytes on %s", st.Kind, st.Len, st.Dev))
	}
	return nil
}

// stepDone releases a replayed read's or write's buffers unless the
// session keeps them: an asynchronous I/O (kept for its wait), or one that
// never completed (its result has no errno).
func (g *replayGuard) stepDone(st *script.Step, res record.Result) {
	if (st.Kind == script.KRead || st.Kind == script.KWrite) && st.Async == "" && res.Errno != "" {
		g.release(st.Len)
	}
}

// arrival checks an outside request before its buffer is made: its length
// against the size of the device it goes to (node; nil when there is none,
// and the request fails without touching its buffer), and the buffers held.
// It returns the function to call when the request completes.
func (g *replayGuard) arrival(a *record.Arrival, op dm.Op, node dm.Node) (func(error), error) {
	if a.Off < 0 || a.Len < 0 || a.Len > record.MaxArrivalDiscard {
		return nil, fmt.Errorf("arrival off %d len %d: out of range", a.Off, a.Len)
	}
	if node != nil && a.Len > node.Size() {
		return nil, fmt.Errorf("arrival len %d: more than the size of %s (%d bytes) when it arrives", a.Len, node.Name(), node.Size())
	}
	if op == dm.OpWrite && a.Pattern == "" && a.Blob == "" {
		// The bytes came with the recording.
		if int64(len(a.Data)) != a.Len {
			return nil, fmt.Errorf("arrival data: %d bytes for a write of len %d", len(a.Data), a.Len)
		}
		return func(error) {}, nil
	}
	if op == dm.OpFlush {
		return func(error) {}, nil
	}
	if err := g.take(a.Len, fmt.Sprintf("arrival: a %s of %d bytes on %s", op, a.Len, a.Dev)); err != nil {
		return nil, err
	}
	n := a.Len
	return func(error) { g.release(n) }, nil
}
