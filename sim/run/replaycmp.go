package run

import (
	"bytes"

	"snaplab/sim/record"
)

// lineComparer is a replay's recording: each line the session writes is
// compared with the recorded line at the same place as it is written,
// keeping nothing but the first difference. A replay stops at it, so what
// a replay does stays in proportion to what the recording holds (a few
// recorded lines cannot make it run, and buffer, the work of thousands of
// steps), and its memory does not grow with its output.
type lineComparer struct {
	recorded []string
	n        int    // lines written so far
	partial  []byte // a line being written in pieces (the session writes whole lines)
	diverged bool
	at       int    // with diverged: the index of the first differing line
	got      string // ... and what the replay wrote there
}

// Write implements io.Writer.
func (c *lineComparer) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.partial = append(c.partial, p...)
			break
		}
		line := p[:i]
		if len(c.partial) > 0 {
			line = append(c.partial, line...)
			c.partial = c.partial[:0]
		}
		c.line(line)
		p = p[i+1:]
	}
	return n, nil
}

func (c *lineComparer) line(l []byte) {
	if c.diverged {
		return
	}
	if c.n >= len(c.recorded) || c.recorded[c.n] != string(l) {
		c.diverged, c.at, c.got = true, c.n, string(l)
		return
	}
	c.n++
}

// diff describes the first difference as record.Diff does; "" when the
// replay wrote exactly the recorded lines.
func (c *lineComparer) diff(context int) string {
	switch {
	case c.diverged:
		return record.Diff(c.recorded[:min(c.at+1, len(c.recorded))], append(c.recorded[:c.at:c.at], c.got), "recorded", "replayed", context)
	case c.n < len(c.recorded):
		return record.Diff(c.recorded[:c.n+1], c.recorded[:c.n], "recorded", "replayed", context)
	}
	return ""
}
