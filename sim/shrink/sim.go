package shrink

import (
	"strings"

	"snaplab/sim/run"
	"snaplab/sim/script"
)

// Signature is how a scenario fails on the simulator (the sim executor
// with the scenario's own settings): the text of the first failing step
// and its message with every run of digits replaced by '#', so that a
// candidate failing on the same line for another reason ("no disk or
// device named snap3" instead of "EIO: no space for exception") is not
// taken for the same failure. It is "" when text does not parse or passes.
func Signature(text string) string {
	sc, err := script.Parse("shrink.scn", text)
	if err != nil {
		return ""
	}
	rep := run.Run(sc, run.Options{})
	if rep.Pass() {
		return ""
	}
	f := rep.Failures[0]
	return f.Text + "\n" + digitless(f.Msg)
}

// SimFails returns the predicate for Shrink that holds when a text fails
// on the simulator with signature sig.
func SimFails(sig string) func(text string) bool {
	return func(text string) bool { return sig != "" && Signature(text) == sig }
}

func digitless(s string) string {
	var b strings.Builder
	digit := false
	for _, c := range s {
		if c >= '0' && c <= '9' {
			if !digit {
				b.WriteByte('#')
			}
			digit = true
			continue
		}
		digit = false
		b.WriteRune(c)
	}
	return b.String()
}
