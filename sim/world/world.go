// Package world is snaplab's deterministic simulated world: a virtual clock,
// seeded choice points and a single-threaded event loop.
//
// Contract:
//   - Nothing here starts goroutines, reads the wall clock or uses global
//     randomness. A World is a value; two Worlds never interfere.
//   - Every asynchronous thing in the simulator (a bio completing, a kcopyd
//     copy, an exception commit) is an event posted with After. Step runs
//     one event. When several events are queued, which one runs next is a
//     seeded choice at site "sched.next"; choice 0 is the plain FIFO order
//     (earliest due time, then posting order).
//   - Every choice point goes through Choose(site, n). With seed 0 every
//     choice is 0 (the "boring" run). Any other seed draws from a PCG stream
//     per subsystem (the site's prefix before the first dot), so a new draw
//     in one subsystem does not reshuffle the others.
//   - A Tape forces recorded picks (strict replay); an Observer sees every
//     choice and event, in order, for recordings and trace hashes.
package world

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"sort"
	"strings"
)

// Time is virtual time in nanoseconds since the world began.
type Time int64

// Common durations.
const (
	Nanosecond  Time = 1
	Microsecond      = 1000 * Nanosecond
	Millisecond      = 1000 * Microsecond
	Second           = 1000 * Millisecond
)

// Observer sees the world's decisions in the order they happen.
type Observer interface {
	Choice(t Time, site string, n, pick int)
	Event(t Time, site string)
}

// Tape supplies forced picks, in order. Next returns ok=false when the tape
// has nothing more to say; the world then chooses itself.
type Tape interface {
	Next(site string, n int) (pick int, ok bool, err error)
}

type event struct {
	at   Time
	seq  uint64
	site string
	fn   func()
}

// World is the simulated world.
type World struct {
	seed    uint64
	now     Time
	seq     uint64
	queue   []*event // queue[head:] are the queued events, sorted by (at, seq)
	head    int
	free    []*event // run events, for reuse
	streams []*stream
	obs     Observer
	tape    Tape
	tapeErr error
	steps   uint64
}

type stream struct {
	name  string
	r     *rand.Rand
	draws uint64
}

// New returns a world whose choices derive from seed.
func New(seed uint64) *World {
	return &World{seed: seed}
}

// Seed returns the world's seed.
func (w *World) Seed() uint64 { return w.seed }

// SetObserver installs o (nil removes it).
func (w *World) SetObserver(o Observer) { w.obs = o }

// SetTape installs a tape of forced picks (nil removes it).
func (w *World) SetTape(t Tape) { w.tape = t }

// TapeErr returns the first error the tape reported (a divergence).
func (w *World) TapeErr() error { return w.tapeErr }

// Now is the current virtual time.
func (w *World) Now() Time { return w.now }

// Steps is the number of events run so far.
func (w *World) Steps() uint64 { return w.steps }

// After posts fn to run d after now. site names the event for choices and
// traces ("kcopyd.copy", "bio.done", ...).
func (w *World) After(d Time, site string, fn func()) {
	if d < 0 {
		d = 0
	}
	w.seq++
	var ev *event
	if n := len(w.free); n > 0 {
		ev = w.free[n-1]
		w.free = w.free[:n-1]
	} else {
		ev = new(event)
	}
	*ev = event{at: w.now + d, seq: w.seq, site: site, fn: fn}
	if w.head > 0 && len(w.queue) == cap(w.queue) {
		// Reclaim the room run events left at the front.
		n := copy(w.queue, w.queue[w.head:])
		clear(w.queue[n:])
		w.queue, w.head = w.queue[:n], 0
	}
	q := w.queue[w.head:]
	i := w.head + sort.Search(len(q), func(i int) bool {
		return q[i].at > ev.at || (q[i].at == ev.at && q[i].seq > ev.seq)
	})
	w.queue = append(w.queue, nil)
	copy(w.queue[i+1:], w.queue[i:])
	w.queue[i] = ev
}

// Pending is the number of queued events.
func (w *World) Pending() int { return len(w.queue) - w.head }

func (w *World) streamFor(site string) *stream {
	name := site
	if i := strings.IndexByte(site, '.'); i >= 0 {
		name = site[:i]
	}
	i := sort.Search(len(w.streams), func(i int) bool { return w.streams[i].name >= name })
	if i < len(w.streams) && w.streams[i].name == name {
		return w.streams[i]
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	s := &stream{name: name, r: rand.New(rand.NewPCG(w.seed, h.Sum64()))}
	w.streams = append(w.streams, nil)
	copy(w.streams[i+1:], w.streams[i:])
	w.streams[i] = s
	return s
}

// Choose returns a choice in [0, n) for the named site. n <= 1 is not a
// choice: it returns 0 without drawing or recording.
func (w *World) Choose(site string, n int) int {
	if n <= 1 {
		return 0
	}
	pick := 0
	if w.seed != 0 {
		// Draw even when a tape forces the pick, so that a replay's
		// streams stay in step with the recorded run's.
		s := w.streamFor(site)
		s.draws++
		pick = s.r.IntN(n)
	}
	if w.tape != nil && w.tapeErr == nil {
		p, ok, err := w.tape.Next(site, n)
		switch {
		case err != nil:
			w.tapeErr = err
		case ok:
			pick = p
		}
	}
	if w.obs != nil {
		w.obs.Choice(w.now, site, n, pick)
	}
	return pick
}

// Step runs one event and reports whether there was one.
func (w *World) Step() bool {
	n := w.Pending()
	if n == 0 {
		return false
	}
	i := w.head + w.Choose("sched.next", n)
	ev := w.queue[i]
	// Close the gap from the front (nothing moves for the FIFO pick).
	copy(w.queue[w.head+1:i+1], w.queue[w.head:i])
	w.queue[w.head] = nil
	w.head++
	if w.head == len(w.queue) {
		w.queue, w.head = w.queue[:0], 0
	}
	if ev.at > w.now {
		w.now = ev.at
	}
	w.steps++
	if w.obs != nil {
		w.obs.Event(w.now, ev.site)
	}
	ev.fn()
	// The event is done: its struct serves a later one.
	*ev = event{}
	w.free = append(w.free, ev)
	return true
}

// ErrStuck is returned by RunUntil when the world went quiet before the
// condition held.
type ErrStuck struct{ What string }

func (e *ErrStuck) Error() string {
	return fmt.Sprintf("simulation quiescent while waiting for %s (deadlock: nothing left to run)", e.What)
}

// RunUntil steps until cond holds. It returns *ErrStuck when no event is
// left and cond is still false; what names the awaited condition.
func (w *World) RunUntil(what string, cond func() bool) error {
	for !cond() {
		if !w.Step() {
			return &ErrStuck{What: what}
		}
	}
	return nil
}

// Run steps until no event is left.
func (w *World) Run() {
	for w.Step() {
	}
}

// Draws reports, per stream in name order, how many values were drawn.
func (w *World) Draws() []StreamDraws {
	out := make([]StreamDraws, len(w.streams))
	for i, s := range w.streams {
		out[i] = StreamDraws{s.name, s.draws}
	}
	return out
}

// StreamDraws is a stream's name and draw count.
type StreamDraws struct {
	Stream string `json:"stream"`
	Draws  uint64 `json:"draws"`
}
