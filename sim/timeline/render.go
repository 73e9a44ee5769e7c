package timeline

import (
	"fmt"
	"html"
	"io"
	"strings"
)

// Geometry, in SVG user units (pixels).
const (
	leftW     = 170 // lane labels
	slotW     = 26
	laneH     = 26
	barH      = 12
	tickH     = 20
	minWidth  = 900
	axisY     = 52
	groupGap  = 14
	groupHead = 36
	legendRow = 18
	legendCol = 180
)

// Colours of states, ticks and the marks; the browser test looks for some
// of them in screenshots (scenarios/cli/show_test.go).
const (
	ColourLive       = "#2f9e44"
	ColourLoaded     = "#a5d8ff"
	ColourSuspended  = "#f59f00"
	ColourHandedOver = "#7048e8"
	ColourInvalid    = "#495057"
	ColourEmpty      = "#e9ecef"
	ColourRemoved    = "#ced4da"
	ColourDisk       = "#adb5bd"
	ColourCowRow     = "#fff4e6"
	ColourOK         = "#0c8599"
	ColourEIO        = "#e03131"
	ColourError      = "#be4bdb"
	ColourPending    = "#868e96"
	ColourWaited     = "#fcc419"
	ColourCopy       = "#1971c2"
	ColourCommit     = "#343a40"
	ColourMerge      = "#e8590c"
	ColourMarker     = "#212529"
	ColourHandover   = ColourHandedOver
	ColourDivergence = "#e64980"
)

var stateColour = map[string]string{
	StateLive: ColourLive, StateLoaded: ColourLoaded, StateSuspended: ColourSuspended,
	StateHandedOver: ColourHandedOver, StateInvalid: ColourInvalid, StateEmpty: ColourEmpty,
	StateRemoved: ColourRemoved, StateDisk: ColourDisk, "cow": ColourCowRow,
}

var tickColour = map[string]string{
	TickOK: ColourOK, TickEIO: ColourEIO, TickError: ColourError, TickPending: ColourPending,
	TickCowCopy: ColourCopy, TickCowCommit: ColourCommit, TickCowMerge: ColourMerge,
}

// esc escapes text for XML and HTML, attribute values included.
func esc(s string) string { return html.EscapeString(s) }

// svgWriter accumulates the document in memory.
type svgWriter struct {
	b strings.Builder
}

func (w *svgWriter) f(format string, args ...any) { fmt.Fprintf(&w.b, format, args...) }

func title(s string) string { return "<title>" + esc(s) + "</title>" }

// Width and Height are the SVG's size.
func (tl *Timeline) Width() int {
	w := max(leftW+len(tl.Slots)*slotW+24, minWidth)
	for i, g := range tl.Groups {
		w = max(w, textWidth(groupLabel(i, g))+24)
	}
	if d := tl.Divergence; d != nil {
		w = max(w, textWidth(d.Label)+24)
	}
	return w
}

// textWidth estimates the width of text at the SVG's font size.
func textWidth(s string) int { return len([]rune(s))*7 + 14 }

func (tl *Timeline) groupsTop() int { return axisY + 50 }

func groupHeight(g *Group) int { return groupHead + len(g.Lanes)*laneH }

func (tl *Timeline) groupsBottom() int {
	y := tl.groupsTop()
	for _, g := range tl.Groups {
		y += groupHeight(g) + groupGap
	}
	return y
}

type legendItem struct{ class, colour, label, shape string }

var legend = []legendItem{
	{"state-live", ColourLive, "live table", "bar"},
	{"state-loaded", ColourLoaded, "inactive table loaded", "bar"},
	{"state-suspended", ColourSuspended, "suspended", "bar"},
	{"state-handed-over", ColourHandedOver, "handed over (source)", "bar"},
	{"state-invalid", ColourInvalid, "invalid / overflow", "bar"},
	{"state-empty", ColourEmpty, "no table", "bar"},
	{"state-removed", ColourRemoved, "removed", "line"},
	{"state-disk", ColourDisk, "disk", "bar"},
	{"io-ok", ColourOK, "I/O ok", "tick"},
	{"io-eio", ColourEIO, "I/O EIO", "tick"},
	{"io-error", ColourError, "I/O other errno", "tick"},
	{"io-waited", ColourWaited, "waited while suspended", "wait"},
	{"cow-copy", ColourCopy, "kcopyd copy", "circle"},
	{"cow-commit", ColourCommit, "exception commit", "square"},
	{"cow-merge", ColourMerge, "merge", "triangle"},
	{"marker", ColourMarker, "control command", "marker"},
	{"marker failed", ColourEIO, "command failed", "failed"},
	{"marker query", ColourMarker, "status/table/info", "query"},
	{"handover", ColourHandover, "handover", "vline"},
	{"divergence", ColourDivergence, "first divergence", "band"},
}

func (tl *Timeline) legendRows() int {
	perRow := max((tl.Width()-20)/legendCol, 1)
	return (len(legend) + perRow - 1) / perRow
}

func (tl *Timeline) Height() int {
	return tl.groupsBottom() + 10 + tl.legendRows()*legendRow + 10
}

func slotX(i int) int { return leftW + i*slotW }

// Heading is a one-line description of the timeline.
func (tl *Timeline) Heading() string {
	var names []string
	for _, g := range tl.Groups {
		names = append(names, g.Name)
	}
	return "snaplab timeline: " + strings.Join(names, " vs ")
}

func groupLabel(i int, g *Group) string {
	verdict := "PASS"
	if !g.Pass {
		verdict = "FAIL"
	}
	sem := g.Header.Semantics
	if sem == "" {
		sem = "mainline"
	}
	return fmt.Sprintf("%c  %s — %s, executor %s, %s, seed %d: %s, %d steps, %s virtual",
		'A'+rune(i), g.Name, g.Header.Scenario, g.Header.Executor, sem, g.Header.Seed, verdict, g.Steps, fmtTime(g.Time))
}

// SVG writes the timeline as a standalone SVG document.
func (tl *Timeline) SVG(w io.Writer) error {
	var s svgWriter
	s.f("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
	tl.svg(&s)
	_, err := io.WriteString(w, s.b.String())
	return err
}

func (tl *Timeline) svg(s *svgWriter) {
	W, H := tl.Width(), tl.Height()
	s.f(`<svg xmlns="http://www.w3.org/2000/svg" id="timeline" class="timeline" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans Mono, Liberation Mono, monospace" font-size="11">`+"\n", W, H, W, H)
	s.f(`<rect class="page" x="0" y="0" width="%d" height="%d" fill="#ffffff"/>`+"\n", W, H)
	s.f(`<text class="heading" x="8" y="18" font-size="14" font-weight="bold" fill="#212529">%s</text>`+"\n", esc(tl.Heading()))
	if tl.Compared && tl.Divergence == nil {
		s.f(`<text class="no-divergence" x="8" y="40" fill="#2f9e44">no divergence: the two recordings' step results are identical</text>` + "\n")
	}
	tl.axis(s)
	y := tl.groupsTop()
	for i, g := range tl.Groups {
		tl.group(s, i, g, y)
		y += groupHeight(g) + groupGap
	}
	if d := tl.Divergence; d != nil {
		tl.divergence(s, d)
	}
	tl.legend(s)
	s.f("</svg>\n")
}

func (tl *Timeline) axis(s *svgWriter) {
	s.f(`<g class="axis">` + "\n")
	s.f(`<text x="8" y="%d" fill="#495057">step (line)</text>`+"\n", axisY+10)
	s.f(`<text x="8" y="%d" fill="#495057">virtual time</text>`+"\n", axisY+36)
	lastX := -1000
	var lastT int64 = -1
	for i, sl := range tl.Slots {
		x := slotX(i)
		fill, class := "#dee2e6", "step"
		var titles []string
		for gi, g := range tl.Groups {
			for _, st := range g.StepInfo {
				if st.Slot != i {
					continue
				}
				t := st.Title
				if len(tl.Groups) > 1 {
					t = fmt.Sprintf("%c: %s", 'A'+rune(gi), t)
				}
				titles = append(titles, t)
				if st.Check != "" && st.Check != "ok" {
					fill, class = ColourEIO, "step step-failed"
				}
			}
		}
		if sl.After {
			fill, class = "#f1f3f5", "step step-outside"
			titles = append(titles, fmt.Sprintf("outside I/O and background work after step %d", sl.Op))
		}
		s.f(`<rect class="%s" data-slot="%d" data-line="%d" x="%d" y="%d" width="%d" height="12" fill="%s">%s</rect>`+"\n",
			class, i, sl.Line, x+1, axisY, slotW-2, fill, title(strings.Join(titles, "\n\n")))
		if sl.Line > 0 && !sl.After {
			s.f(`<text x="%d" y="%d" font-size="9" text-anchor="middle" fill="#495057">%d</text>`+"\n", x+slotW/2, axisY+23, sl.Line)
		}
		if !sl.After && sl.T != lastT && x-lastX >= 52 {
			s.f(`<text x="%d" y="%d" font-size="9" fill="#868e96">%s</text>`+"\n", x+2, axisY+36, esc(fmtTime(sl.T)))
			lastX, lastT = x, sl.T
		}
	}
	s.f("</g>\n")
}

func (tl *Timeline) group(s *svgWriter, gi int, g *Group, y0 int) {
	right := slotX(len(tl.Slots))
	s.f(`<g class="group" id="group-%d" data-name="%s">`+"\n", gi, esc(g.Name))
	s.f(`<text class="group-label" x="8" y="%d" font-weight="bold" fill="#212529">%s</text>`+"\n", y0+15, esc(groupLabel(gi, g)))
	y := y0 + groupHead
	for _, l := range g.Lanes {
		tl.lane(s, gi, l, y, right)
		y += laneH
	}
	// Handovers: a vertical line through the group at the step.
	for _, h := range g.Handovers {
		x := slotX(h.Slot) + slotW/2
		s.f(`<g class="handover" data-line="%d" data-from="%s" data-to="%s">%s`, h.Line, esc(h.From), esc(h.To), title(h.Title))
		s.f(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`, x, y0+groupHead-14, x, y, ColourHandover)
		label := "handover " + h.From + " → " + h.To
		if h.From == h.To {
			label = "handover inside " + h.From + " (new table, same COW)"
		}
		s.f(`<text x="%d" y="%d" font-size="10" fill="%s">%s</text></g>`+"\n", x+4, y0+groupHead-6, ColourHandover, esc(label))
	}
	s.f("</g>\n")
}

func (tl *Timeline) lane(s *svgWriter, gi int, l *Lane, y, right int) {
	kindText := map[string]string{"disk": "disk", "dm": "dm device", "cow": "COW activity not tied to one COW disk"}[l.Kind]
	s.f(`<g class="lane lane-%s" data-device="%s" data-group="%d">`, l.Kind, esc(l.Device), gi)
	s.f(`<title>%s (%s)</title>`, esc(l.Device), kindText)
	s.f(`<rect class="lane-bg" x="%d" y="%d" width="%d" height="%d" fill="#f8f9fa"/>`, leftW, y+1, right-leftW, laneH-2)
	label := l.Device
	if l.Kind == "cow" {
		label = "COW (shared)"
	}
	s.f(`<text class="lane-label" x="8" y="%d" fill="#212529">%s</text>`+"\n", y+laneH/2+4, esc(shorten(label, 22)))
	by := y + (laneH-barH)/2
	for _, sg := range l.Segments {
		x, w := slotX(sg.From), (sg.To-sg.From)*slotW
		if sg.State == StateRemoved {
			s.f(`<g class="seg state-removed">%s<rect x="%d" y="%d" width="%d" height="%d" fill="#ffffff" fill-opacity="0"/><line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2" stroke-dasharray="4 3"/></g>`+"\n",
				title(sg.Title), x, by, w, barH, x, y+laneH/2, x+w, y+laneH/2, ColourRemoved)
			continue
		}
		stroke := ""
		if sg.State == StateEmpty {
			stroke = ` stroke="#adb5bd"`
		}
		s.f(`<rect class="seg state-%s" x="%d" y="%d" width="%d" height="%d" fill="%s"%s>%s</rect>`+"\n", sg.State, x, by, w, barH, stateColour[sg.State], stroke, title(sg.Title))
		if sg.Suspended {
			s.f(`<rect class="seg-suspended" x="%d" y="%d" width="%d" height="2" fill="%s">%s</rect>`+"\n", x, by+barH+1, w, ColourSuspended, title(l.Device+": suspended"))
		}
		if sg.Pending {
			s.f(`<rect class="seg-pending" x="%d" y="%d" width="%d" height="3" fill="%s">%s</rect>`+"\n", x, by-4, w, ColourLoaded, title(l.Device+": an inactive table is loaded"))
		}
	}
	// Ticks: spread the ticks of one slot across it.
	count := make([]int, len(tl.Slots)+1)
	for _, t := range l.Ticks {
		count[t.Slot]++
	}
	seen := make([]int, len(tl.Slots)+1)
	for _, t := range l.Ticks {
		n := count[t.Slot]
		j := seen[t.Slot]
		seen[t.Slot]++
		x := slotX(t.Slot) + (j+1)*slotW/(n+1)
		cls := "tick " + t.Class
		if t.Waited {
			cls += " io-waited"
		}
		s.f(`<g class="%s" data-line="%d">%s`, cls, t.Line, title(t.Title))
		switch t.Class {
		case TickCowCopy:
			s.f(`<circle cx="%d" cy="%d" r="4" fill="%s" stroke="#ffffff" stroke-width="1"/>`, x, y+laneH/2, ColourCopy)
		case TickCowCommit:
			s.f(`<rect x="%d" y="%d" width="8" height="8" fill="%s" stroke="#ffffff" stroke-width="1"/>`, x-4, y+laneH/2-4, ColourCommit)
		case TickCowMerge:
			s.f(`<polygon points="%d,%d %d,%d %d,%d" fill="%s"/>`, x-5, y+laneH/2+4, x+5, y+laneH/2+4, x, y+laneH/2-5, ColourMerge)
		default:
			if t.Waited {
				x2 := slotX(t.Until) + slotW/2
				s.f(`<rect class="wait" x="%d" y="%d" width="%d" height="3" fill="%s"/>`, x, y+laneH-4, max(x2-x, 4), ColourWaited)
			}
			s.f(`<rect x="%d" y="%d" width="4" height="%d" fill="%s" stroke="#ffffff" stroke-width="0.5"/>`, x-2, y+(laneH-tickH)/2, tickH, tickColour[t.Class])
		}
		s.f("</g>\n")
	}
	for _, m := range l.Markers {
		cx := slotX(m.Slot) + slotW/2
		cls := "marker verb-" + strings.ReplaceAll(m.Verb, " ", "-")
		if m.Failed {
			cls += " failed"
		}
		if m.Query {
			cls += " query"
		}
		s.f(`<g class="%s" data-line="%d" data-verb="%s">%s`, cls, m.Line, esc(m.Verb), title(m.Title))
		switch {
		case m.Query:
			s.f(`<circle cx="%d" cy="%d" r="3.5" fill="#ffffff" stroke="%s" stroke-width="1.5"/>`, cx, y+5, ColourMarker)
		case m.Failed:
			s.f(`<polygon points="%d,%d %d,%d %d,%d" fill="#ffffff" stroke="%s" stroke-width="2"/>`, cx-6, y+1, cx+6, y+1, cx, y+10, ColourEIO)
		default:
			s.f(`<polygon points="%d,%d %d,%d %d,%d" fill="%s" stroke="#ffffff" stroke-width="1"/>`, cx-6, y+1, cx+6, y+1, cx, y+10, ColourMarker)
		}
		s.f("</g>\n")
	}
	s.f("</g>\n")
}

func (tl *Timeline) divergence(s *svgWriter, d *Divergence) {
	x := slotX(d.Slot)
	top, bottom := axisY-4, tl.groupsBottom()-groupGap
	labelW := textWidth(d.Label)
	lx := min(x, tl.Width()-labelW-4)
	lx = max(lx, 4)
	s.f(`<g id="divergence" class="divergence" data-line="%d" data-field="%s">%s`, d.Line, esc(d.Field), title(d.Title))
	s.f(`<rect class="divergence-band" x="%d" y="%d" width="%d" height="%d" fill="%s" fill-opacity="0.3" stroke="%s" stroke-width="2"/>`, x, top, slotW, bottom-top, ColourDivergence, ColourDivergence)
	s.f(`<rect class="divergence-label" x="%d" y="26" width="%d" height="18" rx="3" fill="%s"/>`, lx, labelW, ColourDivergence)
	s.f(`<text x="%d" y="39" fill="#ffffff" font-weight="bold">%s</text>`, lx+7, esc(d.Label))
	s.f("</g>\n")
}

func (tl *Timeline) legend(s *svgWriter) {
	perRow := max((tl.Width()-20)/legendCol, 1)
	y0 := tl.groupsBottom() + 10
	s.f(`<g class="legend">` + "\n")
	for i, it := range legend {
		x := 10 + (i%perRow)*legendCol
		y := y0 + (i/perRow)*legendRow
		s.f(`<g class="legend-item %s">`, it.class)
		switch it.shape {
		case "bar":
			s.f(`<rect x="%d" y="%d" width="18" height="10" fill="%s" stroke="#adb5bd" stroke-width="0.5"/>`, x, y+2, it.colour)
		case "line":
			s.f(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2" stroke-dasharray="4 3"/>`, x, y+7, x+18, y+7, it.colour)
		case "tick":
			s.f(`<rect x="%d" y="%d" width="4" height="14" fill="%s"/>`, x+7, y, it.colour)
		case "wait":
			s.f(`<rect x="%d" y="%d" width="18" height="4" fill="%s"/>`, x, y+5, it.colour)
		case "circle":
			s.f(`<circle cx="%d" cy="%d" r="4" fill="%s"/>`, x+9, y+7, it.colour)
		case "square":
			s.f(`<rect x="%d" y="%d" width="8" height="8" fill="%s"/>`, x+5, y+3, it.colour)
		case "triangle":
			s.f(`<polygon points="%d,%d %d,%d %d,%d" fill="%s"/>`, x+4, y+11, x+14, y+11, x+9, y+2, it.colour)
		case "marker":
			s.f(`<polygon points="%d,%d %d,%d %d,%d" fill="%s"/>`, x+3, y+2, x+15, y+2, x+9, y+11, it.colour)
		case "failed":
			s.f(`<polygon points="%d,%d %d,%d %d,%d" fill="#ffffff" stroke="%s" stroke-width="2"/>`, x+3, y+2, x+15, y+2, x+9, y+11, it.colour)
		case "query":
			s.f(`<circle cx="%d" cy="%d" r="3.5" fill="#ffffff" stroke="%s" stroke-width="1.5"/>`, x+9, y+7, it.colour)
		case "vline":
			s.f(`<rect x="%d" y="%d" width="3" height="14" fill="%s"/>`, x+8, y, it.colour)
		case "band":
			s.f(`<rect x="%d" y="%d" width="18" height="14" fill="%s" fill-opacity="0.3" stroke="%s" stroke-width="2"/>`, x, y, it.colour, it.colour)
		}
		s.f(`<text x="%d" y="%d" font-size="10" fill="#212529">%s</text></g>`+"\n", x+24, y+11, esc(it.label))
	}
	s.f("</g>\n")
}

// HTML writes the timeline as one self-contained HTML page: the SVG
// inline, a tooltip and a self-check (open the page with #selfcheck: it
// writes the position, size and visibility of every lane, marker, tick,
// handover and the divergence into <pre id="selfcheck-result"> as JSON).
// Nothing is fetched.
func (tl *Timeline) HTML(w io.Writer) error {
	var s svgWriter
	s.f("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n")
	s.f("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n")
	s.f("<title>%s</title>\n<style>\n%s</style>\n</head>\n<body>\n", esc(tl.Heading()), pageCSS)
	s.f("<div id=\"chart\">\n")
	tl.svg(&s)
	s.f("</div>\n<div id=\"tip\" role=\"tooltip\"></div>\n<pre id=\"selfcheck-result\" hidden></pre>\n")
	s.f("<script>\n%s</script>\n</body>\n</html>\n", pageJS)
	_, err := io.WriteString(w, s.b.String())
	return err
}

const pageCSS = `body { margin: 8px; font-family: "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 12px; color: #212529; background: #ffffff; }
#chart { overflow-x: auto; }
#chart svg { display: block; }
.tick:hover, .marker:hover, .handover:hover { filter: brightness(1.3); cursor: default; }
#tip { position: fixed; display: none; max-width: 640px; padding: 4px 6px; background: #212529; color: #f8f9fa; font-size: 11px; white-space: pre-wrap; pointer-events: none; border-radius: 3px; z-index: 10; }
`

const pageJS = `(function () {
  "use strict";
  var tip = document.getElementById("tip");
  var svg = document.getElementById("timeline");
  function titled(el) {
    for (; el && el !== svg; el = el.parentNode) {
      for (var c = el.firstChild; c; c = c.nextSibling) {
        if (c.nodeName === "title") { return c.textContent; }
      }
    }
    return null;
  }
  svg.addEventListener("mousemove", function (ev) {
    var t = titled(ev.target);
    if (!t) { tip.style.display = "none"; return; }
    tip.textContent = t;
    tip.style.display = "block";
    tip.style.left = Math.min(ev.clientX + 12, window.innerWidth - tip.offsetWidth - 4) + "px";
    tip.style.top = Math.min(ev.clientY + 12, window.innerHeight - tip.offsetHeight - 4) + "px";
  });
  svg.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  if (location.hash !== "#selfcheck") { return; }
  // Self-check: where each element is drawn and whether it is visible.
  function visible(el) {
    for (var e = el; e && e.nodeType === 1; e = e.parentNode) {
      var cs = getComputedStyle(e);
      if (cs.display === "none" || cs.visibility !== "visible" || parseFloat(cs.opacity) === 0) { return false; }
    }
    var r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0;
  }
  var out = { page: { width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight }, items: [] };
  var els = document.querySelectorAll(".lane, .marker, .tick, .handover, #divergence");
  for (var i = 0; i < els.length; i++) {
    var el = els[i], r = el.getBoundingClientRect();
    out.items.push({
      kind: el.id === "divergence" ? "divergence" : el.getAttribute("class").split(" ")[0],
      class: el.getAttribute("class"),
      device: el.getAttribute("data-device") || "",
      group: el.getAttribute("data-group") || "",
      line: parseInt(el.getAttribute("data-line") || "0", 10),
      verb: el.getAttribute("data-verb") || "",
      x: Math.round(r.left + window.scrollX), y: Math.round(r.top + window.scrollY),
      width: Math.round(r.width), height: Math.round(r.height),
      visible: visible(el)
    });
  }
  var pre = document.getElementById("selfcheck-result");
  pre.textContent = JSON.stringify(out);
  document.body.setAttribute("data-selfcheck", "done");
})();
`
