package main

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// runProgress shows snaplab run's progress on stdout as scenario files
// finish: on a terminal a bar redrawn in place (cleared before anything
// else is printed, and at the end), else one plain line per file,
// "[k/n] NAME RESULT", which logs and CI keep. -q turns it off.
type runProgress struct {
	w      io.Writer
	bar    bool
	off    bool
	total  int
	done   int
	failed int
	drawn  bool
}

// barWidth is the bar's width in cells.
const barWidth = 30

func newRunProgress(w io.Writer, mode string, total int) *runProgress {
	p := &runProgress{w: w, total: total}
	switch mode {
	case "off":
		p.off = true
	case "bar":
		p.bar = true
	case "auto":
		if f, ok := w.(*os.File); ok && isTerminal(f) {
			p.bar = true
		}
	}
	return p
}

// drawBar renders "[####------] k/n" for done of total.
func drawBar(done, total int) string {
	n := 0
	if total > 0 {
		n = done * barWidth / total
	}
	return fmt.Sprintf("[%s%s] %d/%d", strings.Repeat("#", n), strings.Repeat("-", barWidth-n), done, total)
}

// finished records one file's result and redraws.
func (p *runProgress) finished(name, result string) {
	p.done++
	if result != "PASS" {
		p.failed++
	}
	switch {
	case p.off:
	case p.bar:
		failed := ""
		if p.failed > 0 {
			failed = fmt.Sprintf("  %d failed", p.failed)
		}
		fmt.Fprintf(p.w, "\r\033[K%s  %s %s%s", drawBar(p.done, p.total), name, result, failed)
		p.drawn = true
	default:
		fmt.Fprintf(p.w, "[%d/%d] %-40s %s\n", p.done, p.total, name, result)
	}
}

// clear removes the bar before other output (a failure's message), so
// the two do not mix on one line; the next finished draws it again.
func (p *runProgress) clear() {
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
		p.drawn = false
	}
}
