package crash

import (
	"strconv"
	"strings"
)

// namedTable rewrites the device numbers (MAJOR:MINOR) in a table line,
// as dmsetup table prints them, to the names lookup gives, so that the
// line loads on another machine whose devices have other numbers (a
// fresh control plane, the kernel executor's guest). A word is rewritten
// only when it is exactly two decimal numbers joined by a colon and lookup
// knows the device; every other word, and the spacing, is kept.
func namedTable(line string, lookup func(major, minor uint32) (string, bool)) string {
	var b strings.Builder
	for i := 0; i < len(line); {
		j := i
		for j < len(line) && line[j] != ' ' {
			j++
		}
		word := line[i:j]
		if maj, min, ok := devNum(word); ok {
			if name, ok := lookup(maj, min); ok {
				word = name
			}
		}
		b.WriteString(word)
		for j < len(line) && line[j] == ' ' {
			b.WriteByte(' ')
			j++
		}
		i = j
	}
	return b.String()
}

// devNum parses MAJOR:MINOR, both decimal without sign.
func devNum(w string) (uint32, uint32, bool) {
	a, b, ok := strings.Cut(w, ":")
	if !ok || a == "" || b == "" || a[0] == '+' || b[0] == '+' || a[0] == '-' || b[0] == '-' {
		return 0, 0, false
	}
	maj, err := strconv.ParseUint(a, 10, 32)
	if err != nil {
		return 0, 0, false
	}
	min, err := strconv.ParseUint(b, 10, 32)
	if err != nil {
		return 0, 0, false
	}
	return uint32(maj), uint32(min), true
}
