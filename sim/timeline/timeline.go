// Package timeline draws a snaplab recording (sim/record) as a timeline:
// one lane per device, the state of its table over the steps of the run,
// a marker for each control command and a tick for each I/O and each
// copy-on-write copy or exception commit; with two recordings, both are
// drawn on one x axis and their first divergence is marked.
//
// The contract:
//
//   - Build takes one or two recordings already read (record.Read,
//     record.ReadFile; Load does both and names the file and the line in
//     every error) and never panics on what a valid recording holds.
//   - The x axis is the step index (every op line is one slot, even when
//     no virtual time passes), plus one slot after a step for I/O from an
//     outside client (NBD) that arrived between steps. Two recordings are
//     aligned by op index.
//   - A device's state is tracked from the commands and their results
//     (exit status, and "Invalid" or "Overflow" in dmsetup status output),
//     with the handover rules of docs/handover.md for the recording's
//     semantics (mainline or seed): empty (created without a table),
//     loaded (an inactive table only), live, suspended, handed-over (the
//     source of a handover), invalid, removed.
//   - The first divergence of two recordings is the first difference
//     record.CompareResults finds between their record.Results.
//   - SVG and HTML are byte-for-byte deterministic functions of the input:
//     no clock, no map iteration, no network. The HTML is one
//     self-contained file (inline CSS, SVG, JS; no fetch of any kind).
//   - Stable hooks for tools and browser tests: every lane is
//     class="lane" data-device=NAME, every control command a
//     class="marker" with data-line and data-verb, every I/O or COW tick
//     class="tick io-ok|io-eio|io-error|cow-copy|cow-commit|cow-merge"
//     (waited I/O adds io-waited), every handover class="handover", the
//     divergence id="divergence". Every one has an SVG <title> giving the
//     step's scenario line, its text and its result.
package timeline

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"snaplab/sim/record"
	"snaplab/sim/script"
)

// States a dm device's lane shows.
const (
	StateEmpty      = "empty"       // created without a table (--notable)
	StateLoaded     = "loaded"      // an inactive table only
	StateLive       = "live"        // a live table, resumed
	StateSuspended  = "suspended"   // suspended: I/O to it waits
	StateHandedOver = "handed-over" // the source of a handover: every I/O fails
	StateInvalid    = "invalid"     // an invalid (or overflowed) snapshot
	StateDisk       = "disk"        // a scenario disk (always present)
	StateRemoved    = "removed"     // the device was removed
)

// Tick classes.
const (
	TickOK        = "io-ok"
	TickEIO       = "io-eio"
	TickError     = "io-error" // another errno (ENOSPC, ENXIO...)
	TickPending   = "io-pending"
	TickCowCopy   = "cow-copy"
	TickCowCommit = "cow-commit"
	TickCowMerge  = "cow-merge"
)

// Timeline is what Build makes of one or two recordings.
type Timeline struct {
	Slots  []Slot
	Groups []*Group
	// Divergence is the first difference of two recordings' step results;
	// nil with one recording or none.
	Divergence *Divergence
	// Compared says whether two recordings were compared, and Same that
	// they had no difference.
	Compared bool
}

// Slot is one position of the x axis.
type Slot struct {
	Op    int  // op index
	After bool // the outside I/O after op Op (Op -1: before the first)
	// Line and Text are the scenario line of the op (from the first group
	// that has it); T its virtual time in ns at its start.
	Line int
	Text string
	T    int64
}

// Group is one recording's lanes.
type Group struct {
	Name   string // the file name, or what the caller calls it
	Header record.Header
	Pass   bool
	Steps  int   // op lines
	Time   int64 // virtual ns at the end
	Lanes  []*Lane
	// Handovers are the handovers seen, in order.
	Handovers []Handover
	// StepInfo are the ops, in order, with their slot and hover text.
	StepInfo []StepInfo
}

// StepInfo is one op of a group.
type StepInfo struct {
	Slot  int
	Line  int
	Text  string
	T     int64
	Title string // line, text and result, for hover text
	Check string // "ok" or the failure
}

// Lane is one device's row.
type Lane struct {
	Device   string
	Kind     string // "disk", "dm", or "cow" (COW activity not tied to one disk)
	Segments []Segment
	Markers  []Marker
	Ticks    []Tick
}

// Segment is a span of slots [From, To) in one state.
type Segment struct {
	From, To int
	State    string
	// Pending is set when an inactive table waits beside the live one.
	Pending bool
	// Suspended is set when the device is also suspended under a state
	// that shows first (handed-over, invalid).
	Suspended bool
	Title     string
}

// Marker is a control command on a device.
type Marker struct {
	Slot   int
	Line   int
	Verb   string // create, load, suspend, resume, remove, message, status, ... fault, open, close, lvm
	Failed bool   // a non-zero exit status
	Query  bool   // status, table, info, ls: reads state, changes nothing
	Title  string
}

// Tick is an I/O or a COW event.
type Tick struct {
	Slot  int
	Line  int
	Class string
	// Waited: issued while the device was suspended; Until is the slot
	// where it completed.
	Waited bool
	Until  int
	Title  string
}

// Handover is a source table handing its exceptions to a destination.
type Handover struct {
	Slot     int
	Line     int
	From, To string
	Title    string
}

// Divergence is the first difference of two recordings.
type Divergence struct {
	Slot  int
	Line  int
	Text  string
	Field string
	A, B  string
	Label string
	Title string
}

// Load reads the recording at path. Its errors name the file and the
// line: "PATH:LINE: what".
func Load(path string) (*record.Recording, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, b)
}

// Parse reads recording bytes; name is used in errors.
func Parse(name string, b []byte) (*record.Recording, error) {
	rec, err := record.Read(bytes.NewReader(b))
	if err == nil {
		return rec, nil
	}
	msg := err.Error()
	// record.Read says "recording line N: ..." for a bad line; the rest
	// (no header, no footer) are about the file as a whole: name its last
	// line.
	var n int
	if _, scanErr := fmt.Sscanf(msg, "recording line %d:", &n); scanErr == nil {
		return nil, fmt.Errorf("%s:%d: %s", name, n, strings.TrimSpace(msg[strings.Index(msg, ":")+1:]))
	}
	lines := bytes.Count(b, []byte("\n"))
	if len(b) > 0 && b[len(b)-1] != '\n' {
		lines++
	}
	if lines == 0 {
		return nil, fmt.Errorf("%s:1: empty file, not a snaplab recording", name)
	}
	return nil, fmt.Errorf("%s:%d: %s", name, lines, strings.TrimPrefix(msg, "recording: "))
}

// Build makes the timeline of one or two recordings; names name them
// (file names) in labels and errors.
func Build(names []string, recs []*record.Recording) (*Timeline, error) {
	if len(recs) == 0 || len(recs) > 2 {
		return nil, fmt.Errorf("timeline: want one or two recordings, got %d", len(recs))
	}
	if len(names) != len(recs) {
		return nil, fmt.Errorf("timeline: %d names for %d recordings", len(names), len(recs))
	}
	raws := make([]*rawGroup, len(recs))
	for i, rec := range recs {
		g, err := scan(names[i], rec)
		if err != nil {
			return nil, err
		}
		raws[i] = g
	}
	tl := &Timeline{}
	tl.Slots = mergeSlots(raws)
	for _, r := range raws {
		tl.Groups = append(tl.Groups, r.place(tl.Slots))
	}
	if len(recs) == 2 {
		tl.Compared = true
		d, err := firstDivergence(names, recs, raws, tl.Slots)
		if err != nil {
			return nil, err
		}
		tl.Divergence = d
	}
	return tl, nil
}

// firstDivergence compares the step results of two recordings.
func firstDivergence(names []string, recs []*record.Recording, raws []*rawGroup, slots []Slot) (*Divergence, error) {
	var rs [2][]record.StepResult
	for i := range recs {
		var err error
		if rs[i], err = record.Results(recs[i]); err != nil {
			return nil, fmt.Errorf("%s: %v", names[i], err)
		}
	}
	diffs := record.CompareResults(rs[0], rs[1])
	if len(diffs) == 0 {
		return nil, nil
	}
	d := diffs[0]
	op := -1
	for _, r := range raws {
		if op = r.opOfLine(d.Line); op >= 0 {
			break
		}
	}
	slot := 0
	for i, s := range slots {
		if s.Op == op && !s.After {
			slot = i
			break
		}
	}
	text := strings.TrimSpace(stripComment(d.Text))
	var cmd []string
	ws, err := script.Split(text)
	if err != nil {
		ws = strings.Fields(text)
	}
	for _, w := range ws {
		if !script.IsExpectation(w) {
			cmd = append(cmd, w)
		}
	}
	label := fmt.Sprintf("first divergence: line %d %s: %s %s vs %s", d.Line, shorten(strings.Join(cmd, " "), 50), d.Field, shorten(quoteOrNone(d.A), 60), shorten(quoteOrNone(d.B), 60))
	title := fmt.Sprintf("first divergence: line %d: %s\n%s: %s vs %s\n(%s vs %s)", d.Line, text, d.Field, quoteOrNone(d.A), quoteOrNone(d.B), names[0], names[1])
	return &Divergence{Slot: slot, Line: d.Line, Text: text, Field: d.Field, A: d.A, B: d.B, Label: label, Title: title}, nil
}

func quoteOrNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return fmt.Sprintf("%q", s)
}

// shorten cuts s to n runes with an ellipsis.
func shorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// stripComment drops a trailing "# comment" outside quotes.
func stripComment(s string) string {
	inQ := byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQ != 0:
			if c == '\\' && inQ == '"' {
				i++
			} else if c == inQ {
				inQ = 0
			}
		case c == '"' || c == '\'':
			inQ = c
		case c == '#' && (i == 0 || s[i-1] == ' ' || s[i-1] == '\t'):
			return strings.TrimRight(s[:i], " \t")
		}
	}
	return strings.TrimRight(s, " \t")
}
