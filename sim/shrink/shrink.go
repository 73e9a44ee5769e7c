// Package shrink minimises a failing scenario (.scn) by deleting lines.
//
// Shrink(text, fails) returns a subsequence of text's step lines (with
// linear devices inlined, below) for which fails still holds and from which
// no single line can be removed without losing the failure (1-minimal). It runs delta debugging (ddmin, Zeller
// and Hildebrandt 2002: remove ever smaller chunks of lines, keeping a
// removal whenever the failure persists) over the step lines, first
// without the `disk` lines (removing a disk rarely keeps a failure and
// costs a run for every candidate), then over the disk lines, then a
// final pass removing one line (or two or three adjacent ones) at a time
// until nothing more can go. Then each linear device (a `dmsetup create L
// --table "0 N linear D OFF"` line) is inlined where the failure allows:
// its line goes and L becomes D everywhere, and the final pass runs again.
//
// Candidates that do not parse (script.Parse) are never passed to fails.
// Comments and blank lines are dropped from the result. If text itself
// does not fail, Shrink returns it unchanged. Shrink is deterministic: it
// draws no randomness, so the same text and predicate give the same result.
package shrink

import (
	"regexp"
	"strings"

	"snaplab/sim/script"
)

// Shrink returns a minimal scenario text for which fails holds. fails must
// be deterministic.
func Shrink(text string, fails func(text string) bool) string {
	if !fails(text) {
		return text
	}
	var lines []string
	for _, raw := range strings.Split(text, "\n") {
		l := strings.TrimSpace(raw)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		lines = append(lines, l)
	}
	s := &shrinker{fails: fails, tried: map[string]bool{}}
	all := make([]int, len(lines))
	for i := range all {
		all[i] = i
	}
	// Start from the lines without comments if that still fails.
	if !s.test(lines, all) {
		return text
	}
	keep := all
	isDisk := func(i int) bool { return strings.HasPrefix(lines[i], "disk ") || lines[i] == "disk" }
	for _, phase := range []func(int) bool{
		func(i int) bool { return !isDisk(i) },
		isDisk,
		func(int) bool { return true },
	} {
		keep = s.ddmin(lines, keep, phase)
	}
	keep = s.minimal(lines, keep)
	// Inline linear devices: a `dmsetup create L --table "0 N linear D
	// OFF"` line goes and L becomes D in every other line, when that keeps
	// the failure (the generator cuts COW disks into linear slots as lvm
	// does; the failure rarely needs the cut). Then minimal again.
	for {
		cur := strings.Split(strings.TrimSuffix(render(lines, keep), "\n"), "\n")
		found := false
		for i := range cur {
			cand, ok := inlineLinear(cur, i)
			if !ok || !s.testText(cand) {
				continue
			}
			lines = strings.Split(strings.TrimSuffix(cand, "\n"), "\n")
			keep = make([]int, len(lines))
			for j := range keep {
				keep[j] = j
			}
			keep = s.minimal(lines, keep)
			found = true
			break
		}
		if !found {
			break
		}
	}
	return render(lines, keep)
}

// minimal removes single lines, and runs of 2 or 3 adjacent ones (a create
// and its remove, a suspend and its resume), until none can go.
func (s *shrinker) minimal(lines []string, keep []int) []int {
	for changed := true; changed; {
		changed = false
		for w := 1; w <= 3; w++ {
			for j := 0; j+w <= len(keep); j++ {
				cand := append(append([]int{}, keep[:j]...), keep[j+w:]...)
				if s.test(lines, cand) {
					keep, changed = cand, true
					j--
				}
			}
		}
	}
	return keep
}

var linearLine = regexp.MustCompile(`^dmsetup create (\S+) --table "0 \d+ linear (\S+) \d+"$`)

// inlineLinear returns lines without line i, a linear device's creation,
// and with that device's name replaced by its disk's in every other line
// (as a whole word: between spaces, quotes or the line's ends).
func inlineLinear(lines []string, i int) (string, bool) {
	m := linearLine.FindStringSubmatch(lines[i])
	if m == nil {
		return "", false
	}
	word := regexp.MustCompile(`(^|[\s"'])` + regexp.QuoteMeta(m[1]) + `($|[\s"'])`)
	var b strings.Builder
	for j, l := range lines {
		if j == i {
			continue
		}
		// Twice: adjacent occurrences share a delimiter.
		l = word.ReplaceAllString(word.ReplaceAllString(l, "${1}"+m[2]+"${2}"), "${1}"+m[2]+"${2}")
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String(), true
}

// testText reports whether a candidate text parses and fails.
func (s *shrinker) testText(text string) bool {
	if r, ok := s.tried[text]; ok {
		return r
	}
	r := false
	if _, err := script.Parse("shrink.scn", text); err == nil {
		r = s.fails(text)
	}
	s.tried[text] = r
	return r
}

type shrinker struct {
	fails func(string) bool
	tried map[string]bool // candidate text -> result
}

func render(lines []string, keep []int) string {
	var b strings.Builder
	for _, i := range keep {
		b.WriteString(lines[i])
		b.WriteByte('\n')
	}
	return b.String()
}

// test reports whether the candidate made of lines[keep] parses and fails.
func (s *shrinker) test(lines []string, keep []int) bool {
	return s.testText(render(lines, keep))
}

// ddmin removes chunks of the lines of keep for which movable holds, as
// long as the failure persists, and returns the lines kept.
func (s *shrinker) ddmin(lines []string, keep []int, movable func(int) bool) []int {
	var cand []int // positions in keep of movable lines
	for p, i := range keep {
		if movable(i) {
			cand = append(cand, p)
		}
	}
	removed := map[int]bool{} // positions in keep
	without := func(drop []int) []int {
		gone := map[int]bool{}
		for _, p := range drop {
			gone[p] = true
		}
		var out []int
		for p, i := range keep {
			if !removed[p] && !gone[p] {
				out = append(out, i)
			}
		}
		return out
	}
	n := 2
	for len(cand) >= 1 {
		if n > len(cand) {
			n = len(cand)
		}
		progress := false
		for k := 0; k < n; k++ {
			lo, hi := k*len(cand)/n, (k+1)*len(cand)/n
			chunk := cand[lo:hi]
			if len(chunk) == 0 {
				continue
			}
			if s.test(lines, without(chunk)) {
				for _, p := range chunk {
					removed[p] = true
				}
				cand = append(append([]int{}, cand[:lo]...), cand[hi:]...)
				n = max(n-1, 2)
				progress = true
				break
			}
		}
		if !progress {
			if n >= len(cand) {
				break
			}
			n = min(2*n, len(cand))
		}
	}
	return without(nil)
}
